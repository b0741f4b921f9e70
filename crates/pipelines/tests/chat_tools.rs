//! A chat given as `{"messages": [...], "tools": [...]}` renders its tools through the chat
//! template (as Python's `apply_chat_template(messages, tools=...)`), for a template that
//! uses them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use rustformers_models::LoadOptions;
use rustformers_pipelines::{Params, TextGenerationPipeline};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// tiny-llama with Qwen2.5's chat template (which lists the tools in a system turn).
fn tiny_llama_with_tool_template(dir: &Path) {
    let src = fixtures().join("tiny-llama");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let template =
        std::fs::read_to_string(fixtures().join("chat-templates/qwen2.5-instruct.jinja")).unwrap();
    // Where transformers 5.x saves it (it wins over tokenizer_config.json's).
    std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
}

#[test]
fn chat_tools_reach_the_template() {
    let dir = tempfile::tempdir().unwrap();
    tiny_llama_with_tool_template(dir.path());
    let pipe = TextGenerationPipeline::from_pretrained(
        &dir.path().to_string_lossy(),
        &LoadOptions::default(),
    )
    .unwrap();
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let tools = json!([{"type": "function", "function": {"name": "get_current_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let params = Params::new();
    let render = |input: &Value| -> String {
        let (ids, _) = pipe.request(input, &params).unwrap();
        pipe.tokenizer().decode(&ids, false).unwrap()
    };
    let plain = render(&messages);
    let with_tools = render(&json!({"messages": messages, "tools": tools}));
    assert!(!plain.contains("get_current_weather"), "{plain}");
    assert!(with_tools.contains("get_current_weather"), "{with_tools}");
    assert!(with_tools.contains("<tools>"), "{with_tools}");
    assert!(with_tools.contains("What is the weather in Paris?"));
    // `tools: null` is a chat without tools; the messages object alone is the same chat.
    assert_eq!(render(&json!({"messages": messages, "tools": null})), plain);
    assert_eq!(render(&json!({"messages": messages})), plain);
    assert!(
        pipe.prompt_tokens(&json!({"messages": messages, "tools": tools}))
            .unwrap()
            > pipe.prompt_tokens(&messages).unwrap()
    );
}
