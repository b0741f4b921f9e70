//! The server on 127.0.0.1 (tiny Llama generating, tiny BERT embedding), driven over
//! HTTP: OpenAI response shapes, greedy output equal to the pipeline's, SSE streaming,
//! stop sequences, n > 1, embeddings, every bad input answered in OpenAI's error shape
//! with the server still up, a queue full under load refused (429, embeddings too) until
//! its streams end, n beyond the queue a 400, the metrics' time-to-first-token and stream
//! histograms and prompt-token counts, the embeddings input cap, concurrent streams all
//! completed and batched, logprobs, usage chunks, seeded sampling equal to the
//! pipeline's, tools through the chat template, content parts, over-long prompts,
//! streamed stops, max_completion_tokens, a disconnecting client cancelled and a shutdown
//! that drains the stream in flight (real SmolLM2).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use rustformers_core::AutoTokenizer;
use rustformers_models::LoadOptions;
use rustformers_pipelines::{FeatureExtractionPipeline, Params, Pipeline, TextGenerationPipeline};
use rustformers_server::{Models, ServerConfig};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    generator: Arc<TextGenerationPipeline>,
    embedder: Arc<FeatureExtractionPipeline>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(max_queue: usize) -> Server {
    start_with(&fixture("tiny-llama"), max_queue)
}

fn start_with(generator: &str, max_queue: usize) -> Server {
    let config = ServerConfig {
        max_queue,
        ..Default::default()
    };
    start_config(generator, config)
}

