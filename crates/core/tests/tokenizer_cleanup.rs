//! `clean_up_tokenization_spaces` as transformers 5.25 applies it: on WordPiece
//! tokenizers when the config says so, never on BPE ones (it would turn "x != 2" into
//! "x!= 2") unless `clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output`.

use std::path::PathBuf;

use rustformers_core::{AutoTokenizer, EncodeOptions, TextInput};
use serde_json::{json, Value};

fn tiny_llama_tokenizer(config_edit: Value) -> (tempfile::TempDir, AutoTokenizer) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap())
            .unwrap();
    for (k, v) in config_edit.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = AutoTokenizer::from_pretrained(dir.path().to_str().unwrap()).unwrap();
    (dir, tok)
}

fn round_trip(tok: &AutoTokenizer, text: &str) -> String {
    let opts = EncodeOptions {
        add_special_tokens: false,
        ..Default::default()
    };
    let ids = tok
        .encode(TextInput::Single(text), &opts)
        .unwrap()
        .input_ids[0]
        .clone();
    tok.decode(&ids, true).unwrap()
}

#[test]
fn bpe_tokenizers_skip_the_clean_up_unless_insisted() {
    let (_d, tok) = tiny_llama_tokenizer(json!({"clean_up_tokenization_spaces": true}));
    assert_eq!(round_trip(&tok, "x != 2 , ok"), "x != 2 , ok");
    let (_d, tok) = tiny_llama_tokenizer(json!({
        "clean_up_tokenization_spaces": true,
        "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": true
    }));
    assert_eq!(round_trip(&tok, "x != 2 , ok"), "x!= 2, ok");
}
