//! `rustformers bench WORK`: the rustformers side of the side-by-side benchmarks
//! (scripts/bench/ runs the peers). Prints one JSON object: median, min and max over
//! `--runs` timed runs after one warm-up.
//!
//! Work items: embeddings-f32, embeddings-bf16 (all-MiniLM-L6-v2, sentences from
//! `--input`, batch 32, tokenization included), decode-gguf / decode-f32 (SmolLM2 Q4_1
//! run quantized / dequantized, 128 greedy tokens, decode steps only), prefill-gguf
//! (512-token prompt), load-gguf (time to first token and peak RSS), load-safetensors
//! (all-MiniLM-L6-v2: time to the first embedding, peak RSS, weights file size).

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use rustformers_generation::{GenerationConfig, Generator};
use rustformers_models::{AutoModelForCausalLM, CausalLmInputs, LoadOptions, LogitsMode};
use rustformers_pipelines::FeatureExtractionPipeline;

const EMBED_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const GGUF_MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
const PROMPT: &str = "The history of the city begins";

/// Options of `bench`.
pub struct BenchArgs {
    pub work: String,
    pub runs: usize,
    pub input: Option<std::path::PathBuf>,
}

fn stats(work: &str, unit: &str, mut xs: Vec<f64>, extra: Value) -> Value {
    xs.sort_by(|a, b| a.total_cmp(b));
    let median = if xs.is_empty() {
        f64::NAN
    } else if xs.len() % 2 == 1 {
        xs[xs.len() / 2]
    } else {
        (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
    };
    let mut v = json!({
        "work": work,
        "impl": "rustformers",
        "unit": unit,
        "median": median,
        "min": xs.first(),
        "max": xs.last(),
        "runs": xs.len(),
        "threads": threads(),
    });
    if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
        o.extend(e);
    }
    v
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Peak resident set size in MB (Linux `VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn sentences(input: Option<&std::path::Path>) -> Result<Vec<String>> {
    let path = input
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("scripts/bench/sentences.txt"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow!(
            "reading {}: {e} (pass --input FILE, one sentence per line)",
            path.display()
        )
    })?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        bail!("{} holds no sentences", path.display());
    }
    Ok(lines)
}

fn embeddings(a: &BenchArgs, dtype: DType) -> Result<Value> {
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    let pipe = FeatureExtractionPipeline::from_pretrained(EMBED_MODEL, &opts)?;
    let lines = sentences(a.input.as_deref())?;
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    pipe.embed(&refs, 32)?;
    let mut rates = Vec::new();
    for _ in 0..a.runs {
        let t = Instant::now();
        pipe.embed(&refs, 32)?;
        rates.push(refs.len() as f64 / t.elapsed().as_secs_f64());
    }
    Ok(stats(
        &a.work,
        "sentences/s",
        rates,
        json!({"sentences": refs.len(), "batch": 32}),
    ))
}

fn decode(a: &BenchArgs, dtype: Option<DType>) -> Result<Value> {
    let opts = LoadOptions {
        dtype,
        ..Default::default()
    };
    let model = AutoModelForCausalLM::from_pretrained_with(GGUF_MODEL, &opts)?;
    let tok = rustformers_core::AutoTokenizer::from_pretrained(GGUF_MODEL)?;
    let prompt = tok.encode(
        rustformers_core::TextInput::Single(PROMPT),
        &Default::default(),
    )?;
    // 128 new tokens, eos ignored, greedy.
    let config = GenerationConfig {
        max_new_tokens: Some(128),
        eos_token_id: None,
        ..Default::default()
    };
    let mut rates = Vec::new();
    for run in 0..=a.runs {
        let mut g = Generator::new(
            model.model.as_ref(),
            &prompt.input_ids,
            &config,
            &Device::Cpu,
        )?;
        g.step()?; // prefill and the first token
        let t = Instant::now();
        let mut n = 0usize;
        while g.step()?.is_some() {
            n += 1;
        }
        if run > 0 {
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(stats(
        &a.work,
        "tokens/s",
        rates,
        json!({"new_tokens": 128}),
    ))
}

fn prefill(a: &BenchArgs, dtype: Option<DType>) -> Result<Value> {
    let opts = LoadOptions {
        dtype,
        ..Default::default()
    };
    let model = AutoModelForCausalLM::from_pretrained_with(GGUF_MODEL, &opts)?;
    let ids: Vec<u32> = (0..512u32).map(|i| 100 + (i * 37) % 20_000).collect();
    let t_ids = Tensor::from_vec(ids, (1, 512), &Device::Cpu)?;
    let mut rates = Vec::new();
    for run in 0..=a.runs {
        let mut cache = model.model.new_cache(Some(512));
        let t = Instant::now();
        model.model.forward(
            CausalLmInputs::ids(&t_ids),
            Some(&mut cache),
            LogitsMode::Last,
        )?;
        if run > 0 {
            rates.push(512.0 / t.elapsed().as_secs_f64());
        }
    }
    Ok(stats(
        &a.work,
        "tokens/s",
        rates,
        json!({"prompt_tokens": 512}),
    ))
}

fn load(a: &BenchArgs, start: Instant) -> Result<Value> {
    // One run per process: a fresh process is what "time to first token" means.
    let model = AutoModelForCausalLM::from_pretrained(GGUF_MODEL)?;
    let tok = rustformers_core::AutoTokenizer::from_pretrained(GGUF_MODEL)?;
    let prompt = tok.encode(
        rustformers_core::TextInput::Single(PROMPT),
        &Default::default(),
    )?;
    let config = GenerationConfig {
        max_new_tokens: Some(1),
        ..Default::default()
    };
    Generator::new(
        model.model.as_ref(),
        &prompt.input_ids,
        &config,
        &Device::Cpu,
    )?
    .step()?;
    let ttft = start.elapsed().as_secs_f64();
    Ok(stats(
        &a.work,
        "s",
        vec![ttft],
        json!({"peak_rss_mb": peak_rss_mb()}),
    ))
}

/// Load all-MiniLM-L6-v2 from safetensors and embed one sentence: time from process
/// start, peak RSS, and the size of the weights file (the target is RSS ≤ file + 30 MB).
fn load_safetensors(a: &BenchArgs, start: Instant) -> Result<Value> {
    let pipe = FeatureExtractionPipeline::from_pretrained(EMBED_MODEL, &LoadOptions::default())?;
    let lines = sentences(a.input.as_deref())?;
    pipe.embed(&[lines[0].as_str()], 1)?;
    let secs = start.elapsed().as_secs_f64();
    let files = rustformers_core::ModelFiles::resolve(EMBED_MODEL)?;
    let bytes: u64 = rustformers_core::weights::safetensors_files(&files)?
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    Ok(stats(
        &a.work,
        "s",
        vec![secs],
        json!({"peak_rss_mb": peak_rss_mb(), "file_mb": bytes as f64 / (1u64 << 20) as f64}),
    ))
}

/// Examples per training step and tokens per example (issue 4, item e).
const TRAIN_BATCH: usize = 16;
const TRAIN_SEQ: usize = 64;
/// Optimizer steps per timed run.
const TRAIN_STEPS: usize = 8;

/// Training: all-MiniLM-L6-v2 with a 2-label classification head, batches of 16
/// sentences padded to 64 tokens, dropout on, forward + backward + gradient clipping +
/// AdamW (what the Trainer's loop does per step) → samples/s.
/// `per` sentences make one example: 1 (23 tokens, padded to 64) or 3 (all 64 tokens
/// text, `train-seqcls-full`).
fn train_seqcls(
    a: &BenchArgs,
    bf16: bool,
    gradient_checkpointing: bool,
    per: usize,
) -> Result<Value> {
    use rustformers_core::tokenizer::{EncodeOptions, Padding, TextInput, Truncation};
    use rustformers_trainer::trainer::Batch;
    use rustformers_trainer::{grad_norm_coef, optim::gather, AdamW, TrainModel};
    let tok = rustformers_core::AutoTokenizer::from_pretrained(EMBED_MODEL)?;
    let lines = sentences(a.input.as_deref())?;
    let model = rustformers_models::AutoModelForSequenceClassification::for_training(
        EMBED_MODEL,
        &LoadOptions::default(),
        &rustformers_models::TrainLoad {
            labels: Some(vec!["a".into(), "b".into()]),
            seed: 42,
            bf16,
            gradient_checkpointing,
            ..Default::default()
        },
    )?;
    let opts = EncodeOptions {
        padding: Padding::MaxLength,
        truncation: Truncation::LongestFirst,
        max_length: Some(TRAIN_SEQ),
        ..Default::default()
    };
    let mut batches = Vec::new();
    // Tokens that are text, not padding.
    let mut text_tokens = 0usize;
    for step in 0..TRAIN_STEPS {
        // `per` sentences per example, as the PyTorch peer joins them.
        let joined: Vec<String> = (0..TRAIN_BATCH)
            .map(|i| {
                (0..per)
                    .map(|j| lines[((step * TRAIN_BATCH + i) * per + j) % lines.len()].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let texts: Vec<TextInput> = joined.iter().map(|t| TextInput::Single(t)).collect();
        let enc = tok.encode_batch(&texts, &opts)?;
        let ids: Vec<u32> = enc.input_ids.concat();
        let mask: Vec<u32> = enc.attention_mask.concat();
        text_tokens += mask.iter().filter(|m| **m != 0).count();
        let labels: Vec<u32> = (0..TRAIN_BATCH as u32).map(|i| i % 2).collect();
        let shape = (TRAIN_BATCH, TRAIN_SEQ);
        batches.push(Batch {
            input_ids: Tensor::from_vec(ids, shape, &Device::Cpu)?,
            attention_mask: Tensor::from_vec(mask, shape, &Device::Cpu)?,
            token_type_ids: Tensor::zeros(shape, DType::U32, &Device::Cpu)?,
            labels: Tensor::from_vec(labels, TRAIN_BATCH, &Device::Cpu)?,
        });
    }
    let params = model.parameters();
    let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(params, 0.9, 0.999, 1e-8, 0.0)?;
    // Dropout on, its masks seeded per step, as the Trainer (and the PyTorch peer, in
    // train mode) runs.
    let mut seeds = rustformers_core::rng::Rng::new(42);
    let mut step = |b: &Batch| -> Result<()> {
        model.set_training(true, seeds.next_u64());
        let (loss, _) = model.loss(b)?;
        let store = model.backward(&loss)?;
        let grads = gather(&store, &vars);
        // As the Trainer: clipping's coefficient applied in the update pass.
        let (_, grad_scale) = grad_norm_coef(&grads, 1.0)?;
        opt.step_scaled(&grads, 5e-5, grad_scale)?;
        Ok(())
    };
    step(&batches[0])?;
    let mut rates = Vec::new();
    for _ in 0..a.runs {
        let t = Instant::now();
        for b in &batches {
            step(b)?;
        }
        rates.push((TRAIN_STEPS * TRAIN_BATCH) as f64 / t.elapsed().as_secs_f64());
    }
    Ok(stats(
        &a.work,
        "samples/s",
        rates,
        json!({"batch": TRAIN_BATCH, "seq": TRAIN_SEQ, "steps": TRAIN_STEPS, "dropout": true,
            "text_token_share": text_tokens as f64 / (TRAIN_STEPS * TRAIN_BATCH * TRAIN_SEQ) as f64,
            "peak_rss_mb": peak_rss_mb()}),
    ))
}

/// New tokens per request in the serving benchmark.
const SERVE_NEW_TOKENS: usize = 64;

/// Serving (issue 6, item 5): `rustformers serve` with SmolLM2 Q4_1 on a loopback port
/// (in this process, `--max-batch-size` = `concurrency`), and `concurrency` clients that
/// each send one streaming chat request at once: greedy, 64 new tokens (`ignore_eos`, so
/// every run does the same work), usage counted by the stream's usage chunk. Reports
/// aggregate generated tokens/s and the median and worst time to first token (request
/// sent → first content chunk received).
fn serve(a: &BenchArgs, concurrency: usize) -> Result<Value> {
    use std::sync::Arc;
    let pipe = rustformers_pipelines::TextGenerationPipeline::from_pretrained(
        GGUF_MODEL,
        &LoadOptions::default(),
    )?;
    let models = rustformers_server::Models {
        generator: Some((GGUF_MODEL.to_string(), Arc::new(pipe))),
        embedder: None,
    };
    let config = rustformers_server::ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        max_queue: 4 * concurrency,
        max_batch_size: concurrency,
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let _ = addr_tx.send(listener.local_addr()?);
            rustformers_server::serve_on(listener, models, config, async {
                let _ = stop_rx.await;
            })
            .await
        })?;
        Ok(())
    });
    let addr = match addr_rx.recv() {
        Ok(addr) => addr,
        Err(_) => {
            return match server.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow!("the server did not start")),
            }
        }
    };
    let url = format!("http://{addr}/v1/chat/completions");
    let run = || -> Result<(f64, Vec<f64>)> {
        let t0 = Instant::now();
        let clients: Vec<_> = (0..concurrency)
            .map(|i| {
                let url = url.clone();
                std::thread::spawn(move || stream_chat(&url, i))
            })
            .collect();
        let mut tokens = 0;
        let mut first = Vec::new();
        for c in clients {
            let (ttft, n) = c
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))??;
            tokens += n;
            first.push(ttft);
        }
        Ok((tokens as f64 / t0.elapsed().as_secs_f64(), first))
    };
    let result = (|| -> Result<Value> {
        run()?; // warm-up
        let mut rates = Vec::new();
        let mut ttft = Vec::new();
        for _ in 0..a.runs {
            let (rate, mut firsts) = run()?;
            rates.push(rate);
            firsts.sort_by(|x, y| x.total_cmp(y));
            ttft.push((firsts[firsts.len() / 2], firsts[firsts.len() - 1]));
        }
        ttft.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (ttft_median, ttft_max) = ttft[ttft.len() / 2];
        Ok(stats(
            &a.work,
            "tokens/s",
            rates,
            json!({"concurrency": concurrency, "new_tokens": SERVE_NEW_TOKENS,
                "ttft_median_s": ttft_median, "ttft_max_s": ttft_max, "over": "http"}),
        ))
    })();
    let _ = stop_tx.send(());
    let _ = server.join();
    result
}

/// One streaming chat request; (seconds to the first content chunk, completion tokens).
fn stream_chat(url: &str, i: usize) -> Result<(f64, usize)> {
    use std::io::BufRead;
    let body = json!({
        "messages": [{"role": "user", "content": format!("{PROMPT} (story {i})")}],
        "max_tokens": SERVE_NEW_TOKENS, "temperature": 0, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let sent = Instant::now();
    let resp = ureq::post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .map_err(|e| anyhow!("request {i}: {e}"))?;
    let mut first = None;
    let mut tokens = None;
    for line in std::io::BufReader::new(resp.into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data)?;
        if let Some(e) = v.get("error") {
            bail!("request {i}: {e}");
        }
        let content = v["choices"][0]["delta"]["content"].as_str();
        if first.is_none() && content.is_some_and(|c| !c.is_empty()) {
            first = Some(sent.elapsed().as_secs_f64());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n as usize);
        }
    }
    match (first, tokens) {
        (Some(f), Some(n)) => Ok((f, n)),
        _ => bail!("request {i}: the stream ended without text or usage"),
    }
}

/// Runs one work item and prints its JSON line.
pub fn bench(a: &BenchArgs, start: Instant) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let v = match a.work.as_str() {
        "embeddings-f32" => embeddings(a, DType::F32)?,
        "embeddings-bf16" => embeddings(a, DType::BF16)?,
        "decode-gguf" => decode(a, None)?,
        "decode-f32" => decode(a, Some(DType::F32))?,
        "prefill-gguf" => prefill(a, None)?,
        "prefill-f32" => prefill(a, Some(DType::F32))?,
        "load-gguf" => load(a, start)?,
        "load-safetensors" => load_safetensors(a, start)?,
        "train-seqcls" => train_seqcls(a, false, false, 1)?,
        "train-seqcls-full" => train_seqcls(a, false, false, 3)?,
        "train-seqcls-bf16" => train_seqcls(a, true, false, 1)?,
        "train-seqcls-checkpointing" => train_seqcls(a, false, true, 1)?,
        "serve-c1" => serve(a, 1)?,
        "serve-c8" => serve(a, 8)?,
        "serve-c32" => serve(a, 32)?,
        other => bail!(
            "unknown bench work `{other}`; known: embeddings-f32, embeddings-bf16, decode-gguf, decode-f32, prefill-gguf, prefill-f32, load-gguf, load-safetensors, train-seqcls, train-seqcls-full, train-seqcls-bf16, train-seqcls-checkpointing, serve-c1, serve-c8, serve-c32"
        ),
    };
    println!("{v}");
    Ok(())
}
