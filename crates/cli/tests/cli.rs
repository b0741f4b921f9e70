//! The `rustformers` binary: outputs equal Python's recorded pipeline outputs; bad
//! input is one error line and exit code 2, never a panic; output already printed stays.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rustformers"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A process that fails at once (a bad option) may exit before reading its input:
    // a broken pipe here is expected then, and the exit status tells the rest.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A failure: exit 2, exactly one stderr line naming the problem, no panic.
fn assert_clean_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line: {err}"
    );
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
}

fn golden_case(name: &str, task: &str, kwargs: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/expected.json", fixture(name))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let want: Value = serde_json::from_str(kwargs).unwrap();
    v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["task"] == task && c["kwargs"] == want && c["inputs"].is_string())
        .unwrap_or_else(|| panic!("no golden case {task} {kwargs}"))
        .clone()
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| close(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn run_prints_python_outputs_from_args_and_stdin() {
    let case = golden_case(
        "tiny-bert-seqcls",
        "text-classification",
        r#"{"top_k": null}"#,
    );
    let input = case["inputs"].as_str().unwrap();
    let out = bin()
        .args([
            "run",
            "text-classification",
            "--model",
            &fixture("tiny-bert-seqcls"),
            "--top-k",
            "None",
            input,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out);
    assert_eq!(got.len(), 1);
    assert!(
        close(&got[0], &case["output"]),
        "{} vs {}",
        got[0],
        case["output"]
    );

    // Same from stdin, one input per line, in batches.
    let out = run_with_stdin(
        &[
            "run",
            "text-classification",
            "--model",
            &fixture("tiny-bert-seqcls"),
            "--top-k",
            "None",
            "--batch-size",
            "2",
        ],
        &format!("{input}\n{input}\n{input}\n"),
    );
    assert!(out.status.success());
    let got = lines(&out);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|g| close(g, &case["output"])));
}

