//! Loads a checkpoint with the Auto class of a head and writes it back with
//! `save_pretrained` (model and tokenizer), for Python to load:
//!
//! ```sh
//! cargo run --example save_pretrained -- HEAD SRC DST
//! python tools/golden/check_rust_save.py SRC DST   # Python loads DST, compares outputs
//! ```
//! HEAD is one of base, seqcls, tokcls, qa, mlm, causal.

use std::path::Path;

use rustformers::{
    AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [head, src, dst] = args.as_slice() else {
        return Err(
            "usage: save_pretrained HEAD SRC DST (HEAD: base, seqcls, tokcls, qa, mlm, causal)"
                .into(),
        );
    };
    let dst = Path::new(dst);
    match head.as_str() {
        "base" => AutoModel::from_pretrained(src)?.save_pretrained(dst)?,
        "seqcls" => {
            AutoModelForSequenceClassification::from_pretrained(src)?.save_pretrained(dst)?
        }
        "tokcls" => AutoModelForTokenClassification::from_pretrained(src)?.save_pretrained(dst)?,
        "qa" => AutoModelForQuestionAnswering::from_pretrained(src)?.save_pretrained(dst)?,
        "mlm" => AutoModelForMaskedLM::from_pretrained(src)?.save_pretrained(dst)?,
        "causal" => AutoModelForCausalLM::from_pretrained(src)?.save_pretrained(dst)?,
        other => return Err(format!("unknown head `{other}`").into()),
    }
    AutoTokenizer::from_pretrained(src)?.save_pretrained(dst)?;
    println!("saved {src} ({head}) to {}", dst.display());
    Ok(())
}
