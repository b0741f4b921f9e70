//! CPU kernels rustformers runs instead of candle's where candle is slow on x86: candle
//! picks its SIMD paths at compile time (`target_feature = "avx"`), so a portable build
//! runs its scalar quantized dot products. These kernels pick the instruction set at run
//! time and are exposed as candle custom ops. Each has a plain implementation beside it
//! and tests that compare the two.

pub mod activation;
pub mod bf16;
pub mod encoder_layer;
pub mod fused;
pub mod gemv;
pub mod optim;
pub mod pool;
pub mod qmatmul;
pub mod sgemm;
pub mod train;

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Storage, Tensor};

/// True for an f32 tensor on the CPU outside autograd: what the kernels here take. They
/// have no backward pass, so a tensor that tracks gradients (a trainable parameter, or
/// computed from one) takes the op-by-op paths, which candle differentiates.
pub(crate) fn runs_kernels(t: &Tensor) -> bool {
    f32_cpu(t) && !t.track_op()
}

/// True for an f32 tensor on the CPU, tracking gradients or not: what the training ops
/// ([`train`], which have backward passes) take.
pub(crate) fn f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the values of an f32 CPU tensor (made contiguous first where it is not).
pub(crate) fn read_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => Ok(f(&d[a..b])),
        _ => candle_core::bail!("a kernel takes f32 CPU tensors, got {:?}", t.dtype()),
    }
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

/// [`OutPtr`] for f64 results (per-task partial sums).
#[derive(Clone, Copy)]
pub(crate) struct OutF64(pub(crate) *mut f64);
// SAFETY: as for `OutPtr`: each task writes its own elements of a live buffer.
unsafe impl Send for OutF64 {}
unsafe impl Sync for OutF64 {}

impl OutF64 {
    /// Element `i`.
    pub(crate) fn at(self, i: usize) -> *mut f64 {
        self.0.wrapping_add(i)
    }
}

/// A gemm operand: element `(r, c)` at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}
// SAFETY: a read-only view of a buffer that outlives the loops it is used in.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// `data` row-major, rows `rs` apart.
    pub(crate) fn rows(data: &[f32], rs: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs,
            cs: 1,
        }
    }

    /// The transpose of `data` row-major with rows `rs` apart: `(r, c)` is
    /// `data[c·rs + r]`.
    pub(crate) fn cols(data: &[f32], rs: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: 1,
            cs: rs,
        }
    }

    /// The view from row `r` on.
    pub(crate) fn skip_rows(self, r: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(r * self.rs),
            ..self
        }
    }

    /// The view from column `c` on.
    pub(crate) fn skip_cols(self, c: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(c * self.cs),
            ..self
        }
    }
}

