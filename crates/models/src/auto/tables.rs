//! The task tables (one line per family and task) and the Auto classes over them.

use super::*;

macro_rules! auto_class {
    ($(#[$doc:meta])* $name:ident, $trait:ident, $task:literal, $table:ident) => {
        $(#[$doc])*
        pub struct $name;

        impl $name {
            /// Loads a model reference (folder, file or Hub id) with default options.
            pub fn from_pretrained(reference: &str) -> Result<PreTrainedModel<dyn $trait>> {
                Self::from_pretrained_with(reference, &LoadOptions::default())
            }

            /// Loads a model reference with explicit options.
            pub fn from_pretrained_with(
                reference: &str,
                opts: &LoadOptions,
            ) -> Result<PreTrainedModel<dyn $trait>> {
                Self::from_files(ModelFiles::resolve(reference)?, opts)
            }

            /// Loads from resolved files.
            pub fn from_files(
                files: ModelFiles,
                opts: &LoadOptions,
            ) -> Result<PreTrainedModel<dyn $trait>> {
                load_with($task, $table, files, opts)
            }

            /// Loads a model reference for training: its weights become trainable
            /// parameters, weights the checkpoint lacks (a new head) are initialised,
            /// and the forward pass takes differentiable paths.
            pub fn for_training(
                reference: &str,
                opts: &LoadOptions,
                train: &TrainLoad,
            ) -> Result<PreTrainedModel<dyn $trait>> {
                load_mode($task, $table, ModelFiles::resolve(reference)?, opts, Some(train))
            }
        }
    };
}

/// The error a constructor gives when a table row meets another family's config
/// (a table bug: rows are keyed by `model_type`).
fn wrong_config(c: &ModelConfig) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "internal error: no constructor for a `{}` config in this row",
        c.model_type()
    ))
}

/// One table row: `entry!(Entry, "bert", "BertForMaskedLM", Bert => bert::BertForMaskedLM)`
/// builds the constructor that matches the config variant and calls `load`.
macro_rules! entry {
    ($kind:ident, $model_type:literal, $arch:literal, $variant:ident => $($ty:ident)::+) => {
        $kind {
            model_type: $model_type,
            architecture: $arch,
            ctor: |weights, c| match c {
                ModelConfig::$variant(c) => Ok(Box::new($($ty)::+::load(weights, c)?)),
                other => Err(wrong_config(other)),
            },
        }
    };
}

/// The base model gets a pooler when the checkpoint has one (Python would add a randomly
/// initialised pooler to a checkpoint saved without; rustformers returns no
/// `pooler_output` instead of random numbers).
fn has_pooler(w: &Weights) -> bool {
    w.vb().contains_tensor("pooler.dense.weight")
}

static BASE: &[Entry<dyn EncoderModel>] = &[
    Entry {
        model_type: "bert",
        architecture: "BertModel",
        ctor: |w, c| match c {
            ModelConfig::Bert(c) => {
                let pooler = has_pooler(&w);
                Ok(Box::new(bert::BertModel::load(w, c, pooler)?))
            }
            other => Err(wrong_config(other)),
        },
    },
    Entry {
        model_type: "roberta",
        architecture: "RobertaModel",
        ctor: |w, c| match c {
            ModelConfig::Roberta(c) => {
                let pooler = has_pooler(&w);
                Ok(Box::new(roberta::RobertaModel::load(w, c, pooler)?))
            }
            other => Err(wrong_config(other)),
        },
    },
    Entry {
        model_type: "xlm-roberta",
        architecture: "XLMRobertaModel",
        ctor: |w, c| match c {
            ModelConfig::Roberta(c) => {
                let pooler = has_pooler(&w);
                Ok(Box::new(roberta::RobertaModel::load(w, c, pooler)?))
            }
            other => Err(wrong_config(other)),
        },
    },
    entry!(Entry, "distilbert", "DistilBertModel", DistilBert => distilbert::DistilBertModel),
];

