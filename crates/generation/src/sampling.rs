//! A small seeded RNG (splitmix64) and categorical sampling, so a seed reproduces the
//! same tokens on every machine.

/// splitmix64: tiny, fast, and good enough for sampling.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the clock, for unseeded sampling.
    pub fn from_entropy() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x853c_49e6_748f_ea9b);
        Self(t ^ (std::process::id() as u64).rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws an index with probability proportional to `probs` (which need not sum to 1).
pub fn sample(probs: &[f32], rng: &mut Rng) -> usize {
    let total: f64 = probs.iter().map(|p| *p as f64).sum();
    if total.is_nan() || total <= 0.0 {
        return crate::argmax(probs);
    }
    let mut r = rng.next_f64() * total;
    let mut last = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > 0.0 {
            last = i;
            r -= *p as f64;
            if r < 0.0 {
                return i;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_probabilities() {
        let probs = [0.1f32, 0.0, 0.6, 0.3];
        let mut rng = Rng::new(1);
        let mut counts = [0usize; 4];
        let n = 100_000;
        for _ in 0..n {
            counts[sample(&probs, &mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        for (i, p) in probs.iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            // 5 standard deviations of a binomial proportion.
            let sd = (*p as f64 * (1.0 - *p as f64) / n as f64).sqrt();
            assert!((f - *p as f64).abs() <= 5.0 * sd + 1e-9, "{i}: {f} vs {p}");
        }
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
