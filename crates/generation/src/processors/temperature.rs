//! `TemperatureLogitsWarper`: scores / temperature.

use super::LogitsProcessor;

#[derive(Debug, Clone)]
pub struct Temperature(f32);

impl Temperature {
    pub fn new(t: f32) -> Self {
        Self(t)
    }
}

impl LogitsProcessor for Temperature {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        for s in scores.iter_mut() {
            *s /= self.0;
        }
    }
}
