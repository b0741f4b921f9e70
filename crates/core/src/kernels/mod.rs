//! CPU kernels rustformers runs instead of candle's where candle is slow on x86: candle
//! picks its SIMD paths at compile time (`target_feature = "avx"`), so a portable build
//! runs its scalar quantized dot products. These kernels pick the instruction set at run
//! time and are exposed as candle custom ops. Each has a plain implementation beside it
//! and tests that compare the two.

pub mod activation;
pub mod bf16;
pub mod fused;
pub mod gemv;
pub mod pool;
pub mod qmatmul;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// True for an f32 tensor on the CPU: what the kernels here take.
pub(crate) fn is_f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// An output buffer that parallel tasks write through, each to its own disjoint part,
/// while the buffer outlives the loop (each use states which part is whose).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: shared only by tasks that write disjoint elements of a live buffer (above).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Element `i` (a method, so that closures capture the `Sync` wrapper, not the raw
    /// pointer field).
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA + F16C (Haswell and later).
    Avx2,
    /// AVX-512 with VNNI (`vpdpbusd`): Ice Lake, Sapphire Rapids, Zen 4 and later.
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU offers, detected once. `RUSTFORMERS_ISA=scalar`
    /// or `avx2` caps it (for comparisons and tests).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::best_available();
            match std::env::var("RUSTFORMERS_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") if best != Isa::Scalar => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// Every instruction set this CPU can run, worst first (for tests).
    pub fn all_available() -> Vec<Isa> {
        let best = Self::best_available();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| *i as u8 <= best as u8)
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    fn best_available() -> Isa {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            Isa::Avx512Vnni
        } else if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn best_available() -> Isa {
        Isa::Scalar
    }
}
