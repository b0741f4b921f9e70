//! `y = x Wᵀ` with `W` stored in bf16 and `x`, `y` in f32: the CPU path for models loaded
//! with `dtype = bf16` (candle has no CPU bf16 matmul). The activations are rounded to
//! bf16 and the products accumulate in f32, as oneDNN's bf16 matmul does for PyTorch; the
//! output stays f32 (PyTorch rounds it to bf16).
//!
//! The weight is stored in blocks of 16 output columns × 32 inputs, each block laid out
//! as AMX's `tdpbf16ps` reads its second operand: 16 rows of (column, input pair). Three
//! paths read it:
//! - AMX (`tdpbf16ps`, 16×16×32 per instruction) for 16 input rows or more, where the CPU
//!   has AMX-BF16 and Linux grants the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`);
//! - AVX512-BF16 (`vdpbf16ps`): one input pair broadcast against 16 columns' pairs, so
//!   each lane accumulates one output column with no horizontal sums;
//! - a plain loop elsewhere, with the same sums up to float rounding.

use std::sync::OnceLock;

use candle_core::{CpuStorage, Layout, Shape};
use half::bf16;

use super::activation::gelu_rows_in_place;
use super::pool::Pool;
use super::{Isa, OutPtr};

/// Output columns per weight block.
pub(crate) const NB: usize = 16;
/// Inputs per weight block.
pub(crate) const KB: usize = 32;
/// Values per weight block.
pub(crate) const BLOCK: usize = NB * KB;

/// One 64-byte cache line of bf16 values.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([bf16; KB]);

/// bf16 values in a buffer aligned to cache lines: AMX loads tiles in rows of 64 bytes,
/// and from a buffer malloc aligns to 16 bytes every row straddles two lines. (An
/// unrelated change of allocation pattern moved embeddings-bf16 by 10% through this.)
#[derive(Debug, Clone)]
pub(crate) struct AlignedBf16 {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBf16 {
    /// `len` zeros.
    fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([bf16::ZERO; KB]); len.div_ceil(KB)],
            len,
        }
    }

    /// Room for `len` values (a multiple of [`KB`]), not yet written: write them all
    /// through [`Self::as_mut_ptr`], then call [`Self::assume_init`].
    fn uninit(len: usize) -> Self {
        Self {
            lines: Vec::with_capacity(len.div_ceil(KB)),
            len,
        }
    }

    fn as_mut_ptr(&mut self) -> *mut bf16 {
        self.lines.as_mut_ptr().cast()
    }

    /// # Safety
    /// All `len` values of a buffer from [`Self::uninit`] were written.
    unsafe fn assume_init(&mut self) {
        self.lines.set_len(self.len.div_ceil(KB))
    }
}

impl std::ops::Deref for AlignedBf16 {
    type Target = [bf16];
    fn deref(&self) -> &[bf16] {
        // SAFETY: a `Line` is 32 bf16 without padding (repr(C), 64 bytes), so the lines
        // are `lines.len() * KB >= len` initialised values in a row.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBf16 {
    fn deref_mut(&mut self) -> &mut [bf16] {
        // SAFETY: as for `deref`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

/// A weight `[rows, cols]` in bf16, in blocks of [`NB`] rows × [`KB`] columns (zero
/// padded), block `(rows / NB, cols / KB)` at `((r / NB) * kblocks + c / KB) * BLOCK`.
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    rows: usize,
    cols: usize,
    kblocks: usize,
    data: AlignedBf16,
}

impl PackedBf16 {
    /// Rounds an f32 weight (`rows * cols` values, row-major) to bf16 (nearest, ties to
    /// even) and packs it.
    pub fn from_f32(rows: usize, cols: usize, w: &[f32]) -> Result<Self, String> {
        if w.len() != rows * cols {
            return Err(format!(
                "bf16 weight [{rows}, {cols}] from {} values",
                w.len()
            ));
        }
        let kblocks = cols.div_ceil(KB);
        let mut p = Self {
            rows,
            cols,
            kblocks,
            data: AlignedBf16::zeroed(rows.div_ceil(NB) * kblocks * BLOCK),
        };
        // Column blocks (NB weight rows each) on the pool: each fills its own blocks.
        // A row is rounded at once (SIMD where it runs), then its pairs of values
        // scattered: pair (c, c + 1) of row r sits at `index(r, c)`.
        let ptr = Bf16Ptr(p.data.as_mut_ptr());
        let simd = has_avx512_bf16();
        let fill = |nb: usize| {
            let mut row16 = vec![bf16::ZERO; cols.next_multiple_of(2)];
            for r in nb * NB..((nb + 1) * NB).min(rows) {
                to_bf16(&w[r * cols..][..cols], &mut row16[..cols], simd);
                for (pair, v) in row16.chunks_exact(2).enumerate() {
                    let i = Self::index_in(kblocks, r, 2 * pair);
                    // SAFETY: `i` and `i + 1` are inside column block nb's part of
                    // `data` (rows r / NB = nb), written by this task alone while `p`
                    // lives; a padding value past `cols` is zero.
                    unsafe {
                        *ptr.at(i) = v[0];
                        *ptr.at(i + 1) = v[1];
                    }
                }
            }
        };
        let blocks = rows.div_ceil(NB);
        if rows * cols < 1 << 16 || blocks <= 1 {
            (0..blocks).for_each(fill);
        } else {
            Pool::global().run(blocks, &fill);
        }
        Ok(p)
    }

    fn index_in(kblocks: usize, r: usize, c: usize) -> usize {
        ((r / NB) * kblocks + c / KB) * BLOCK + (c % KB) / 2 * (2 * NB) + (r % NB) * 2 + c % 2
    }

    fn index(&self, r: usize, c: usize) -> usize {
        Self::index_in(self.kblocks, r, c)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The weight back as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(self.data[self.index(r, c)].to_f32());
            }
        }
        out
    }
}

/// A weight the bf16 paths (AMX, AVX512-BF16) read as column blocks: `kblocks`
/// consecutive blocks of [`NB`] columns × [`KB`] inputs each, in `tdpbf16ps`'s layout.
pub(crate) trait ColumnBlocks: Sync {
    /// `[rows, cols]` of the weight.
    fn shape(&self) -> (usize, usize);
    /// Input blocks per column block (`cols / KB`, rounded up).
    fn kblocks(&self) -> usize;
    /// The blocks of column block `nb`: borrowed where they are stored so, else written
    /// into `scratch` (zero for rows past the weight's).
    fn column_blocks<'a>(&'a self, nb: usize, scratch: &'a mut Vec<bf16>) -> &'a [bf16];
    /// Whether [`Self::column_blocks`] borrows stored blocks (then reading them again
    /// costs nothing more than the read).
    fn stored(&self) -> bool {
        false
    }
}