#[test]
fn token_classification_flag_names_are_python_names() {
    let case = golden_case(
        "tiny-bert-tokcls",
        "token-classification",
        r#"{"aggregation_strategy": "simple", "ignore_labels": []}"#,
    );
    let out = bin()
        .args([
            "run",
            "token-classification",
            "--model",
            &fixture("tiny-bert-tokcls"),
            "--aggregation-strategy",
            "simple",
            "--ignore-labels",
            "[]",
            case["inputs"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(close(&lines(&out)[0], &case["output"]));
}

#[test]
fn question_answering_reads_json_lines_and_keeps_output_on_a_bad_line() {
    let text =
        std::fs::read_to_string(format!("{}/expected.json", fixture("tiny-bert-qa"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let case = &v["pipelines"][0];
    assert_eq!(case["kwargs"], json!({}));
    let line = serde_json::to_string(&case["inputs"]).unwrap();
    let out = run_with_stdin(
        &[
            "run",
            "question-answering",
            "--model",
            &fixture("tiny-bert-qa"),
        ],
        &format!("{line}\n{{\"question\": \"x\"\n{line}\n"),
    );
    let got = lines(&out);
    assert_eq!(got.len(), 1, "the answer before the bad line is printed");
    assert!(close(&got[0], &case["output"]));
    assert_clean_error(&out, "stdin line 2");
}

#[test]
fn bad_task_model_flag_and_input_are_one_line_errors() {
    let out = bin().args(["run", "no-such-task", "x"]).output().unwrap();
    assert_clean_error(&out, "unknown task `no-such-task`");
    let out = bin()
        .args(["run", "fill-mask", "--model", "/no/such/dir", "x"])
        .output()
        .unwrap();
    assert_clean_error(&out, "cannot find model");
    let out = bin()
        .args(["run", "fill-mask", "--model", "nobody/nothing", "x"])
        .output()
        .unwrap();
    assert_clean_error(&out, "HF_HUB_OFFLINE");
    let out = bin()
        .args([
            "run",
            "fill-mask",
            "--model",
            &fixture("tiny-bert-mlm"),
            "--top-k",
            "many",
            "a [MASK]",
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, "top_k");
    let out = bin()
        .args([
            "run",
            "fill-mask",
            "--model",
            &fixture("tiny-bert-mlm"),
            "--frobnicate",
            "1",
            "a [MASK]",
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, "unknown parameter(s) `frobnicate`");
    let out = bin()
        .args([
            "run",
            "fill-mask",
            "--model",
            &fixture("tiny-bert-mlm"),
            "no mask",
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, "no mask_token");
    let out = bin()
        .args([
            "run",
            "fill-mask",
            "--dtype",
            "f12",
            "--model",
            &fixture("tiny-bert-mlm"),
            "x",
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, "unknown dtype");
    let out = bin().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = run_with_stdin(
        &["run", "fill-mask", "--model", &fixture("tiny-bert-mlm")],
        "",
    );
    assert_clean_error(&out, "no input");
}

/// Copies a fixture checkpoint and corrupts one of its files.
fn corrupted(file: &str, bytes: &[u8]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("tiny-bert-seqcls")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    std::fs::write(tmp.path().join(file), bytes).unwrap();
    tmp
}

#[test]
fn malformed_checkpoints_are_one_line_errors() {
    for (file, bytes, needle) in [
        ("config.json", &b"{not json"[..], "config"),
        (
            "config.json",
            &br#"{"model_type": "bert", "hidden_size": 30, "num_attention_heads": 4}"#[..],
            "not a multiple",
        ),
        (
            "config.json",
            &br#"{"model_type": "gpt-17"}"#[..],
            "known model types: bert",
        ),
        (
            "config.json",
            &br#"{"model_type": "bert", "hidden_size": "big"}"#[..],
            "hidden_size",
        ),
        (
            "model.safetensors",
            &b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}"[..],
            "invalid weights",
        ),
        ("model.safetensors", &b""[..], "too short"),
        ("tokenizer.json", &b"{\"model\": 3}"[..], "tokenizer"),
        ("tokenizer_config.json", &b"[1,2]"[..], "JSON object"),
    ] {
        let dir = corrupted(file, bytes);
        let out = bin()
            .args([
                "run",
                "text-classification",
                "--model",
                dir.path().to_str().unwrap(),
                "hello",
            ])
            .output()
            .unwrap();
        assert_clean_error(&out, needle);
    }
    // A checkpoint missing a weight names it.
    let dir = corrupted("config.json", br#"{"model_type": "bert", "vocab_size": 348, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 128, "id2label": {"0": "a", "1": "b", "2": "c"}}"#);
    let out = bin()
        .args([
            "run",
            "text-classification",
            "--model",
            dir.path().to_str().unwrap(),
            "hello",
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, "bert.encoder.layer.2");
}

#[test]
fn inspect_and_env_print_json() {
    let out = bin()
        .args(["inspect", &fixture("tiny-bert-mlm")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model_type"], "bert");
    assert_eq!(v["architectures"][0], "BertForMaskedLM");
    assert!(v["parameters"].as_u64().unwrap() > 10_000);
    assert_eq!(
        v["dtypes"]["f32"].as_u64().unwrap(),
        v["tensors"].as_u64().unwrap()
    );
    assert_eq!(v["unread_config_keys"], json!([]));
    // A key nothing reads is listed.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["attn_temperature_tuning"] = json!(true);
    std::fs::write(&path, config.to_string()).unwrap();
    let out = bin()
        .args(["inspect", &dir.path().to_string_lossy()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unread_config_keys"], json!(["attn_temperature_tuning"]));
    let out = bin().args(["env"]).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["threads"].as_u64().unwrap() >= 1);
    assert!(v["tasks"].as_array().unwrap().len() >= 6);
    let out = bin().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--top-k"));
}

#[test]
fn text_generation_gives_pythons_greedy_tokens_and_text() {
    let text = std::fs::read_to_string(format!("{}/expected.json", fixture("tiny-llama"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let case = v["greedy"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "single-1")
        .unwrap()
        .clone();
    let prompt = case["text"].as_str().unwrap();
    let model = fixture("tiny-llama");
    let out = bin()
        .args([
            "run",
            "text-generation",
            "--model",
            &model,
            "--max-new-tokens",
            "12",
            "--return-tensors",
            prompt,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out);
    assert_eq!(got[0][0]["generated_token_ids"], case["sequences"][0]);
    // The text form: the prompt followed by the decoded continuation.
    let out = bin()
        .args([
            "run",
            "text-generation",
            "--model",
            &model,
            "--max-new-tokens",
            "12",
            prompt,
        ])
        .output()
        .unwrap();
    let got = lines(&out);
    let generated = got[0][0]["generated_text"].as_str().unwrap();
    assert!(generated.starts_with(prompt), "{generated}");
    // Chat input comes back as the conversation with the reply appended.
    let chat = r#"[{"role": "user", "content": "Hello world!"}]"#;
    let out = run_with_stdin(
        &[
            "run",
            "text-generation",
            "--model",
            &model,
            "--max-new-tokens",
            "4",
        ],
        &format!("{chat}\n"),
    );
    let got = lines(&out);
    let conv = got[0][0]["generated_text"].as_array().unwrap();
    assert_eq!(conv.len(), 2);
    assert_eq!(conv[1]["role"], "assistant");
    // Bad generation options are one-line errors.
    for (flag, value, needle) in [
        ("--top-p", "2", "top_p"),
        ("--max-new-tokenz", "3", "unknown generation option"),
        ("--temperature", "0", "temperature"),
    ] {
        let out = bin()
            .args([
                "run",
                "text-generation",
                "--model",
                &model,
                flag,
                value,
                "hi",
            ])
            .output()
            .unwrap();
        assert_clean_error(&out, needle);
    }
}

#[test]
fn chat_streams_answers_keeps_history_and_resets() {
    let model = fixture("tiny-llama");
    let out = run_with_stdin(
        &["chat", &model, "--max-new-tokens", "4"],
        "Hello world!\nAnd again\n/reset\nHi\n/exit\nnever read\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("tokens/s]").count(), 3, "{err}");
    assert!(err.contains("conversation cleared"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // Bad options fail at once with one line.
    let out = run_with_stdin(&["chat", &model, "--top-p", "7"], "hi\n");
    assert_clean_error(&out, "top_p");
    // A model that is not a causal LM is a clear error.
    let out = run_with_stdin(&["chat", &fixture("tiny-bert-base")], "hi\n");
    assert_clean_error(&out, "AutoModelForCausalLM");
}

/// `--chat-template NAME` picks one of the templates transformers 5.x saves in
/// additional_chat_templates/; an unknown name is one clear error listing the names.
#[test]
fn chat_picks_a_named_template() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let extra = dir.path().join("additional_chat_templates");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(
        extra.join("terse.jinja"),
        "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    .unwrap();
    let model = dir.path().to_string_lossy().to_string();
    let out = run_with_stdin(
        &[
            "chat",
            &model,
            "--chat-template",
            "terse",
            "--max-new-tokens",
            "2",
        ],
        "Hello\n/exit\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_with_stdin(&["chat", &model, "--chat-template", "nope"], "hi\n");
    assert_clean_error(
        &out,
        "no chat template named `nope` (it has: default, terse)",
    );
}

#[test]
fn text_generation_beam_search_and_stop_strings() {
    let model = fixture("tiny-llama");
    // Beam search with two returned sequences: two outputs for the one input.
    let out = bin()
        .args([
            "run",
            "text-generation",
            "--model",
            &model,
            "--max-new-tokens",
            "6",
            "--num-beams",
            "3",
            "--num-return-sequences",
            "2",
            "Hello world!",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out)[0].as_array().unwrap().len(), 2);
    // A stop string ends the text at the first token that completes it.
    let full = bin()
        .args([
            "run",
            "text-generation",
            "--model",
            &model,
            "--max-new-tokens",
            "12",
            "--return-full-text",
            "false",
            "Hello world!",
        ])
        .output()
        .unwrap();
    let text = lines(&full)[0][0]["generated_text"]
        .as_str()
        .unwrap()
        .to_string();
    let stop: String = text.chars().skip(2).take(2).collect();
    let out = bin()
        .args([
            "run",
            "text-generation",
            "--model",
            &model,
            "--max-new-tokens",
            "12",
            "--return-full-text",
            "false",
            "--stop-strings",
            &format!("[\"{stop}\"]"),
            "Hello world!",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = lines(&out)[0][0]["generated_text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        stopped.contains(&stop) && stopped.len() < text.len(),
        "{stopped:?} vs {text:?}"
    );
}

#[test]
fn bench_prints_figures_and_rejects_unknown_work() {
    let out = bin().args(["bench", "frobnicate"]).output().unwrap();
    assert_clean_error(&out, "unknown bench work `frobnicate`");
    let out = bin()
        .args(["bench", "decode-gguf", "--runs", "0"])
        .output()
        .unwrap();
    assert_clean_error(&out, "--runs");
    // The real embedding model: skipped (with a notice) only when it is not cached and
    // real models are not required.
    let cached = rustformers_core::ModelFiles::resolve("sentence-transformers/all-MiniLM-L6-v2")
        .ok()
        .and_then(|f| f.root().map(|r| r.join("model.safetensors").is_file()))
        .unwrap_or(false);
    if !cached {
        assert_ne!(
            std::env::var("RUSTFORMERS_REQUIRE_REAL_MODELS").as_deref(),
            Ok("1"),
            "MiniLM not cached"
        );
        eprintln!("NOTICE: MiniLM not cached; bench embeddings not run");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("s.txt");
    std::fs::write(&input, "one short sentence\nanother one here\n").unwrap();
    let out = bin()
        .args([
            "bench",
            "embeddings-f32",
            "--runs",
            "2",
            "--input",
            input.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["work"], "embeddings-f32");
    assert_eq!(v["runs"], 2);
    let (min, med, max) = (
        v["min"].as_f64().unwrap(),
        v["median"].as_f64().unwrap(),
        v["max"].as_f64().unwrap(),
    );
    assert!(min > 0.0 && min <= med && med <= max, "{v}");
    // One load per process: time to the first embedding, peak RSS, weights file size.
    let out = bin()
        .args([
            "bench",
            "load-safetensors",
            "--runs",
            "1",
            "--input",
            input.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["work"], "load-safetensors");
    assert_eq!(v["unit"], "s");
    assert!(v["median"].as_f64().unwrap() > 0.0, "{v}");
    // all-MiniLM-L6-v2's model.safetensors is about 87 MB, and it is all resident.
    let (file, rss) = (
        v["file_mb"].as_f64().unwrap(),
        v["peak_rss_mb"].as_f64().unwrap(),
    );
    assert!((80.0..95.0).contains(&file), "{v}");
    assert!(rss > file, "{v}");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error() {
    // tiny-llama has max_position_embeddings 64.
    let prompt = "John lives in Paris and works for Google. ".repeat(20);
    let out = bin()
        .args([
            "run",
            "text-generation",
            "--model",
            &fixture("tiny-llama"),
            "--max-new-tokens",
            "2",
            &prompt,
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, "context of 64");
}

/// `train`: a JSONL file fine-tunes the tiny BERT classifier into a folder that `run`
/// loads with the training labels; bad files and flags are one-line errors naming the
/// line, and nothing is written for them.
#[test]
fn train_fine_tunes_into_a_folder_run_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..24 {
        let (t, l) = if i % 2 == 0 {
            ("the hot one is on", "warm")
        } else {
            ("it was for you and", "cold")
        };
        text.push_str(&format!("{{\"text\": \"{t}\", \"label\": \"{l}\"}}\n"));
    }
    let train = dir.path().join("train.jsonl");
    std::fs::write(&train, &text).unwrap();
    let out = dir.path().join("out");
    let model = fixture("tiny-bert-seqcls");
    let o = bin()
        .args([
            "train",
            "--task",
            "text-classification",
            "--model",
            &model,
            "--train-file",
            train.to_str().unwrap(),
            "--eval-file",
            train.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--ignore-mismatched-sizes",
            "--num-train-epochs",
            "8",
            "--learning-rate",
            "5e-3",
            "--per-device-train-batch-size",
            "8",
            "--logging-steps",
            "2",
            "--save-strategy",
            "epoch",
            "--save-total-limit",
            "1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = lines(&o);
    assert_eq!(metrics.len(), 1);
    assert!(metrics[0]["train_loss"].as_f64().is_some());
    assert_eq!(
        metrics[0]["eval_accuracy"].as_f64(),
        Some(1.0),
        "{}",
        metrics[0]
    );
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer_state.json",
        "training_curves.png",
        "checkpoint-24/optimizer.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["id2label"],
        serde_json::json!({"0": "cold", "1": "warm"})
    );
    let o = bin()
        .args([
            "run",
            "text-classification",
            "--model",
            out.to_str().unwrap(),
            "the hot one is on",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines(&o)[0][0]["label"], "warm");

    // Errors: each one line, nothing written.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\" \"label\": 1}\n",
    )
    .unwrap();
    let other = dir.path().join("other.jsonl");
    std::fs::write(
        &other,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"y\"}\n",
    )
    .unwrap();
    let nolabel = dir.path().join("nolabel.jsonl");
    std::fs::write(&nolabel, "{\"text\": \"a\", \"target\": \"x\"}\n").unwrap();
    let out2 = dir.path().join("out2");
    let o2 = out2.to_str().unwrap();
    let (b, t, n) = (
        bad.to_str().unwrap(),
        train.to_str().unwrap(),
        nolabel.to_str().unwrap(),
    );
    let oth = other.to_str().unwrap();
    for (args, needle) in [
        (vec!["--train-file", b], "bad.jsonl:2: invalid JSON"),
        (
            vec!["--train-file", n],
            "nolabel.jsonl:1: no label column `label`",
        ),
        (
            vec!["--train-file", t, "--eval-file", oth],
            "other.jsonl:1: label `x` is not one of the training labels (cold, warm)",
        ),
        (
            vec!["--train-file", t, "--learning-rat", "1"],
            "unknown training argument --learning_rat",
        ),
        (
            vec!["--train-file", t, "--lora-alpha", "8"],
            "need --lora-r",
        ),
        (
            vec!["--train-file", t, "--warmup-ratio", "3"],
            "warmup_ratio",
        ),
    ] {
        let mut full = vec![
            "train",
            "--task",
            "text-classification",
            "--model",
            &model,
            "--output-dir",
            o2,
        ];
        full.extend(args);
        let o = bin().args(&full).output().unwrap();
        assert_clean_error(&o, needle);
        assert!(!out2.exists(), "{needle}: output written");
    }
    let o = bin()
        .args(["train", "--task", "summarization", "--model", &model])
        .output()
        .unwrap();
    assert_clean_error(&o, "training supports text-classification");
    // The head of the fixture has 3 labels: training 2 without the flag says what to do.
    let o = bin()
        .args([
            "train",
            "--task",
            "text-classification",
            "--model",
            &model,
            "--train-file",
            t,
            "--output-dir",
            o2,
        ])
        .output()
        .unwrap();
    assert_clean_error(&o, "--ignore-mismatched-sizes");
}

/// `train`'s output folder as Python's example scripts treat it, with a CSV file (ids in
/// a label column of another name) and an arguments file: a folder that holds other
/// files is refused and they stay; one with checkpoints resumes from the newest; a bad
/// training file leaves a trained folder untouched; --overwrite-output-dir trains into a
/// used folder.
#[test]
fn train_output_folders_csv_ids_and_an_args_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("sentence,target\n");
    for i in 0..16 {
        let (t, l) = if i % 2 == 0 {
            ("the hot one", 1)
        } else {
            ("it was for you", 0)
        };
        csv.push_str(&format!("{t},{l}\n"));
    }
    let train = dir.path().join("train.csv");
    std::fs::write(&train, csv).unwrap();
    let out = dir.path().join("out");
    let args_file = dir.path().join("args.json");
    std::fs::write(
        &args_file,
        serde_json::json!({"output_dir": out, "num_train_epochs": 2, "save_strategy": "epoch",
            "learning_rate": 5e-3, "per_device_train_batch_size": 8, "logging_steps": 1})
        .to_string(),
    )
    .unwrap();
    let model = fixture("tiny-bert-seqcls");
    let run = |file: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--task",
            "text-classification",
            "--model",
            &model,
            "--train-file",
            file.to_str().unwrap(),
            "--label-column",
            "target",
            "--args-file",
            args_file.to_str().unwrap(),
            "--ignore-mismatched-sizes",
        ];
        a.extend(extra);
        bin().args(&a).output().unwrap()
    };
    let o = run(&train, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    // Ids 0 and 1 of a 2-label set (the fixture's config names 3 labels).
    assert_eq!(
        cfg["id2label"],
        serde_json::json!({"0": "LABEL_0", "1": "LABEL_1"})
    );
    let step = |dir: &std::path::Path| {
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap())
                .unwrap();
        st["global_step"].as_u64().unwrap()
    };
    assert_eq!(step(&out), 4);
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    // A bad file: one error line, the trained folder as it was.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "sentence,target\nthe hot one,1\nit was,0,3\n").unwrap();
    let o = run(&bad, &[]);
    assert_clean_error(&o, "bad.csv:3: 3 fields, the header has 2");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        weights
    );
    // Checkpoints in the folder: the run resumes from the newest and goes on to 4 epochs.
    let o = run(&train, &["--num-train-epochs", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resuming training at"), "{err}");
    assert_eq!(step(&out), 8);
    assert!(out.join("checkpoint-4").is_dir() && out.join("checkpoint-8").is_dir());
    // Other files and no checkpoint: refused, the file kept; then trained into with the flag.
    let used = dir.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("notes.txt"), "mine").unwrap();
    let o = run(&train, &["--output-dir", used.to_str().unwrap()]);
    assert_clean_error(&o, "already exists and is not empty");
    let o = run(
        &train,
        &[
            "--output-dir",
            used.to_str().unwrap(),
            "--overwrite-output-dir",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(used.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(used.join("model.safetensors").is_file());
    // An empty folder, and one holding only what a killed save left, are trained into
    // (the Trainer clears the leftover).
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join(".checkpoint-3.tmp-77")).unwrap();
    let o = run(&train, &["--output-dir", empty.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!empty.join(".checkpoint-3.tmp-77").exists());
    // An explicit checkpoint to resume from, in another folder: it goes on from step 4.
    let other = dir.path().join("other");
    let o = run(
        &train,
        &[
            "--output-dir",
            other.to_str().unwrap(),
            "--resume-from-checkpoint",
            out.join("checkpoint-4").to_str().unwrap(),
            "--num-train-epochs",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(step(&other), 6);
    assert!(!other.join("checkpoint-4").exists() && other.join("checkpoint-6").is_dir());
    // `last` in a folder without checkpoints: one error line.
    let fresh = dir.path().join("fresh");
    let o = run(
        &train,
        &[
            "--output-dir",
            fresh.to_str().unwrap(),
            "--resume-from-checkpoint",
            "last",
        ],
    );
    assert_clean_error(&o, "--resume-from-checkpoint last: no checkpoint-N in");
}

/// `train` for the other tasks: token classification (tags aligned to first sub-tokens),
/// masked LM and causal LM (texts in blocks) each write a folder the matching `run`
/// pipeline loads; the causal run's perplexity on its training text falls.
#[test]
fn train_token_classification_fill_mask_and_text_generation() {
    let dir = tempfile::tempdir().unwrap();
    let ner = dir.path().join("ner.jsonl");
    let mut text = String::new();
    for _ in 0..8 {
        text.push_str("{\"tokens\": [\"john\", \"lives\", \"in\", \"paris\"], \"ner_tags\": [\"B-PER\", \"O\", \"O\", \"B-LOC\"]}\n");
        text.push_str("{\"tokens\": [\"mary\", \"was\", \"at\", \"home\"], \"ner_tags\": [\"B-PER\", \"O\", \"O\", \"O\"]}\n");
    }
    std::fs::write(&ner, text).unwrap();
    let lm = dir.path().join("lm.jsonl");
    let mut text = String::new();
    for i in 0..16 {
        text.push_str(&format!(
            "{{\"text\": \"the cat sat on the mat and it was {} for you\"}}\n",
            i % 3
        ));
    }
    std::fs::write(&lm, text).unwrap();
    let common = [
        "--num-train-epochs",
        "8",
        "--learning-rate",
        "3e-3",
        "--save-strategy",
        "no",
        "--logging-steps",
        "2",
    ];
    let cases: [(&str, &str, &std::path::Path, &[&str], &str); 3] = [
        (
            "token-classification",
            "tiny-bert-tokcls",
            &ner,
            &["--ignore-mismatched-sizes"],
            "john lives in paris",
        ),
        (
            "fill-mask",
            "tiny-bert-mlm",
            &lm,
            &["--block-size", "8"],
            "the cat sat on the [MASK].",
        ),
        (
            "text-generation",
            "tiny-llama",
            &lm,
            &["--block-size", "8"],
            "the cat",
        ),
    ];
    for (task, model, file, extra, input) in cases {
        let out = dir.path().join(task);
        let model = fixture(model);
        let mut args = vec![
            "train",
            "--task",
            task,
            "--model",
            &model,
            "--train-file",
            file.to_str().unwrap(),
            "--eval-file",
            file.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ];
        args.extend(common);
        args.extend(extra);
        let o = bin().args(&args).output().unwrap();
        assert!(
            o.status.success(),
            "{task}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let m = &lines(&o)[0];
        assert!(m["train_loss"].as_f64().is_some(), "{task}: {m}");
        assert!(m["eval_loss"].as_f64().is_some(), "{task}: {m}");
        if task == "text-generation" {
            assert!(m["perplexity"].as_f64().unwrap() < 40.0, "{m}");
        }
        if task == "token-classification" {
            assert!(m["eval_accuracy"].as_f64().unwrap() >= 0.9, "{m}");
            let cfg: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(
                cfg["id2label"],
                serde_json::json!({"0": "B-LOC", "1": "B-PER", "2": "O"})
            );
        }
        let o = bin()
            .args([
                "run",
                task,
                "--model",
                out.to_str().unwrap(),
                "--max-new-tokens",
                "3",
                input,
            ])
            .output()
            .unwrap();
        let o = if task == "text-generation" {
            o
        } else {
            bin()
                .args(["run", task, "--model", out.to_str().unwrap(), input])
                .output()
                .unwrap()
        };
        assert!(
            o.status.success(),
            "{task} run: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(lines(&o).len(), 1, "{task}");
    }
    // A GGUF model cannot be trained directly.
    let o = bin()
        .args([
            "train",
            "--task",
            "text-generation",
            "--model",
            &fixture("gguf/tiny-qwen3.gguf"),
            "--train-file",
            lm.to_str().unwrap(),
            "--output-dir",
            dir.path().join("g").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_clean_error(&o, "convert it first");
}

/// `train --lora-r`: only adapters train; the folder is a PEFT adapter (no full weights)
/// that `run --model DIR` loads on its base model.
#[test]
fn train_lora_writes_a_peft_adapter_run_loads() {
    let dir = tempfile::tempdir().unwrap();
    let lm = dir.path().join("lm.jsonl");
    let text: String = (0..12)
        .map(|i| format!("{{\"text\": \"the cat sat on the mat {}\"}}\n", i % 3))
        .collect();
    std::fs::write(&lm, text).unwrap();
    // Llama's linear layers and GPT-2's Conv1D (PEFT's fan_in_fan_out).
    for (name, targets, fan_in_fan_out) in [
        ("tiny-llama", serde_json::json!(["q_proj", "v_proj"]), false),
        ("tiny-gpt2", serde_json::json!(["c_attn"]), true),
    ] {
        let out = dir.path().join(format!("out-{name}"));
        let model = fixture(name);
        let o = bin()
            .args([
                "train",
                "--task",
                "text-generation",
                "--model",
                &model,
                "--train-file",
                lm.to_str().unwrap(),
                "--output-dir",
                out.to_str().unwrap(),
                "--lora-r",
                "4",
                "--lora-alpha",
                "8",
                "--block-size",
                "8",
                "--num-train-epochs",
                "2",
                "--learning-rate",
                "1e-2",
                "--save-strategy",
                "no",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.join("adapter_model.safetensors").is_file());
        assert!(
            !out.join("model.safetensors").exists(),
            "a LoRA run saves only the adapter"
        );
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["target_modules"], targets);
        assert_eq!(cfg["fan_in_fan_out"], fan_in_fan_out);
        assert_eq!(cfg["task_type"], "CAUSAL_LM");
        let o = bin()
            .args([
                "run",
                "text-generation",
                "--model",
                out.to_str().unwrap(),
                "--max-new-tokens",
                "3",
                "the cat",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(lines(&o).len(), 1);
    }
    let model = fixture("tiny-llama");
    for (args, needle) in [
        (vec!["--lora-r", "0"], "rank"),
        (
            vec!["--lora-r", "4", "--lora-target-modules", "nothing"],
            "match no linear layer",
        ),
        (
            vec!["--lora-r", "4", "--lora-dropout", "1.5"],
            "probability",
        ),
    ] {
        let mut full = vec![
            "train",
            "--task",
            "text-generation",
            "--model",
            &model,
            "--train-file",
            lm.to_str().unwrap(),
            "--output-dir",
            dir.path().join("bad").to_str().unwrap().to_string().leak(),
        ];
        full.extend(args);
        let o = bin().args(&full).output().unwrap();
        assert_clean_error(&o, needle);
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A child process killed if the test fails before it exits.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits up to `secs` for the child to exit.
fn wait_exit(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < secs {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

#[test]
fn serve_answers_over_http_and_exits_0_on_sigterm() {
    let model = fixture("tiny-llama");
    let port = free_port();
    let child = bin()
        .args([
            "serve",
            "--model",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--max-batch-size",
            "2",
            "--max-queue",
            "4",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let stderr = |c: &mut Reaped| {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = c.0.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    };
    // Up once /health answers.
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("serve exited with {status}: {}", stderr(&mut child));
        }
        if let Ok((200, body)) = http(port, "GET", "/health", "") {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "ok");
            break;
        }
        assert!(t0.elapsed().as_secs() < 120, "serve did not come up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, body) = http(port, "GET", "/v1/models", "").unwrap();
    assert_eq!(code, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], model.as_str());
    // A greedy completion: OpenAI's shape, and the text `run text-generation` prints.
    let req = serde_json::json!({"prompt": "The cat", "max_tokens": 6, "temperature": 0,
        "ignore_eos": true});
    let (code, body) = http(port, "POST", "/v1/completions", &req.to_string()).unwrap();
    assert_eq!(code, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["object"], "text_completion");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"), "{r}");
    assert_eq!(r["model"], model.as_str());
    assert_eq!(r["choices"].as_array().unwrap().len(), 1);
    assert_eq!(r["choices"][0]["index"], 0);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let usage = &r["usage"];
    assert_eq!(usage["completion_tokens"], 6);
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    assert_eq!(usage["total_tokens"], prompt_tokens + 6);
    let out = bin()
        .args([
            "run",
            "text-generation",
            "--model",
            &model,
            "--max-new-tokens",
            "6",
            "--min-new-tokens",
            "6",
            "--return-full-text",
            "false",
            "The cat",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        r["choices"][0]["text"],
        lines(&out)[0][0]["generated_text"],
        "{r}"
    );
    // A bad request is answered in OpenAI's error shape and the server stays up.
    let (code, body) = http(port, "POST", "/v1/completions", "{not json").unwrap();
    assert_eq!(code, 400);
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(http(port, "GET", "/health", "").unwrap().0, 200);
    // SIGTERM: a clean exit, code 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child.0, 60).expect("serve did not exit after SIGTERM");
    let err = stderr(&mut child);
    assert_eq!(status.code(), Some(0), "{status}: {err}");
    assert!(
        err.contains(&format!("serving on http://127.0.0.1:{port}/v1")),
        "{err}"
    );
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}

#[test]
fn serve_refuses_a_zero_queue_or_batch_at_start() {
    for (flag, needle) in [
        ("--max-queue", "--max-queue 0"),
        ("--max-batch-size", "--max-batch-size 0"),
    ] {
        let out = bin()
            .args([
                "serve",
                "--model",
                &fixture("tiny-llama"),
                "--port",
                "1",
                flag,
                "0",
            ])
            .output()
            .unwrap();
        assert_clean_error(&out, needle);
        assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
    }
}
