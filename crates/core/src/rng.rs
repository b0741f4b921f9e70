//! A small seeded generator (SplitMix64) for what must be reproducible from a seed: the
//! initialisation of weights a checkpoint lacks, data shuffling, masking. Not Python's
//! generator: runs are reproducible across rustformers runs, not against PyTorch.

/// SplitMix64's increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function of a state.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `out[i]`: `hit` where draw `i + 1` after state `base` has `(x >> 11) < below`.
#[inline(always)]
fn bernoulli_body<T: Copy>(base: u64, below: u64, hit: T, miss: T, out: &mut [T]) {
    for (i, o) in out.iter_mut().enumerate() {
        let x = mix(base.wrapping_add(GAMMA.wrapping_mul(i as u64 + 1)));
        *o = if (x >> 11) < below { hit } else { miss };
    }
}

/// [`bernoulli_body`] compiled for AVX-512 (64-bit multiplies in vectors).
///
/// # Safety
/// The CPU has AVX-512 F and DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2")]
unsafe fn bernoulli_avx512<T: Copy>(base: u64, below: u64, hit: T, miss: T, out: &mut [T]) {
    bernoulli_body(base, below, hit, miss, out)
}

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The generator's state (to save with a checkpoint and resume from).
    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Draw `i` from now (`0` is what `next_u64` gives next), without drawing: the
    /// generator is a counter, so any draw is one step. Lets draws be made in parallel.
    pub fn peek(&self, i: u64) -> u64 {
        mix(self
            .state
            .wrapping_add(GAMMA.wrapping_mul(i.wrapping_add(1))))
    }

    /// Moves on by `n` draws (as `n` calls of `next_u64`).
    pub fn skip(&mut self, n: u64) {
        self.state = self.state.wrapping_add(GAMMA.wrapping_mul(n));
    }

    /// The value of `uniform` for a draw `x` of `next_u64`.
    pub fn to_uniform(x: u64) -> f64 {
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `out[i]` from draw `first + i` from now (see `peek`): `hit` where
    /// `uniform()` of that draw is below `p`, `miss` otherwise. Draws nothing.
    pub fn bernoulli_fill<T: Copy>(&self, first: u64, p: f64, hit: T, miss: T, out: &mut [T]) {
        // uniform() is (x >> 11) / 2^53 exactly, so `uniform() < p` holds exactly when
        // the integer (x >> 11) is below ⌈p · 2^53⌉ (NaN and p ≤ 0: never).
        let scale = (1u64 << 53) as f64;
        let below = (p * scale).ceil().clamp(0.0, scale) as u64;
        let base = self.state.wrapping_add(GAMMA.wrapping_mul(first));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: AVX-512 F and DQ were detected on this CPU.
            return unsafe { bernoulli_avx512(base, below, hit, miss, out) };
        }
        bernoulli_body(base, below, hit, miss, out)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        Self::to_uniform(self.next_u64())
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_well_spread() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(a.next_u64(), b.next_u64());
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| a.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        let mut v: Vec<usize> = (0..10).collect();
        a.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert!((0..1000).all(|_| a.below(3) < 3));
    }

    /// `peek(i)` is the `i`-th next draw and `skip(n)` lands where `n` draws land.
    #[test]
    fn peek_and_skip_follow_the_sequence() {
        let a = Rng::new(99);
        let mut b = a.clone();
        let seq: Vec<u64> = (0..50).map(|_| b.next_u64()).collect();
        for (i, x) in seq.iter().enumerate() {
            assert_eq!(a.peek(i as u64), *x);
        }
        let mut c = a.clone();
        c.skip(50);
        assert_eq!(c, b);
        assert_eq!(c.next_u64(), b.next_u64());
        // bernoulli_fill is `uniform() < p` of the same draws, from any first draw.
        for p in [0.0, 0.1, 0.5, 0.999, f64::NAN] {
            let mut out = [0u8; 37];
            a.bernoulli_fill(7, p, 1, 2, &mut out);
            for (i, o) in out.iter().enumerate() {
                let want = if Rng::to_uniform(a.peek(7 + i as u64)) < p {
                    1
                } else {
                    2
                };
                assert_eq!(*o, want, "p {p}, draw {i}");
            }
        }
    }
}