fn start_config(generator: &str, config: ServerConfig) -> Server {
    let opts = LoadOptions::default();
    let generator = Arc::new(TextGenerationPipeline::from_pretrained(generator, &opts).unwrap());
    let embedder = Arc::new(
        FeatureExtractionPipeline::from_pretrained(&fixture("tiny-bert-base"), &opts).unwrap(),
    );
    let tok = Arc::new(AutoTokenizer::from_pretrained(&fixture("tiny-bert-base")).unwrap());
    let models = Models {
        generator: Some(("tiny-llama".into(), generator.clone())),
        embedder: Some(("tiny-bert".into(), embedder.clone(), tok)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            rustformers_server::serve_on(listener, models, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    Server {
        base: format!("http://{addr}"),
        stop: Some(tx),
        thread: Some(thread),
        generator,
        embedder,
    }
}

/// POSTs `body` (raw text), returning status and JSON.
fn post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    let r = ureq::post(&format!("{}{path}", s.base))
        .set("Content-Type", "application/json")
        .send_string(body);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    let v: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    (status, v)
}

fn get(s: &Server, path: &str) -> (u16, String) {
    let r = ureq::get(&format!("{}{path}", s.base)).call().unwrap();
    (r.status(), r.into_string().unwrap())
}

/// The SSE `data:` payloads of a streaming POST.
fn stream(s: &Server, path: &str, body: &Value) -> Vec<String> {
    let r = ureq::post(&format!("{}{path}", s.base))
        .send_json(body.clone())
        .unwrap();
    assert!(r.content_type().starts_with("text/event-stream"));
    BufReader::new(r.into_reader())
        .lines()
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

fn chat() -> Value {
    json!([{"role": "user", "content": "Hello there, how are you?"}])
}

#[test]
fn openai_endpoints_answer_as_openai_does() {
    let s = start(64);
    let (code, body) = get(&s, "/health");
    assert_eq!(code, 200);
    assert!(body.contains("\"ok\""));
    let (_, body) = get(&s, "/v1/models");
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-llama");
    assert_eq!(models["data"][1]["id"], "tiny-bert");

    // Greedy chat equals the pipeline's own greedy reply.
    let mut params = Params::new();
    params.insert("max_new_tokens".into(), json!(8));
    params.insert("do_sample".into(), json!(false));
    let (want, want_tokens) = s.generator.stream(&chat(), &params, &mut |_| {}).unwrap();
    let req = json!({"model": "tiny-llama", "messages": chat(), "max_tokens": 8, "temperature": 0});
    let (code, r) = post(&s, "/v1/chat/completions", &req.to_string());
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(r["usage"]["completion_tokens"], want_tokens);
    let prompt_tokens = s.generator.prompt_tokens(&chat()).unwrap();
    assert_eq!(r["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(r["usage"]["total_tokens"], prompt_tokens + want_tokens);
    assert_eq!(
        r["choices"][0]["finish_reason"],
        if want_tokens == 8 { "length" } else { "stop" }
    );

    // The same as a stream: role first, the deltas add up to the text, [DONE] last.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let events = stream(&s, "/v1/chat/completions", &sreq);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want);
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // Completions with a stop sequence: the text ends before it.
    let (_, full) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat", "max_tokens": 12, "temperature": 0}).to_string(),
    );
    let full_text = full["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(full["object"], "text_completion");
    assert!(full_text.chars().count() > 3, "{full_text:?}");
    {
        let stop: String = full_text.chars().skip(2).take(2).collect();
        let (_, cut) = post(
            &s,
            "/v1/completions",
            &json!({"prompt": "The cat", "max_tokens": 12, "temperature": 0, "stop": [stop.clone()]}).to_string(),
        );
        let t = cut["choices"][0]["text"].as_str().unwrap();
        assert!(!t.contains(&stop), "{t:?} contains {stop:?}");
        assert!(full_text.starts_with(t));
        assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    }

    // n = 2 with sampling and a seed: two choices, reproducible.
    let nreq = json!({"messages": chat(), "max_tokens": 6, "n": 2, "seed": 5, "temperature": 0.9});
    let (_, a) = post(&s, "/v1/chat/completions", &nreq.to_string());
    let (_, b) = post(&s, "/v1/chat/completions", &nreq.to_string());
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    assert_eq!(a["choices"], b["choices"]);

    // A strong frequency penalty changes a greedy reply that repeats tokens, and the
    // reply equals the pipeline's with the same penalty.
    let mut pen = Params::new();
    pen.insert("max_new_tokens".into(), json!(12));
    pen.insert("do_sample".into(), json!(false));
    pen.insert("frequency_penalty".into(), json!(2.0));
    pen.insert("presence_penalty".into(), json!(1.0));
    let (want_pen, _) = s.generator.stream(&chat(), &pen, &mut |_| {}).unwrap();
    let mut plain = pen.clone();
    plain.remove("frequency_penalty");
    plain.remove("presence_penalty");
    let (want_plain, _) = s.generator.stream(&chat(), &plain, &mut |_| {}).unwrap();
    assert_ne!(want_pen, want_plain, "the penalties changed nothing");
    let (code, p) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": chat(), "max_tokens": 12, "temperature": 0,
            "frequency_penalty": 2.0, "presence_penalty": 1.0})
        .to_string(),
    );
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["choices"][0]["message"]["content"], want_pen.as_str());

    // Embeddings: the pipeline's vectors.
    let (code, e) = post(
        &s,
        "/v1/embeddings",
        &json!({"model": "tiny-bert", "input": ["one text", "two"]}).to_string(),
    );
    assert_eq!(code, 200, "{e}");
    let want = s.embedder.embed(&["one text", "two"], 32).unwrap();
    for (i, w) in want.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(e["data"][i]["embedding"].clone()).unwrap();
        assert_eq!(&got, w);
    }
    assert!(e["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    // Bad input: OpenAI's error shape, and the server keeps serving.
    for (path, body, status, needle) in [
        ("/v1/chat/completions", "{not json", 400, "not valid JSON"),
        (
            "/v1/chat/completions",
            r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}"#,
            404,
            "gpt-9",
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "tiny-llama"}"#,
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}"#,
            400,
            "context",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 7}"#,
            400,
            "temperature",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": ["hi"]}"#,
            400,
            "role",
        ),
        ("/v1/completions", r#"{"prompt": 5}"#, 400, "prompt"),
        ("/v1/embeddings", r#"{"input": []}"#, 400, "input"),
        ("/v1/nothing", "{}", 404, "no such endpoint"),
    ] {
        let (code, v) = post(&s, path, body);
        assert_eq!(code, status, "{path} {body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
        assert!(v["error"]["type"].is_string());
        assert_eq!(get(&s, "/health").0, 200);
    }
    let (_, metrics) = get(&s, "/metrics");
    assert!(metrics.contains("rustformers_requests_total{endpoint=\"chat\",status=\"200\"}"));
    assert!(metrics.contains("rustformers_generated_tokens_total"));
    assert!(metrics.contains("rustformers_request_seconds_bucket"));
}

#[test]
fn n_beyond_the_queue_is_a_400_and_concurrent_streams_complete() {
    // n larger than the whole queue could never be served: 400 naming n and the limit,
    // not a 429 that invites a retry.
    let s = start(1);
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = json!({"messages": chat(), "prompt": "The cat", "n": 2, "max_tokens": 2});
        let (code, v) = post(&s, path, &body.to_string());
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["error"]["param"], "n", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("--max-queue 1") && msg.contains("n is 2"),
            "{msg}"
        );
    }
    // n equal to the queue is served.
    let (code, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": chat(), "n": 1, "max_tokens": 2}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(metric(&s, "rustformers_queue_depth"), 0.0);
    drop(s);
    let s = Arc::new(start(64));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let body = json!({"messages": chat(), "max_tokens": 4, "stream": true, "seed": i, "temperature": 0.8});
                let ev = stream(&s, "/v1/chat/completions", &body);
                assert_eq!(ev.last().unwrap(), "[DONE]");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(get(&s, "/health").0, 200);
}