impl ColumnBlocks for PackedBf16 {
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn kblocks(&self) -> usize {
        self.kblocks
    }

    fn column_blocks<'a>(&'a self, nb: usize, _scratch: &'a mut Vec<bf16>) -> &'a [bf16] {
        let start = nb * self.kblocks * BLOCK;
        &self.data[start..start + self.kblocks * BLOCK]
    }

    fn stored(&self) -> bool {
        true
    }
}

/// Writes 32 consecutive inputs (`vals`, one input block) of weight row `r` (within its
/// column block) into `block` (one [`BLOCK`] in `tdpbf16ps`'s layout).
#[inline(always)]
pub(crate) fn scatter_row(vals: &[bf16; KB], r: usize, block: &mut [bf16]) {
    for p in 0..KB / 2 {
        block[p * 2 * NB + 2 * r] = vals[2 * p];
        block[p * 2 * NB + 2 * r + 1] = vals[2 * p + 1];
    }
}

/// Whether this CPU runs `vdpbf16ps` (and `RUSTFORMERS_ISA` does not cap it).
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::Isa::detect() == super::Isa::Avx512Vnni && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether AMX-BF16 runs here: the CPU has it, Linux granted this process the tile
/// state, `RUSTFORMERS_ISA` does not cap the instruction set and `RUSTFORMERS_AMX` is not
/// `0`. Asked once; a refusal leaves the AVX-512 path.
pub fn has_amx_bf16() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        std::env::var("RUSTFORMERS_AMX").ok().as_deref() != Some("0")
            && has_avx512_bf16()
            && amx::available()
    })
}

/// Which kernel a product runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Scalar,
    Avx512,
    Amx,
}

impl Path {
    /// The fastest path for `m` input rows on this machine.
    pub fn best(m: usize) -> Path {
        if m >= NB && has_amx_bf16() {
            Path::Amx
        } else if has_avx512_bf16() {
            Path::Avx512
        } else {
            Path::Scalar
        }
    }

    /// Whether this machine runs the path.
    pub fn available(self) -> bool {
        match self {
            Path::Scalar => true,
            Path::Avx512 => has_avx512_bf16(),
            Path::Amx => has_amx_bf16(),
        }
    }
}

/// Input rows × column blocks one SIMD call computes at most.
const TR: usize = 4;
const TC: usize = 4;

/// Outputs of one SIMD call: `[row][column]` for `TR` rows × `TC * NB` columns.
type Acc = [[f32; TC * NB]; TR];

/// Plain path: rows `m0..m0 + mr` against the column blocks `cols` (each `kblocks`
/// blocks, [`ColumnBlocks::column_blocks`]; padded columns included).
fn tile_scalar(cols: &[&[bf16]], x: &[bf16], kpad: usize, m0: usize, mr: usize, out: &mut Acc) {
    for row in out.iter_mut() {
        row.fill(0.0);
    }
    for kb in 0..kpad / KB {
        for (c, col) in cols.iter().enumerate() {
            let blk = &col[kb * BLOCK..(kb + 1) * BLOCK];
            for (r, orow) in out.iter_mut().enumerate().take(mr) {
                let xr = &x[(m0 + r) * kpad + kb * KB..][..KB];
                for (p, pair) in blk.chunks_exact(2 * NB).enumerate() {
                    let (x0, x1) = (xr[2 * p].to_f32(), xr[2 * p + 1].to_f32());
                    for j in 0..NB {
                        orow[c * NB + j] +=
                            x0 * pair[2 * j].to_f32() + x1 * pair[2 * j + 1].to_f32();
                    }
                }
            }
        }
    }
}

/// `dst = src` rounded to bf16 (nearest, ties to even; `simd` only where
/// [`has_avx512_bf16`] holds).
pub(crate) fn to_bf16(src: &[f32], dst: &mut [bf16], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is set only where AVX512-BF16 runs.
        return unsafe { x86::to_bf16(src, dst) };
    }
    let _ = simd;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(*s);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Acc, BLOCK, KB, NB};
    use half::bf16;

    /// `dst = src` in bf16, 16 values per `vcvtneps2bf16`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn to_bf16(src: &[f32], dst: &mut [bf16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i < n {
            let left = n - i;
            let mask: __mmask16 = if left >= 16 {
                u16::MAX
            } else {
                (1u16 << left) - 1
            };
            let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
            let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i) as *mut i16, mask, b);
            i += 16;
        }
    }

    /// `out[r·n + j] += src[r·n + j]` for `r < rows`, `j < cols`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `out` holds those values, `src` has at least
    /// `(rows - 1)·n + cols` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_rows(out: *mut f32, n: usize, src: &[f32], rows: usize, cols: usize) {
        for r in 0..rows {
            let (o, s) = (out.add(r * n), src.as_ptr().add(r * n));
            let mut j = 0;
            while j < cols {
                let mask = super::super::fused::tail_mask(cols - j);
                let v = _mm512_add_ps(
                    _mm512_maskz_loadu_ps(mask, o.add(j)),
                    _mm512_maskz_loadu_ps(mask, s.add(j)),
                );
                _mm512_mask_storeu_ps(o.add(j), mask, v);
                j += 16;
            }
        }
    }

    /// One row of `src` (`KB` values per input block, the last block zero padded) into
    /// `dst`: input block `kb` at `dst + kb * step` (32 bf16 each, one 64-byte store).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/BF16; `dst + kb * step` has room for [`KB`] values for
    /// every input block of `src`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn row_to_tiles(src: &[f32], dst: *mut bf16, step: usize) {
        let n = src.len();
        let p = src.as_ptr();
        let mut kb = 0;
        while kb * KB < n {
            let i = kb * KB;
            let mask = |at: usize| super::super::fused::tail_mask(n.saturating_sub(at));
            let lo = _mm512_maskz_loadu_ps(mask(i), p.add(i));
            let hi = _mm512_maskz_loadu_ps(mask(i + 16), p.add((i + 16).min(n)));
            // Lanes 0-15 from `lo`, 16-31 from `hi`.
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.add(kb * step) as *mut _, v);
            kb += 1;
        }
    }

    /// Rows `m0..m0 + R` against the `C` column blocks `cols` (each `kpad / KB` blocks).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/BF16; rows `m0..m0 + R` of `x` (each `kpad` values)
    /// exist and each of `cols[..C]` holds `kpad / KB` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        cols: &[&[bf16]],
        x: &[bf16],
        kpad: usize,
        m0: usize,
        out: &mut Acc,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let xp = x.as_ptr().add(m0 * kpad);
        for kb in 0..kpad / KB {
            let mut wp = [std::ptr::null::<bf16>(); C];
            for (c, p) in wp.iter_mut().enumerate() {
                *p = cols[c].as_ptr().add(kb * BLOCK);
            }
            for p in 0..KB / 2 {
                let mut wv = [_mm512_setzero_si512(); C];
                for (c, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(wp[c].add(p * 2 * NB) as *const __m512i);
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let pair = (xp.add(r * kpad + kb * KB + 2 * p) as *const i32).read_unaligned();
                    let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    for (c, a) in row.iter_mut().enumerate() {
                        *a = _mm512_dpbf16_ps(
                            *a,
                            xv,
                            std::mem::transmute::<__m512i, __m512bh>(wv[c]),
                        );
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                _mm512_storeu_ps(out[r][c * NB..].as_mut_ptr(), *a);
            }
        }
    }
}

