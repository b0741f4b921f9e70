//! Chat-template parity with Python: real templates (Llama 3.1/3.2, Qwen2.5, Gemma 2,
//! Mistral Nemo, Phi-3 mini; see tests/fixtures/chat-templates/SOURCES.md) rendered by
//! `transformers.apply_chat_template` (tools/golden/make_chat_templates.py) must come out
//! byte for byte the same here; a case that raises in Python must be an error here too.

use std::path::PathBuf;

use rustformers_core::chat_template::{ChatOptions, ChatTemplate};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat-templates")
}

#[test]
fn real_templates_render_as_python() {
    let dir = fixtures();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("expected.json parses");
    let cases = expected["cases"].as_array().expect("cases");
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let file = case["template"].as_str().expect("template");
        let source = std::fs::read_to_string(dir.join(file)).expect("template file");
        let template = ChatTemplate::new(&source)
            .unwrap_or_else(|e| panic!("{name}: {file} does not compile: {e}"));
        let opts = ChatOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().expect("agp"),
            tools: Some(case["tools"].clone()).filter(|t| !t.is_null()),
            documents: Some(case["documents"].clone()).filter(|d| !d.is_null()),
            extra: case["extra"].as_object().expect("extra").clone(),
        };
        let got = template.render(&case["messages"], &opts);
        match (case.get("rendered"), case.get("error"), got) {
            (Some(want), _, Ok(got)) => {
                if want.as_str() != Some(got.as_str()) {
                    failures.push(format!(
                        "{name}: rendering differs\n--- python\n{}\n--- rust\n{got}",
                        want.as_str().unwrap_or_default()
                    ));
                }
            }
            (Some(_), _, Err(e)) => {
                failures.push(format!("{name}: python renders, rust fails: {e}"))
            }
            (None, Some(err), Ok(got)) => {
                failures.push(format!("{name}: python raises {err}, rust renders:\n{got}"))
            }
            (None, Some(err), Err(e)) => {
                let err = err.as_str().expect("error text");
                if !e.to_string().contains(err) {
                    failures.push(format!("{name}: error {e:?} does not say {err:?}"));
                }
            }
            (None, None, _) => {
                failures.push(format!("{name}: case has neither rendered nor error"))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Python:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
