//! The README's generate() example, compiled with the tests so it stays true:
//!
//! ```sh
//! cargo run --release --example generate -- "The capital of France is"
//! ```

use candle_core::Device;
use rustformers::generation::{generate, GenerationConfig, TextStreamer};
use rustformers::{AutoModelForCausalLM, AutoTokenizer, EncodeOptions, TextInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "The capital of France is".into());
    let reference = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
    let model = AutoModelForCausalLM::from_pretrained(reference)?;
    let tokenizer = AutoTokenizer::from_pretrained(reference)?;
    let ids = tokenizer.encode(TextInput::Single(&prompt), &EncodeOptions::default())?;
    let config = GenerationConfig {
        max_new_tokens: Some(32),
        ..Default::default()
    };
    // Stream text as it is generated.
    let mut streamer = TextStreamer::new(&tokenizer, true);
    print!("{prompt}");
    let mut on_token = |_row: usize, token: u32| {
        if let Ok(piece) = streamer.push(token) {
            print!("{piece}");
        }
        true
    };
    let out = generate(
        model.model.as_ref(),
        &ids.input_ids,
        &config,
        &Device::Cpu,
        Some(&mut on_token),
    )?;
    println!();
    eprintln!("{} new tokens", out.new_tokens[0].len());
    Ok(())
}
