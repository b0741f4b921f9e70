//! rustformers generation: `GenerationConfig` (+ generation_config.json), one file per
//! logits processor, greedy search and sampling over left-padded batches with the KV
//! cache, and UTF-8-safe streaming.

pub mod config;
pub mod generate;
pub mod processors;
pub mod sampling;
pub mod streamer;

pub use config::GenerationConfig;
pub use generate::{generate, GenerateOutput};
pub use streamer::TextStreamer;

/// Index of the largest value, the first on ties (torch.argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}