#[test]
fn concurrent_requests_share_decode_steps_and_keep_their_greedy_replies() {
    let s = Arc::new(start(64));
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("Request {i}: {}", "rain ".repeat(i + 1)))
        .collect();
    // Each prompt's greedy reply from the pipeline alone.
    let want: Vec<String> = prompts
        .iter()
        .map(|p| {
            let mut params = Params::new();
            params.insert("max_new_tokens".into(), json!(16));
            params.insert("do_sample".into(), json!(false));
            params.insert("return_full_text".into(), json!(false));
            let out = s.generator.run(&[json!(p)], &params).unwrap();
            out[0][0]["generated_text"].as_str().unwrap().to_string()
        })
        .collect();
    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let s = s.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": p, "max_tokens": 16, "temperature": 0});
                let (code, r) = post(&s, "/v1/completions", &body.to_string());
                assert_eq!(code, 200, "{r}");
                r["choices"][0]["text"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let got: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, want);
    // One request for six completions queues them at once: they run as one batch, and
    // the six greedy replies are the same.
    let body = json!({"prompt": prompts[0], "max_tokens": 16, "temperature": 0, "n": 6});
    let (code, r) = post(&s, "/v1/completions", &body.to_string());
    assert_eq!(code, 200, "{r}");
    for c in r["choices"].as_array().unwrap() {
        assert_eq!(c["text"], want[0].as_str());
    }
    // Requests ran together: fewer decode steps than rows run.
    let (_, metrics) = get(&s, "/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (steps, rows) = (
        value("rustformers_decode_steps_total"),
        value("rustformers_decode_rows_total"),
    );
    assert!(
        steps > 0.0 && rows / steps > 1.5,
        "{rows} rows in {steps} steps"
    );
    assert_eq!(value("rustformers_running_sequences"), 0.0);
}

#[test]
fn logprobs_in_chat_and_completions() {
    let s = start(64);
    let req = json!({"messages": chat(), "max_tokens": 5, "temperature": 0, "logprobs": true,
        "top_logprobs": 3});
    let (code, r) = post(&s, "/v1/chat/completions", &req.to_string());
    assert_eq!(code, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        r["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], e["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert!(top[1]["logprob"].as_f64().unwrap() <= lp);
        assert_eq!(
            e["bytes"].as_array().unwrap().len(),
            e["token"].as_str().unwrap().len()
        );
    }
    // Without logprobs the field is null.
    let (_, r) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": chat(), "max_tokens": 2}).to_string(),
    );
    assert!(r["choices"][0]["logprobs"].is_null());
    // Streaming: the chunks' entries add up to one per token.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let events = stream(&s, "/v1/chat/completions", &sreq);
    let n: usize = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    assert_eq!(n, content.len());
    // Text completions: parallel lists, `logprobs` alternatives per token.
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat", "max_tokens": 4, "temperature": 0, "logprobs": 2}).to_string(),
    );
    assert_eq!(code, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(
        tokens.len(),
        r["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), tokens.len());
    assert_eq!(lp["text_offset"][0], 0);
    assert!(lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_object().unwrap().len() <= 2));
    // Out of range: 400 naming the parameter.
    let (code, r) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": chat(), "logprobs": true, "top_logprobs": 50}).to_string(),
    );
    assert_eq!(code, 400);
    assert_eq!(r["error"]["param"], "top_logprobs");
}

#[test]
fn streams_end_with_usage_when_asked() {
    let s = start(64);
    let body = json!({"messages": chat(), "max_tokens": 6, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}});
    let events = stream(&s, "/v1/chat/completions", &body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(rest.iter().all(|c| c["usage"].is_null()));
    // The same request without streaming counts the same tokens.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    plain.as_object_mut().unwrap().remove("stream_options");
    let (_, r) = post(&s, "/v1/chat/completions", &plain.to_string());
    assert_eq!(last["usage"], r["usage"]);
    // ignore_eos (vLLM's extension): always max_tokens tokens.
    let (_, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat", "max_tokens": 30, "temperature": 0, "ignore_eos": true})
            .to_string(),
    );
    assert_eq!(r["usage"]["completion_tokens"], 30);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    // stream_options needs stream.
    let (code, r) = post(
        &s,
        "/v1/chat/completions",
        &plain_with_options(&plain).to_string(),
    );
    assert_eq!(code, 400);
    assert_eq!(r["error"]["param"], "stream_options");
}

fn plain_with_options(plain: &Value) -> Value {
    let mut v = plain.clone();
    v["stream_options"] = json!({"include_usage": true});
    v
}

const SMOLLM2: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";

