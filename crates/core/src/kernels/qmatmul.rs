//! `y = x Wᵀ` for GGUF block formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, with the
//! activations quantized to 8 bits per block of 32, as ggml does (Q8_0 for the `_0`
//! formats, Q8_1 with its rounded block sum for the `_1` formats), so that results follow
//! llama.cpp's numerics; and for the K-quants Q2_K to Q6_K (super-blocks of 256 with 4-,
//! 6- or 8-bit sub-block scales), repacked into the same blocks of 32. Q4_K, Q5_K and
//! Q6_K: each sub-block's `d · scale` and `dmin · min` are exact in f32 and kept so (the
//! kernels read f32 scales for these), Q6_K's blocks carry two scales, one per 16 values,
//! and its quants are stored signed (`q − 32`, as Q8_0's). Q2_K and Q3_K stay about as
//! compact as in the file: 2-bit planes (and Q3_K's high-bit plane) that the kernels
//! unpack in registers, a byte of scale (and Q2_K's minimum) per 16 values times the
//! super-block's f32 `d` (and `dmin`); Q2_K's minimums multiply activation sums per 16
//! values, and Q3_K's values (`−4..=3`) go signed as Q8_0's. The K-quants' activations use
//! the same 8-bit blocks of 32 (ggml uses blocks of 256 for them, so the last digits
//! differ).
//!
//! Block layouts: ggml's `ggml-common.h` (<https://github.com/ggerganov/llama.cpp>). The
//! weights are repacked once at load into a structure of arrays per row: f32 scales,
//! f32 minimums (or the `-8d`/`-16d` offset of the `_0` formats), and the quants (4-bit
//! pairs kept packed; 5-bit values widened to bytes; Q8_0 as signed bytes; 2- and 3-bit
//! values in planes per block pair).
//!
//! Each output is `Σ_b d_w·d_x·dot(q_w, q_x) + m_w·s_x` over the row's blocks, where
//! `dot` is an integer dot product of unsigned weight quants and signed activation quants:
//! `vpmaddubsw`+`vpmaddwd` with AVX2, `vpdpbusd` with AVX-512 VNNI, or plain integers.

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::{bf16, f16};

use super::bf16::{ColumnBlocks, BLOCK, NB};
use super::pool::Pool;
use super::Isa;
use super::{linear_op_fwd, OutPtr};

/// Elements per block.
pub const QK: usize = 32;

/// The block formats these kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