/// `dst [m, n]` (rows `dst_rs` apart) `= lhs [m, k] · rhs [k, n]`, or `+=` with
/// `accumulate`, through gemm on this thread.
///
/// # Safety
/// `dst` is writable at every `(i, j)` of `[m, n]` and nothing else touches those
/// elements meanwhile; `lhs` and `rhs` reach every element their strides address.
pub(crate) unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]` (row-major `dst`, row stride `n`), with
/// output row blocks (tall outputs) or column blocks spread over the pool, each through
/// gemm. `accumulate` adds to what `dst` holds (a bias written there first); without it
/// `dst` is only written (it may be uninitialised memory).
///
/// # Safety
/// `dst` is valid for writes (and, with `accumulate`, reads) of `m · n` values that no
/// one else touches meanwhile; `lhs` and `rhs` reach every element their strides
/// address for `(m, k)` and `(k, n)`.
pub(crate) unsafe fn gemm_on_pool(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let ptr = OutPtr(dst);
    let pool = pool::Pool::global();
    let parts = 2 * pool.threads();
    if m >= n && m >= parts * 64 && pool.threads() > 1 {
        // Tall outputs (training's `[tokens, hidden]` products and weight gradients
        // `[inter, hidden]`): row blocks, each gemm packing the whole of `rhs` once. On
        // MiniLM's training shapes (2 threads) this measured 150–178 GMAC/s where
        // column blocks, which repack `lhs` per block, gave 115–153.
        let rows = m.div_ceil(parts);
        pool.run(parts, &|p| {
            let r0 = p * rows;
            let r = rows.min(m.saturating_sub(r0));
            if r == 0 {
                return;
            }
            // SAFETY: rows r0..r0 + r of dst (row stride n) are this block's alone; the
            // operands are in bounds (the caller's contract), lhs from its row r0.
            unsafe {
                gemm_into(
                    (r, n, k),
                    ptr.at(r0 * n),
                    n,
                    lhs.skip_rows(r0),
                    rhs,
                    accumulate,
                )
            };
        });
        return;
    }
    let chunk = n
        .div_ceil(pool.threads() * 4)
        .clamp(16, 256)
        .next_multiple_of(16);
    let block = |c: usize| {
        let n0 = c * chunk;
        let cols = chunk.min(n - n0);
        // SAFETY: dst[.., n0..n0 + cols] (row stride n) is this block's alone; the
        // operands are in bounds (the caller's contract), rhs from its column n0.
        unsafe {
            gemm_into(
                (m, cols, k),
                ptr.at(n0),
                n,
                lhs,
                rhs.skip_cols(n0),
                accumulate,
            )
        };
    };
    let blocks = n.div_ceil(chunk);
    if pool.threads() <= 1 || blocks <= 1 || m * n * k < 1 << 15 {
        (0..blocks).for_each(block);
    } else {
        pool.run(blocks, &block);
    }
}

/// Input rows × weight rows a tile kernel computes at once.
pub(crate) const TILE: usize = 4;

/// One tile's outputs, `[input row][weight row]`.
pub(crate) type Tile = [[f32; TILE]; TILE];

/// The `[m, n]` output of a product whose kernel computes tiles:
/// `tile(i, mr, j, nr, &mut out)` fills outputs `(i + r, j + c)` for `r < mr`, `c < nr`,
/// with `mr` and `nr` either [`TILE`] or 1. `bias[j]` is added to column `j` when given.
/// Columns are split over the pool when `work` (multiply-adds) reaches `parallel_min`.
pub(crate) fn tiled_product(
    m: usize,
    n: usize,
    work: usize,
    parallel_min: usize,
    bias: Option<&[f32]>,
    tile: impl Fn(usize, usize, usize, usize, &mut Tile) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |n0: usize, n1: usize| {
        let mut tmp = [[0f32; TILE]; TILE];
        let mut i = 0;
        while i < m {
            let mr = if m - i >= TILE { TILE } else { 1 };
            let mut j = n0;
            while j < n1 {
                let nr = if n1 - j >= TILE { TILE } else { 1 };
                tile(i, mr, j, nr, &mut tmp);
                for (r, row) in tmp.iter().enumerate().take(mr) {
                    for (c, v) in row.iter().enumerate().take(nr) {
                        let b = bias.map_or(0.0, |b| b[j + c]);
                        // SAFETY: (i + r, j + c) is inside [m, n]; columns n0..n1 belong
                        // to this task alone and `out` outlives the loop.
                        unsafe { *ptr.at((i + r) * n + j + c) = *v + b };
                    }
                }
                j += nr;
            }
            i += mr;
        }
    };
    let pool = pool::Pool::global();
    if pool.threads() <= 1 || work < parallel_min {
        run(0, n);
    } else {
        let chunk = (n.div_ceil(pool.threads() * 8).max(16)).next_multiple_of(TILE);
        pool.run(n.div_ceil(chunk), &|c| {
            let n0 = c * chunk;
            run(n0, (n0 + chunk).min(n));
        });
    }
    out
}

/// `cpu_fwd` of a linear-layer op: checks that `s` is a contiguous f32 input whose last
/// dimension is `cols`, runs `f(x, m)` on its `m` rows, and shapes the `[.., rows]`
/// result.
/// The f32 values of a kernel op's operand.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, what: &str) -> candle_core::Result<&'a [f32]> {
    match s {
        CpuStorage::F32(d) => Ok(d),
        other => candle_core::bail!("{what} takes f32, got {:?}", other.dtype()),
    }
}

/// The part of `data` a contiguous layout covers.
pub(crate) fn contiguous<'a>(
    data: &'a [f32],
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what} takes a contiguous input"),
    }
}

pub(crate) fn linear_op_fwd(
    what: &str,
    s: &CpuStorage,
    l: &Layout,
    rows: usize,
    cols: usize,
    f: impl FnOnce(&[f32], usize) -> Result<Vec<f32>, String>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{what} takes f32 input, got {:?}", s.dtype());
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{what} takes a contiguous input");
    };
    let dims = l.shape().dims();
    let k = dims.last().copied().unwrap_or(0);
    if k != cols {
        candle_core::bail!("{what}: input has {k} features, the weight takes {cols}");
    }
    let x = &data[start..end];
    let m = x.len().checked_div(k).unwrap_or(0);
    let y = f(x, m).map_err(candle_core::Error::Msg)?;
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = rows;
    }
    Ok((CpuStorage::F32(y), Shape::from(out_dims)))
}

/// What goes with a product: a bias of `n` values, a residual `[m, n]` added to the
/// outputs, and exact GELU applied last (after the bias; the residual, when both are
/// given, is added before the activation, as the operands' order says).
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub gelu: bool,
}

/// A weight packed for one of rustformers' CPU linear kernels (bf16 on AMX, f32 on
/// AVX-512), run through [`LinearOp`].
pub trait PackedLinear: std::fmt::Debug + Send + Sync + 'static {
    /// candle's names of the op without and with a residual.
    const OP: &'static str;
    const OP_RESIDUAL: &'static str;
    /// What errors call the product.
    const WHAT: &'static str;
    /// Outputs `n` and inputs `k`.
    fn dims(&self) -> (usize, usize);
    /// `x [m, k] · Wᵀ` plus `extras`, `[m, n]`.
    fn product(&self, x: &[f32], m: usize, extras: Extras) -> Result<Vec<f32>, String>;
}

/// The candle op of a packed linear layer: `x [..., k]` (f32) → `[..., n]` (f32) with
/// the layer's bias and GELU; as a two-input op `(x, residual)` it also adds
/// `residual`, which has the output's shape.
#[derive(Debug)]
pub struct LinearOp<W> {
    pub weight: std::sync::Arc<W>,
    /// Added to each output row (`n` values).
    pub bias: Option<std::sync::Arc<[f32]>>,
    /// GELU (erf form) of the outputs, applied as they are written.
    pub gelu: bool,
}

impl<W> Clone for LinearOp<W> {
    fn clone(&self) -> Self {
        Self {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            gelu: self.gelu,
        }
    }
}

impl<W: PackedLinear> candle_core::CustomOp1 for LinearOp<W> {
    fn name(&self) -> &'static str {
        W::OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.weight.dims();
        linear_op_fwd(W::WHAT, s, l, n, k, |x, m| {
            let extras = Extras {
                bias: self.bias.as_deref(),
                residual: None,
                gelu: self.gelu,
            };
            self.weight.product(x, m, extras)
        })
    }
}

impl<W: PackedLinear> candle_core::CustomOp2 for LinearOp<W> {
    fn name(&self) -> &'static str {
        W::OP_RESIDUAL
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.weight.dims();
        let what = format!("{} with residual", W::WHAT);
        linear_op_fwd_residual(&what, s, l, rs, rl, n, k, |x, m, res| {
            let extras = Extras {
                bias: self.bias.as_deref(),
                residual: Some(res),
                gelu: self.gelu,
            };
            self.weight.product(x, m, extras)
        })
    }
}

/// [`linear_op_fwd`] for a `(x, residual)` op: `f(x, m, residual)`, the residual being
/// an f32 tensor of the output's shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_op_fwd_residual(
    what: &str,
    s: &CpuStorage,
    l: &Layout,
    rs: &CpuStorage,
    rl: &Layout,
    rows: usize,
    cols: usize,
    f: impl FnOnce(&[f32], usize, &[f32]) -> Result<Vec<f32>, String>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(res) = rs else {
        candle_core::bail!("{what} takes an f32 residual, got {:?}", rs.dtype());
    };
    let Some((r0, r1)) = rl.contiguous_offsets() else {
        candle_core::bail!("{what} takes a contiguous residual");
    };
    let (storage, shape) = linear_op_fwd(what, s, l, rows, cols, |x, m| f(x, m, &res[r0..r1]))?;
    if rl.shape() != &shape {
        candle_core::bail!("{what}: residual {:?} for output {shape:?}", rl.shape());
    }
    Ok((storage, shape))
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