/// The real SmolLM2 GGUF is in the Hub cache (scripts/fetch-test-models.sh); without it
/// the test fails when RUSTFORMERS_REQUIRE_REAL_MODELS=1 (as .ci/run sets) and otherwise
/// passes with a notice.
fn smollm2_available() -> bool {
    let cached = rustformers_core::ModelFiles::resolve(SMOLLM2)
        .ok()
        .and_then(|f| {
            f.root()
                .map(|r| r.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file())
        })
        .unwrap_or(false);
    if cached {
        return true;
    }
    if std::env::var("RUSTFORMERS_REQUIRE_REAL_MODELS").as_deref() == Ok("1") {
        panic!("{SMOLLM2} is not in the Hub cache: run scripts/fetch-test-models.sh");
    }
    eprintln!("NOTICE: {SMOLLM2} not cached; run scripts/fetch-test-models.sh to test it");
    false
}

fn metric(s: &Server, name: &str) -> f64 {
    let (_, text) = get(s, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_client_that_disconnects_is_cancelled_and_its_row_freed() {
    if !smollm2_available() {
        return;
    }
    let s = start_with(SMOLLM2, 8);
    // A long generation (SmolLM2 on CPU: seconds), streamed; the client reads the first
    // piece of text and hangs up.
    let body = json!({"messages": chat(), "max_tokens": 2000, "temperature": 0,
        "ignore_eos": true, "stream": true});
    // A raw connection, so that closing it is certain.
    use std::io::{Read, Write};
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let payload = body.to_string();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\"content\"").count() < 3 {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    drop(conn);
    // The sequence is cancelled: the batch empties, the queue drains and no more tokens
    // are generated, long before 2000 tokens.
    let t0 = std::time::Instant::now();
    while metric(&s, "rustformers_running_sequences") > 0.0
        || metric(&s, "rustformers_queue_depth") > 0.0
    {
        assert!(
            t0.elapsed().as_secs() < 10,
            "the stream was not cancelled: {}",
            get(&s, "/metrics").1
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let tokens = metric(&s, "rustformers_generated_tokens_total");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(metric(&s, "rustformers_generated_tokens_total"), tokens);
    assert!(tokens < 1000.0, "{tokens} tokens generated");
    // The server goes on serving.
    let (code, r) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": chat(), "max_tokens": 3}).to_string(),
    );
    assert_eq!(code, 200, "{r}");
}

/// The choice texts of a chat request (200 asserted).
fn chat_texts(s: &Server, body: &Value) -> Vec<String> {
    let (code, r) = post(s, "/v1/chat/completions", &body.to_string());
    assert_eq!(code, 200, "{body}: {r}");
    r["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap().to_string())
        .collect()
}

/// The content deltas and the finish reason of a streamed chat.
fn streamed_chat(s: &Server, body: &Value) -> (String, Value) {
    let events = stream(s, "/v1/chat/completions", body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = chunks
        .iter()
        .map(|c| c["choices"][0]["finish_reason"].clone())
        .find(|f| !f.is_null())
        .unwrap_or(Value::Null);
    (text, finish)
}

#[test]
fn seeded_sampling_equals_the_pipelines_and_seeds_matter() {
    let s = start(64);
    let sample_with = |seed: u64, temperature: f64, top_p: f64| -> String {
        let mut params = Params::new();
        params.insert("max_new_tokens".into(), json!(12));
        params.insert("do_sample".into(), json!(true));
        params.insert("temperature".into(), json!(temperature));
        params.insert("top_p".into(), json!(top_p));
        params.insert("seed".into(), json!(seed));
        s.generator.stream(&chat(), &params, &mut |_| {}).unwrap().0
    };
    let sampled = |seed: u64| sample_with(seed, 0.8, 0.9);
    // With this seed, temperature and top_p each change the reply: equality with the
    // server below shows that it applies both.
    assert_ne!(sampled(11), sample_with(11, 1.0, 0.9));
    assert_ne!(sampled(11), sample_with(11, 0.8, 1.0));
    let body = |seed: u64, n: usize| {
        json!({"messages": chat(), "max_tokens": 12, "temperature": 0.8, "top_p": 0.9,
            "seed": seed, "n": n})
    };
    // One choice: the pipeline's sampled reply with the same seed.
    let got = chat_texts(&s, &body(11, 1));
    assert_eq!(got, [sampled(11)]);
    // n choices: choice i is sampled with seed + i.
    let got = chat_texts(&s, &body(11, 3));
    assert_eq!(got, [sampled(11), sampled(12), sampled(13)]);
    // Different seeds give different text (the sampling is not ignored).
    assert_ne!(sampled(11), sampled(12));
}

/// A copy of tiny-llama (in a temporary folder named after `tag`) with a context of
/// `context` tokens (Llama's rotary positions have no weights).
fn tiny_llama_with_context(tag: &str, context: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rustformers-server-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = json!(context);
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

/// A copy of tiny-llama whose chat template (Qwen2.5's) renders `tools`, with a context
/// of 2048 tokens (the tiny tokenizer spells the tools out in ~600).
fn tiny_llama_with_tool_template() -> PathBuf {
    let dir = tiny_llama_with_context("tools", 2048);
    let template =
        std::fs::read_to_string(fixture("chat-templates/qwen2.5-instruct.jinja")).unwrap();
    // Where transformers 5.x saves it (it wins over tokenizer_config.json's).
    std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
    dir
}

#[test]
fn chat_tools_reach_the_chat_template() {
    let dir = tiny_llama_with_tool_template();
    let s = start_with(&dir.to_string_lossy(), 64);
    let tools = json!([{"type": "function", "function": {"name": "get_current_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}}}]);
    let plain = json!({"messages": chat(), "max_tokens": 6, "temperature": 0});
    let mut with_tools = plain.clone();
    with_tools["tools"] = tools.clone();
    let (code, a) = post(&s, "/v1/chat/completions", &plain.to_string());
    assert_eq!(code, 200, "{a}");
    let (code, b) = post(&s, "/v1/chat/completions", &with_tools.to_string());
    assert_eq!(code, 200, "{b}");
    // The template lists the tools: a longer prompt, the one the pipeline renders.
    let input = json!({"messages": chat(), "tools": tools});
    let want_prompt = s.generator.prompt_tokens(&input).unwrap();
    assert_eq!(b["usage"]["prompt_tokens"], want_prompt);
    assert!(
        b["usage"]["prompt_tokens"].as_u64().unwrap()
            > a["usage"]["prompt_tokens"].as_u64().unwrap() + 20,
        "{a} {b}"
    );
    let (ids, _) = s.generator.request(&input, &Params::new()).unwrap();
    let rendered = s.generator.tokenizer().decode(&ids, false).unwrap();
    assert!(rendered.contains("get_current_weather"), "{rendered}");
    // And the reply is the pipeline's greedy one for that prompt.
    let mut params = Params::new();
    params.insert("max_new_tokens".into(), json!(6));
    params.insert("do_sample".into(), json!(false));
    let (want, _) = s.generator.stream(&input, &params, &mut |_| {}).unwrap();
    assert_eq!(b["choices"][0]["message"]["content"], want.as_str());
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn content_parts_are_joined_text_and_other_parts_refused() {
    let s = start(64);
    let parts = json!([{"role": "user", "content": [
        {"type": "text", "text": "Hello there,"}, {"type": "text", "text": "how are you?"}]}]);
    let joined = json!([{"role": "user", "content": "Hello there,\nhow are you?"}]);
    let req = |messages: &Value| json!({"messages": messages, "max_tokens": 8, "temperature": 0});
    let (code, a) = post(&s, "/v1/chat/completions", &req(&parts).to_string());
    assert_eq!(code, 200, "{a}");
    let (_, b) = post(&s, "/v1/chat/completions", &req(&joined).to_string());
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    assert_eq!(a["usage"], b["usage"]);
    for content in [
        json!([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]),
        json!([{"type": "text", "text": "x"}, {"type": "input_audio"}]),
        json!([{"type": "text", "text": 3}]),
        json!(42),
        json!({"type": "text", "text": "x"}),
    ] {
        let body = req(&json!([{"role": "user", "content": content}]));
        let (code, v) = post(&s, "/v1/chat/completions", &body.to_string());
        assert_eq!(code, 400, "{content}: {v}");
        assert_eq!(v["error"]["param"], "messages", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(get(&s, "/health").0, 200);
    }
}

#[test]
fn an_over_long_prompt_is_refused_and_the_default_fills_the_context() {
    let s = start(64);
    let ctx = s.generator.max_context();
    let long = "word ".repeat(ctx * 2);
    assert!(s.generator.prompt_tokens(&json!(long)).unwrap() > ctx);
    for (path, body) in [
        ("/v1/completions", json!({"prompt": long, "max_tokens": 1})),
        ("/v1/completions", json!({"prompt": long})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long}]}),
        ),
    ] {
        let (code, v) = post(&s, path, &body.to_string());
        assert_eq!(code, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("prompt") && msg.contains("context"), "{msg}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(get(&s, "/health").0, 200);
    }
    // No max_tokens: the completion may take the rest of the context.
    let prompt = s.generator.prompt_tokens(&json!("The cat")).unwrap();
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat", "temperature": 0, "ignore_eos": true}).to_string(),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], prompt);
    assert_eq!(r["usage"]["completion_tokens"], ctx - prompt);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    // An explicit max_tokens that does not fit is still an error naming it.
    let (code, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat", "max_tokens": ctx - prompt + 1}).to_string(),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "max_tokens");
    let (code, _) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat", "max_tokens": ctx - prompt, "ignore_eos": true}).to_string(),
    );
    assert_eq!(code, 200);
}

#[test]
fn streamed_stops_and_max_completion_tokens() {
    let s = start(64);
    // The greedy reply, cut by a stop sequence from its middle, streamed and not.
    let full = chat_texts(
        &s,
        &json!({"messages": chat(), "max_tokens": 16, "temperature": 0}),
    )
    .remove(0);
    assert!(full.chars().count() > 4, "{full:?}");
    let stop: String = full.chars().skip(3).take(2).collect();
    let body = json!({"messages": chat(), "max_tokens": 16, "temperature": 0,
        "stop": [stop.clone()]});
    let (code, cut) = post(&s, "/v1/chat/completions", &body.to_string());
    assert_eq!(code, 200, "{cut}");
    let cut_text = cut["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!cut_text.contains(&stop) && full.starts_with(cut_text));
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (text, finish) = streamed_chat(&s, &sbody);
    assert_eq!(text, cut_text);
    assert_eq!(finish, "stop");
    // max_completion_tokens: exactly that many tokens, and it wins over max_tokens.
    for body in [
        json!({"messages": chat(), "max_completion_tokens": 3, "ignore_eos": true}),
        json!({"messages": chat(), "max_completion_tokens": 3, "max_tokens": 10,
            "ignore_eos": true}),
    ] {
        let (code, r) = post(&s, "/v1/chat/completions", &body.to_string());
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["usage"]["completion_tokens"], 3, "{body}");
        assert_eq!(r["choices"][0]["finish_reason"], "length");
    }
}

#[test]
fn serve_on_returns_and_its_worker_exits() {
    let mut s = start(64);
    let (code, _) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat", "max_tokens": 2}).to_string(),
    );
    assert_eq!(code, 200);
    // serve_on joins the worker thread before it returns: the server thread ends only
    // when the worker has exited.
    let _ = s.stop.take().unwrap().send(());
    let thread = s.thread.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(thread.join().is_ok());
    });
    let joined = rx.recv_timeout(std::time::Duration::from_secs(20));
    assert_eq!(joined, Ok(true), "serve_on did not return");
}

/// Whether a new request is answered normally (false: refused, 503 or no connection).
fn served(s: &Server) -> bool {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(5))
        .build();
    matches!(
        agent
            .post(&format!("{}/v1/completions", s.base))
            .send_json(json!({"prompt": "Hi", "max_tokens": 1})),
        Ok(r) if r.status() == 200
    )
}

#[test]
fn shutdown_finishes_the_stream_in_flight_and_refuses_new_work() {
    if !smollm2_available() {
        return;
    }
    let mut s = start_with(SMOLLM2, 8);
    let max_tokens = 200;
    let body = json!({"messages": chat(), "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let r = ureq::post(&format!("{}/v1/chat/completions", s.base))
        .send_json(body)
        .unwrap();
    let mut lines = BufReader::new(r.into_reader())
        .lines()
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string));
    let mut events = Vec::new();
    // Wait for the first piece of text, then shut down.
    for e in lines.by_ref() {
        let has_text = e.contains("\"content\":\"") && !e.contains("\"content\":\"\"");
        events.push(e);
        if has_text {
            break;
        }
    }
    let _ = s.stop.take().unwrap().send(());
    // New work is refused while the stream drains (or once the server has gone).
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!served(&s), "a new request was served after shutdown began");
    // The stream still runs to its end: every token, a finish reason, usage, [DONE].
    events.extend(lines);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], max_tokens, "{usage}");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "length"));
    // And the server stops.
    s.thread.take().unwrap().join().unwrap();
}