impl QFormat {
    /// The format for a ggml type, `None` where candle's kernels are used instead.
    pub fn from_ggml(t: GgmlDType) -> Option<Self> {
        Some(match t {
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q2K => Self::Q2K,
            GgmlDType::Q3K => Self::Q3K,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    /// Bytes of one ggml block (of 32 values; of 256 for the K-quants).
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Values per ggml block.
    pub fn block_values(self) -> usize {
        if self.is_k() {
            QK_K
        } else {
            QK
        }
    }

    /// A K-quant (super-blocks of 256 values).
    pub fn is_k(self) -> bool {
        matches!(
            self,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K
        )
    }

    /// Scales per block of 32: two for Q2_K, Q3_K and Q6_K (one per 16 values), else one.
    fn scales_per_block(self) -> usize {
        if matches!(self, Self::Q2K | Self::Q3K | Self::Q6K) {
            2
        } else {
            1
        }
    }

    /// Additive terms per block of 32: two for Q2_K (one per 16 values), else one.
    fn mins_per_block(self) -> usize {
        if self == Self::Q2K {
            2
        } else {
            1
        }
    }

    /// True for the formats whose activation term uses ggml's f16-rounded block sum.
    fn uses_rounded_sum(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1)
    }
}

/// The quants of every block, row after row.
#[derive(Debug, Clone)]
enum Payload {
    /// 4-bit values, 16 bytes per block. Blocks go in pairs: byte `j` of a pair holds
    /// element `j` of the first block in its low nibble and element `j` of the second in
    /// its high nibble, so one 32-byte load splits into two whole blocks. A row's last
    /// block, when its count is odd, keeps ggml's order (element `j` low, `j + 16` high).
    Nibbles(Vec<u8>),
    /// 32 unsigned bytes per block (5-bit values).
    Bytes(Vec<u8>),
    /// 32 signed bytes per block (Q8_0).
    Signed(Vec<i8>),
    /// 2-bit values (Q2_K), 16 bytes per block pair: bits `2c..2c + 2` of byte `j` hold
    /// value `16c + j` of the pair's 64, so that one 16-byte load shifted by 0, 2, 4 and
    /// 6 gives the pair's four runs of 16 values.
    Crumbs(Vec<u8>),
    /// 3-bit values (Q3_K, each `low + 4·high − 4`, in −4..=3), 24 bytes per block pair:
    /// the low two bits as [`Payload::Crumbs`], then a little-endian `u64` whose bit `v`
    /// is value `v`'s high bit.
    Crumbs3(Vec<u8>),
}

/// Bytes per block pair of [`Payload::Crumbs`] and [`Payload::Crumbs3`].
const CRUMB_PAIR: usize = 16;
const CRUMB3_PAIR: usize = 24;

/// A quantized weight `[rows, cols]` repacked for these kernels.
#[derive(Debug, Clone)]
pub struct PackedQ {
    format: QFormat,
    rows: usize,
    cols: usize,
    nb: usize,
    payload: Payload,
    /// Scale of each block (`rows * nb`), f16 as in the file.
    d: Vec<f16>,
    /// Additive term of each block, multiplied by the activation block's sum: the
    /// minimum of the `_1` formats, `-8d` / `-16d` for Q4_0 / Q5_0 (exact in f16);
    /// empty for Q8_0.
    m: Vec<f16>,
    /// Q4_K–Q6_K's scales instead of `d` (which is then empty): `d · scale` of each
    /// block of 32 (Q4_K, Q5_K) or of each 16 values (Q6_K, two per block), in f32.
    dk: Vec<f32>,
    /// Q4_K / Q5_K's additive terms instead of `m`: `−dmin · min` per block; empty for
    /// the other K-quants.
    mk: Vec<f32>,
    /// Q2_K and Q3_K keep their sub-block scales as in the file, one byte per 16 values
    /// (not in `dk`, which would take more room than their quants): Q3_K's signed 6-bit
    /// scale (`scale − 32`), Q2_K's byte `scale | min << 4`.
    k16: Vec<u8>,
    /// Q2_K and Q3_K: each super-block's `d` (one per 8 blocks).
    dsb: Vec<f32>,
    /// Q2_K: each super-block's `dmin`.
    msb: Vec<f32>,
}

/// Scale and minimum `j` (0..8) of a Q4_K / Q5_K super-block's 12 packed bytes (6 bits
/// each: ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
}

impl PackedQ {
    /// Repacks ggml blocks (`data` holds `rows * cols / 32` blocks, row-major).
    pub fn from_ggml(
        format: QFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self, String> {
        // Whole ggml blocks (of 32 values; of 256 for the K-quants), and their bytes.
        let per = format.block_values();
        if !cols.is_multiple_of(per) {
            return Err(format!(
                "{format:?} rows of {cols} values are not a whole number of {per}-blocks"
            ));
        }
        let bs = format.block_bytes();
        if data.len() != rows * (cols / per) * bs {
            return Err(format!(
                "{format:?} [{rows}, {cols}] needs {} bytes, got {}",
                rows * (cols / per) * bs,
                data.len()
            ));
        }
        if matches!(format, QFormat::Q2K | QFormat::Q3K) {
            return Self::from_low_bit(format, rows, cols, data);
        }
        if format.is_k() {
            return Self::from_k_quant(format, rows, cols, data);
        }
        let nb = cols / QK;
        let blocks = rows * nb;
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(if format == QFormat::Q8_0 { 0 } else { blocks });
        let payload = match format {
            QFormat::Q4_0 | QFormat::Q4_1 => {
                let qs_at = if format == QFormat::Q4_0 { 2 } else { 4 };
                for blk in data.chunks_exact(bs) {
                    let scale = f16_at(blk, 0);
                    d.push(scale);
                    m.push(if format == QFormat::Q4_0 {
                        f16::from_f32(-8.0 * scale.to_f32())
                    } else {
                        f16_at(blk, 2)
                    });
                }
                let mut q = Vec::with_capacity(blocks * 16);
                for row in data.chunks_exact(bs * nb) {
                    let mut blocks = row.chunks_exact(bs);
                    for _ in 0..nb / 2 {
                        let (Some(a), Some(b)) = (blocks.next(), blocks.next()) else {
                            break;
                        };
                        let (a, b) = (&a[qs_at..qs_at + 16], &b[qs_at..qs_at + 16]);
                        // Element j of a block is the low nibble of byte j (j < 16) or
                        // the high nibble of byte j - 16; byte j of the pair holds
                        // element j of `a` low and of `b` high. (A fixed-size loop
                        // without branches, which the compiler vectorizes.)
                        let mut pair = [0u8; QK];
                        for j in 0..16 {
                            pair[j] = (a[j] & 0x0F) | (b[j] << 4);
                            pair[j + 16] = (a[j] >> 4) | (b[j] & 0xF0);
                        }
                        q.extend_from_slice(&pair);
                    }
                    if let Some(last) = blocks.next() {
                        q.extend_from_slice(&last[qs_at..qs_at + 16]);
                    }
                }
                Payload::Nibbles(q)
            }
            QFormat::Q5_0 | QFormat::Q5_1 => {
                let mut q = Vec::with_capacity(blocks * QK);
                for blk in data.chunks_exact(bs) {
                    let scale = f16_at(blk, 0);
                    d.push(scale);
                    let (qh_at, qs_at) = if format == QFormat::Q5_0 {
                        m.push(f16::from_f32(-16.0 * scale.to_f32()));
                        (2, 6)
                    } else {
                        m.push(f16_at(blk, 2));
                        (4, 8)
                    };
                    let qh = u32::from_le_bytes([
                        blk[qh_at],
                        blk[qh_at + 1],
                        blk[qh_at + 2],
                        blk[qh_at + 3],
                    ]);
                    let qs = &blk[qs_at..qs_at + 16];
                    let mut vals = [0u8; QK];
                    for j in 0..16 {
                        vals[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                        vals[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                    }
                    q.extend_from_slice(&vals);
                }
                Payload::Bytes(q)
            }
            QFormat::Q8_0 => {
                let mut q = Vec::with_capacity(blocks * QK);
                for blk in data.chunks_exact(bs) {
                    d.push(f16_at(blk, 0));
                    q.extend(blk[2..34].iter().map(|&b| b as i8));
                }
                Payload::Signed(q)
            }
            _ => return Err(format!("{format:?} takes the K-quant repacking")),
        };
        Ok(Self {
            format,
            rows,
            cols,
            nb,
            payload,
            d,
            m,
            dk: Vec::new(),
            mk: Vec::new(),
            k16: Vec::new(),
            dsb: Vec::new(),
            msb: Vec::new(),
        })
    }

    /// Repacks Q2_K / Q3_K super-blocks (ggml's `block_q2_K`: 16 scale bytes, 64 bytes
    /// of 2-bit quants, f16 `d` and `dmin`; `block_q3_K`: 32 bytes of high bits, 64 of
    /// 2-bit quants, 12 bytes of 6-bit scales, f16 `d`) into the crumb payloads, their
    /// scales kept a byte per 16 values (see [`PackedQ`]'s fields).
    fn from_low_bit(
        format: QFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self, String> {
        let bs = format.block_bytes();
        let sbs = data.len() / bs;
        let q3 = format == QFormat::Q3K;
        let pair_bytes = if q3 { CRUMB3_PAIR } else { CRUMB_PAIR };
        let mut q = Vec::with_capacity(sbs * 4 * pair_bytes);
        let mut k16 = Vec::with_capacity(sbs * 16);
        let mut dsb = Vec::with_capacity(sbs);
        let mut msb = Vec::with_capacity(if q3 { 0 } else { sbs });
        for sb in data.chunks_exact(bs) {
            // Both formats: value `l` of block `k` (0..8) is bits `2(k % 4)` of byte
            // `32(k / 4) + l` of the 2-bit quants; Q3_K's high bit is bit `k` of byte `l`
            // of `hmask`.
            let (qs, hmask) = if q3 {
                dsb.push(f16_at(sb, 108).to_f32());
                let packed = &sb[96..108];
                for j in 0..16 {
                    let low = if j < 8 {
                        packed[j] & 0x0F
                    } else {
                        packed[j - 8] >> 4
                    };
                    let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
                    k16.push(((low | high << 4) as i8 - 32) as u8);
                }
                (&sb[32..96], &sb[..32])
            } else {
                dsb.push(f16_at(sb, 80).to_f32());
                msb.push(f16_at(sb, 82).to_f32());
                k16.extend_from_slice(&sb[..16]);
                (&sb[16..80], &sb[..0])
            };
            for pair in 0..4 {
                let mut low = [0u8; CRUMB_PAIR];
                let mut high = 0u64;
                for v in 0..64 {
                    let (k, l) = (2 * pair + v / 32, v % 32);
                    let crumb = (qs[32 * (k / 4) + l] >> (2 * (k % 4))) & 3;
                    low[v % 16] |= crumb << (2 * (v / 16));
                    if q3 {
                        high |= (((hmask[l] >> k) & 1) as u64) << v;
                    }
                }
                q.extend_from_slice(&low);
                if q3 {
                    q.extend_from_slice(&high.to_le_bytes());
                }
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            nb: cols / QK,
            payload: if q3 {
                Payload::Crumbs3(q)
            } else {
                Payload::Crumbs(q)
            },
            d: Vec::new(),
            m: Vec::new(),
            dk: Vec::new(),
            mk: Vec::new(),
            k16,
            dsb,
            msb,
        })
    }

    /// Repacks K-quant super-blocks (ggml's `block_q4_K`, `block_q5_K`, `block_q6_K`)
    /// into blocks of 32 with f32 scales, as the module docs say; `data` holds whole
    /// super-blocks (checked by `from_ggml`).
    fn from_k_quant(
        format: QFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self, String> {
        let bs = format.block_bytes();
        let nb = cols / QK;
        let blocks = rows * nb;
        let mut dk = Vec::with_capacity(blocks * format.scales_per_block());
        let mut mk = Vec::with_capacity(if format == QFormat::Q6K { 0 } else { blocks });
        let payload =
            match format {
                QFormat::Q4K | QFormat::Q5K => {
                    let mut nibbles = Vec::with_capacity(blocks * 16);
                    let mut bytes = Vec::with_capacity(blocks * QK);
                    for sb in data.chunks_exact(bs) {
                        let (d, dmin) = (f16_at(sb, 0).to_f32(), f16_at(sb, 2).to_f32());
                        let scales = &sb[4..16];
                        for j in 0..8 {
                            let (sc, mn) = scale_min_k4(j, scales);
                            dk.push(d * sc as f32);
                            mk.push(-(dmin * mn as f32));
                        }
                        if format == QFormat::Q4K {
                            // 64 values per 32 bytes: the first block in the low nibbles,
                            // the second in the high ones, as the pairs here are laid out.
                            nibbles.extend_from_slice(&sb[16..144]);
                            continue;
                        }
                        let (qh, qs) = (&sb[16..48], &sb[48..176]);
                        for c in 0..4 {
                            let ql = &qs[c * 32..(c + 1) * 32];
                            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                            for (shift, u) in [(0, u1), (4, u2)] {
                                bytes.extend(ql.iter().zip(qh).map(|(l, h)| {
                                    ((l >> shift) & 0x0F) | ((h & u != 0) as u8) << 4
                                }));
                            }
                        }
                    }
                    if format == QFormat::Q4K {
                        Payload::Nibbles(nibbles)
                    } else {
                        Payload::Bytes(bytes)
                    }
                }
                _ => {
                    let mut q = Vec::with_capacity(blocks * QK);
                    for sb in data.chunks_exact(bs) {
                        let (ql, qh, sc) = (&sb[..128], &sb[128..192], &sb[192..208]);
                        let d = f16_at(sb, 208).to_f32();
                        for n in 0..2 {
                            let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
                            // Block k of this half: low or high nibbles of ql[0..32] or
                            // ql[32..64], with two bits of qh each.
                            for k in 0..4 {
                                let (lo, shift) = ((k % 2) * 32, (k / 2) * 4);
                                for l in 0..32 {
                                    let v = ((ql[lo + l] >> shift) & 0x0F)
                                        | (((qh[l] >> (2 * k)) & 3) << 4);
                                    q.push(v as i8 - 32);
                                }
                                for h in 0..2 {
                                    dk.push(d * sc[2 * k + h] as i8 as f32);
                                }
                            }
                        }
                    }
                    Payload::Signed(q)
                }
            };
        Ok(Self {
            format,
            rows,
            cols,
            nb,
            payload,
            d: Vec::new(),
            m: Vec::new(),
            dk,
            mk,
            k16: Vec::new(),
            dsb: Vec::new(),
            msb: Vec::new(),
        })
    }

    pub fn format(&self) -> QFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        let q = match &self.payload {
            Payload::Nibbles(q) | Payload::Bytes(q) | Payload::Crumbs(q) | Payload::Crumbs3(q) => {
                q.len()
            }
            Payload::Signed(q) => q.len(),
        };
        q + 2 * (self.d.len() + self.m.len())
            + 4 * (self.dk.len() + self.mk.len() + self.dsb.len() + self.msb.len())
            + self.k16.len()
    }

    /// The unsigned (or, for Q8_0, signed) quant of element `j` of block `b` of `row`.
    fn quant(&self, row: usize, b: usize, j: usize) -> i32 {
        match &self.payload {
            Payload::Nibbles(q) => {
                let base = row * self.nb * 16;
                if b + 1 == self.nb && self.nb % 2 == 1 {
                    let byte = q[base + b * 16 + j % 16];
                    (if j < 16 { byte & 0x0F } else { byte >> 4 }) as i32
                } else {
                    let byte = q[base + (b / 2) * 32 + j];
                    (if b.is_multiple_of(2) {
                        byte & 0x0F
                    } else {
                        byte >> 4
                    }) as i32
                }
            }
            Payload::Bytes(q) => q[(row * self.nb + b) * QK + j] as i32,
            Payload::Signed(q) => q[(row * self.nb + b) * QK + j] as i32,
            Payload::Crumbs(q) | Payload::Crumbs3(q) => {
                let (pair, v) = ((row * self.nb + b) / 2, (b % 2) * QK + j);
                let size = if matches!(self.payload, Payload::Crumbs(_)) {
                    CRUMB_PAIR
                } else {
                    CRUMB3_PAIR
                };
                let at = pair * size;
                let low = ((q[at + v % 16] >> (2 * (v / 16))) & 3) as i32;
                if size == CRUMB_PAIR {
                    return low;
                }
                let high = ((q[at + CRUMB_PAIR + v / 8] >> (v % 8)) & 1) as i32;
                low + 4 * high - 4
            }
        }
    }

    /// The additive term of values `half·16..` of block `blk` (`half` is 0 except for
    /// Q2_K's second 16 values).
    fn min_of(&self, blk: usize, half: usize) -> f32 {
        match self.format {
            QFormat::Q2K => -(self.msb[blk / 8] * (self.k16[2 * blk + half] >> 4) as f32),
            QFormat::Q3K => 0.0,
            f if f.is_k() => self.mk.get(blk).copied().unwrap_or(0.0),
            _ => self.m.get(blk).map_or(0.0, |m| m.to_f32()),
        }
    }

    /// True where the blocks have an additive term (all but Q8_0, Q3_K and Q6_K).
    fn has_min(&self) -> bool {
        !self.m.is_empty() || !self.mk.is_empty() || !self.msb.is_empty()
    }

    /// The scale of values `half·16..` of block `blk` (`half` is 0 except for the second
    /// 16 values of Q2_K, Q3_K and Q6_K).
    fn scale_of(&self, blk: usize, half: usize) -> f32 {
        match self.format {
            QFormat::Q2K => {
                return self.dsb[blk / 8] * (self.k16[2 * blk + half] & 0x0F) as f32;
            }
            QFormat::Q3K => return self.dsb[blk / 8] * (self.k16[2 * blk + half] as i8) as f32,
            _ => {}
        }
        if self.format.is_k() {
            let per = self.format.scales_per_block();
            return self.dk[blk * per + half.min(per - 1)];
        }
        self.d[blk].to_f32()
    }

    /// Row `row` as f32 values (`d·q + m`, as ggml dequantizes).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        for b in 0..self.nb {
            let blk = row * self.nb + b;
            for j in 0..QK {
                let (d, min) = (self.scale_of(blk, j / 16), self.min_of(blk, j / 16));
                out[b * QK + j] = d * self.quant(row, b, j) as f32 + min;
            }
        }
    }

    /// Block `b` of `row` as f32 values (`d·q + m`, as [`Self::dequantize_row`]), with
    /// the format's branches outside the per-value loops so that they vectorize.
    #[inline(always)]
    fn block_values(&self, row: usize, b: usize, out: &mut [f32; QK]) {
        let blk = row * self.nb + b;
        let (d0, d1, m0, m1) = (
            self.scale_of(blk, 0),
            self.scale_of(blk, 1),
            self.min_of(blk, 0),
            self.min_of(blk, 1),
        );
        let mut q = [0f32; QK];
        match &self.payload {
            Payload::Nibbles(qs) => {
                let base = row * self.nb * 16;
                if b + 1 == self.nb && self.nb % 2 == 1 {
                    let bytes = &qs[base + b * 16..][..16];
                    for j in 0..16 {
                        q[j] = (bytes[j] & 0x0F) as f32;
                        q[j + 16] = (bytes[j] >> 4) as f32;
                    }
                } else {
                    let bytes = &qs[base + (b / 2) * 32..][..32];
                    let shift = if b.is_multiple_of(2) { 0 } else { 4 };
                    for (v, byte) in q.iter_mut().zip(bytes) {
                        *v = ((byte >> shift) & 0x0F) as f32;
                    }
                }
            }
            Payload::Bytes(qs) => {
                for (v, byte) in q.iter_mut().zip(&qs[blk * QK..][..QK]) {
                    *v = *byte as f32;
                }
            }
            Payload::Signed(qs) => {
                for (v, byte) in q.iter_mut().zip(&qs[blk * QK..][..QK]) {
                    *v = *byte as f32;
                }
            }
            Payload::Crumbs(qs) | Payload::Crumbs3(qs) => {
                let q3 = matches!(self.payload, Payload::Crumbs3(_));
                let size = if q3 { CRUMB3_PAIR } else { CRUMB_PAIR };
                let at = (blk / 2) * size;
                let low: &[u8; CRUMB_PAIR] = match qs[at..at + CRUMB_PAIR].try_into() {
                    Ok(l) => l,
                    Err(_) => return,
                };
                // This block is values `32·(b % 2)..` of the pair: runs 2h and 2h + 1.
                let h = b % 2;
                for (j, v) in q.iter_mut().enumerate() {
                    *v = ((low[j % 16] >> (2 * (2 * h + j / 16))) & 3) as f32;
                }
                if q3 {
                    let mut bits = [0u8; 8];
                    bits.copy_from_slice(&qs[at + CRUMB_PAIR..at + CRUMB3_PAIR]);
                    let high = (u64::from_le_bytes(bits) >> (QK * h)) as u32;
                    for (j, v) in q.iter_mut().enumerate() {
                        *v += (4 * ((high >> j) & 1)) as f32 - 4.0;
                    }
                }
            }
        }
        for (j, (o, v)) in out.iter_mut().zip(&q).enumerate() {
            *o = if j < 16 { d0 * v + m0 } else { d1 * v + m1 };
        }
    }

    /// Column block `nb` (rows `16·nb..`) dequantized and rounded to bf16, in the AMX
    /// layout (`bf16::ColumnBlocks`).
    fn fill_column_blocks(&self, nb: usize, scratch: &mut Vec<bf16>, simd: bool) {
        scratch.clear();
        scratch.resize(self.nb * BLOCK, bf16::ZERO);
        let mut vals = [0f32; QK];
        let mut hb = [bf16::ZERO; QK];
        for r in 0..NB {
            let row = nb * NB + r;
            if row >= self.rows {
                break;
            }
            for b in 0..self.nb {
                self.block_values(row, b, &mut vals);
                super::bf16::to_bf16(&vals, &mut hb, simd);
                super::bf16::scatter_row(&hb, r, &mut scratch[b * BLOCK..(b + 1) * BLOCK]);
            }
        }
    }

    /// [`Self::fill_column_blocks`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/BF16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn fill_column_blocks_avx512(&self, nb: usize, scratch: &mut Vec<bf16>) {
        self.fill_column_blocks(nb, scratch, true)
    }

    /// The whole weight as f32 `[rows, cols]`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }
}

/// The AMX path reads the weight dequantized to bf16 one column block at a time.
impl ColumnBlocks for PackedQ {
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn kblocks(&self) -> usize {
        self.nb
    }

