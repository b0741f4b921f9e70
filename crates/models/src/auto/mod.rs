//! Auto classes: config.json → the right model, through explicit static tables (one
//! line per model per task). An unknown `model_type` is an error listing the known ones.
//!
//! - `config`: the list of families (`families!`, one line each) and [`ModelConfig`];
//! - `tables`: one table per task (one line per family and task) and the Auto classes;
//! - `pretrained`: [`PreTrainedModel`], loading (adapters, training) and `save_pretrained`.

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use rustformers_core::config::{peek_model_type, KeyPolicy};
use rustformers_core::error::{read_to_string, write_atomic};
use rustformers_core::linear::Weights;
use rustformers_core::weights::{dtype_name, safetensors_files, save_safetensors};
use rustformers_core::{Checkpoint, Error, ModelFiles, PretrainedConfig, Result};

use crate::family::{FamilyConfig, FamilyInfo};
use crate::traits::{
    CausalLanguageModel, EncoderModel, MaskedLmModel, QuestionAnsweringModel,
    SequenceClassificationModel, TokenClassificationModel,
};
use crate::{bert, distilbert, gemma2, gpt2, llama, mistral, phi3, qwen2, qwen3, roberta};

mod config;
mod pretrained;
mod tables;

pub use config::*;
pub use pretrained::*;
pub use tables::*;