/// A streaming request on a raw connection (so that dropping it certainly closes it),
/// read up to its first piece of generated text: the generation is then running.
struct OpenStream {
    conn: std::net::TcpStream,
    seen: String,
}

impl OpenStream {
    fn open(s: &Server, path: &str, body: &Value) -> Self {
        use std::io::Write;
        let addr = s.base.trim_start_matches("http://").to_string();
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let payload = body.to_string();
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .unwrap();
        let mut stream = Self {
            conn,
            seen: String::new(),
        };
        while !stream.has_text() {
            assert!(
                stream.read_more(),
                "the stream ended early: {}",
                stream.seen
            );
        }
        assert!(stream.seen.starts_with("HTTP/1.1 200"), "{}", stream.seen);
        stream
    }

    /// Reads what has arrived; false at the end of the stream.
    fn read_more(&mut self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let n = self.conn.read(&mut buf).unwrap();
        self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        n > 0
    }

    /// Whether an event with non-empty generated text has arrived.
    fn has_text(&self) -> bool {
        self.seen.lines().any(|l| {
            l.strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .is_some_and(|c| {
                    let choice = &c["choices"][0];
                    let text = choice["delta"]["content"]
                        .as_str()
                        .or(choice["text"].as_str());
                    text.is_some_and(|t| !t.is_empty())
                })
        })
    }

