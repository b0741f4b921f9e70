//! f32 products `y = x Wᵀ (+ b) (+ residual)`, GELU optionally applied to each block of
//! outputs as it is written, with the weight `W [n, k]` packed once, at load, into
//! panels of [`NR`] output columns. Panel `j` holds, for each input index `p`, the
//! weights `W[32j .. 32j + 32, p]` side by side (64-byte aligned, zeros past `n`).
//!
//! The AVX-512 kernel keeps a block of up to [`MR`] rows × 32 columns of sums in
//! registers (24 of the 32 vector registers), and for each input index broadcasts one
//! input value per row against two weight vectors (two input indices per loop turn, so
//! that the row addresses are computed half as often). Tasks on the pool own whole
//! panels (output columns), so each output is written by one task; a task runs chunks
//! of [`MC`] input rows (kept in L2) against each of its panels. gemm (candle's)
//! instead packs both operands on every call; MiniLM's embeddings spent 6% of a run in
//! its packing.
//!
//! Layout and blocking follow the usual register-blocked GEMM design (Goto and van de
//! Geijn, "Anatomy of High-Performance Matrix Multiplication", 2008).

pub use super::Extras;
use super::{pool::Pool, Isa, OutPtr};

/// Output columns per panel: two AVX-512 vectors.
pub const NR: usize = 32;
/// Rows of outputs per kernel call.
const MR: usize = 12;
/// Input indices per pass over a panel. Passes of 256 (a panel slice that fits L1)
/// measured 10–15% slower on MiniLM's shapes than one pass over k ≤ 1536: the sums
/// stored and loaded again between passes cost more than the weights streamed from L2.
const KC: usize = 2048;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([f32; 16]);

/// A weight `[n, k]` packed into panels of [`NR`] columns (see the module docs).
pub struct PackedF32 {
    n: usize,
    k: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32 [{}, {}]", self.n, self.k)
    }
}

impl PackedF32 {
    /// Packs the row-major weight `w` (`n` rows of `k` values; the rows are the output
    /// columns of `x Wᵀ`).
    pub fn from_rows(n: usize, k: usize, w: &[f32]) -> Result<Self, String> {
        if n.checked_mul(k) != Some(w.len()) {
            return Err(format!(
                "packing an f32 weight: {} values for [{n}, {k}]",
                w.len()
            ));
        }
        let panels = n.div_ceil(NR);
        let mut lines = vec![Line([0.0; 16]); panels * k * (NR / 16)];
        let ptr = OutPtr(lines.as_mut_ptr().cast::<f32>());
        let fill = |jp: usize| {
            let cols = NR.min(n - jp * NR);
            for jj in 0..cols {
                let src = &w[(jp * NR + jj) * k..][..k];
                for (p, v) in src.iter().enumerate() {
                    // SAFETY: (jp·k + p)·NR + jj < panels·k·NR, the buffer's length;
                    // panel jp is this task's alone and the buffer outlives the loop.
                    unsafe { *ptr.at((jp * k + p) * NR + jj) = *v };
                }
            }
        };
        let pool = Pool::global();
        if pool.threads() > 1 && n * k >= 1 << 16 {
            pool.run(panels, &fill);
        } else {
            (0..panels).for_each(fill);
        }
        Ok(Self { n, k, lines })
    }

    /// Output columns (`n`).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input size (`k`).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// The packed values: panel `jp` starts at `jp · k · NR`.
    fn values(&self) -> &[f32] {
        // SAFETY: a `Line` is 16 f32 without padding (repr(C), 64 bytes).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 16) }
    }

    /// The weight back in row-major `[n, k]` (for paths that need it: other devices,
    /// saving).
    pub fn to_rows(&self) -> Vec<f32> {
        let v = self.values();
        let mut w = vec![0f32; self.n * self.k];
        for (j, row) in w.chunks_exact_mut(self.k.max(1)).enumerate().take(self.n) {
            let (jp, jj) = (j / NR, j % NR);
            for (p, o) in row.iter_mut().enumerate() {
                *o = v[(jp * self.k + p) * NR + jj];
            }
        }
        w
    }
}

