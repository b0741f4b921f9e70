//! rustformers pipelines: `pipeline(task, model)` and one file per task. Each pipeline
//! returns, for one input, what Python's pipeline returns for that input (same JSON
//! keys and nesting), so scripts port over.

pub mod common;
pub mod feature_extraction;
pub mod fill_mask;
pub mod params;
pub mod question_answering;
pub mod text_classification;
pub mod text_generation;
pub mod token_classification;
pub mod zero_shot;

use serde_json::Value;

use rustformers_core::{Error, Result};
use rustformers_models::LoadOptions;

pub use feature_extraction::FeatureExtractionPipeline;
pub use fill_mask::FillMaskPipeline;
pub use params::Params;
pub use question_answering::QuestionAnsweringPipeline;
pub use text_classification::TextClassificationPipeline;
pub use text_generation::TextGenerationPipeline;
pub use token_classification::TokenClassificationPipeline;
pub use zero_shot::ZeroShotClassificationPipeline;

/// A task pipeline: preprocess → forward → postprocess.
pub trait Pipeline: Send + Sync {
    /// The task name (`text-classification`, ...).
    fn task(&self) -> &'static str;

    /// Runs each input (a JSON string, or an object for structured inputs) with
    /// parameters named as in Python; returns one output per input.
    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>>;

    /// Runs plain-text inputs with default parameters.
    fn run_texts(&self, texts: &[&str]) -> Result<Vec<Value>> {
        let inputs: Vec<Value> = texts.iter().map(|t| Value::String(t.to_string())).collect();
        self.run(&inputs, &Params::new())
    }

    /// Runs one input.
    fn run_one(&self, input: Value, params: &Params) -> Result<Value> {
        self.run(&[input], params)?
            .pop()
            .ok_or_else(|| Error::invalid("pipeline returned no output"))
    }
}

type Loader = fn(&str, &LoadOptions) -> Result<Box<dyn Pipeline>>;

/// One task: its name, aliases, default checkpoint (resolved through the Hub cache, as
/// in Python) and loader.
pub struct TaskInfo {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub default_model: &'static str,
    loader: Loader,
}

/// The task registry.
pub static TASKS: &[TaskInfo] = &[
    TaskInfo {
        name: "feature-extraction",
        aliases: &["embeddings", "sentence-embeddings"],
        default_model: "sentence-transformers/all-MiniLM-L6-v2",
        loader: |m, o| Ok(Box::new(FeatureExtractionPipeline::from_pretrained(m, o)?)),
    },
    TaskInfo {
        name: "text-classification",
        aliases: &["sentiment-analysis"],
        default_model: "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        loader: |m, o| Ok(Box::new(TextClassificationPipeline::from_pretrained(m, o)?)),
    },
    TaskInfo {
        name: "text-generation",
        aliases: &[],
        default_model: "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        loader: |m, o| Ok(Box::new(TextGenerationPipeline::from_pretrained(m, o)?)),
    },
    TaskInfo {
        name: "token-classification",
        aliases: &["ner"],
        default_model: "dbmdz/bert-large-cased-finetuned-conll03-english",
        loader: |m, o| {
            Ok(Box::new(TokenClassificationPipeline::from_pretrained(
                m, o,
            )?))
        },
    },
    TaskInfo {
        name: "fill-mask",
        aliases: &[],
        default_model: "distilbert/distilroberta-base",
        loader: |m, o| Ok(Box::new(FillMaskPipeline::from_pretrained(m, o)?)),
    },
    TaskInfo {
        name: "question-answering",
        aliases: &[],
        default_model: "distilbert/distilbert-base-cased-distilled-squad",
        loader: |m, o| Ok(Box::new(QuestionAnsweringPipeline::from_pretrained(m, o)?)),
    },
    TaskInfo {
        name: "zero-shot-classification",
        aliases: &[],
        default_model: "facebook/bart-large-mnli",
        loader: |m, o| {
            Ok(Box::new(ZeroShotClassificationPipeline::from_pretrained(
                m, o,
            )?))
        },
    },
];

/// Looks a task up by name or alias.
pub fn task_info(task: &str) -> Result<&'static TaskInfo> {
    TASKS
        .iter()
        .find(|t| t.name == task || t.aliases.contains(&task))
        .ok_or_else(|| {
            Error::invalid(format!(
                "unknown task `{task}`; known tasks: {}",
                TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// `pipeline(task, model)`: `model` is a folder, file or Hub id; `None` uses the task's
/// default checkpoint.
pub fn pipeline<'a>(task: &str, model: impl Into<Option<&'a str>>) -> Result<Box<dyn Pipeline>> {
    pipeline_with(task, model, &LoadOptions::default())
}

/// `pipeline(task, model)` with load options (dtype, device).
pub fn pipeline_with<'a>(
    task: &str,
    model: impl Into<Option<&'a str>>,
    opts: &LoadOptions,
) -> Result<Box<dyn Pipeline>> {
    let info = task_info(task)?;
    (info.loader)(model.into().unwrap_or(info.default_model), opts)
}