    fn column_blocks<'a>(&'a self, nb: usize, scratch: &'a mut Vec<bf16>) -> &'a [bf16] {
        #[cfg(target_arch = "x86_64")]
        if super::bf16::has_avx512_bf16() {
            // SAFETY: checked just above.
            unsafe { self.fill_column_blocks_avx512(nb, scratch) };
            return scratch;
        }
        self.fill_column_blocks(nb, scratch, false);
        scratch
    }
}

/// Activations `[rows, cols]` quantized to 8 bits per block of 32.
#[derive(Debug, Clone)]
pub struct QActs {
    nb: usize,
    qs: Vec<i8>,
    /// Block scale, rounded through f16 as ggml stores it.
    d: Vec<f32>,
    /// `d · Σq` exactly (for the `_0` formats' offset).
    s_exact: Vec<f32>,
    /// `d · Σq` rounded through f16 (Q8_1's `s`, for the `_1` formats).
    s_rounded: Vec<f32>,
    /// `d · Σq` over each 16 values, two per block (for Q2_K's minimums, one per 16).
    s16: Vec<f32>,
}

impl QActs {
    /// Quantizes `x` (`rows * cols` values; `cols` a multiple of 32): per block,
    /// `d = max|x| / 127` and `q = round(x / d)` (half away from zero, as ggml's reference
    /// quantizer). Many rows are split over the kernel pool.
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        let nb = cols / QK;
        let blocks = rows * nb;
        debug_assert_eq!(x.len(), blocks * QK);
        let mut out = Self {
            nb,
            qs: vec![0i8; blocks * QK],
            d: vec![0f32; blocks],
            s_exact: vec![0f32; blocks],
            s_rounded: vec![0f32; blocks],
            s16: vec![0f32; 2 * blocks],
        };
        let isa = Isa::detect();
        let ptrs = ActPtrs {
            qs: out.qs.as_mut_ptr(),
            d: out.d.as_mut_ptr(),
            s_exact: out.s_exact.as_mut_ptr(),
            s_rounded: out.s_rounded.as_mut_ptr(),
            s16: out.s16.as_mut_ptr(),
        };
        // Blocks `b0..b1`: each task owns its range of every output array.
        let run = |b0: usize, b1: usize| {
            // The whole (Sync) struct, not its raw-pointer fields, goes into the closure.
            #[allow(clippy::redundant_locals)]
            let ptrs = ptrs;
            for b in b0..b1 {
                let xb: &[f32; QK] = match x[b * QK..(b + 1) * QK].try_into() {
                    Ok(a) => a,
                    Err(_) => return,
                };
                let mut qb = [0i8; QK];
                let s = quantize_block(isa, xb, &mut qb);
                // SAFETY: b < blocks; block b belongs to this task alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(qb.as_ptr(), ptrs.qs.add(b * QK), QK);
                    *ptrs.d.add(b) = s.d;
                    *ptrs.s_exact.add(b) = s.exact;
                    *ptrs.s_rounded.add(b) = s.rounded;
                    *ptrs.s16.add(2 * b) = s.halves[0];
                    *ptrs.s16.add(2 * b + 1) = s.halves[1];
                }
            }
        };
        let pool = Pool::global();
        const PER_TASK: usize = 256;
        if blocks <= PER_TASK || pool.threads() <= 1 {
            run(0, blocks);
        } else {
            pool.run(blocks.div_ceil(PER_TASK), &|t| {
                run(t * PER_TASK, ((t + 1) * PER_TASK).min(blocks))
            });
        }
        out
    }