/// `x [m, k] · Wᵀ` plus `extras`, `[m, n]` row-major, on the pool.
pub fn matmul(
    w: &PackedF32,
    x: &[f32],
    m: usize,
    extras: Extras,
    isa: Isa,
) -> Result<Vec<f32>, String> {
    let (n, k) = (w.n, w.k);
    if m.checked_mul(k) != Some(x.len()) {
        return Err(format!(
            "f32 matmul: input of {} values for [{m}, {k}]",
            x.len()
        ));
    }
    if extras.bias.is_some_and(|b| b.len() != n) {
        return Err(format!("f32 matmul: a bias of {n} values expected"));
    }
    if extras
        .residual
        .is_some_and(|r| Some(r.len()) != m.checked_mul(n))
    {
        return Err(format!(
            "f32 matmul: a residual of {m} rows of {n} expected"
        ));
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let ptr = OutPtr(out.as_mut_ptr());
    let panels = n.div_ceil(NR);
    let pool = Pool::global();
    // Few rows: many small tasks, for balance. Many rows: about two tasks per thread,
    // so that each task's block of input rows in L2 serves several panels.
    let per_task = if m <= MC {
        panels / (pool.threads() * 8)
    } else {
        panels / (pool.threads() * 2)
    }
    .max(1);
    let tasks = panels.div_ceil(per_task);
    let task = |t: usize| {
        let first = t * per_task;
        // SAFETY: columns of panels first.. are this task's alone; `out` has room for
        // [m, n] and outlives the loop; the operands' sizes are checked above.
        unsafe {
            task_panels(
                w,
                first..(first + per_task).min(panels),
                x,
                m,
                extras,
                ptr,
                isa,
            )
        };
    };
    if pool.threads() > 1 && tasks > 1 && m * n * k >= 1 << 15 {
        pool.run(tasks, &task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: every panel's task wrote all m rows of its columns (the first pass over
    // the input indices stores every output, also when k is 0).
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// The candle op of a packed f32 layer: `x [..., k]` (f32) → `[..., n]` (f32).
pub type F32MatMulOp = super::LinearOp<PackedF32>;

impl super::PackedLinear for PackedF32 {
    const OP: &'static str = "rustformers-f32-matmul";
    const OP_RESIDUAL: &'static str = "rustformers-f32-matmul-residual";
    const WHAT: &'static str = "f32 matmul";

    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn product(&self, x: &[f32], m: usize, extras: Extras) -> Result<Vec<f32>, String> {
        matmul(self, x, m, extras, Isa::detect())
    }
}

/// Input rows per chunk: a chunk of the input stays in L2 while a task runs it against
/// each of its panels (72 rows measured best of 72, 144 and 288 on MiniLM's shapes).
const MC: usize = 72;

/// The outputs of `panels`, every row: for each pass over the input indices, for each
/// chunk of rows, for each panel, blocks of [`MR`] rows.
///
/// # Safety
/// `out` has room for `[m, n]`, the columns of `panels` of which are the caller's
/// alone; `x` is `[m, k]`, the extras of their stated sizes.
unsafe fn task_panels(
    w: &PackedF32,
    panels: std::ops::Range<usize>,
    x: &[f32],
    m: usize,
    extras: Extras,
    out: OutPtr,
    isa: Isa,
) {
    let (n, k) = (w.n, w.k);
    let passes = k.div_ceil(KC).max(1);
    let step = k.div_ceil(passes);
    let values = w.values();
    for chunk in (0..m).step_by(MC) {
        for pass in 0..passes {
            let p0 = (pass * step).min(k);
            let len = step.min(k - p0);
            for jp in panels.clone() {
                let j0 = jp * NR;
                let cols = NR.min(n - j0);
                let b = &values[(jp * k + p0) * NR..][..len * NR];
                let mut i = chunk;
                while i < (chunk + MC).min(m) {
                    let rows = MR.min(m - i);
                    let c = out.at(i * n + j0);
                    let start = if pass == 0 {
                        Start::Init {
                            bias: extras.bias.map(|b| &b[j0..j0 + cols]),
                            residual: extras.residual.map(|r| &r[i * n + j0..]),
                        }
                    } else {
                        Start::Load
                    };
                    block(isa, rows, &x[i * k + p0..], k, b, len, c, n, cols, start);
                    if extras.gelu && pass + 1 == passes {
                        // SAFETY: rows i..i + rows, columns j0..j0 + cols: this task's,
                        // written.
                        unsafe { super::activation::gelu_rows_in_place(c, n, rows, cols, isa) };
                    }
                    i += rows;
                }
            }
        }
    }
}

/// Where a kernel call's sums start.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// From the outputs (a later pass over the input indices).
    Load,
    /// From the bias (`cols` values) plus the residual (rows of stride `ldc`).
    Init {
        bias: Option<&'a [f32]>,
        residual: Option<&'a [f32]>,
    },
}

/// `rows` × `cols` outputs at `c` (row stride `ldc`): their start plus
/// `Σ_p a[r·lda + p] · b[p·NR + j]` for `p < kc`.
#[allow(clippy::too_many_arguments)]
fn block(
    isa: Isa,
    rows: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    start: Start,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        let mask = if cols >= NR {
            u32::MAX
        } else {
            (1u32 << cols) - 1
        };
        let (bias, res) = match start {
            Start::Load => (None, None),
            Start::Init { bias, residual } => (
                Some(bias.map_or(std::ptr::null(), |b| b.as_ptr())),
                residual.map(|r| r.as_ptr()),
            ),
        };
        let args = x86::Args {
            a: a.as_ptr(),
            lda,
            b: b.as_ptr(),
            kc,
            c,
            ldc,
            mask,
            bias,
            res,
        };
        // SAFETY: AVX-512 (`isa`); the caller's contract covers rows × cols at c, the
        // input rows (rows − 1)·lda + kc values from a, the panel slice kc·NR values.
        unsafe {
            match rows {
                12 => x86::block::<12, false>(args),
                11 => x86::block::<11, false>(args),
                10 => x86::block::<10, false>(args),
                9 => x86::block::<9, false>(args),
                8 => x86::block::<8, false>(args),
                7 => x86::block::<7, false>(args),
                6 => x86::block::<6, false>(args),
                5 => x86::block::<5, false>(args),
                4 => x86::block::<4, true>(args),
                3 => x86::block::<3, true>(args),
                2 => x86::block::<2, true>(args),
                _ => x86::block::<1, true>(args),
            }
        }
        return;
    }
    for r in 0..rows {
        for j in 0..cols {
            // SAFETY: (r, j) is inside the caller's block.
            let o = unsafe { &mut *c.add(r * ldc + j) };
            let mut s = match start {
                Start::Load => *o,
                Start::Init { bias, residual } => {
                    bias.map_or(0.0, |b| b[j]) + residual.map_or(0.0, |res| res[r * ldc + j])
                }
            };
            for p in 0..kc {
                s += a[r * lda + p] * b[p * NR + j];
            }
            *o = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::NR;

    /// One kernel call's operands (see [`super::block`]); `bias: Some` starts the sums
    /// from the bias (null: zero) plus the residual, `None` from the outputs.
    pub(super) struct Args {
        pub a: *const f32,
        pub lda: usize,
        pub b: *const f32,
        pub kc: usize,
        pub c: *mut f32,
        pub ldc: usize,
        pub mask: u32,
        pub bias: Option<*const f32>,
        pub res: Option<*const f32>,
    }

    /// The starting sums of `R` rows.
    #[inline(always)]
    unsafe fn start<const R: usize>(s: &Args, m0: __mmask16, m1: __mmask16) -> [[__m512; 2]; R] {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        match s.bias {
            None => {
                for (r, a) in acc.iter_mut().enumerate() {
                    let row = s.c.add(r * s.ldc);
                    a[0] = _mm512_maskz_loadu_ps(m0, row);
                    a[1] = _mm512_maskz_loadu_ps(m1, row.add(16));
                }
            }
            Some(bias) => {
                let (b0, b1) = if bias.is_null() {
                    (_mm512_setzero_ps(), _mm512_setzero_ps())
                } else {
                    (
                        _mm512_maskz_loadu_ps(m0, bias),
                        _mm512_maskz_loadu_ps(m1, bias.add(16)),
                    )
                };
                for (r, a) in acc.iter_mut().enumerate() {
                    a[0] = b0;
                    a[1] = b1;
                    if let Some(res) = s.res {
                        let row = res.add(r * s.ldc);
                        a[0] = _mm512_add_ps(a[0], _mm512_maskz_loadu_ps(m0, row));
                        a[1] = _mm512_add_ps(a[1], _mm512_maskz_loadu_ps(m1, row.add(16)));
                    }
                }
            }
        }
        acc
    }

    #[inline(always)]
    unsafe fn store<const R: usize>(
        s: &Args,
        acc: &[[__m512; 2]; R],
        m0: __mmask16,
        m1: __mmask16,
    ) {
        for (r, a) in acc.iter().enumerate() {
            let row = s.c.add(r * s.ldc);
            _mm512_mask_storeu_ps(row, m0, a[0]);
            _mm512_mask_storeu_ps(row.add(16), m1, a[1]);
        }
    }

    /// `R` rows. With `SPLIT` (few rows: 1 to 4) the odd input indices go into a second
    /// set of sums, so that enough independent chains of multiply-adds hide their
    /// latency; without it (5 to 12 rows) one set, 2·R registers.
    ///
    /// # Safety
    /// AVX-512 F; see [`super::block`] for the operands.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const R: usize, const SPLIT: bool>(s: Args) {
        let (m0, m1) = (s.mask as __mmask16, (s.mask >> 16) as __mmask16);
        let mut acc = start::<R>(&s, m0, m1);
        let mut odd = [[_mm512_setzero_ps(); 2]; R];
        let rows: [*const f32; R] = std::array::from_fn(|r| s.a.add(r * s.lda));
        let mut p = 0;
        while p + 2 <= s.kc {
            let w = s.b.add(p * NR);
            let (w0, w1) = (_mm512_load_ps(w), _mm512_load_ps(w.add(16)));
            let (v0, v1) = (_mm512_load_ps(w.add(32)), _mm512_load_ps(w.add(48)));
            for ((a, o), row) in acc.iter_mut().zip(odd.iter_mut()).zip(&rows) {
                let xr = row.add(p);
                let x = _mm512_set1_ps(*xr);
                a[0] = _mm512_fmadd_ps(x, w0, a[0]);
                a[1] = _mm512_fmadd_ps(x, w1, a[1]);
                let y = _mm512_set1_ps(*xr.add(1));
                let o = if SPLIT { o } else { a };
                o[0] = _mm512_fmadd_ps(y, v0, o[0]);
                o[1] = _mm512_fmadd_ps(y, v1, o[1]);
            }
            p += 2;
        }
        if p < s.kc {
            let w = s.b.add(p * NR);
            let (w0, w1) = (_mm512_load_ps(w), _mm512_load_ps(w.add(16)));
            for (a, row) in acc.iter_mut().zip(&rows) {
                let x = _mm512_set1_ps(*row.add(p));
                a[0] = _mm512_fmadd_ps(x, w0, a[0]);
                a[1] = _mm512_fmadd_ps(x, w1, a[1]);
            }
        }
        if SPLIT {
            for (a, o) in acc.iter_mut().zip(&odd) {
                a[0] = _mm512_add_ps(a[0], o[0]);
                a[1] = _mm512_add_ps(a[1], o[1]);
            }
        }
        store::<R>(&s, &acc, m0, m1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32) * seed).sin()).collect()
    }

    /// Every row count of the kernel, partial panels, several passes over the input
    /// indices, each start (bias, residual, both) and GELU, on every instruction set,
    /// against the f64 product.
    #[test]
    fn every_shape_and_extra_equals_the_f64_product() {
        for (m, n, k) in [
            (1, 9, 40),
            (13, 70, 300),
            (25, 32, 600),
            (7, 64, 17),
            (3, 5, 0),
            (48, 100, 384),
            // More input indices than one pass takes: later passes start from the
            // stored sums.
            (14, 40, 2 * KC + 5),
        ] {
            let w = values(n * k, 0.37);
            let x = values(m * k, 0.11);
            let bias = values(n, 0.7);
            let residual = values(m * n, 0.23);
            let packed = PackedF32::from_rows(n, k, &w).unwrap();
            assert_eq!(packed.to_rows(), w);
            for isa in Isa::all_available() {
                for (b, r, gelu) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, false),
                    (true, true, true),
                    (true, false, true),
                ] {
                    let extras = Extras {
                        bias: b.then_some(&bias[..]),
                        residual: r.then_some(&residual[..]),
                        gelu,
                    };
                    let y = matmul(&packed, &x, m, extras, isa).unwrap();
                    assert_eq!(y.len(), m * n);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want: f64 = (0..k)
                                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                                .sum();
                            if b {
                                want += bias[j] as f64;
                            }
                            if r {
                                want += residual[i * n + j] as f64;
                            }
                            if gelu {
                                want = 0.5 * want * (1.0 + libm_erf(want / 2f64.sqrt()));
                            }
                            let got = y[i * n + j] as f64;
                            assert!(
                                (got - want).abs() < 2e-4 * (1.0 + want.abs()),
                                "{isa:?} [{m},{n},{k}] {b} {r} {gelu} ({i},{j}) {got} {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// erf to double precision (Abramowitz–Stegun 7.1.26 is too coarse here): the
    /// series for small |x|, the continued fraction beyond.
    fn libm_erf(x: f64) -> f64 {
        let t = x.abs();
        let v = if t < 2.5 {
            let mut sum = t;
            let mut term = t;
            let mut i = 0.0;
            loop {
                i += 1.0;
                term *= -t * t / i;
                let add = term / (2.0 * i + 1.0);
                sum += add;
                if add.abs() < 1e-17 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for i in (1..60).rev() {
                f = (i as f64 / 2.0) / (t + f);
            }
            1.0 - (-t * t).exp() / ((t + f) * std::f64::consts::PI.sqrt())
        };
        v.copysign(x)
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(PackedF32::from_rows(2, 3, &[0.0; 5]).is_err());
        let p = PackedF32::from_rows(2, 3, &[0.0; 6]).unwrap();
        assert!(matmul(&p, &[0.0; 5], 2, Extras::default(), Isa::Scalar).is_err());
        let bias = [0.0; 3];
        let e = Extras {
            bias: Some(&bias),
            ..Extras::default()
        };
        assert!(matmul(&p, &[0.0; 6], 2, e, Isa::Scalar).is_err());
        let res = [0.0; 3];
        let e = Extras {
            residual: Some(&res),
            ..Extras::default()
        };
        assert!(matmul(&p, &[0.0; 6], 2, e, Isa::Scalar).is_err());
    }

    /// Timing against gemm (not a test: `cargo test --release -p rustformers-core
    /// sgemm_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn sgemm_speed() {
        for (m, n, k) in [(736, 384, 384), (736, 1536, 384), (736, 384, 1536)] {
            let w = values(n * k, 0.37);
            let x = values(m * k, 0.11);
            let packed = PackedF32::from_rows(n, k, &w).unwrap();
            let isa = Isa::detect();
            let reps = 40;
            let mut best = [f64::MAX; 2];
            for _ in 0..3 {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(matmul(&packed, &x, m, Extras::default(), isa).unwrap());
                }
                best[0] = best[0].min(t.elapsed().as_secs_f64() / reps as f64);
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(
                        crate::kernels::gemv::matmul_blocks(&w, n, k, &x, m, None).unwrap(),
                    );
                }
                best[1] = best[1].min(t.elapsed().as_secs_f64() / reps as f64);
            }
            let macs = (m * n * k) as f64;
            println!(
                "[{m},{n},{k}] packed {:.3} ms {:.0} GMAC/s | gemm {:.3} ms {:.0} GMAC/s",
                best[0] * 1e3,
                macs / best[0] / 1e9,
                best[1] * 1e3,
                macs / best[1] / 1e9
            );
        }
    }
}
