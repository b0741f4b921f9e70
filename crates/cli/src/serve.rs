//! `rustformers serve`: loads the models, then runs the OpenAI-compatible server.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use rustformers_core::{AutoTokenizer, ModelFiles};
use rustformers_models::{LoadOptions, ModelConfig};
use rustformers_pipelines::{FeatureExtractionPipeline, TextGenerationPipeline};
use rustformers_server::{Models, ServerConfig};

/// Whether `reference` is a causal LM (GGUF files are).
fn generates(reference: &str) -> Result<bool> {
    let files = ModelFiles::resolve(reference)?;
    if rustformers_models::gguf_path(&files)?.is_some() {
        return Ok(true);
    }
    Ok(ModelConfig::from_files(&files)?.family().generates)
}

pub fn serve(
    refs: &[String],
    host: String,
    port: u16,
    max_batch_size: usize,
    max_queue: usize,
) -> Result<ExitCode> {
    // Checked before the models load: a server that could never take a request.
    if max_queue == 0 {
        bail!("--max-queue 0: the queue must hold at least 1 request");
    }
    if max_batch_size == 0 {
        bail!("--max-batch-size 0: the batch must run at least 1 sequence");
    }
    let mut models = Models {
        generator: None,
        embedder: None,
    };
    let opts = LoadOptions::default();
    for r in refs {
        if generates(r)? {
            if models.generator.is_some() {
                bail!("--model {r}: one text-generation model per server");
            }
            let p = TextGenerationPipeline::from_pretrained(r, &opts)?;
            models.generator = Some((r.clone(), Arc::new(p)));
        } else {
            if models.embedder.is_some() {
                bail!("--model {r}: one embedding model per server");
            }
            let p = FeatureExtractionPipeline::from_pretrained(r, &opts)?;
            let tok = AutoTokenizer::from_pretrained(r)?;
            models.embedder = Some((r.clone(), Arc::new(p), Arc::new(tok)));
        }
    }
    let config = ServerConfig {
        host: host.clone(),
        port,
        max_queue,
        max_batch_size,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!("rustformers: serving on http://{host}:{port}/v1 (Ctrl-C or SIGTERM to stop)");
    rt.block_on(rustformers_server::serve(models, config))
        .with_context(|| format!("serving on {host}:{port}"))?;
    Ok(ExitCode::SUCCESS)
}
