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
    EncoderInputs, LoadOptions, LogitsMode, ModelConfig, PreTrainedModel, TrainLoad,
};
pub use rustformers_pipelines::{
    pipeline, pipeline_with, FeatureExtractionPipeline, FillMaskPipeline, Params, Pipeline,
    QuestionAnsweringPipeline, TextClassificationPipeline, TextGenerationPipeline,
    TokenClassificationPipeline, ZeroShotClassificationPipeline,
};
pub use rustformers_trainer::{Trainer, TrainingArguments};

/// Model traits and task heads.
pub mod models {
    pub use rustformers_models::traits::*;
}

/// `Trainer`, `TrainingArguments`, AdamW, schedules, data files, callbacks.
///
/// ```no_run
/// use rustformers::trainer::data::{text_classification, LabelSet};
/// use rustformers::trainer::text_classification_features;
/// use rustformers::{
///     AutoModelForSequenceClassification, AutoTokenizer, LoadOptions, TrainLoad, Trainer,
///     TrainingArguments,
/// };
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::path::Path::new("train.jsonl");
/// let examples = text_classification(path, "label")?; // errors name file:line
/// let labels = LabelSet::from_examples(&examples, path, &[])?;
/// let tokenizer = AutoTokenizer::from_pretrained("sentence-transformers/all-MiniLM-L6-v2")?;
/// let ids = labels.indices(&examples, path)?;
/// let features = text_classification_features(&tokenizer, &examples, &ids, None)?;
/// let model = AutoModelForSequenceClassification::for_training(
///     "sentence-transformers/all-MiniLM-L6-v2",
///     &LoadOptions::default(),
///     &TrainLoad { labels: Some(labels.names.clone()), ..Default::default() },
/// )?;
/// let args = TrainingArguments {
///     output_dir: "out".into(),
///     num_train_epochs: 3.0,
///     ..Default::default()
/// };
/// let mut trainer = Trainer::new(args, &model, Some(&tokenizer), features, None)?;
/// trainer.train(None)?; // Some(checkpoint) resumes
/// trainer.save_model(std::path::Path::new("out"))?;
/// # Ok(())
/// # }
/// ```
pub mod trainer {
    pub use rustformers_trainer::*;
}

/// `generate()`, `GenerationConfig`, logits processors, streaming.
pub mod generation {
    pub use rustformers_generation::*;
}

/// Pipelines by task.
pub mod pipelines {
    pub use rustformers_pipelines::*;
}