/// AMX: tiles of 16 input rows × 16 columns accumulate in tile registers.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;

    use super::{BLOCK, KB};
    use half::bf16;

    /// CPUID.(7,0):EDX bit 24 (AMX-TILE) and bit 22 (AMX-BF16), then Linux's permission
    /// for the tile data state (process-wide; `arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`).
    pub(super) fn available() -> bool {
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 {
            return false;
        }
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: the arch_prctl system call with integer arguments; it reads no memory.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    /// Palette 1, tiles 0–7 each 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// Holds the tile configuration of this thread; released on drop.
    pub(super) struct Tiles(());

    impl Tiles {
        /// # Safety
        /// [`available`] returned true.
        pub(super) unsafe fn configure() -> Tiles {
            let mut cfg = TileConfig([0; 64]);
            cfg.0[0] = 1;
            for t in 0..8 {
                cfg.0[16 + 2 * t] = 64;
                cfg.0[48 + t] = 16;
            }
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            Tiles(())
        }

        /// Four 16×16 f32 output tiles, `[i][j]` = `bias[16j..16j + 16]` (every row) +
        /// row tile `i` of `a` · column block `j` of `b`, over `kblocks` input blocks.
        /// Output tile `[i][j]` is stored at `c[i]` plus `j` × 64 bytes, rows `stride`
        /// bytes apart.
        ///
        /// `a` holds the two row tiles in [`amx_rows`](super::amx_rows)'s order (per input
        /// block: tile 0, then tile 1, each 16 rows × [`KB`] values); `b[j]` holds
        /// `kblocks` consecutive [`BLOCK`]s.
        ///
        /// # Safety
        /// The pointers cover what is described above.
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn block_2x2(
            &self,
            a: *const bf16,
            b: [*const bf16; 2],
            kblocks: usize,
            bias: *const f32,
            c: [*mut f32; 2],
            stride: usize,
        ) {
            asm!(
                // Stride 0: every row of an output tile starts as the same 16 values.
                "tileloadd tmm0, [{p} + {z}*1]",
                "tileloadd tmm1, [{p} + {z}*1 + 64]",
                "tileloadd tmm2, [{p} + {z}*1]",
                "tileloadd tmm3, [{p} + {z}*1 + 64]",
                "test {n}, {n}",
                "jz 3f",
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a} + {s}*1 + {tile}]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, {ka}",
                "add {b0}, {tile}",
                "add {b1}, {tile}",
                "dec {n}",
                "jnz 2b",
                "3:",
                "tilestored [{c} + {sc}*1], tmm0",
                "tilestored [{c} + {sc}*1 + 64], tmm1",
                "tilestored [{c2} + {sc}*1], tmm2",
                "tilestored [{c2} + {sc}*1 + 64], tmm3",
                p = in(reg) bias,
                z = in(reg) 0usize,
                a = inout(reg) a => _,
                b0 = inout(reg) b[0] => _,
                b1 = inout(reg) b[1] => _,
                n = inout(reg) kblocks => _,
                s = in(reg) KB * 2,
                tile = const BLOCK * 2,
                ka = const 2 * BLOCK * 2,
                c = in(reg) c[0],
                c2 = in(reg) c[1],
                sc = in(reg) stride,
                options(nostack),
            );
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: this thread configured the tiles (`configure`).
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod amx {
    pub(super) fn available() -> bool {
        false
    }
}

/// `x [m, w.cols] · Wᵀ (+ bias)` → `[m, w.rows]` on the fastest path here.
pub fn matmul(
    w: &PackedBf16,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, String> {
    matmul_on(w, x, m, bias, Path::best(m))
}

/// [`matmul`] on a given path (one this machine runs, else the plain loop).
pub fn matmul_on(
    w: &PackedBf16,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    path: Path,
) -> Result<Vec<f32>, String> {
    matmul_epi_on(w, x, m, bias, Epilogue::default(), path)
}

/// [`matmul_on`], then the epilogue on every output: on AMX, on each block of outputs
/// as soon as it is written (still in L1), instead of passes of their own.
pub fn matmul_epi_on(
    w: &PackedBf16,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    epi: Epilogue,
    path: Path,
) -> Result<Vec<f32>, String> {
    let (n, k) = (w.rows, w.cols);
    if x.len() != m * k {
        return Err(format!(
            "bf16 matmul: input has {} values, expected {m} rows of {k}",
            x.len()
        ));
    }
    if bias.is_some_and(|b| b.len() != n) {
        return Err(format!("bf16 matmul: a bias of {n} values expected"));
    }
    if epi.residual.is_some_and(|r| r.len() != m * n) {
        return Err(format!(
            "bf16 matmul: a residual of {m} rows of {n} expected"
        ));
    }
    let path = if path.available() { path } else { Path::Scalar };
    if path == Path::Amx {
        return Ok(amx_product(w, x, m, bias, epi));
    }
    let mut y = simd_product(w, x, m, bias, path == Path::Avx512);
    if !epi.is_empty() {
        // SAFETY: `y` is m rows of n values, borrowed mutably here alone; the residual
        // holds m rows of n (checked above).
        unsafe { epi.apply(y.as_mut_ptr(), n, (0, 0), m, n, Isa::detect()) };
    }
    Ok(y)
}

/// `x` (`m` rows of `k`) in bf16, as `mpad` rows of `kpad` (zero padded).
fn bf16_rows(x: &[f32], m: usize, k: usize, mpad: usize, kpad: usize, simd: bool) -> Vec<bf16> {
    let mut xb = vec![bf16::ZERO; mpad * kpad];
    if k > 0 {
        for (dst, src) in xb.chunks_exact_mut(kpad).zip(x.chunks_exact(k).take(m)) {
            to_bf16(src, &mut dst[..k], simd);
        }
    }
    xb
}

/// The `[m, n]` output, column blocks split over the pool (in pairs, for AMX's 2×2
/// tiles; about four chunks per thread) once the product (`m·n·k` multiply-adds) is
/// large enough: `run(b0, b1, out)` writes column blocks `b0..b1` of every row.
fn split_columns(
    m: usize,
    n: usize,
    k: usize,
    run: impl Fn(usize, usize, OutPtr) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    split_columns_into(m, n, k, OutPtr(out.as_mut_ptr()), run);
    out
}

/// [`split_columns`] into a given `[m, n]` buffer.
fn split_columns_into(
    m: usize,
    n: usize,
    k: usize,
    ptr: OutPtr,
    run: impl Fn(usize, usize, OutPtr) + Sync,
) {
    let nblocks = n.div_ceil(NB);
    let pool = super::pool::Pool::global();
    if pool.threads() <= 1 || m * n * k < 1 << 18 {
        run(0, nblocks, ptr);
    } else {
        let per = nblocks
            .div_ceil(pool.threads() * 4)
            .max(1)
            .next_multiple_of(2);
        pool.run(nblocks.div_ceil(per), &|t| {
            let b0 = t * per;
            run(b0, (b0 + per).min(nblocks), ptr);
        });
    }
}

/// Rows of the activations per AMX step: two tiles of [`NB`].
const PAIR: usize = 2 * NB;

/// A bf16 buffer that pool tasks fill in disjoint parts.
#[derive(Clone, Copy)]
struct Bf16Ptr(*mut bf16);
// SAFETY: shared only by tasks that write disjoint parts of a live buffer (`amx_rows`).
unsafe impl Send for Bf16Ptr {}
unsafe impl Sync for Bf16Ptr {}

impl Bf16Ptr {
    fn at(self, i: usize) -> *mut bf16 {
        self.0.wrapping_add(i)
    }
}

/// What is done to each block of a product's outputs right after it is written (while
/// it is in L1): GELU, then a residual added.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// GELU (erf form) of the outputs.
    pub gelu: bool,
    /// `[m, n]` values added to the outputs last.
    pub residual: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    /// The same, for the rows of the output from `r0` on (rows `n` wide).
    fn rows_from(self, r0: usize, n: usize) -> Self {
        Self {
            residual: self.residual.map(|r| &r[(r0 * n).min(r.len())..]),
            ..self
        }
    }

    /// Applies it to `rows` rows of `cols` outputs at `out` (rows `n` apart), which
    /// are outputs `(r0.., c0..)` of the `[m, n]` product.
    ///
    /// # Safety
    /// Those outputs are valid and this call's alone; the residual, if any, holds the
    /// `[m, n]` values (`r0 + rows <= m`, `c0 + cols <= n`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn apply(
        &self,
        out: *mut f32,
        n: usize,
        (r0, c0): (usize, usize),
        rows: usize,
        cols: usize,
        isa: Isa,
    ) {
        if self.gelu {
            // SAFETY: the caller's contract.
            unsafe { gelu_rows_in_place(out, n, rows, cols, isa) };
        }
        if let Some(res) = self.residual {
            let src = &res[r0 * n + c0..];
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512Vnni && src.len() >= (rows - 1) * n + cols {
                // SAFETY: AVX-512 runs here (`isa`); `src` holds the rows (checked) and
                // `out` the outputs (the caller's contract).
                return unsafe { x86::add_rows(out, n, src, rows, cols) };
            }
            for r in 0..rows {
                // SAFETY: the caller's contract.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.add(r * n), cols) };
                for (d, v) in dst.iter_mut().zip(&src[r * n..][..cols]) {
                    *d += v;
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        !self.gelu && self.residual.is_none()
    }
}

/// `x` (`m` rows of `k`) rounded to bf16 in the order the AMX kernel reads it: rows in
/// pairs of 16-row tiles (the last pair zero padded), and for pair `p` and input block
/// `kb`, tile 0 then tile 1 at `((p * kblocks + kb) * 2 + t) * BLOCK`, each 16 rows of
/// [`KB`] values. Every tile is one contiguous kilobyte. Pairs are split over the pool.
fn amx_rows(x: &[f32], m: usize, k: usize, kblocks: usize) -> AlignedBf16 {
    let pairs = m.div_ceil(PAIR);
    let per_pair = kblocks * 2 * BLOCK;
    let mut xa = AlignedBf16::uninit(pairs * per_pair);
    let ptr = Bf16Ptr(xa.as_mut_ptr());
    // SAFETY: pair p's part of the capacity, written by its task alone.
    let fill = |p: usize| unsafe { fill_pair(x, m, k, kblocks, p, ptr.at(p * per_pair)) };
    let pool = super::pool::Pool::global();
    if pool.threads() <= 1 || m * k < 1 << 15 {
        (0..pairs).for_each(fill);
    } else {
        pool.run(pairs, &fill);
    }
    // SAFETY: `fill_pair` wrote every value of every pair; bf16 has no invalid bit
    // patterns.
    unsafe { xa.assume_init() };
    xa
}

/// Writes row pair `p` of `x` (`m` rows of `k`) in [`amx_rows`]'s order (rows past `m`
/// zero) at `dst`.
///
/// # Safety
/// `dst` is valid for `kblocks * 2 * BLOCK` writes that no one else makes meanwhile.
unsafe fn fill_pair(x: &[f32], m: usize, k: usize, kblocks: usize, p: usize, dst: *mut bf16) {
    for r in 0..PAIR {
        let (t, rr) = (r / NB, r % NB);
        // Row r of the pair, input block kb: at kb * 2 * BLOCK from here.
        let row = dst.wrapping_add(t * BLOCK + rr * KB);
        let i = p * PAIR + r;
        if i < m {
            let src = &x[i * k..][..k];
            #[cfg(target_arch = "x86_64")]
            if has_avx512_bf16() {
                // SAFETY: checked just above; row_to_tiles writes KB values at each of
                // the kblocks input blocks, all inside the pair's part (the caller's).
                unsafe { x86::row_to_tiles(src, row, 2 * BLOCK) };
                continue;
            }
            for kb in 0..kblocks {
                let vals = &src[(kb * KB).min(k)..((kb + 1) * KB).min(k)];
                // SAFETY: KB values of input block kb, inside the pair's part.
                let d = unsafe { std::slice::from_raw_parts_mut(row.add(kb * 2 * BLOCK), KB) };
                to_bf16(vals, &mut d[..vals.len()], false);
                d[vals.len()..].fill(bf16::ZERO);
            }
        } else {
            for kb in 0..kblocks {
                // SAFETY: as above; rows past `m` are zero.
                unsafe { std::ptr::write_bytes(row.add(kb * 2 * BLOCK), 0, KB) };
            }
        }
    }
}

/// `x [m, cols] · Wᵀ (+ bias)` on AMX tiles. Only where [`has_amx_bf16`] holds.
///
/// The epilogue (its residual `[m, n]`) runs on each block of outputs as it is written.
pub(crate) fn amx_product<W: ColumnBlocks>(
    w: &W,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    epi: Epilogue,
) -> Vec<f32> {
    let (n, k) = w.shape();
    let kblocks = w.kblocks();
    // The output tiles start from the bias (zero padded to whole column blocks, plus
    // one: a lone last block reads the next block's starts too).
    let mut init = vec![0f32; (n.div_ceil(NB) + 1) * NB];
    if let Some(b) = bias {
        init[..n].copy_from_slice(&b[..n]);
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let pairs = m.div_ceil(PAIR);
    let pool = super::pool::Pool::global();
    let nblocks = n.div_ceil(NB);
    if w.stored() && pool.threads() > 1 && pairs >= 2 * pool.threads() && m * n * k >= 1 << 18 {
        // Row pairs split over the pool, each task every column: a task rounds its
        // pairs' rows into tiles just before using them (they stay in its core's L1/L2),
        // and reads the weight, which stays in its core's L2, once per pair. (Split by
        // columns, every task read all of the rounded rows from the shared cache.)
        let per = pairs.div_ceil(pool.threads() * 2);
        let ptr = OutPtr(out.as_mut_ptr());
        pool.run(pairs.div_ceil(per), &|t| {
            let mut xa = AlignedBf16::zeroed(kblocks * 2 * BLOCK);
            for p in t * per..((t + 1) * per).min(pairs) {
                let (r0, rows) = (p * PAIR, PAIR.min(m - p * PAIR));
                // SAFETY: the capacity holds one pair, written by this task alone.
                unsafe { fill_pair(&x[r0 * k..], rows, k, kblocks, 0, xa.as_mut_ptr()) };
                // Rows r0.. as a matrix of `rows` rows, written by this task alone.
                run_amx(
                    w,
                    &xa,
                    rows,
                    0,
                    1,
                    0,
                    nblocks,
                    &init,
                    epi.rows_from(r0, n),
                    OutPtr(ptr.at(r0 * n)),
                );
            }
        });
    } else {
        let xa = amx_rows(x, m, k, kblocks);
        split_columns_into(m, n, k, OutPtr(out.as_mut_ptr()), |b0, b1, out| {
            run_amx(w, &xa, m, 0, pairs, b0, b1, &init, epi, out)
        });
    }
    // SAFETY: `run_amx` wrote every element of rows 0..m, column blocks b0..b1, and the
    // tasks' column blocks cover 0..n; f32 has no invalid bit patterns.
    unsafe { out.set_len(m * n) };
    out
}

/// Copies the `[rows][stride]` outputs computed for rows `m0..`, columns from block
/// `nb0` on into `out` (`[m, n]`), plus `bias`, leaving out padded rows and columns.
#[allow(clippy::too_many_arguments)]
fn write_out(
    vals: &[f32],
    stride: usize,
    rows: usize,
    m0: usize,
    m: usize,
    nb0: usize,
    n: usize,
    bias: Option<&[f32]>,
    out: OutPtr,
) {
    let c0 = nb0 * NB;
    let cols = stride.min(n.saturating_sub(c0));
    for r in 0..rows.min(m.saturating_sub(m0)) {
        let src = &vals[r * stride..r * stride + cols];
        // SAFETY: columns c0..c0 + cols of row m0 + r are inside [m, n]; the caller's
        // column blocks belong to its task alone and `out` outlives the pool run.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.at((m0 + r) * n + c0), cols) };
        match bias {
            Some(b) => {
                for ((d, v), b) in dst.iter_mut().zip(src).zip(&b[c0..c0 + cols]) {
                    *d = v + b;
                }
            }
            None => dst.copy_from_slice(src),
        }
    }
}

/// `x [m, k] · Wᵀ (+ bias)` → `[m, n]` on the AVX512-BF16 kernel where `simd` (only
/// where [`has_avx512_bf16`] holds), else the plain loop: column blocks split over the
/// pool, each group of [`TC`] column blocks fetched once (dequantized, for a quantized
/// weight) and run against every input row.
pub(crate) fn simd_product<W: ColumnBlocks>(
    w: &W,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    simd: bool,
) -> Vec<f32> {
    let (n, k) = w.shape();
    let kpad = w.kblocks() * KB;
    let xb = bf16_rows(x, m, k, m, kpad, simd);
    split_columns(m, n, k, |b0, b1, out| {
        run_simd(w, &xb, kpad, m, b0, b1, simd, bias, out)
    })
}

#[allow(clippy::too_many_arguments)]
fn run_simd<W: ColumnBlocks>(
    w: &W,
    xb: &[bf16],
    kpad: usize,
    m: usize,
    b0: usize,
    b1: usize,
    simd: bool,
    bias: Option<&[f32]>,
    out: OutPtr,
) {
    let n = w.shape().0;
    let mut acc: Acc = [[0.0; TC * NB]; TR];
    let mut scratch: [Vec<bf16>; TC] = Default::default();
    let mut nb = b0;
    while nb < b1 {
        let nc = if b1 - nb >= TC { TC } else { 1 };
        let mut cols: [&[bf16]; TC] = [&[]; TC];
        for (c, (col, buf)) in cols.iter_mut().zip(scratch.iter_mut()).enumerate().take(nc) {
            *col = w.column_blocks(nb + c, buf);
        }
        let mut i = 0;
        while i < m {
            let mr = if m - i >= TR { TR } else { 1 };
            tile(simd, &cols[..nc], xb, kpad, i, mr, &mut acc);
            for (r, row) in acc.iter().enumerate().take(mr) {
                write_out(&row[..nc * NB], nc * NB, 1, i + r, m, nb, n, bias, out);
            }
            i += mr;
        }
        nb += nc;
    }
}

fn tile(
    simd: bool,
    cols: &[&[bf16]],
    x: &[bf16],
    kpad: usize,
    m0: usize,
    mr: usize,
    out: &mut Acc,
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when `has_avx512_bf16()`; rows and blocks are in
        // range (see `run_simd`).
        unsafe {
            match (mr, cols.len()) {
                (4, 4) => return x86::tile::<4, 4>(cols, x, kpad, m0, out),
                (4, 1) => return x86::tile::<4, 1>(cols, x, kpad, m0, out),
                (1, 4) => return x86::tile::<1, 4>(cols, x, kpad, m0, out),
                (1, 1) => return x86::tile::<1, 1>(cols, x, kpad, m0, out),
                _ => {}
            }
        }
    }
    let _ = simd;
    tile_scalar(cols, x, kpad, m0, mr, out)
}

/// Copies the valid part of a 2×2 block of tiles (`vals`: [`PAIR`] rows of `PAIR`
/// values; row tile pair from row `r0`, column blocks `nb`, `nb1`; `nb1 == nb` when the
/// block has one column block) into `out` (`[m, n]`).
fn copy_pair(vals: &[f32], r0: usize, m: usize, nb: usize, nb1: usize, n: usize, out: OutPtr) {
    for r in 0..PAIR.min(m - r0) {
        for (j, block) in [nb, nb1].into_iter().enumerate() {
            if j == 1 && nb1 == nb {
                continue;
            }
            let c0 = block * NB;
            let cols = NB.min(n - c0);
            let src = &vals[r * PAIR + j * NB..][..cols];
            // SAFETY: row r0 + r < m, columns c0..c0 + cols < n, in the caller's column
            // blocks; `out` outlives the pool run.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.at((r0 + r) * n + c0), cols) };
            dst.copy_from_slice(src);
        }
    }
}

/// Column blocks `b0..b1` of the product, 2×2 tiles at a time: for each pair of row
/// tiles (which stays in L1 or L2), every pair of column blocks. Whole tiles are stored
/// straight into `out`; tiles at the edges (rows past `m`, columns past `n`, a lone
/// last column block) go through a scratch block.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
fn run_amx<W: ColumnBlocks>(
    w: &W,
    xa: &[bf16],
    m: usize,
    p0: usize,
    p1: usize,
    b0: usize,
    b1: usize,
    init: &[f32],
    epi: Epilogue,
    out: OutPtr,
) {
    // SAFETY: this path is taken only when `has_amx_bf16()`.
    let tiles = unsafe { amx::Tiles::configure() };
    let isa = Isa::detect();
    let (n, kblocks) = (w.shape().0, w.kblocks());
    let per_pair = kblocks * 2 * BLOCK;
    let mut scratch = [0f32; PAIR * PAIR];
    // The column blocks, borrowed (or, for weights stored otherwise, written once).
    let mut store: Vec<Vec<bf16>> = (b0..b1).map(|_| Vec::new()).collect();
    let mut blocks: Vec<*const bf16> = Vec::with_capacity(b1 - b0);
    for (nb, scratch_blocks) in (b0..b1).zip(store.iter_mut()) {
        blocks.push(w.column_blocks(nb, scratch_blocks).as_ptr());
    }
    for p in p0..p1 {
        let r0 = p * PAIR;
        let a = xa[p * per_pair..].as_ptr();
        let whole_rows = r0 + PAIR <= m;
        let mut nb = b0;
        while nb < b1 {
            // A lone last block is computed twice and its copy dropped.
            let nb1 = if nb + 1 < b1 { nb + 1 } else { nb };
            let bp = [blocks[nb - b0], blocks[nb1 - b0]];
            let bias = init[nb * NB..].as_ptr();
            if whole_rows && nb1 != nb && (nb1 + 1) * NB <= n {
                let c = [out.at(r0 * n + nb * NB), out.at((r0 + NB) * n + nb * NB)];
                // SAFETY: `a` is pair p's tiles; blocks nb, nb1 hold `kblocks` blocks
                // each; `init` has 2 × NB values from block nb's first column (it is padded
                // by a block); rows r0..r0 + PAIR, columns nb * NB..nb * NB + PAIR are
                // inside [m, n] and this task's.
                unsafe { tiles.block_2x2(a, bp, kblocks, bias, c, n * 4) };
                if !epi.is_empty() {
                    // SAFETY: the block just written, as above.
                    unsafe { epi.apply(c[0], n, (r0, nb * NB), PAIR, PAIR, isa) };
                }
            } else {
                let c = scratch.as_mut_ptr();
                // SAFETY: as above, into the scratch block of PAIR rows of PAIR values.
                unsafe { tiles.block_2x2(a, bp, kblocks, bias, [c, c.add(NB * PAIR)], PAIR * 4) };
                copy_pair(&scratch, r0, m, nb, nb1, n, out);
                if !epi.is_empty() {
                    let blocks = if nb1 == nb { 1 } else { 2 };
                    let (rows, cols) = (PAIR.min(m - r0), (blocks * NB).min(n - nb * NB));
                    // SAFETY: the outputs copy_pair just wrote (inside [m, n], this task's).
                    unsafe {
                        epi.apply(out.at(r0 * n + nb * NB), n, (r0, nb * NB), rows, cols, isa)
                    };
                }
            }
            nb += 2;
        }
    }
    drop(store);
}

/// Without AMX: the plain loop over the same blocks (never reached: `has_amx_bf16` is
/// false there).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[allow(clippy::too_many_arguments)]
fn run_amx<W: ColumnBlocks>(
    w: &W,
    xa: &[bf16],
    m: usize,
    p0: usize,
    p1: usize,
    b0: usize,
    b1: usize,
    init: &[f32],
    epi: Epilogue,
    out: OutPtr,
) {
    let (n, kblocks) = (w.shape().0, w.kblocks());
    let mut scratch = Vec::new();
    for nb in b0..b1 {
        let blocks = w.column_blocks(nb, &mut scratch);
        for i in (p0 * PAIR)..m.min(p1 * PAIR) {
            let mut row = [0f32; PAIR];
            row[..NB].copy_from_slice(&init[nb * NB..][..NB]);
            let (p, t, rr) = (i / PAIR, (i % PAIR) / NB, i % NB);
            for kb in 0..kblocks {
                let xr = &xa[((p * kblocks + kb) * 2 + t) * BLOCK + rr * KB..][..KB];
                for (q, pair) in blocks[kb * BLOCK..][..BLOCK]
                    .chunks_exact(2 * NB)
                    .enumerate()
                {
                    for (j, o) in row.iter_mut().take(NB).enumerate() {
                        *o += xr[2 * q].to_f32() * pair[2 * j].to_f32()
                            + xr[2 * q + 1].to_f32() * pair[2 * j + 1].to_f32();
                    }
                }
            }
            copy_pair(&row, i, i + 1, nb, nb, n, out);
            let (c0, isa) = (nb * NB, Isa::detect());
            // SAFETY: the outputs copy_pair just wrote (row i, columns c0.., this task's).
            unsafe { epi.apply(out.at(i * n + c0), n, (i, c0), 1, NB.min(n - c0), isa) };
        }
    }
}

/// The candle op of a bf16 layer: `x [..., cols]` (f32) → `[..., rows]` (f32).
pub type Bf16MatMulOp = super::LinearOp<PackedBf16>;

impl super::PackedLinear for PackedBf16 {
    const OP: &'static str = "rustformers-bf16-matmul";
    const OP_RESIDUAL: &'static str = "rustformers-bf16-matmul-residual";
    const WHAT: &'static str = "bf16 matmul";

    fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn product(&self, x: &[f32], m: usize, extras: super::Extras) -> Result<Vec<f32>, String> {
        let epi = Epilogue {
            gelu: extras.gelu,
            residual: extras.residual,
        };
        matmul_epi_on(self, x, m, extras.bias, epi, Path::best(m))
    }
}

/// `a [m, k] · bᵀ` for `b [n, k]`, both rounded to bf16, sums in f32 (`b` packed for
/// this one product).
pub fn product_nt(a: &[f32], m: usize, b: &[f32], n: usize, k: usize) -> Result<Vec<f32>, String> {
    let packed = PackedBf16::from_f32(n, k, b)?;
    matmul(&packed, a, m, None)
}

/// `[rows, cols]` → `[cols, rows]`, in 32 × 32 blocks (so that reads and writes stay
/// in cache), bands of 32 rows on the pool.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut t = vec![0f32; rows * cols];
    if x.len() < rows * cols {
        return t;
    }
    let ptr = OutPtr(t.as_mut_ptr());
    let band = |b: usize| {
        let (r0, r1) = (b * T, ((b + 1) * T).min(rows));
        // Through a block in L1: rows read whole, columns written whole (writing
        // columns straight out strides `rows` floats between stores, and strides of a
        // power of two pile every store of a block onto one cache set).
        let mut block = [[0f32; T]; T];
        for c0 in (0..cols).step_by(T) {
            let cn = T.min(cols - c0);
            for (r, brow) in (r0..r1).zip(block.iter_mut()) {
                brow[..cn].copy_from_slice(&x[r * cols + c0..][..cn]);
            }
            for c in 0..cn {
                // SAFETY: out[c0 + c, r0..r1] is inside [cols, rows]; columns r0..r1
                // of the output belong to band b alone, and `t` outlives the loop.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(ptr.at((c0 + c) * rows + r0), r1 - r0)
                };
                for (d, brow) in dst.iter_mut().zip(block.iter()) {
                    *d = brow[c];
                }
            }
        }
    };
    let bands = rows.div_ceil(T);
    if rows * cols < 1 << 16 {
        (0..bands).for_each(band);
    } else {
        Pool::global().run(bands, &band);
    }
    t
}

/// Training's linear product `x [m, k] · Wᵀ` with `W [n, k]` (bf16 mixed precision):
/// operands rounded to bf16, sums in f32, on AMX or AVX512-BF16 where they run. Its
/// backward pass runs the same way: `∂x = g · W` and `∂W = gᵀ · x`, so the f32 master
/// weights get f32 gradients of bf16 products, as PyTorch's autocast gives.
#[derive(Debug, Clone, Copy)]
pub struct Bf16TrainMatMul;

fn f32_vec(t: &candle_core::Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

impl candle_core::CustomOp2 for Bf16TrainMatMul {
    fn name(&self) -> &'static str {
        "rustformers-bf16-train-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        if wk != k {
            candle_core::bail!("bf16 train matmul: x [{m}, {k}] and W [{n}, {wk}]");
        }
        let what = "bf16 train matmul";
        let x = super::contiguous(super::f32_data(xs, what)?, xl, what)?;
        let w = super::contiguous(super::f32_data(ws, what)?, wl, what)?;
        let y = product_nt(x, m, w, n, k).map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        g: &candle_core::Tensor,
    ) -> candle_core::Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let (xv, wv, gv) = (f32_vec(x)?, f32_vec(w)?, f32_vec(g)?);
        let msg = candle_core::Error::Msg;
        // ∂x [m, k] = g [m, n] · W [n, k] = g · (Wᵀ [k, n])ᵀ
        let dx = product_nt(&gv, m, &transpose(&wv, n, k), k, n).map_err(msg)?;
        // ∂W [n, k] = gᵀ [n, m] · x [m, k] = gᵀ · (xᵀ [k, m])ᵀ
        let dw = product_nt(&transpose(&gv, m, n), n, &transpose(&xv, m, k), k, m).map_err(msg)?;
        let dev = x.device();
        Ok((
            Some(candle_core::Tensor::from_vec(dx, (m, k), dev)?),
            Some(candle_core::Tensor::from_vec(dw, (n, k), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The training op's forward and both gradients equal the f32 products of the
    /// bf16-rounded operands (odd sizes: padding and tails).
    #[test]
    fn train_matmul_and_linear_gradients_equal_rounded_f32_products() {
        use candle_core::{DType, Device, Tensor, Var};
        let dev = Device::Cpu;
        // The last size packs and transposes on the pool.
        for (m, n, k) in [(3, 5, 7), (37, 20, 70), (64, 48, 96), (300, 260, 256)] {
            let round = |t: &Tensor| {
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            };
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (n, k), &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
            let y = x
                .as_tensor()
                .apply_op2(w.as_tensor(), Bf16TrainMatMul)
                .unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let (xr, wr, gr) = (round(x.as_tensor()), round(w.as_tensor()), round(&g));
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let d = crate::test_util::max_abs_diff(a, b);
                let s = crate::test_util::max_abs(b);
                assert!(d <= 1e-5 * (1.0 + s), "[{m}, {n}, {k}] {what}: {d}");
            };
            close(&y, &xr.matmul(&wr.t().unwrap()).unwrap(), "y");
            close(
                grads.get(x.as_tensor()).unwrap(),
                &gr.matmul(&wr).unwrap(),
                "dx",
            );
            close(
                grads.get(w.as_tensor()).unwrap(),
                &gr.t().unwrap().matmul(&xr).unwrap(),
                "dw",
            );
            // The linear op with a bias: the same products, the bias and its gradient
            // (the gradient's column sums) in f32.
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, n, &dev).unwrap()).unwrap();
            let y = x
                .as_tensor()
                .apply_op3(
                    w.as_tensor(),
                    b.as_tensor(),
                    super::super::train::LinearTrainOp { bf16: true },
                )
                .unwrap();
            let want = xr
                .matmul(&wr.t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            close(&y, &want, "linear y");
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            close(
                grads.get(x.as_tensor()).unwrap(),
                &gr.matmul(&wr).unwrap(),
                "linear dx",
            );
            close(
                grads.get(w.as_tensor()).unwrap(),
                &gr.t().unwrap().matmul(&xr).unwrap(),
                "linear dw",
            );
            close(
                grads.get(b.as_tensor()).unwrap(),
                &g.sum(0).unwrap(),
                "linear db",
            );
        }
    }

    /// Every path this machine runs, every tile shape (m and n not multiples of 4 or 16,
    /// k not a multiple of 32), against the f64 product of the bf16-rounded operands. The
    /// last two shapes are large enough for AMX to split row pairs over the pool (a
    /// partial last pair, an odd number of column blocks).
    #[test]
    fn paths_equal_the_product_of_rounded_operands() {
        for (m, n, k) in [
            (1, 9, 40),
            (6, 13, 96),
            (9, 4, 33),
            (5, 300, 1024),
            (17, 33, 70),
            (40, 80, 384),
            (64, 64, 64),
            (70, 50, 0),
            (150, 70, 100),
            (200, 33, 64),
        ] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i as f32) * 0.11).cos() * 3.0)
                .collect();
            let p = PackedBf16::from_f32(n, k, &w).unwrap();
            let wr = p.to_f32();
            let xr: Vec<f32> = x.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 3.0).collect();
            for path in [Path::Scalar, Path::Avx512, Path::Amx] {
                let y = matmul_on(&p, &x, m, None, path).unwrap();
                let yb = matmul_on(&p, &x, m, Some(&bias), path).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|t| xr[i * k + t] as f64 * wr[j * k + t] as f64)
                            .sum();
                        let got = y[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{path:?} m={m} n={n} k={k} ({i},{j}): {got} vs {want}"
                        );
                        // AMX starts its sums from the bias; the other paths add it last.
                        let want_b = want + bias[j] as f64;
                        let got_b = yb[i * n + j] as f64;
                        assert!(
                            (got_b - want_b).abs() < 1e-4 * (1.0 + want_b.abs()),
                            "{path:?} with bias m={m} n={n} k={k} ({i},{j}): {got_b} vs {want_b}"
                        );
                    }
                }
            }
        }
        assert!(PackedBf16::from_f32(2, 3, &[0.0; 5]).is_err());
        let p = PackedBf16::from_f32(2, 3, &[0.0; 6]).unwrap();
        assert!(matmul(&p, &[0.0; 4], 1, None).is_err());
        assert!(matmul(&p, &[0.0; 3], 1, Some(&[0.0; 3])).is_err());
    }

    /// With the epilogue (GELU, a residual, both), every path gives the epilogue applied
    /// to its plain product (blocks written straight out, through the scratch block,
    /// and the row split); a residual of the wrong size is an error.
    #[test]
    fn epilogue_equals_its_ops_on_the_product() {
        for (m, n, k) in [(5, 40, 64), (37, 70, 100), (150, 70, 100), (200, 64, 96)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.11).cos()).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 2.0).collect();
            let res: Vec<f32> = (0..m * n)
                .map(|i| ((i as f32) * 0.07).sin() * 5.0)
                .collect();
            let p = PackedBf16::from_f32(n, k, &w).unwrap();
            for path in [Path::Scalar, Path::Avx512, Path::Amx] {
                let plain = matmul_on(&p, &x, m, Some(&bias), path).unwrap();
                let gelu = super::super::activation::gelu(&plain, Isa::Scalar);
                assert!(gelu.iter().any(|v| *v < 0.0) && gelu.iter().any(|v| *v > 1.0));
                for (g, r) in [(true, false), (false, true), (true, true)] {
                    let epi = Epilogue {
                        gelu: g,
                        residual: r.then_some(res.as_slice()),
                    };
                    let got = matmul_epi_on(&p, &x, m, Some(&bias), epi, path).unwrap();
                    let base = if g { &gelu } else { &plain };
                    assert_eq!(got.len(), m * n);
                    let d = (0..m * n)
                        .map(|i| (got[i] - base[i] - if r { res[i] } else { 0.0 }).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        d < 1e-5,
                        "{path:?} m={m} n={n} k={k} gelu={g} residual={r}: {d}"
                    );
                }
                let short = Epilogue {
                    gelu: false,
                    residual: Some(&res[1..]),
                };
                assert!(matmul_epi_on(&p, &x, m, None, short, path).is_err());
            }
        }
    }

    /// The packing round-trips the bf16-rounded weight.
    #[test]
    fn packing_round_trips() {
        let (n, k) = (21, 45);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32 * 0.25 - 40.0).collect();
        let p = PackedBf16::from_f32(n, k, &w).unwrap();
        let want: Vec<f32> = w.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
        assert_eq!(p.to_f32(), want);
    }
}