    /// The quantized activations back as f32 (for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(QK)
            .zip(&self.d)
            .flat_map(|(q, d)| q.iter().map(move |v| *v as f32 * d))
            .collect()
    }

    /// The sums that multiply `format`'s additive terms: per block, or per 16 values
    /// for Q2_K.
    fn sums(&self, format: QFormat) -> &[f32] {
        if format.uses_rounded_sum() {
            &self.s_rounded
        } else if format.mins_per_block() == 2 {
            &self.s16
        } else {
            &self.s_exact
        }
    }
}

/// Raw output pointers of a [`QActs`] being filled by several tasks.
#[derive(Clone, Copy)]
struct ActPtrs {
    qs: *mut i8,
    d: *mut f32,
    s_exact: *mut f32,
    s_rounded: *mut f32,
    s16: *mut f32,
}
// SAFETY: tasks write disjoint block ranges of buffers that outlive them (see
// `QActs::quantize`).
unsafe impl Send for ActPtrs {}
unsafe impl Sync for ActPtrs {}

/// A quantized activation block's scale and sums.
#[derive(Clone, Copy)]
struct BlockScale {
    /// `d`, rounded through f16.
    d: f32,
    /// `d·Σq`.
    exact: f32,
    /// `f16(d·Σq)`, as ggml's Q8_1 keeps it.
    rounded: f32,
    /// `d·Σq` over values `0..16` and `16..32`.
    halves: [f32; 2],
}

