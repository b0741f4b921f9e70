//! Times the quantized matmul kernels alone: `cargo run --release -p rustformers-core
//! --example qmatmul_bench -- [ROWS COLS M]` (default: SmolLM2's 1536×576 FFN, m = 1).
//! Prints GB/s of weight read and GMAC/s per instruction set, then f32 (gemm blocks) and the bf16
//! kernel's paths (scalar, AVX512-BF16, AMX).

use std::time::Instant;

use rustformers_core::candle_core::quantized::{GgmlDType, QTensor};
use rustformers_core::candle_core::{Device, Tensor};
use rustformers_core::kernels::bf16::{self, PackedBf16, Path};
use rustformers_core::kernels::qmatmul::{matmul, matmul_amx, matmul_bf16, PackedQ, QFormat};
use rustformers_core::kernels::Isa;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rows, cols, m) = match args[..] {
        [r, c, m] => (r, c, m),
        _ => (1536, 576, 1),
    };
    let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).expect("weight");
    let x: Vec<f32> = (0..m * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    // `BENCH_ONLY=amx` times the bf16 AMX path alone (for a profiler).
    let only_amx = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "amx");
    for (t, f) in [
        (GgmlDType::Q4_1, QFormat::Q4_1),
        (GgmlDType::Q8_0, QFormat::Q8_0),
        (GgmlDType::Q2K, QFormat::Q2K),
        (GgmlDType::Q3K, QFormat::Q3K),
        (GgmlDType::Q4K, QFormat::Q4K),
        (GgmlDType::Q5K, QFormat::Q5K),
        (GgmlDType::Q6K, QFormat::Q6K),
    ] {
        if only_amx {
            break;
        }
        if !cols.is_multiple_of(f.block_values()) {
            println!(
                "{f:?}: rows of {cols} are not whole blocks of {}",
                f.block_values()
            );
            continue;
        }
        let q = QTensor::quantize(&w, t).expect("quantize");
        if f.is_k() {
            // candle's own kernel for the same tensor (what ran K-quants before).
            use rustformers_core::candle_core::Module;
            let qm = rustformers_core::candle_core::quantized::QMatMul::from_qtensor(
                QTensor::quantize(&w, t).expect("quantize"),
            )
            .expect("qmatmul");
            let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).expect("input");
            let iters = (2_000_000_000 / (rows * cols * m)).clamp(3, 20_000);
            let t0 = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(qm.forward(&xt).expect("candle matmul"));
            }
            let s = t0.elapsed().as_secs_f64() / iters as f64;
            println!(
                "{f:?} candle [{rows}x{cols}] m={m}: {:.1} us, {:.2} GMAC/s",
                s * 1e6,
                (rows * cols * m) as f64 / s / 1e9
            );
        }
        let p = PackedQ::from_ggml(f, rows, cols, &q.data().expect("data")).expect("pack");
        for isa in Isa::all_available() {
            let iters = (2_000_000_000 / (rows * cols * m)).clamp(3, 20_000);
            let t0 = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(matmul(&p, &x, m, isa).expect("matmul"));
            }
            let s = t0.elapsed().as_secs_f64() / iters as f64;
            println!(
                "{f:?} {isa:?} [{rows}x{cols}] m={m}: {:.1} us, {:.2} GB/s, {:.2} GMAC/s",
                s * 1e6,
                p.size_in_bytes() as f64 / s / 1e9,
                (rows * cols * m) as f64 / s / 1e9
            );
        }
        type Bf16Path = fn(&PackedQ, &[f32], usize) -> Option<Result<Vec<f32>, String>>;
        for (name, path) in [
            ("AVX512-BF16", matmul_bf16 as Bf16Path),
            ("AMX-bf16", matmul_amx),
        ] {
            if path(&p, &x, m).is_none() {
                continue;
            }
            let iters = (2_000_000_000 / (rows * cols * m)).clamp(3, 20_000);
            let t0 = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(path(&p, &x, m));
            }
            let s = t0.elapsed().as_secs_f64() / iters as f64;
            println!(
                "{f:?} {name} [{rows}x{cols}] m={m}: {:.1} us, {:.2} GB/s, {:.2} GMAC/s",
                s * 1e6,
                p.size_in_bytes() as f64 / s / 1e9,
                (rows * cols * m) as f64 / s / 1e9
            );
        }
    }
    let wv = w
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("weight values");
    if !only_amx {
        // f32: gemm per column block on the pool (the f32 linear layers' path).
        let iters = (2_000_000_000 / (rows * cols * m)).clamp(3, 20_000);
        let t0 = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(
                rustformers_core::kernels::gemv::matmul_blocks(&wv, rows, cols, &x, m, None)
                    .expect("matmul"),
            );
        }
        let s = t0.elapsed().as_secs_f64() / iters as f64;
        println!(
            "f32 gemm blocks [{rows}x{cols}] m={m}: {:.1} us, {:.2} GMAC/s",
            s * 1e6,
            (rows * cols * m) as f64 / s / 1e9
        );
    }
    let p = PackedBf16::from_f32(rows, cols, &wv).expect("pack");
    for path in [Path::Scalar, Path::Avx512, Path::Amx] {
        if !path.available() || (only_amx && path != Path::Amx) {
            continue;
        }
        let iters = (2_000_000_000 / (rows * cols * m)).clamp(3, 20_000);
        let iters = if only_amx { iters * 50 } else { iters };
        let iters = if path == Path::Scalar {
            iters.div_ceil(20)
        } else {
            iters
        };
        let t0 = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(bf16::matmul_on(&p, &x, m, None, path).expect("matmul"));
        }
        let s = t0.elapsed().as_secs_f64() / iters as f64;
        println!(
            "bf16 {path:?} [{rows}x{cols}] m={m}: {:.1} us, {:.2} GB/s, {:.2} GMAC/s",
            s * 1e6,
            (rows * cols * 2) as f64 / s / 1e9,
            (rows * cols * m) as f64 / s / 1e9
        );
    }
}
