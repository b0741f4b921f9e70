//! The model families and the typed config.json ([`ModelConfig`]).

use super::*;

/// The model families, one line each: `Variant(config type) = folder::FAMILY` (each
/// folder declares itself, see [`crate::family`]). This builds [`ModelConfig`], the
/// `model_type` dispatch and [`FAMILIES`].
macro_rules! families {
    ($($(#[$doc:meta])* $variant:ident($config:ty) = $family:path),* $(,)?) => {
        /// A parsed config.json, typed by family.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ModelConfig {
            $($(#[$doc])* $variant($config)),*
        }

        /// Every family's facts, in the list's order.
        pub static FAMILIES: &[&FamilyInfo] = &[$(&$family.info),*];

        impl ModelConfig {
            /// The family's facts.
            pub fn family(&self) -> &'static FamilyInfo {
                match self {
                    $(Self::$variant(_) => &$family.info),*
                }
            }

            fn config(&self) -> &dyn FamilyConfig {
                match self {
                    $(Self::$variant(c) => c),*
                }
            }

            fn config_mut(&mut self) -> &mut dyn FamilyConfig {
                match self {
                    $(Self::$variant(c) => c),*
                }
            }

            /// Parses `text` as `model_type`, by the family that reads it.
            fn parse_as(model_type: &str, text: &str, path: &Path) -> Option<Result<Self>> {
                $(
                    if $family.info.model_types.contains(&model_type) {
                        return Some(($family.parse)(text, path, model_type).map(Self::$variant));
                    }
                )*
                None
            }
        }
    };
}

families! {
    Bert(bert::BertConfig) = bert::FAMILY,
    /// `roberta` and `xlm-roberta` (the same network; `model_type` tells them apart).
    Roberta(roberta::RobertaConfig) = roberta::FAMILY,
    DistilBert(distilbert::DistilBertConfig) = distilbert::FAMILY,
    Llama(llama::LlamaConfig) = llama::FAMILY,
    Mistral(mistral::MistralConfig) = mistral::FAMILY,
    Qwen2(qwen2::Qwen2Config) = qwen2::FAMILY,
    Qwen3(qwen3::Qwen3Config) = qwen3::FAMILY,
    Gemma2(gemma2::Gemma2Config) = gemma2::FAMILY,
    Phi3(phi3::Phi3Config) = phi3::FAMILY,
    Gpt2(gpt2::Gpt2Config) = gpt2::FAMILY,
}

/// The family that reads `model_type`, if any.
pub fn family_of(model_type: &str) -> Option<&'static FamilyInfo> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_types.contains(&model_type))
}

/// Known `model_type` values, for error messages.
pub fn known_model_types() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.model_types.iter().copied())
        .collect()
}

/// Infers `model_type` from `architectures` for old configs that lack it
/// (`BertForMaskedLM` → `bert`), as Python falls back on the name pattern.
fn infer_model_type(archs: &[String]) -> Option<&'static str> {
    let lower: Vec<String> = archs.iter().map(|a| a.to_ascii_lowercase()).collect();
    known_model_types()
        .into_iter()
        .filter(|k| {
            let key = k.replace(['-', '_'], "");
            lower.iter().any(|a| a.starts_with(&key))
        })
        .max_by_key(|k| k.len())
}

impl ModelConfig {
    /// Parses config.json text.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let (mut model_type, archs) = peek_model_type(text, path)?;
        if model_type.is_empty() {
            model_type = infer_model_type(&archs)
                .ok_or_else(|| Error::Config {
                    path: path.display().to_string(),
                    message: format!(
                        "no `model_type` and no recognisable `architectures`; known model types: {}",
                        known_model_types().join(", ")
                    ),
                })?
                .to_string();
        }
        let mut config = Self::parse_as(&model_type, text, path).ok_or_else(|| {
            Error::Unsupported(format!(
                "model_type `{model_type}` ({}) is not supported; known model types: {}",
                path.display(),
                known_model_types().join(", ")
            ))
        })??;
        config.base_mut().note_nulls(text);
        if config.base().model_type.is_empty() {
            config.base_mut().model_type = model_type;
        }
        config.validate()?;
        Ok(config)
    }

    /// `AutoConfig.from_pretrained`: reads config.json of a model reference.
    pub fn from_pretrained(reference: &str) -> Result<Self> {
        Self::from_files(&ModelFiles::resolve(reference)?)
    }

    /// Reads config.json from resolved files.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let path = files.require("config.json")?;
        Self::from_json_str(&read_to_string(&path)?, &path)
    }

    /// The fields every config has.
    pub fn base(&self) -> &PretrainedConfig {
        self.config().base()
    }

    /// Mutable access to the shared fields.
    pub fn base_mut(&mut self) -> &mut PretrainedConfig {
        self.config_mut().base_mut()
    }

    /// The `model_type`.
    pub fn model_type(&self) -> &str {
        &self.base().model_type
    }

    /// Python's `base_model_prefix` of the family.
    pub fn base_model_prefix(&self) -> &'static str {
        self.family().base_model_prefix
    }

    /// Tied tensors save_pretrained writes under a second name (alias, source).
    pub fn tied_save_keys(&self) -> &'static [(&'static str, &'static str)] {
        self.family().tied_save_keys
    }

    /// Hidden size of the encoder output.
    pub fn hidden_size(&self) -> usize {
        self.config().hidden_size()
    }

    /// The longest input the position embeddings allow (for RoBERTa, whose positions
    /// start after `pad_token_id`, two fewer than `max_position_embeddings`: 512 of 514).
    pub fn max_position_embeddings(&self) -> usize {
        self.config().max_input_positions()
    }

    /// The family's account of config.json keys without a typed field.
    pub fn key_policy(&self) -> &'static KeyPolicy {
        self.family().key_policy
    }

    /// config.json keys the model reads nowhere (see [`PretrainedConfig::unread_keys`];
    /// generation options are read by `GenerationConfig`, which removes them).
    pub fn unread_keys(&self) -> Vec<String> {
        self.base().unread_keys(self.key_policy())
    }

    /// Checks the config values.
    pub fn validate(&self) -> Result<()> {
        self.base().refuse_unsupported(self.key_policy())?;
        self.config().validate()
    }

    /// config.json text as Python 5.x writes it (RoPE keys in `rope_parameters`, the
    /// keys config.json set to `null` written back as `null`).
    pub fn to_json_string(&self) -> Result<String> {
        // 4.x keys 5.x reads and never writes (their values live on in `rope_parameters`
        // and `dtype`): an explicit null of theirs is not written back either.
        const CONSUMED: &[&str] = &[
            "rope_scaling",
            "rope_theta",
            "partial_rotary_factor",
            "torch_dtype",
        ];
        let nulls: Vec<String> = self
            .base()
            .explicit_nulls
            .iter()
            .filter(|k| !CONSUMED.contains(&k.as_str()))
            .cloned()
            .collect();
        self.config().to_json_string(&nulls)
    }
}
