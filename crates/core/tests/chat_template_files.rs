//! Chat templates as transformers 5.25 saves and loads them (tools/golden/
//! make_chat_checkpoints.py): chat_template.jinja and additional_chat_templates/*.jinja
//! replace tokenizer_config.json's templates (tiny-chat-5x, tiny-chat-precedence), the
//! 4.x form inside tokenizer_config.json still loads (tiny-chat-legacy-config); the
//! template is picked as `get_chat_template` picks it (a name, `tool_use` with tools,
//! else `default`, else the argument as a template), and renders and tokenizes as Python.
//! A save writes the 5.x files again, byte for byte.

use std::path::PathBuf;

use rustformers_core::chat_template::ChatOptions;
use rustformers_core::AutoTokenizer;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn check(name: &str) -> usize {
    let dir = fixture(name);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tok = AutoTokenizer::from_pretrained(dir.to_str().unwrap()).unwrap();
    let loaded_names = expected["loaded"]["chat_template_names"].as_array();
    let loaded_sources = expected["loaded_chat_template"].as_object();
    assert!(
        loaded_names.is_some() || loaded_sources.is_some(),
        "{name}: the fixture records what Python loaded"
    );
    if let Some(names) = loaded_names {
        let mut got = tok.chat_template_names();
        got.sort();
        assert_eq!(
            got,
            names
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect::<Vec<_>>(),
            "{name}"
        );
    }
    if let Some(loaded) = loaded_sources {
        for (template_name, source) in loaded {
            assert_eq!(
                tok.named_chat_template(template_name),
                source.as_str(),
                "{name}"
            );
        }
        assert_eq!(tok.chat_template_names().len(), loaded.len(), "{name}");
    }
    let mut checked = 0;
    for case in expected["renders"].as_array().unwrap() {
        let what = format!("{name} {}", case["name"]);
        // The special tokens (`extra` in the fixture) come from the tokenizer's files.
        let opts = ChatOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap_or(false),
            tools: Some(case["tools"].clone()).filter(|t| !t.is_null()),
            chat_template: case["chat_template"].as_str().map(str::to_string),
            ..Default::default()
        };
        let text = tok
            .apply_chat_template(&case["messages"], &opts)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(text, case["rendered"].as_str().unwrap(), "{what}");
        if let Some(ids) = case.get("input_ids") {
            let enc = tok
                .apply_chat_template_tokenized(&case["messages"], &opts, false)
                .unwrap();
            let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
            assert_eq!(enc.input_ids, ids, "{what}");
        }
        checked += 1;
    }
    checked
}

#[test]
fn template_files_load_pick_and_render_as_python() {
    let n =
        check("tiny-chat-5x") + check("tiny-chat-legacy-config") + check("tiny-chat-precedence");
    assert!(n >= 15, "only {n} renders");
}

#[test]
fn save_writes_the_template_files_as_5x() {
    let src = fixture("tiny-chat-5x");
    let tok = AutoTokenizer::from_pretrained(src.to_str().unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    tok.save_pretrained(out.path()).unwrap();
    for file in [
        "chat_template.jinja",
        "additional_chat_templates/tool_use.jinja",
    ] {
        assert_eq!(
            std::fs::read(out.path().join(file)).unwrap(),
            std::fs::read(src.join(file)).unwrap(),
            "{file}"
        );
    }
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert!(config.get("chat_template").is_none());
    let again = AutoTokenizer::from_pretrained(out.path().to_str().unwrap()).unwrap();
    assert_eq!(again.chat_template_names(), tok.chat_template_names());
    // The 4.x form (templates inside tokenizer_config.json) is saved in the 5.x form too.
    let legacy =
        AutoTokenizer::from_pretrained(fixture("tiny-chat-legacy-config").to_str().unwrap())
            .unwrap();
    let out = tempfile::tempdir().unwrap();
    legacy.save_pretrained(out.path()).unwrap();
    assert!(out.path().join("chat_template.jinja").is_file());
    assert!(out
        .path()
        .join("additional_chat_templates/tool_use.jinja")
        .is_file());
}
