//! The subcommands.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use rustformers_core::weights::{parse_dtype, safetensors_files};
use rustformers_core::{hub, ModelFiles};
use rustformers_models::{LoadOptions, ModelConfig};
use rustformers_pipelines::{pipeline_with, task_info, Pipeline, TASKS};

use crate::args::parse_run;

const RUN_HELP: &str = "\
Usage: rustformers run TASK [--model REF] [--dtype f32|f16|bf16] [--PARAM VALUE]... [INPUT]...

Runs a pipeline and prints one JSON line per input, as Python's pipeline returns it.
Inputs come from the arguments, else from stdin (one per line; a line starting with
`{` is a JSON object, for structured inputs such as {\"text\": .., \"text_pair\": ..};
a JSON list of {\"role\", \"content\"} objects is a chat for text-generation).
Parameters are Python's names with dashes: --top-k 3, --aggregation-strategy simple,
--batch-size 32, --pooling mean, --normalize, --candidate-labels a,b,c.
Without --model the task's default checkpoint is used (resolved through the Hub cache).";

#[derive(Parser, Debug)]
#[command(
    name = "rustformers",
    version,
    about = "Run Hugging Face Transformers checkpoints from Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: rustformers run TASK [--model REF] [--param value]... [INPUT...]
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        words: Vec<String>,
    },
    /// Chat with a model interactively: answers stream as they are generated; /reset
    /// clears the history, /exit (or end of input) quits. Generation flags as for `run`
    /// (--max-new-tokens, --do-sample, --temperature, ...), plus --system TEXT.
    #[command(disable_help_flag = true)]
    Chat {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        words: Vec<String>,
    },
    /// Write a GGUF checkpoint out as an HF safetensors checkpoint (config.json,
    /// model.safetensors in f32, tokenizer files) that Python transformers loads.
    Convert {
        /// A .gguf file, or a folder / Hub id holding one.
        gguf: String,
        /// The folder to write.
        out_dir: std::path::PathBuf,
    },
    /// Describe a checkpoint: architecture, config, parameter count, dtypes, files.
    Inspect {
        /// A folder, a .safetensors file or a Hub id (org/name[@revision]).
        reference: String,
    },
    /// Fine-tune a checkpoint: rustformers train --task text-classification --model REF
    /// --train-file F [--eval-file F] --output-dir DIR [--TRAINING_ARGUMENT VALUE]...
    /// (`rustformers train --help` for all options).
    #[command(disable_help_flag = true)]
    Train {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        words: Vec<String>,
    },
    /// Serve an OpenAI-compatible API: rustformers serve --model REF [--model REF]
    /// [--host 127.0.0.1] [--port 8000] [--max-batch-size 8] [--max-queue 64]. One model
    /// may generate text (a causal LM, GGUF or safetensors), one may embed (an encoder).
    Serve {
        /// A model to load (repeat for a generator and an embedder).
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8000)]
        port: u16,
        #[arg(long, default_value_t = 8)]
        max_batch_size: usize,
        #[arg(long, default_value_t = 64)]
        max_queue: usize,
    },
    /// Print the environment: version, CPU features, threads, Hub cache.
    Env,
    /// Time a work item (embeddings-f32, embeddings-bf16, decode-gguf, decode-f32,
    /// prefill-gguf, load-gguf, load-safetensors) and print median/min/max as JSON;
    /// scripts/bench/run.sh runs the peers side by side.
    Bench {
        work: String,
        /// Timed runs after one warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Sentences for the embeddings items, one per line (default scripts/bench/sentences.txt).
        #[arg(long)]
        input: Option<std::path::PathBuf>,
    },
}

