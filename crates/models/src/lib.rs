//! rustformers model definitions: one folder per family, the shared trait set and the
//! Auto classes.

pub mod auto;
pub mod bert;
pub mod distilbert;
pub mod family;
pub mod gemma2;
pub mod gguf;
pub mod gpt2;
pub mod heads;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod roberta;
pub mod traits;

pub use auto::{
    AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
    AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, LoadOptions, ModelConfig, PreTrainedModel, TrainLoad,
};
pub use gguf::gguf_path;
pub use traits::*;