    /// Hangs up.
    fn close(self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}

/// Waits (up to 20 s) until a gauge reads `want`.
fn wait_for(s: &Server, name: &str, want: f64) {
    let t0 = std::time::Instant::now();
    while metric(s, name) != want {
        assert!(
            t0.elapsed().as_secs() < 20,
            "{name} is not {want}: {}",
            get(s, "/metrics").1
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_full_queue_under_load_is_a_429_until_the_streams_end() {
    // A context long enough that a generation without max_tokens (the rest of it) runs
    // for far longer than this test: the two streams run until they are dropped.
    let dir = tiny_llama_with_context("queue", 1 << 15);
    let config = ServerConfig {
        max_queue: 2,
        max_batch_size: 2,
        ..Default::default()
    };
    let s = start_config(&dir.to_string_lossy(), config);
    let long = json!({"messages": chat(), "temperature": 0, "ignore_eos": true, "stream": true});
    let a = OpenStream::open(&s, "/v1/chat/completions", &long);
    let long_completion = json!({"prompt": "The cat", "temperature": 0, "ignore_eos": true,
        "stream": true});
    let b = OpenStream::open(&s, "/v1/completions", &long_completion);
    // Both are generating: the queue is full. (The gauge of running rows is set at the
    // end of the step whose tokens the clients may already have.)
    assert_eq!(metric(&s, "rustformers_queue_depth"), 2.0);
    wait_for(&s, "rustformers_running_sequences", 2.0);
    let short_chat = json!({"messages": chat(), "max_tokens": 3}).to_string();
    let short_completion = json!({"prompt": "The cat", "max_tokens": 3}).to_string();
    let embedding = json!({"input": "one text"}).to_string();
    for (path, body) in [
        ("/v1/chat/completions", &short_chat),
        ("/v1/completions", &short_completion),
        ("/v1/embeddings", &embedding),
    ] {
        let (code, v) = post(&s, path, body);
        assert_eq!(code, 429, "{path}: {v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["code"].is_null());
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("queue is full"), "{msg}");
    }
    // The refusals took no place and the streams go on.
    assert_eq!(metric(&s, "rustformers_queue_depth"), 2.0);
    assert_eq!(get(&s, "/health").0, 200);
    let tokens = metric(&s, "rustformers_generated_tokens_total");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(metric(&s, "rustformers_generated_tokens_total") > tokens);
    // One stream gone: one place frees, and a request is served beside the other.
    b.close();
    wait_for(&s, "rustformers_queue_depth", 1.0);
    let (code, v) = post(&s, "/v1/chat/completions", &short_chat);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let (code, v) = post(&s, "/v1/embeddings", &embedding);
    assert_eq!(code, 200, "{v}");
    assert_eq!(metric(&s, "rustformers_queue_depth"), 1.0);
    // The first stream still running took all the while: never a finish reason.
    let mut a = a;
    assert!(a.read_more());
    assert!(!a.seen.contains("finish_reason\":\"length"), "{}", a.seen);
    // Both gone: the queue empties and requests are served again, a stream included.
    a.close();
    wait_for(&s, "rustformers_queue_depth", 0.0);
    wait_for(&s, "rustformers_running_sequences", 0.0);
    let (code, v) = post(&s, "/v1/completions", &short_completion);
    assert_eq!(code, 200, "{v}");
    let streamed = json!({"messages": chat(), "max_tokens": 3, "stream": true});
    let events = stream(&s, "/v1/chat/completions", &streamed);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let (_, metrics) = get(&s, "/metrics");
    for endpoint in ["chat", "completions", "embeddings"] {
        let line =
            format!("rustformers_requests_total{{endpoint=\"{endpoint}\",status=\"429\"}} 1");
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

/// The value of `name{endpoint="..."}` in /metrics text (0 when absent).
fn labelled(text: &str, name: &str, endpoint: &str) -> f64 {
    let prefix = format!("{name}{{endpoint=\"{endpoint}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn metrics_count_time_to_first_token_stream_durations_and_prompt_tokens() {
    let s = start(64);
    let t0 = std::time::Instant::now();
    let usage_of = |events: &[String]| -> Value {
        assert_eq!(events.last().unwrap(), "[DONE]");
        let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        last["usage"].clone()
    };
    // (endpoint, usage) of every answered generation.
    let mut usages: Vec<(&str, Value)> = Vec::new();
    for (max_tokens, n) in [(4, 1), (6, 2), (3, 1)] {
        let body = json!({"messages": chat(), "max_tokens": max_tokens, "n": n});
        let (code, r) = post(&s, "/v1/chat/completions", &body.to_string());
        assert_eq!(code, 200, "{r}");
        usages.push(("chat", r["usage"].clone()));
    }
    for max_tokens in [5, 2] {
        let body = json!({"messages": chat(), "max_tokens": max_tokens, "stream": true,
            "stream_options": {"include_usage": true}});
        let events = stream(&s, "/v1/chat/completions", &body);
        usages.push(("chat", usage_of(&events)));
    }
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "The cat sat on", "max_tokens": 4}).to_string(),
    );
    assert_eq!(code, 200, "{r}");
    usages.push(("completions", r["usage"].clone()));
    let body = json!({"prompt": "Rain", "max_tokens": 7, "stream": true,
        "stream_options": {"include_usage": true}});
    usages.push((
        "completions",
        usage_of(&stream(&s, "/v1/completions", &body)),
    ));
    let (code, e) = post(
        &s,
        "/v1/embeddings",
        &json!({"input": ["one text", "and another one"]}).to_string(),
    );
    assert_eq!(code, 200, "{e}");
    // Refused requests generate nothing: no first token, no prompt tokens.
    let (code, _) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": chat(), "temperature": 9}).to_string(),
    );
    assert_eq!(code, 400);
    let wall = t0.elapsed().as_secs_f64();
    let (_, text) = get(&s, "/metrics");
    let count = |h: &str, e: &str| labelled(&text, &format!("{h}_count"), e);
    let sum = |h: &str, e: &str| labelled(&text, &format!("{h}_sum"), e);
    // Time to first token: once per generation request (n = 2 counts once), streamed or not.
    let ttft = "rustformers_time_to_first_token_seconds";
    assert_eq!(count(ttft, "chat"), 5.0, "{text}");
    assert_eq!(count(ttft, "completions"), 2.0, "{text}");
    assert_eq!(count(ttft, "embeddings"), 0.0, "{text}");
    // Whole stream durations: the three streams.
    let streams = "rustformers_stream_seconds";
    assert_eq!(count(streams, "chat"), 2.0, "{text}");
    assert_eq!(count(streams, "completions"), 1.0, "{text}");
    // Time to the response head: every request, the refused one included.
    let head = "rustformers_request_seconds";
    assert_eq!(count(head, "chat"), 6.0, "{text}");
    assert_eq!(count(head, "completions"), 2.0, "{text}");
    assert_eq!(count(head, "embeddings"), 1.0, "{text}");
    // The sums: positive, and less than the time all the requests (one at a time) took.
    for (h, e) in [
        (ttft, "chat"),
        (ttft, "completions"),
        (streams, "chat"),
        (streams, "completions"),
        (head, "chat"),
        (head, "completions"),
        (head, "embeddings"),
    ] {
        let v = sum(h, e);
        assert!(v > 0.0 && v < wall, "{h} {e}: sum {v}, wall {wall}");
        let inf = format!("{h}_bucket{{endpoint=\"{e}\",le=\"+Inf\"}} {}", count(h, e));
        assert!(text.contains(&inf), "no `{inf}`");
    }
    // A stream's first token comes before its end.
    assert!(sum(streams, "completions") > 0.0);
    // Prompt tokens: what the responses reported, each request once.
    for endpoint in ["chat", "completions"] {
        let reported: u64 = usages
            .iter()
            .filter(|(e, _)| *e == endpoint)
            .map(|(_, u)| u["prompt_tokens"].as_u64().unwrap())
            .sum();
        assert!(reported > 0);
        assert_eq!(
            labelled(&text, "rustformers_prompt_tokens_total", endpoint),
            reported as f64,
            "{endpoint}: {text}"
        );
    }
    assert_eq!(
        labelled(&text, "rustformers_prompt_tokens_total", "embeddings"),
        e["usage"]["prompt_tokens"].as_f64().unwrap()
    );
    // And the generated tokens are the completion tokens reported.
    let generated: u64 = usages
        .iter()
        .map(|(_, u)| u["completion_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        metric(&s, "rustformers_generated_tokens_total"),
        generated as f64
    );
}

#[test]
fn embeddings_cap_their_inputs_and_are_served_up_to_it() {
    let s = start(64);
    let cap = 2048;
    let texts: Vec<String> = (0..cap + 1).map(|i| format!("text {i}")).collect();
    let (code, v) = post(&s, "/v1/embeddings", &json!({"input": texts}).to_string());
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "input");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("2049") && msg.contains("2048"), "{msg}");
    assert_eq!(metric(&s, "rustformers_queue_depth"), 0.0);
    // The cap itself is served, in order.
    let (code, v) = post(
        &s,
        "/v1/embeddings",
        &json!({"input": &texts[..cap]}).to_string(),
    );
    assert_eq!(code, 200, "{}", v["error"]);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), cap);
    assert!(data.iter().enumerate().all(|(i, d)| d["index"] == i));
    let want = s.embedder.embed(&[texts[cap - 1].as_str()], 1).unwrap();
    let got: Vec<f32> = serde_json::from_value(data[cap - 1]["embedding"].clone()).unwrap();
    assert_eq!(got.len(), want[0].len());
    // Batched with others (padding) vs alone: equal up to float noise.
    let diff = got
        .iter()
        .zip(&want[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "{diff}");
    // And a plain request afterwards.
    let (code, v) = post(&s, "/v1/embeddings", &json!({"input": "one"}).to_string());
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(metric(&s, "rustformers_queue_depth"), 0.0);
}