static SEQ_CLS: &[Entry<dyn SequenceClassificationModel>] = &[
    entry!(Entry, "bert", "BertForSequenceClassification", Bert => bert::BertForSequenceClassification),
    entry!(Entry, "roberta", "RobertaForSequenceClassification", Roberta => roberta::RobertaForSequenceClassification),
    entry!(Entry, "xlm-roberta", "XLMRobertaForSequenceClassification", Roberta => roberta::RobertaForSequenceClassification),
    Entry {
        model_type: "distilbert",
        architecture: "DistilBertForSequenceClassification",
        ctor: |w, c| match c {
            ModelConfig::DistilBert(c) => Ok(Box::new(
                distilbert::DistilBertForSequenceClassification::load(w, c)?,
            )),
            other => Err(wrong_config(other)),
        },
    },
    // Decoders: the generic head, `score` on the rightmost non-pad token.
    entry!(Entry, "llama", "LlamaForSequenceClassification", Llama => llama::LlamaForSequenceClassification),
    entry!(Entry, "mistral", "MistralForSequenceClassification", Mistral => mistral::MistralForSequenceClassification),
    entry!(Entry, "qwen2", "Qwen2ForSequenceClassification", Qwen2 => qwen2::Qwen2ForSequenceClassification),
    entry!(Entry, "qwen3", "Qwen3ForSequenceClassification", Qwen3 => qwen3::Qwen3ForSequenceClassification),
    entry!(Entry, "gemma2", "Gemma2ForSequenceClassification", Gemma2 => gemma2::Gemma2ForSequenceClassification),
    entry!(Entry, "phi3", "Phi3ForSequenceClassification", Phi3 => phi3::Phi3ForSequenceClassification),
    entry!(Entry, "gpt2", "GPT2ForSequenceClassification", Gpt2 => gpt2::Gpt2ForSequenceClassification),
];

static TOKEN_CLS: &[Entry<dyn TokenClassificationModel>] = &[
    entry!(Entry, "bert", "BertForTokenClassification", Bert => bert::BertForTokenClassification),
    entry!(Entry, "roberta", "RobertaForTokenClassification", Roberta => roberta::RobertaForTokenClassification),
    entry!(Entry, "xlm-roberta", "XLMRobertaForTokenClassification", Roberta => roberta::RobertaForTokenClassification),
    Entry {
        model_type: "distilbert",
        architecture: "DistilBertForTokenClassification",
        ctor: |w, c| match c {
            ModelConfig::DistilBert(c) => Ok(Box::new(
                distilbert::DistilBertForTokenClassification::load(w, c)?,
            )),
            other => Err(wrong_config(other)),
        },
    },
];

static QA: &[Entry<dyn QuestionAnsweringModel>] = &[
    entry!(Entry, "bert", "BertForQuestionAnswering", Bert => bert::BertForQuestionAnswering),
    entry!(Entry, "roberta", "RobertaForQuestionAnswering", Roberta => roberta::RobertaForQuestionAnswering),
    entry!(Entry, "xlm-roberta", "XLMRobertaForQuestionAnswering", Roberta => roberta::RobertaForQuestionAnswering),
    Entry {
        model_type: "distilbert",
        architecture: "DistilBertForQuestionAnswering",
        ctor: |w, c| match c {
            ModelConfig::DistilBert(c) => Ok(Box::new(
                distilbert::DistilBertForQuestionAnswering::load(w, c)?,
            )),
            other => Err(wrong_config(other)),
        },
    },
];

static MLM: &[Entry<dyn MaskedLmModel>] = &[
    entry!(Entry, "bert", "BertForMaskedLM", Bert => bert::BertForMaskedLM),
    entry!(Entry, "roberta", "RobertaForMaskedLM", Roberta => roberta::RobertaForMaskedLM),
    entry!(Entry, "xlm-roberta", "XLMRobertaForMaskedLM", Roberta => roberta::RobertaForMaskedLM),
    entry!(Entry, "distilbert", "DistilBertForMaskedLM", DistilBert => distilbert::DistilBertForMaskedLM),
];

auto_class!(
    /// `AutoModel`: the base encoder.
    AutoModel, EncoderModel, "AutoModel", BASE
);
auto_class!(
    /// `AutoModelForSequenceClassification`.
    AutoModelForSequenceClassification,
    SequenceClassificationModel,
    "AutoModelForSequenceClassification",
    SEQ_CLS
);
auto_class!(
    /// `AutoModelForTokenClassification`.
    AutoModelForTokenClassification,
    TokenClassificationModel,
    "AutoModelForTokenClassification",
    TOKEN_CLS
);
auto_class!(
    /// `AutoModelForQuestionAnswering`.
    AutoModelForQuestionAnswering,
    QuestionAnsweringModel,
    "AutoModelForQuestionAnswering",
    QA
);
auto_class!(
    /// `AutoModelForMaskedLM`.
    AutoModelForMaskedLM, MaskedLmModel, "AutoModelForMaskedLM", MLM
);

/// `AutoConfig`.
pub type AutoConfig = ModelConfig;