/// One block: quants into `qb`, and its [`BlockScale`].
#[inline(always)]
fn quantize_block_body(xb: &[f32; QK], qb: &mut [i8; QK]) -> BlockScale {
    // Max |x| with a select (vectorizes; no NaN handling needed for a scale).
    let mut lanes = [0f32; 8];
    for c in xb.chunks_exact(8) {
        for (l, v) in lanes.iter_mut().zip(c) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    let amax = lanes.iter().fold(0f32, |a, v| if *v > a { *v } else { a });
    let scale = amax / 127.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut sums = [0i32; 2];
    for (sum, (qh, xh)) in sums
        .iter_mut()
        .zip(qb.chunks_exact_mut(16).zip(xb.chunks_exact(16)))
    {
        for (q, v) in qh.iter_mut().zip(xh) {
            // Half away from zero (ggml's reference `roundf`), written so it vectorizes:
            // `t - trunc(t)` is exact.
            let t = v * inv;
            let whole = t.trunc();
            let r = if (t - whole).abs() >= 0.5 {
                whole + 1f32.copysign(t)
            } else {
                whole
            };
            *q = r as i8;
            *sum += *q as i32;
        }
    }
    let sum = sums[0] + sums[1];
    let dr = f16::from_f32(scale).to_f32();
    BlockScale {
        d: dr,
        exact: dr * sum as f32,
        rounded: f16::from_f32(sum as f32 * scale).to_f32(),
        halves: [dr * sums[0] as f32, dr * sums[1] as f32],
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quantize_block_avx512(xb: &[f32; QK], qb: &mut [i8; QK]) -> BlockScale {
    quantize_block_body(xb, qb)
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(xb: &[f32; QK], qb: &mut [i8; QK]) -> BlockScale {
    quantize_block_body(xb, qb)
}

fn quantize_block(isa: Isa, xb: &[f32; QK], qb: &mut [i8; QK]) -> BlockScale {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` was detected on this CPU.
        match isa {
            Isa::Avx512Vnni => return unsafe { quantize_block_avx512(xb, qb) },
            Isa::Avx2 => return unsafe { quantize_block_avx2(xb, qb) },
            Isa::Scalar => {}
        }
    }
    quantize_block_body(xb, qb)
}

/// Activation rows handled together, reusing each unpacked weight block.
const MR: usize = 4;

/// The additive (`m_w·s_x`) part of output `(a_row, w_row)` over blocks `b0..`.
fn min_term(w: &PackedQ, n: usize, a: &QActs, a_row: usize, b0: usize) -> f32 {
    if !w.has_min() {
        return 0.0;
    }
    let per = w.format.mins_per_block();
    let s = &a.sums(w.format)[(a_row * a.nb + b0) * per..(a_row + 1) * a.nb * per];
    (b0 * per..w.nb * per)
        .zip(s)
        .map(|(i, s)| w.min_of(n * w.nb + i / per, i % per) * s)
        .sum()
}

/// Plain implementation of blocks `b0..` of output `(row, n)`.
fn dot_scalar(w: &PackedQ, n: usize, a: &QActs, row: usize, b0: usize) -> f32 {
    let nb = w.nb;
    let mut acc = 0f32;
    let per = w.format.scales_per_block();
    let len = QK / per;
    for b in b0..nb {
        let xq = &a.qs[(row * nb + b) * QK..(row * nb + b + 1) * QK];
        for h in 0..per {
            let dot: i32 = (h * len..(h + 1) * len)
                .map(|j| w.quant(n, b, j) * xq[j] as i32)
                .sum();
            acc += w.scale_of(n * nb + b, h) * a.d[row * nb + b] * dot as f32;
        }
    }
    acc + min_term(w, n, a, row, b0)
}

/// Plain implementation: outputs `(m0 + r, n)` for `r < mr` into `out[r]`.
fn tile_scalar(w: &PackedQ, n: usize, a: &QActs, m0: usize, mr: usize, out: &mut [f32; MR]) {
    for (r, o) in out.iter_mut().enumerate().take(mr) {
        *o = dot_scalar(w, n, a, m0 + r, 0);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{dot_scalar, PackedQ, Payload, QActs, CRUMB3_PAIR, CRUMB_PAIR, MR, QK};

    /// 8 × i32 sums of 4 products of unsigned `w` and signed `x` bytes (AVX2).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot_avx2(w: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum128(s: __m128) -> f32 {
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum256(v: __m256) -> f32 {
        hsum128(_mm_add_ps(
            _mm256_castps256_ps128(v),
            _mm256_extractf128_ps(v, 1),
        ))
    }

    /// Two f16 values at `p` as the low lanes of an f32 vector.
    ///
    /// # Safety
    /// `p` points at two readable f16 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn two_f16(p: *const half::f16) -> __m128 {
        _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)))
    }

    /// Two f32 values at `p` as the low lanes of a vector.
    ///
    /// # Safety
    /// `p` points at two readable f32 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn two_f32(p: *const f32) -> __m128 {
        _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i))
    }

    /// A weight row's block scales and additive terms as the kernels read them: `S` = 0
    /// f16 per block (the `_0` / `_1` formats), 1 f32 per block (Q4_K, Q5_K), 2 f32 per 16
    /// values (Q6_K), 3 a signed byte per 16 values times the super-block's `d` (Q3_K),
    /// 4 a byte per 16 values holding a 4-bit scale and minimum, times the super-block's
    /// `d` and `dmin` (Q2_K, whose additive terms are per 16 values too).
    #[derive(Clone, Copy)]
    pub(super) struct Scales<const S: u8> {
        d16: *const half::f16,
        m16: *const half::f16,
        d32: *const f32,
        m32: *const f32,
        k16: *const u8,
        dsb: *const f32,
        msb: *const f32,
    }

    impl<const S: u8> Scales<S> {
        /// Row `n` of `w` (pointers only; read through the methods below).
        #[inline(always)]
        pub(super) fn of(w: &PackedQ, n: usize) -> Self {
            let nb = w.nb;
            let at = |len: usize, per: usize| if len == 0 { 0 } else { n * nb * per };
            Self {
                d16: w.d.as_ptr().wrapping_add(at(w.d.len(), 1)),
                m16: w.m.as_ptr().wrapping_add(at(w.m.len(), 1)),
                d32: w
                    .dk
                    .as_ptr()
                    .wrapping_add(at(w.dk.len(), if S == 2 { 2 } else { 1 })),
                m32: w.mk.as_ptr().wrapping_add(at(w.mk.len(), 1)),
                k16: w.k16.as_ptr().wrapping_add(at(w.k16.len(), 2)),
                dsb: w.dsb.as_ptr().wrapping_add(at(w.dsb.len(), 1) / 8),
                msb: w.msb.as_ptr().wrapping_add(at(w.msb.len(), 1) / 8),
            }
        }

        /// The four sub-block bytes of block pair `p` (`S` ≥ 3) as i32 lanes, sign- or
        /// zero-extended.
        ///
        /// # Safety
        /// Pair `p` exists in the row.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn bytes4(&self, p: usize, signed: bool) -> __m128i {
            let raw =
                _mm_cvtsi32_si128(std::ptr::read_unaligned(self.k16.add(4 * p) as *const i32));
            if signed {
                _mm_cvtepi8_epi32(raw)
            } else {
                _mm_cvtepu8_epi32(raw)
            }
        }

        /// The weight scales of block pair `p`: lanes 0 and 1 the two blocks' (`S` < 2),
        /// or lanes 0..4 the four 16-value halves' (`S` = 2).
        ///
        /// # Safety
        /// Pair `p` exists in the row.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(super) unsafe fn pair(&self, p: usize) -> __m128 {
            match S {
                0 => two_f16(self.d16.add(2 * p)),
                1 => two_f32(self.d32.add(2 * p)),
                2 => _mm_loadu_ps(self.d32.add(4 * p)),
                // Exact: an f16 times an integer of at most 6 bits.
                3 => _mm_mul_ps(
                    _mm_cvtepi32_ps(self.bytes4(p, true)),
                    _mm_set1_ps(*self.dsb.add(p / 4)),
                ),
                _ => _mm_mul_ps(
                    _mm_cvtepi32_ps(_mm_and_si128(self.bytes4(p, false), _mm_set1_epi32(15))),
                    _mm_set1_ps(*self.dsb.add(p / 4)),
                ),
            }
        }

        /// The additive terms of block pair `p`: lanes 0 and 1, or lanes 0..4 for the
        /// four 16-value runs (`S` = 4).
        ///
        /// # Safety
        /// Pair `p` exists in the row and the format has additive terms.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(super) unsafe fn mins(&self, p: usize) -> __m128 {
            match S {
                0 => two_f16(self.m16.add(2 * p)),
                4 => _mm_mul_ps(
                    _mm_cvtepi32_ps(_mm_srli_epi32(self.bytes4(p, false), 4)),
                    _mm_set1_ps(-*self.msb.add(p / 4)),
                ),
                _ => two_f32(self.m32.add(2 * p)),
            }
        }

        /// The activation sums that [`Self::mins`] multiplies, for block pair `i` / 2 of
        /// the activations (`i` its first block's index from `xs`, the sums of
        /// [`QActs::sums`]).
        ///
        /// # Safety
        /// The blocks exist.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(super) unsafe fn act_sums(xs: *const f32, i: usize) -> __m128 {
            if S == 4 {
                _mm_loadu_ps(xs.add(2 * i))
            } else {
                two_f32(xs.add(i))
            }
        }

        /// Prefetches the scales (and additive terms) 1 KB ahead of pair `p`: streams of
        /// their own next to the quants.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(super) fn prefetch(&self, p: usize) {
            // A prefetch never faults (the addresses may lie past the row's end).
            if S == 0 {
                _mm_prefetch::<_MM_HINT_T0>(self.d16.wrapping_add(2 * p + 512) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(self.m16.wrapping_add(2 * p + 512) as *const i8);
            } else if S >= 3 {
                // A byte per 16 values, and an f32 or two per 4 pairs.
                _mm_prefetch::<_MM_HINT_T0>(self.k16.wrapping_add(4 * p + 1024) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(self.dsb.wrapping_add(p / 4 + 64) as *const i8);
                if S == 4 {
                    _mm_prefetch::<_MM_HINT_T0>(self.msb.wrapping_add(p / 4 + 64) as *const i8);
                }
            } else {
                let per = if S == 2 { 4 } else { 2 };
                _mm_prefetch::<_MM_HINT_T0>(self.d32.wrapping_add(per * p + 256) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(self.m32.wrapping_add(2 * p + 256) as *const i8);
            }
        }

        /// AVX2: the scales of the 8 sums `dot_avx2` gives for each block of the pair
        /// (4 values each: sums 0..4 cover values 0..16), weight scales `w` (from
        /// [`Self::pair`]) times the activation blocks' scales `x2` (lanes 0 and 1).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(super) fn lanes8(w: __m128, x2: __m128) -> (__m256, __m256) {
            if S < 2 {
                let s2 = _mm_mul_ps(w, x2);
                (
                    _mm256_broadcastss_ps(s2),
                    _mm256_broadcastss_ps(_mm_movehdup_ps(s2)),
                )
            } else {
                let v = _mm256_castps128_ps256(_mm_mul_ps(w, _mm_unpacklo_ps(x2, x2)));
                (
                    _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)),
                    _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)),
                )
            }
        }

        /// AVX-512: the scales of `vpdpbusd`'s 16 sums over a block pair (4 values each:
        /// sums 0..8 the first block, 8..16 the second).
        #[target_feature(enable = "avx2,fma,f16c,avx512f")]
        #[inline]
        pub(super) fn lanes16(w: __m128, x2: __m128) -> __m512 {
            if S < 2 {
                let s2 = _mm512_castps128_ps512(_mm_mul_ps(w, x2));
                let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
                _mm512_permutexvar_ps(spread, s2)
            } else {
                let s4 = _mm512_castps128_ps512(_mm_mul_ps(w, _mm_unpacklo_ps(x2, x2)));
                let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
                _mm512_permutexvar_ps(spread, s4)
            }
        }
    }

    /// Quants fetched this many bytes ahead of use (a prefetch never faults, so past the
    /// end is harmless). Decoding streams every weight from DRAM once per token, and the
    /// hardware prefetchers alone kept it well below the DRAM rate: SmolLM2 Q4_1 decode
    /// (AVX-512) 134-148 tokens/s without, 155-172 with the quants fetched 4096 bytes
    /// ahead (1024: 142-145; 8192: as 4096), 202-213 with the scales too.
    const AHEAD: usize = 4096;

    /// The weight quants of block pair `p` of a row as two 32-byte vectors, and for
    /// Q8_0 the signed originals (whose signs move onto the activations).
    ///
    /// # Safety
    /// `base` is the row's first quant; the pair exists.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn pair_avx2(payload: &Payload, base: usize, p: usize) -> (__m256i, __m256i, bool) {
        match payload {
            Payload::Nibbles(q) => {
                let at = q.as_ptr().add(base * 16 + p * 32);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                let raw = _mm256_loadu_si256(at as *const __m256i);
                let mask = _mm256_set1_epi8(0x0F);
                (
                    _mm256_and_si256(raw, mask),
                    _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask),
                    false,
                )
            }
            Payload::Bytes(q) => {
                let at = q.as_ptr().add((base + 2 * p) * QK);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                (
                    _mm256_loadu_si256(at as *const __m256i),
                    _mm256_loadu_si256(at.add(QK) as *const __m256i),
                    false,
                )
            }
            Payload::Signed(q) => {
                let at = q.as_ptr().add((base + 2 * p) * QK);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD));
                (
                    _mm256_loadu_si256(at as *const __m256i),
                    _mm256_loadu_si256(at.add(QK) as *const __m256i),
                    true,
                )
            }
            Payload::Crumbs(q) => {
                let at = q.as_ptr().add((base / 2 + p) * CRUMB_PAIR);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                let (w0, w1) = crumbs_avx2(at);
                (w0, w1, false)
            }
            Payload::Crumbs3(q) => {
                let at = q.as_ptr().add((base / 2 + p) * CRUMB3_PAIR);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                let (l0, l1) = crumbs_avx2(at);
                let high = std::ptr::read_unaligned(at.add(CRUMB_PAIR) as *const u64);
                // `low + 4·high − 4`, signed.
                let four = _mm256_set1_epi8(4);
                let value = |low: __m256i, bits: u32| {
                    let h = _mm256_and_si256(bits_avx2(bits), four);
                    _mm256_sub_epi8(_mm256_or_si256(low, h), four)
                };
                (value(l0, high as u32), value(l1, (high >> 32) as u32), true)
            }
        }
    }

    /// The two blocks of a crumb pair at `at` (16 bytes) as bytes 0..=3.
    ///
    /// # Safety
    /// 16 bytes at `at` are readable.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn crumbs_avx2(at: *const u8) -> (__m256i, __m256i) {
        let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(at as *const __m128i));
        let three = _mm256_set1_epi8(3);
        // Bits 2c.. of each byte are run c (16 values): the first block is runs 0 and 1.
        (
            _mm256_and_si256(
                _mm256_srlv_epi32(raw, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)),
                three,
            ),
            _mm256_and_si256(
                _mm256_srlv_epi32(raw, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)),
                three,
            ),
        )
    }

    /// Bit `j` of `bits` as byte `j`: all ones where set, zero elsewhere.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn bits_avx2(bits: u32) -> __m256i {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
    }

    /// AVX2: outputs `(m0 + r, n)` for `r < R` into `out[r]`, two blocks at a time.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `n < w.rows`, `m0 + R` rows exist in `a` and `a`
    /// has `w.nb` blocks per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize, const S: u8>(
        w: &PackedQ,
        n: usize,
        a: &QActs,
        m0: usize,
        out: &mut [f32; MR],
    ) {
        let nb = w.nb;
        let pairs = nb / 2;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut macc = [_mm_setzero_ps(); R];
        let sc = Scales::<S>::of(w, n);
        let has_min = w.has_min();
        let xq = a.qs.as_ptr().add(m0 * nb * QK);
        let xd = a.d.as_ptr().add(m0 * nb);
        let xs = a
            .sums(w.format)
            .as_ptr()
            .add(m0 * nb * w.format.mins_per_block());
        for p in 0..pairs {
            let (w0, w1, signed) = pair_avx2(&w.payload, n * nb, p);
            let (u0, u1) = if signed {
                (_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(w1, w1))
            } else {
                (w0, w1)
            };
            sc.prefetch(p);
            let dws = sc.pair(p);
            for r in 0..R {
                let at = xq.add((r * nb + 2 * p) * QK);
                let mut x0 = _mm256_loadu_si256(at as *const __m256i);
                let mut x1 = _mm256_loadu_si256(at.add(QK) as *const __m256i);
                if signed {
                    x0 = _mm256_sign_epi8(x0, w0);
                    x1 = _mm256_sign_epi8(x1, w1);
                }
                let (s0, s1) = Scales::<S>::lanes8(dws, two_f32(xd.add(r * nb + 2 * p)));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_avx2(u0, x0)), s0, acc[r]);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_avx2(u1, x1)), s1, acc[r]);
                if has_min {
                    let sums = Scales::<S>::act_sums(xs, r * nb + 2 * p);
                    macc[r] = _mm_fmadd_ps(sc.mins(p), sums, macc[r]);
                }
            }
        }
        for r in 0..R {
            let tail = if nb % 2 == 1 {
                dot_scalar(w, n, a, m0 + r, nb - 1)
            } else {
                0.0
            };
            out[r] = hsum256(acc[r]) + hsum128(macc[r]) + tail;
        }
    }

    /// The 64 values of a crumb pair at `at` (16 bytes) as bytes 0..=3.
    ///
    /// # Safety
    /// 16 bytes at `at` are readable; the CPU has AVX-512 F/BW.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
    #[inline]
    unsafe fn crumbs_avx512(at: *const u8) -> __m512i {
        let raw = _mm512_broadcast_i32x4(_mm_loadu_si128(at as *const __m128i));
        // Lane c (16 values) shifted right by 2c: 16-bit shift counts per lane.
        let shifts = _mm512_setr_epi32(
            0, 0, 0, 0, 0x2_0002, 0x2_0002, 0x2_0002, 0x2_0002, 0x4_0004, 0x4_0004, 0x4_0004,
            0x4_0004, 0x6_0006, 0x6_0006, 0x6_0006, 0x6_0006,
        );
        _mm512_and_si512(_mm512_srlv_epi16(raw, shifts), _mm512_set1_epi8(3))
    }

    /// AVX-512 VNNI: the same, a block pair per 512-bit `vpdpbusd`.
    ///
    /// # Safety
    /// As [`tile_avx2`], with AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const R: usize, const S: u8>(
        w: &PackedQ,
        n: usize,
        a: &QActs,
        m0: usize,
        out: &mut [f32; MR],
    ) {
        let nb = w.nb;
        let pairs = nb / 2;
        let mut acc = [_mm512_setzero_ps(); R];
        let mut macc = [_mm_setzero_ps(); R];
        let sc = Scales::<S>::of(w, n);
        let has_min = w.has_min();
        let xq = a.qs.as_ptr().add(m0 * nb * QK);
        let xd = a.d.as_ptr().add(m0 * nb);
        let xs = a
            .sums(w.format)
            .as_ptr()
            .add(m0 * nb * w.format.mins_per_block());
        let mask = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        for p in 0..pairs {
            let mut neg: __mmask64 = 0;
            let wv = match &w.payload {
                Payload::Nibbles(q) => {
                    let at = q.as_ptr().add(n * nb * 16 + p * 32);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                    let raw = _mm256_loadu_si256(at as *const __m256i);
                    let both = _mm512_inserti64x4(
                        _mm512_castsi256_si512(raw),
                        _mm256_srli_epi16(raw, 4),
                        1,
                    );
                    _mm512_and_si512(both, mask)
                }
                Payload::Bytes(q) => {
                    let at = q.as_ptr().add((n * nb + 2 * p) * QK);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                    _mm512_loadu_si512(at as *const __m512i)
                }
                Payload::Signed(q) => {
                    let at = q.as_ptr().add((n * nb + 2 * p) * QK);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD));
                    let v = _mm512_loadu_si512(at as *const __m512i);
                    neg = _mm512_movepi8_mask(v);
                    _mm512_abs_epi8(v)
                }
                Payload::Crumbs(q) => {
                    let at = q.as_ptr().add((n * nb / 2 + p) * CRUMB_PAIR);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                    crumbs_avx512(at)
                }
                Payload::Crumbs3(q) => {
                    let at = q.as_ptr().add((n * nb / 2 + p) * CRUMB3_PAIR);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(AHEAD) as *const i8);
                    let low = crumbs_avx512(at);
                    // `low + 4·high − 4`: negative exactly where the high bit is clear,
                    // with magnitude `4 − low` there and `low` elsewhere.
                    neg = !std::ptr::read_unaligned(at.add(CRUMB_PAIR) as *const u64);
                    _mm512_mask_sub_epi8(low, neg, _mm512_set1_epi8(4), low)
                }
            };
            let dws = sc.pair(p);
            for r in 0..R {
                let mut xv = _mm512_loadu_si512(xq.add((r * nb + 2 * p) * QK) as *const __m512i);
                if neg != 0 {
                    xv = _mm512_mask_sub_epi8(xv, neg, zero, xv);
                }
                let dot = _mm512_dpbusd_epi32(zero, wv, xv);
                let sv = Scales::<S>::lanes16(dws, two_f32(xd.add(r * nb + 2 * p)));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sv, acc[r]);
                if has_min {
                    let sums = Scales::<S>::act_sums(xs, r * nb + 2 * p);
                    macc[r] = _mm_fmadd_ps(sc.mins(p), sums, macc[r]);
                }
            }
        }
        for r in 0..R {
            let tail = if nb % 2 == 1 {
                dot_scalar(w, n, a, m0 + r, nb - 1)
            } else {
                0.0
            };
            out[r] = _mm512_reduce_add_ps(acc[r]) + hsum128(macc[r]) + tail;
        }
    }
}

/// Computes outputs `(m0 + r, n)`, `r < mr`, with `isa` (which the CPU must support:
/// callers get it from [`Isa::detect`] or [`Isa::all_available`]).
fn tile(isa: Isa, w: &PackedQ, n: usize, a: &QActs, m0: usize, mr: usize, out: &mut [f32; MR]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` was detected on this CPU; `n < w.rows`, `m0 + mr` rows exist and
        // the block counts match (checked by `matmul`).
        // The scales' form (see `x86::Scales`).
        let form = match w.format {
            QFormat::Q2K => 4,
            QFormat::Q3K => 3,
            QFormat::Q6K => 2,
            f if f.is_k() => 1,
            _ => 0,
        };
        macro_rules! kernel {
            ($f:ident, $r:literal) => {
                match form {
                    0 => x86::$f::<$r, 0>(w, n, a, m0, out),
                    1 => x86::$f::<$r, 1>(w, n, a, m0, out),
                    2 => x86::$f::<$r, 2>(w, n, a, m0, out),
                    3 => x86::$f::<$r, 3>(w, n, a, m0, out),
                    _ => x86::$f::<$r, 4>(w, n, a, m0, out),
                }
            };
        }
        unsafe {
            match (isa, mr) {
                (Isa::Avx512Vnni, 4) => return kernel!(tile_avx512, 4),
                (Isa::Avx512Vnni, 3) => return kernel!(tile_avx512, 3),
                (Isa::Avx512Vnni, 2) => return kernel!(tile_avx512, 2),
                (Isa::Avx512Vnni, 1) => return kernel!(tile_avx512, 1),
                (Isa::Avx2, 4) => return kernel!(tile_avx2, 4),
                (Isa::Avx2, 3) => return kernel!(tile_avx2, 3),
                (Isa::Avx2, 2) => return kernel!(tile_avx2, 2),
                (Isa::Avx2, 1) => return kernel!(tile_avx2, 1),
                _ => {}
            }
        }
    }
    tile_scalar(w, n, a, m0, mr, out)
}

/// A pointer the output tiles are written through: tasks write disjoint columns.
/// Below this many multiply-adds a matmul runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// `x [m, w.cols] · Wᵀ` → `[m, w.rows]`, row-major.
pub fn matmul(w: &PackedQ, x: &[f32], m: usize, isa: Isa) -> Result<Vec<f32>, String> {
    check_input(w, x, m)?;
    let a = QActs::quantize(x, m, w.cols);
    let n = w.rows;
    let mut out = vec![0f32; m * n];
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |n0: usize, n1: usize| {
        let mut tmp = [0f32; MR];
        for m0 in (0..m).step_by(MR) {
            let mr = MR.min(m - m0);
            for col in n0..n1 {
                tile(isa, w, col, &a, m0, mr, &mut tmp);
                for (r, v) in tmp.iter().enumerate().take(mr) {
                    // SAFETY: `(m0 + r) * n + col < m * n`; columns `n0..n1` belong to
                    // this task alone.
                    unsafe { *ptr.at((m0 + r) * n + col) = *v };
                }
            }
        }
    };
    let pool = Pool::global();
    if pool.threads() <= 1 || m * n * w.cols < PARALLEL_MIN_MACS {
        run(0, n);
    } else {
        // Several chunks per thread, so that a descheduled thread holds back little.
        let chunk = n.div_ceil(pool.threads() * 8).max(8);
        pool.run(n.div_ceil(chunk), &|c| {
            let n0 = c * chunk;
            run(n0, (n0 + chunk).min(n));
        });
    }
    Ok(out)
}

/// Input rows from which a product runs on AMX tiles (where [`has_amx_bf16`]): the
/// weight dequantized to bf16 one column block at a time, activations in bf16, f32 sums.
/// Below it (decoding, short prompts) the 8-bit integer kernels run.
///
/// [`has_amx_bf16`]: super::bf16::has_amx_bf16
pub const AMX_MIN_ROWS: usize = 64;

/// `x [m, w.cols] · Wᵀ` on AMX tiles: `W` dequantized (`d·q + m`) and rounded to bf16 per
/// column block, `x` rounded to bf16, products summed in f32. `None` where AMX does not
/// run here.
pub fn matmul_amx(w: &PackedQ, x: &[f32], m: usize) -> Option<Result<Vec<f32>, String>> {
    if !super::bf16::has_amx_bf16() {
        return None;
    }
    if let Err(e) = check_input(w, x, m) {
        return Some(Err(e));
    }
    Some(Ok(super::bf16::amx_product(
        w,
        x,
        m,
        None,
        Default::default(),
    )))
}

/// Input rows from which a product runs on the AVX512-BF16 kernel where AMX does not
/// (where [`has_avx512_bf16`]): the weight dequantized to bf16 one group of column blocks
/// at a time, activations in bf16, f32 sums, as on AMX.
///
/// [`has_avx512_bf16`]: super::bf16::has_avx512_bf16
pub const BF16_MIN_ROWS: usize = 64;

/// `x [m, w.cols] · Wᵀ` on the AVX512-BF16 kernel, with the numerics of
/// [`matmul_amx`]. `None` where AVX512-BF16 does not run here.
pub fn matmul_bf16(w: &PackedQ, x: &[f32], m: usize) -> Option<Result<Vec<f32>, String>> {
    if !super::bf16::has_avx512_bf16() {
        return None;
    }
    if let Err(e) = check_input(w, x, m) {
        return Some(Err(e));
    }
    Some(Ok(super::bf16::simd_product(w, x, m, None, true)))
}

/// An error unless `x` holds `m` rows of `w.cols` values.
fn check_input(w: &PackedQ, x: &[f32], m: usize) -> Result<(), String> {
    if x.len() != m * w.cols {
        return Err(format!(
            "quantized matmul: input has {} values, expected {m} rows of {}",
            x.len(),
            w.cols
        ));
    }
    Ok(())
}

/// The candle op: `x [..., cols]` (f32) → `[..., rows]`.
#[derive(Debug, Clone)]
pub struct QMatMulOp {
    weight: Arc<PackedQ>,
    isa: Isa,
    /// Products of [`AMX_MIN_ROWS`] rows or more go to [`matmul_amx`] where it runs,
    /// else from [`BF16_MIN_ROWS`] to [`matmul_bf16`] where that runs.
    bf16: bool,
}

impl QMatMulOp {
    pub fn new(weight: Arc<PackedQ>) -> Self {
        Self {
            weight,
            isa: Isa::detect(),
            bf16: true,
        }
    }

    /// The same op with a given instruction set (one the CPU supports), integer kernels
    /// only.
    pub fn with_isa(weight: Arc<PackedQ>, isa: Isa) -> Self {
        Self {
            weight,
            isa,
            bf16: false,
        }
    }
}

impl CustomOp1 for QMatMulOp {
    fn name(&self) -> &'static str {
        "rustformers-qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = &self.weight;
        linear_op_fwd("quantized matmul", s, l, w.rows, w.cols, |x, m| {
            if self.bf16 && m >= AMX_MIN_ROWS {
                if let Some(y) = matmul_amx(w, x, m) {
                    return y;
                }
            }
            if self.bf16 && m >= BF16_MIN_ROWS {
                if let Some(y) = matmul_bf16(w, x, m) {
                    return y;
                }
            }
            matmul(w, x, m, self.isa)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Module, Tensor};

    fn weight(rows: usize, cols: usize) -> Tensor {
        let dev = Device::Cpu;
        (Tensor::arange(0f32, (rows * cols) as f32, &dev)
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
            * 0.37)
            .unwrap()
            .sin()
            .unwrap()
    }

    fn input(m: usize, cols: usize) -> Vec<f32> {
        (0..m * cols)
            .map(|i| ((i as f32) * 0.11).cos() * (1.0 + (i % 7) as f32))
            .collect()
    }

    const FORMATS: [(GgmlDType, QFormat); 10] = [
        (GgmlDType::Q4_0, QFormat::Q4_0),
        (GgmlDType::Q4_1, QFormat::Q4_1),
        (GgmlDType::Q5_0, QFormat::Q5_0),
        (GgmlDType::Q5_1, QFormat::Q5_1),
        (GgmlDType::Q8_0, QFormat::Q8_0),
        (GgmlDType::Q2K, QFormat::Q2K),
        (GgmlDType::Q3K, QFormat::Q3K),
        (GgmlDType::Q4K, QFormat::Q4K),
        (GgmlDType::Q5K, QFormat::Q5K),
        (GgmlDType::Q6K, QFormat::Q6K),
    ];

    /// `cols` for format `f`: K-quant rows hold whole super-blocks of 256, so their
    /// widths round up to one.
    fn width(f: QFormat, cols: usize) -> usize {
        cols.next_multiple_of(f.block_values())
    }

    /// A quantized product on one of the bf16 paths.
    type Path = fn(&PackedQ, &[f32], usize) -> Option<Result<Vec<f32>, String>>;

    /// The bf16 paths, AMX and AVX512-BF16 (each where it runs): equal to the f64 product
    /// of the bf16-rounded dequantized weight and bf16-rounded input, for every format,
    /// odd block counts and row counts not multiples of 16; their error against the exact
    /// f32 product stays within that of the 8-bit activation path.
    #[test]
    fn bf16_paths_are_the_bf16_product_of_the_dequantized_weight() {
        for (name, path) in [("AMX", matmul_amx as Path), ("AVX512-BF16", matmul_bf16)] {
            if path(
                &packed(GgmlDType::Q4_0, QFormat::Q4_0, 16, 64).1,
                &[0.0; 64],
                1,
            )
            .is_none()
            {
                eprintln!("NOTICE: no {name} here; that path is not exercised");
                continue;
            }
            bf16_path_check(path);
        }
    }

    fn bf16_path_check(path: Path) {
        for (t, f) in FORMATS {
            for (rows, cols, m) in [(40, 96, 70), (33, 64, 17), (64, 1024, 64), (70, 64, 5)] {
                let cols = width(f, cols);
                let (_, p) = packed(t, f, rows, cols);
                let x = input(m, cols);
                let Some(y) = path(&p, &x, m) else {
                    return;
                };
                let y = y.unwrap();
                let int = matmul(&p, &x, m, Isa::detect()).unwrap();
                let wd = p.dequantize();
                let round = |v: f32| bf16::from_f32(v).to_f32() as f64;
                let (mut err_amx, mut err_int) = (0f64, 0f64);
                for i in 0..m {
                    for j in 0..rows {
                        let (xr, wr) = (&x[i * cols..][..cols], &wd[j * cols..][..cols]);
                        let want: f64 = xr.iter().zip(wr).map(|(a, b)| round(*a) * round(*b)).sum();
                        let exact: f64 =
                            xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let got = y[i * rows + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{f:?} [{rows}x{cols}] m={m} ({i},{j}): {got} vs {want}"
                        );
                        err_amx += (got - exact).powi(2);
                        err_int += (int[i * rows + j] as f64 - exact).powi(2);
                    }
                }
                assert!(
                    err_amx <= 1.5 * err_int,
                    "{f:?}: bf16 error {err_amx} vs 8-bit path {err_int}"
                );
            }
        }
        let (_, p) = packed(GgmlDType::Q4_1, QFormat::Q4_1, 16, 64);
        if let Some(r) = path(&p, &[0.0; 10], 1) {
            assert!(r.is_err());
        }
    }

    fn packed(t: GgmlDType, f: QFormat, rows: usize, cols: usize) -> (QTensor, PackedQ) {
        let q = QTensor::quantize(&weight(rows, cols), t).unwrap();
        let p = PackedQ::from_ggml(f, rows, cols, &q.data().unwrap()).unwrap();
        (q, p)
    }

    /// How far ggml's f16-rounded activation sums (the `_1` formats) may move output
    /// `(i, j)`: `Σ_b |m_b|·|s_b|·2⁻¹⁰`; zero for the other formats.
    fn rounded_sum_slack(p: &PackedQ, a: &QActs, i: usize, j: usize) -> f32 {
        if !p.format.uses_rounded_sum() {
            return 0.0;
        }
        (0..p.nb)
            .map(|b| (p.m[j * p.nb + b].to_f32() * a.s_exact[i * p.nb + b]).abs() / 1024.0)
            .sum()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// Repacking keeps every value: our dequantization equals candle's.
    #[test]
    fn repacked_weights_dequantize_like_candle() {
        for (t, f) in FORMATS {
            let (q, p) = packed(t, f, 5, width(f, 96));
            let theirs = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(max_abs_diff(&p.dequantize(), &theirs), 0.0, "{f:?}");
        }
    }

    /// The per-block dequantization the AMX path reads (`block_values`, vectorizable)
    /// equals the plain one, block by block, for every format; runs where AMX does not.
    #[test]
    fn block_values_equal_the_dequantized_rows() {
        for (t, f) in FORMATS {
            // An odd block count where the format allows one (the lone last pair).
            let cols = width(f, 96);
            let (_, p) = packed(t, f, 3, cols);
            let mut row = vec![0f32; cols];
            let mut vals = [0f32; QK];
            for r in 0..3 {
                p.dequantize_row(r, &mut row);
                for b in 0..p.nb {
                    p.block_values(r, b, &mut vals);
                    assert_eq!(
                        &vals[..],
                        &row[b * QK..(b + 1) * QK],
                        "{f:?} row {r} block {b}"
                    );
                }
            }
        }
    }

    /// Every instruction set, every tile height (m = 1..=9 covers 4+4+1), every format:
    /// the result equals the f32 product of the dequantized weight and the dequantized
    /// 8-bit activations, up to float summation order.
    #[test]
    fn kernels_equal_the_plain_product_of_dequantized_operands() {
        // 9 blocks per row: four pairs and a lone last block.
        for (t, f, cols) in FORMATS
            .iter()
            .flat_map(|(t, f)| [(*t, *f, 256), (*t, *f, 288)])
        {
            let cols = width(f, cols);
            let rows = 37;
            let (_, p) = packed(t, f, rows, cols);
            let wd = p.dequantize();
            for m in 1..=9 {
                let x = input(m, cols);
                let acts = QActs::quantize(&x, m, cols);
                let xd = acts.dequantize();
                let mut plain = vec![0f32; m * rows];
                for i in 0..m {
                    for j in 0..rows {
                        plain[i * rows + j] = (0..cols)
                            .map(|k| xd[i * cols + k] as f64 * wd[j * cols + k] as f64)
                            .sum::<f64>() as f32;
                    }
                }
                let scale = plain.iter().fold(0f32, |a, v| a.max(v.abs()));
                for isa in Isa::all_available() {
                    let y = matmul(&p, &x, m, isa).unwrap();
                    for i in 0..m {
                        for j in 0..rows {
                            let diff = (y[i * rows + j] - plain[i * rows + j]).abs();
                            let tol = 1e-5 * scale + rounded_sum_slack(&p, &acts, i, j);
                            assert!(diff <= tol, "{f:?} {isa:?} m={m} ({i},{j}): {diff} > {tol}");
                        }
                    }
                }
            }
        }
    }

    /// The SIMD paths equal the plain integer path to float rounding.
    #[test]
    fn simd_paths_equal_the_scalar_path() {
        let rows = 70;
        for (t, f) in FORMATS {
            let cols = width(f, 576);
            let (_, p) = packed(t, f, rows, cols);
            let x = input(6, cols);
            let reference = matmul(&p, &x, 6, Isa::Scalar).unwrap();
            let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
            for isa in Isa::all_available() {
                let y = matmul(&p, &x, 6, isa).unwrap();
                assert!(
                    max_abs_diff(&y, &reference) <= 1e-5 * scale,
                    "{f:?} {isa:?}"
                );
            }
        }
    }

    /// The op follows candle's own quantized matmul (same 8-bit activation scheme; for
    /// the K-quants, whose activations candle quantizes per 256, at least as close to the
    /// exact product) and keeps leading dimensions; a large enough product takes the
    /// parallel path.
    #[test]
    fn op_follows_candle_quantized_matmul() {
        let (rows, cols) = (300, 1024);
        for (t, f) in FORMATS {
            let (q, p) = packed(t, f, rows, cols);
            let acts = QActs::quantize(&input(6, cols), 6, cols);
            let x = Tensor::from_vec(input(6, cols), (2, 3, cols), &Device::Cpu).unwrap();
            let p = Arc::new(p);
            let ours = x.apply_op1_no_bwd(&QMatMulOp::new(p.clone())).unwrap();
            assert_eq!(ours.dims(), &[2, 3, rows]);
            let theirs = candle_core::quantized::QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&x)
                .unwrap();
            let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = b.iter().fold(0f32, |acc, v| acc.max(v.abs()));
            if f.is_k() {
                // candle quantizes the activations of K-quant products per 256 values
                // (ggml's Q8_K), these kernels per 32: against the exact product of the
                // dequantized weight and the input, ours is at least as close as
                // candle's (in the sum of squares), each output within 5% of the outputs'
                // scale (8-bit activations of values up to 7).
                let (wd, xv) = (p.dequantize(), input(6, cols));
                let (mut err_ours, mut err_candle) = (0f64, 0f64);
                for i in 0..6 {
                    for j in 0..rows {
                        let exact: f64 = (0..cols)
                            .map(|k| xv[i * cols + k] as f64 * wd[j * cols + k] as f64)
                            .sum();
                        let (o, c) = (a[i * rows + j] as f64, b[i * rows + j] as f64);
                        assert!(
                            (o - exact).abs() < 5e-2 * scale as f64,
                            "{f:?} ({i},{j}): ours {o}, candle {c}, exact {exact}"
                        );
                        err_ours += (o - exact).powi(2);
                        err_candle += (c - exact).powi(2);
                    }
                }
                assert!(
                    err_ours <= err_candle,
                    "{f:?}: {err_ours} vs candle {err_candle}"
                );
                continue;
            }
            for i in 0..6 {
                for j in 0..rows {
                    // candle rounds the activation sums through f16 a little differently.
                    let tol = 1e-5 * scale + 2.0 * rounded_sum_slack(&p, &acts, i, j);
                    let diff = (a[i * rows + j] - b[i * rows + j]).abs();
                    assert!(diff <= tol, "{f:?} ({i},{j}): {diff} > {tol}");
                }
            }
        }
    }

    /// Activation rounding is ggml's `roundf` (half away from zero), exact near ties.
    #[test]
    fn activations_round_half_away_from_zero() {
        let mut x = [0f32; QK];
        x[0] = 127.0; // scale 1
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.499_999_97;
        x[4] = -0.5;
        x[5] = 3.5;
        let a = QActs::quantize(&x, 1, QK);
        assert_eq!(&a.qs[..6], &[127, 3, -3, 0, -1, 4]);
        assert_eq!(a.d[0], 1.0);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(PackedQ::from_ggml(QFormat::Q4_1, 2, 48, &[0; 60]).is_err());
        assert!(PackedQ::from_ggml(QFormat::Q4_1, 2, 64, &[0; 79]).is_err());
        // K-quants: rows of whole super-blocks of 256, 144 bytes each for Q4_K.
        assert!(PackedQ::from_ggml(QFormat::Q4K, 1, 96, &[0; 54]).is_err());
        assert!(PackedQ::from_ggml(QFormat::Q4K, 2, 256, &[0; 287]).is_err());
        assert!(PackedQ::from_ggml(QFormat::Q4K, 2, 256, &[0; 288]).is_ok());
        let p = PackedQ::from_ggml(QFormat::Q4_1, 2, 64, &[0; 80]).unwrap();
        assert!(matmul(&p, &[0.0; 63], 1, Isa::Scalar).is_err());
        let x = Tensor::zeros((1, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(x.apply_op1_no_bwd(&QMatMulOp::new(Arc::new(p))).is_err());
    }
}
