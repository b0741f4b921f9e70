//! rustformers: run Hugging Face Transformers checkpoints from Rust.
//!
//! ```no_run
//! use rustformers::pipeline;
//! # fn main() -> rustformers::Result<()> {
//! let classifier = pipeline("text-classification", "path/to/checkpoint")?;
//! for out in classifier.run_texts(&["I love this!"])? {
//!     println!("{out}"); // [{"label":"POSITIVE","score":0.99}]
//! }
//! # Ok(())
//! # }
//! ```

pub use rustformers_core::{
    candle_core, config, hub, layers, tokenizer, weights, AutoTokenizer, BatchEncoding,
    EncodeOptions, Error, ModelFiles, Padding, PretrainedConfig, Result, Side, TextInput,
    Truncation,
};
pub use rustformers_models::{
    auto, bert, AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
    AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, BaseModelOutput, CausalLanguageModel, CausalLmInputs,
    EncoderInputs, LoadOptions, LogitsMode, ModelConfig, PreTrainedModel,
};
pub use rustformers_pipelines::{
    pipeline, pipeline_with, FeatureExtractionPipeline, FillMaskPipeline, Params, Pipeline,
    QuestionAnsweringPipeline, TextClassificationPipeline, TextGenerationPipeline,
    TokenClassificationPipeline, ZeroShotClassificationPipeline,
};

/// Model traits and task heads.
pub mod models {
    pub use rustformers_models::traits::*;
}

/// `generate()`, `GenerationConfig`, logits processors, streaming.
pub mod generation {
    pub use rustformers_generation::*;
}

/// Pipelines by task.
pub mod pipelines {
    pub use rustformers_pipelines::*;
}