/// `AutoModelForCausalLM`'s table.
static CAUSAL_LM: &[Entry<dyn CausalLanguageModel>] = &[
    entry!(Entry, "llama", "LlamaForCausalLM", Llama => llama::LlamaForCausalLM),
    entry!(Entry, "mistral", "MistralForCausalLM", Mistral => mistral::MistralForCausalLM),
    entry!(Entry, "qwen2", "Qwen2ForCausalLM", Qwen2 => qwen2::Qwen2ForCausalLM),
    entry!(Entry, "qwen3", "Qwen3ForCausalLM", Qwen3 => qwen3::Qwen3ForCausalLM),
    entry!(Entry, "gemma2", "Gemma2ForCausalLM", Gemma2 => gemma2::Gemma2ForCausalLM),
    entry!(Entry, "phi3", "Phi3ForCausalLM", Phi3 => phi3::Phi3ForCausalLM),
    entry!(Entry, "gpt2", "GPT2LMHeadModel", Gpt2 => gpt2::Gpt2LMHeadModel),
];

/// `AutoModelForCausalLM`: decoder-only language models.
pub struct AutoModelForCausalLM;

impl AutoModelForCausalLM {
    /// Loads a model reference (folder, file or Hub id) with default options.
    pub fn from_pretrained(reference: &str) -> Result<PreTrainedModel<dyn CausalLanguageModel>> {
        Self::from_pretrained_with(reference, &LoadOptions::default())
    }

    /// Loads a model reference with explicit options.
    pub fn from_pretrained_with(
        reference: &str,
        opts: &LoadOptions,
    ) -> Result<PreTrainedModel<dyn CausalLanguageModel>> {
        Self::from_files(ModelFiles::resolve(reference)?, opts)
    }

    /// Loads a GGUF file: quantized unless `opts.dtype` asks for a float type.
    fn from_gguf(
        files: ModelFiles,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<PreTrainedModel<dyn CausalLanguageModel>> {
        let g = rustformers_core::gguf::GgufFile::open(path)?;
        let text = g.config_json()?.to_string();
        let mut config = ModelConfig::from_json_str(&text, path)?;
        if let ModelConfig::Llama(c) = &mut config {
            // llama.cpp stores llama's q/k rows permuted for interleaved rotary.
            c.rope_interleaved = true;
        }
        let entry = find_entry("AutoModelForCausalLM", CAUSAL_LM, &config)?;
        let (load_dtype, bf16_linears) = cpu_dtype(opts);
        let mut weights =
            crate::gguf::gguf_weights(&g, opts.dtype.map(|_| load_dtype), &opts.device)?;
        if bf16_linears {
            weights = weights.with_bf16_linears();
        }
        let model = (entry.ctor)(weights, &config).map_err(|e| Error::Weights {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(PreTrainedModel::inference_only(
            model,
            config,
            files,
            opts,
            entry.architecture,
        ))
    }

    /// Loads from resolved files.
    pub fn from_files(
        files: ModelFiles,
        opts: &LoadOptions,
    ) -> Result<PreTrainedModel<dyn CausalLanguageModel>> {
        if let Some(path) = crate::gguf::gguf_path(&files)? {
            return Self::from_gguf(files, &path, opts);
        }
        Self::from_safetensors(files, opts, None)
    }

    /// Loads a safetensors checkpoint for training (as the other Auto classes'
    /// `for_training`); GGUF files are refused (convert them first).
    pub fn for_training(
        reference: &str,
        opts: &LoadOptions,
        train: &TrainLoad,
    ) -> Result<PreTrainedModel<dyn CausalLanguageModel>> {
        let files = ModelFiles::resolve(reference)?;
        if let Some(path) = crate::gguf::gguf_path(&files)? {
            return Err(Error::Unsupported(format!(
                "{} is GGUF: training needs float weights; convert it first \
                 (rustformers convert FILE.gguf DIR) and train DIR",
                path.display()
            )));
        }
        Self::from_safetensors(files, opts, Some(train))
    }

    fn from_safetensors(
        files: ModelFiles,
        opts: &LoadOptions,
        train: Option<&TrainLoad>,
    ) -> Result<PreTrainedModel<dyn CausalLanguageModel>> {
        let adapter = match train {
            None => find_adapter(&files)?,
            Some(_) => None,
        };
        let (files, config) = base_of(files, adapter.as_ref())?;
        let entry = find_entry("AutoModelForCausalLM", CAUSAL_LM, &config)?;
        build(
            entry.ctor,
            entry.architecture,
            config,
            files,
            opts,
            train,
            adapter,
        )
    }
}
