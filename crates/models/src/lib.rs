//! rustformers model definitions: one folder per family, the shared trait set and the
//! Auto classes.

pub mod auto;
pub mod bert;
pub mod distilbert;
pub mod llama;
pub mod roberta;
pub mod traits;

pub use auto::{
    AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
    AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, LoadOptions, ModelConfig, PreTrainedModel,
};
pub use traits::*;