pub fn main() -> Result<ExitCode> {
    let start = std::time::Instant::now();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return Ok(ExitCode::SUCCESS);
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("rustformers: {first} (see `rustformers --help`)");
            return Ok(ExitCode::from(2));
        }
    };
    match cli.command {
        Command::Run { words } => run(&words),
        Command::Chat { words } => chat(&words),
        Command::Convert { gguf, out_dir } => convert(&gguf, &out_dir),
        Command::Inspect { reference } => inspect(&reference),
        Command::Train { words } => crate::train::train(&words),
        Command::Serve {
            models,
            host,
            port,
            max_batch_size,
            max_queue,
        } => crate::serve::serve(&models, host, port, max_batch_size, max_queue),
        Command::Env => env(),
        Command::Bench { work, runs, input } => {
            crate::bench::bench(&crate::bench::BenchArgs { work, runs, input }, start)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An input line or argument: a JSON object (structured input) when it starts with `{`,
/// a chat when it is a JSON list of message objects, else plain text.
fn parse_input(line: &str, structured: bool, where_: &str) -> Result<Value> {
    let t = line.trim_start();
    if structured || t.starts_with('{') {
        return serde_json::from_str(line)
            .with_context(|| format!("{where_}: not a valid JSON line"));
    }
    if t.starts_with('[') {
        if let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(line) {
            if v.as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
            {
                return Ok(v);
            }
        }
    }
    Ok(Value::String(line.to_string()))
}

fn emit(out: &mut impl Write, values: Vec<Value>) -> Result<()> {
    for v in values {
        serde_json::to_writer(&mut *out, &v)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn run(words: &[String]) -> Result<ExitCode> {
    let before_sep: Vec<&String> = words.iter().take_while(|w| *w != "--").collect();
    if before_sep.iter().any(|w| *w == "--help" || *w == "-h") {
        println!("{RUN_HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    let args = parse_run(words)?;
    let info = task_info(&args.task)?;
    let structured = info.name == "question-answering";
    let opts = LoadOptions {
        dtype: args.dtype.as_deref().map(parse_dtype).transpose()?,
        ..Default::default()
    };
    let batch = match args.params.get("batch_size") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(1).max(1) as usize,
        _ => 1,
    };
    // Check inputs given as arguments before the (slow) model load.
    let arg_inputs: Vec<Value> = args
        .inputs
        .iter()
        .enumerate()
        .map(|(i, s)| parse_input(s, structured, &format!("input argument {}", i + 1)))
        .collect::<Result<_>>()?;
    let pipe: Box<dyn Pipeline> = pipeline_with(info.name, args.model.as_deref(), &opts)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !arg_inputs.is_empty() {
        for chunk in arg_inputs.chunks(batch) {
            emit(&mut out, pipe.run(chunk, &args.params)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stdin = std::io::stdin();
    let mut pending = Vec::with_capacity(batch);
    let mut any = false;
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.with_context(|| format!("reading stdin line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        pending.push(parse_input(
            &line,
            structured,
            &format!("stdin line {}", n + 1),
        )?);
        if pending.len() == batch {
            emit(&mut out, pipe.run(&pending, &args.params)?)?;
            pending.clear();
            any = true;
        }
    }
    if !pending.is_empty() {
        emit(&mut out, pipe.run(&pending, &args.params)?)?;
        any = true;
    }
    if !any {
        bail!("no input: pass inputs as arguments or one per line on stdin");
    }
    Ok(ExitCode::SUCCESS)
}

const CHAT_HELP: &str = "\
Usage: rustformers chat [REF] [--system TEXT] [--dtype f32|f16|bf16] [--GENERATION-OPTION VALUE]...

Chats with a causal LM through its chat template. Type a message and press Enter; the
answer streams as it is generated, followed by its speed in tokens/s on stderr.
/reset clears the conversation, /exit (or end of input) quits. Without REF the default
text-generation model is used. Options: --max-new-tokens (default 256), --do-sample,
--temperature, --top-k, --top-p, --min-p, --repetition-penalty, --seed, ...";

fn chat(words: &[String]) -> Result<ExitCode> {
    if words.iter().any(|w| w == "--help" || w == "-h") {
        println!("{CHAT_HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    // Reuse run's flag parser: the first bare word is the model.
    let mut all = vec!["chat".to_string()];
    all.extend(words.iter().cloned());
    let mut args = parse_run(&all)?;
    let reference = args.model.take().or_else(|| args.inputs.first().cloned());
    if args.inputs.len() > 1 {
        bail!(
            "chat takes one model reference; got {}",
            args.inputs.join(" ")
        );
    }
    let system = match args.params.remove("system") {
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    args.params
        .entry("max_new_tokens".to_string())
        .or_insert(json!(256));
    let opts = LoadOptions {
        dtype: args.dtype.as_deref().map(parse_dtype).transpose()?,
        ..Default::default()
    };
    let info = task_info("text-generation")?;
    let reference = reference.unwrap_or_else(|| info.default_model.to_string());
    let pipe = rustformers_pipelines::TextGenerationPipeline::from_pretrained(&reference, &opts)?;
    // Bad generation options fail here, once, not at every turn.
    pipe.check_params(&args.params)?;
    // `--chat-template NAME`: one of the tokenizer's named templates (a whole template
    // works too, as Python's `chat_template` argument).
    let tokenizer = pipe.tokenizer();
    match args.params.get("chat_template").and_then(Value::as_str) {
        Some(name)
            if tokenizer.named_chat_template(name).is_none()
                && !name.contains("{%")
                && !name.contains("{{") =>
        {
            bail!(
                "`{reference}` has no chat template named `{name}` (it has: {})",
                tokenizer.chat_template_names().join(", ")
            );
        }
        Some(_) => {}
        None if tokenizer.select_chat_template(None, false).is_err() => {
            bail!(
                "`{reference}` has no default chat template{}; use `rustformers run text-generation` for plain prompts",
                match tokenizer.chat_template_names() {
                    names if names.is_empty() => String::new(),
                    names => format!(" (choose one with --chat-template: {})", names.join(", ")),
                }
            );
        }
        None => {}
    }
    let mut history: Vec<Value> = Vec::new();
    let reset = |h: &mut Vec<Value>| {
        h.clear();
        if let Some(s) = &system {
            h.push(json!({"role": "system", "content": s}));
        }
    };
    reset(&mut history);
    eprintln!("rustformers chat with {reference} — /reset clears, /exit quits");
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let message = line.trim();
        match message {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut history);
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(json!({"role": "user", "content": message}));
        let stdout = std::io::stdout();
        let start = std::time::Instant::now();
        let result = pipe.stream(&Value::Array(history.clone()), &args.params, &mut |piece| {
            let mut out = stdout.lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        });
        match result {
            Ok((reply, tokens)) => {
                println!();
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "[{tokens} tokens, {:.1} tokens/s]",
                    tokens as f64 / secs.max(1e-9)
                );
                history.push(json!({"role": "assistant", "content": reply}));
            }
            Err(e) => {
                // The turn is dropped; the conversation goes on (e.g. after a too-long prompt).
                history.pop();
                eprintln!("rustformers: error: {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn convert(reference: &str, out_dir: &std::path::Path) -> Result<ExitCode> {
    let files = ModelFiles::resolve(reference)?;
    let path = rustformers_models::gguf_path(&files)?
        .ok_or_else(|| anyhow!("`{reference}` is not a GGUF file (nor a folder holding one)"))?;
    let g = rustformers_core::gguf::GgufFile::open(&path)?;
    let written = rustformers_models::gguf::convert_to_safetensors(&g, out_dir)?;
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_gguf(reference: &str, path: &std::path::Path) -> Result<ExitCode> {
    let g = rustformers_core::gguf::GgufFile::open(path)?;
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for t in g.tensor_types().into_values() {
        *types.entry(t.to_lowercase()).or_default() += 1;
    }
    let meta: serde_json::Map<String, Value> = g
        .meta_keys()
        .into_iter()
        .filter(|k| !k.starts_with("tokenizer.ggml.") && *k != "tokenizer.chat_template")
        .map(|k| (k.to_string(), json!(format!("{:?}", g.meta(k)))))
        .collect();
    let report = json!({
        "reference": reference,
        "file": path.display().to_string(),
        "bytes": g.file_len(),
        "architecture": g.meta_str("general.architecture"),
        "tensors": g.tensor_names().len(),
        "dtypes": types,
        "tokenizer": g.meta_str("tokenizer.ggml.model"),
        "vocab": g.meta_strings("tokenizer.ggml.tokens").map(|t| t.len()),
        "chat_template": g.chat_template().is_some(),
        "config": g.config_json()?,
        "metadata": meta,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn inspect(reference: &str) -> Result<ExitCode> {
    let files = ModelFiles::resolve(reference)?;
    if let Some(gguf) = rustformers_models::gguf_path(&files)? {
        return inspect_gguf(reference, &gguf);
    }
    let config = ModelConfig::from_files(&files)?;
    let config_json: Value = serde_json::from_str(&config.to_json_string()?)?;
    let paths = safetensors_files(&files)?;
    let mut dtypes = std::collections::BTreeMap::<String, usize>::new();
    let mut params = 0usize;
    let mut tensors = 0usize;
    for p in &paths {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("invalid weights {}: {e}", p.display()))?;
        for (_, view) in st.tensors() {
            *dtypes
                .entry(format!("{:?}", view.dtype()).to_lowercase())
                .or_default() += 1;
            params += view.shape().iter().product::<usize>();
            tensors += 1;
        }
    }
    let report = json!({
        "reference": reference,
        "folder": files.root().map(|p| p.display().to_string()),
        "model_type": config.model_type(),
        "architectures": config.base().architectures,
        "parameters": params,
        "tensors": tensors,
        "dtypes": dtypes,
        "weights": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "files": files.list_local(),
        "config": config_json,
        // config.json keys neither the model nor generation reads (Python may).
        "unread_config_keys": rustformers_generation::unread_config_keys(&config),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! feat {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) { f.push($name); }
            )*};
        }
        feat!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            f.push("neon");
        }
    }
    f
}

fn env() -> Result<ExitCode> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let report = json!({
        "rustformers": env!("CARGO_PKG_VERSION"),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpu_features": cpu_features(),
        "threads": threads,
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "hub_cache": hub::hub_cache_dir().display().to_string(),
        "offline": hub::is_offline(),
        "hf_token_set": std::env::var("HF_TOKEN").map(|t| !t.is_empty()).unwrap_or(false),
        "tasks": TASKS.iter().map(|t| json!({"task": t.name, "default_model": t.default_model})).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
