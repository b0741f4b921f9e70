//! Auto classes: config.json → the right model, through explicit static tables (one
//! line per model per task). An unknown `model_type` is an error listing the known ones.

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
        self.base().refuse_unsupported()?;
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

/// Options of `from_pretrained`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype; `None` keeps f32 (as Python without `torch_dtype`).
    pub dtype: Option<DType>,
    pub device: Device,
    /// A LoRA adapter folder loads onto its base model merged into the weights (`true`,
    /// the default: PEFT's `merge_and_unload()`, the fast path) or as adapter layers run
    /// beside the base weights (`false`: `PeftModel.from_pretrained` as loaded; a save
    /// writes the adapter again).
    pub merge_adapter: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            device: Device::Cpu,
            merge_adapter: true,
        }
    }
}

/// A loaded model with what save_pretrained needs: its config and its tensors.
pub struct PreTrainedModel<M: ?Sized> {
    pub model: Box<M>,
    pub config: ModelConfig,
    pub files: ModelFiles,
    pub dtype: DType,
    pub device: Device,
    tensors: BTreeMap<String, Tensor>,
    /// Weights held packed by the model's f32 layers instead of in `tensors`.
    packed: BTreeMap<String, Arc<rustformers_core::kernels::sgemm::PackedF32>>,
    architecture: &'static str,
    /// Trainable parameters (loaded with `for_training`), by name.
    vars: Vec<(String, candle_core::Var)>,
    /// Weights the checkpoint lacked, initialised for training.
    initialized: Vec<String>,
    /// LoRA adapters being trained (a save writes them as a PEFT adapter).
    lora: Option<Arc<rustformers_core::lora::LoraState>>,
    /// The dropout switch of a model loaded for training.
    train_mode: Option<Arc<rustformers_core::layers::TrainMode>>,
    /// Loaded for bf16 mixed-precision training (`TrainLoad::bf16`).
    bf16_training: bool,
    /// Gradient checkpointing (`TrainLoad::gradient_checkpointing`).
    checkpointing: Option<Arc<rustformers_core::checkpoint::Checkpointing>>,
}

impl<M: ?Sized> std::fmt::Debug for PreTrainedModel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreTrainedModel")
            .field("architecture", &self.architecture)
            .field("model_type", &self.config.model_type())
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl<M: ?Sized> PreTrainedModel<M> {
    /// The Python class name of the loaded architecture (`BertForMaskedLM`).
    pub fn architecture(&self) -> &'static str {
        self.architecture
    }

    /// The trainable parameters by name (empty unless loaded with `for_training`): the
    /// model's own weights, so an optimizer's updates are what it runs and saves.
    pub fn trainable_parameters(&self) -> &[(String, candle_core::Var)] {
        &self.vars
    }

    /// The training switch of a model loaded with `for_training` (dropout on while the
    /// Trainer trains, off to evaluate), `None` otherwise.
    pub fn train_mode(&self) -> Option<&Arc<rustformers_core::layers::TrainMode>> {
        self.train_mode.as_ref()
    }

    /// True when loaded for bf16 mixed-precision training (`TrainLoad::bf16`): the dense
    /// linear products run in bf16, forward and backward, over f32 weights.
    pub fn bf16_training(&self) -> bool {
        self.bf16_training
    }

    /// True when loaded with gradient checkpointing (`TrainLoad::gradient_checkpointing`).
    pub fn gradient_checkpointing(&self) -> bool {
        self.checkpointing.is_some()
    }

    /// Layer recomputations the backward passes have run (0 without checkpointing).
    pub fn checkpoint_recomputations(&self) -> usize {
        self.checkpointing
            .as_ref()
            .map_or(0, |c| c.recomputations())
    }

    /// `loss.backward()`, with the gradients of checkpointed layers' parameters (found
    /// by their recomputation) and of fused training ops' parameters (encoder layers,
    /// which candle sees as ops of their input alone) added: what the Trainer calls.
    /// Call it rather than `loss.backward()` for a model loaded for training.
    pub fn backward(&self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        if let Some(m) = &self.train_mode {
            m.clear_side_grads()?;
        }
        let mut store = loss.backward()?;
        if let Some(c) = &self.checkpointing {
            c.merge_into(&mut store)?;
        }
        // Gradients of the parameters inside fused training ops (encoder layers).
        if let Some(m) = &self.train_mode {
            m.merge_side_grads(&mut store)?;
        }
        Ok(store)
    }

    /// Weights the checkpoint lacked, initialised for training (Python's "newly
    /// initialized" warning).
    pub fn newly_initialized(&self) -> &[String] {
        &self.initialized
    }

    /// Number of parameters (tied weights counted once).
    pub fn num_parameters(&self) -> usize {
        let packed: usize = self.packed.values().map(|p| p.rows() * p.cols()).sum();
        self.tensors.values().map(|t| t.elem_count()).sum::<usize>() + packed
    }

    /// Writes config.json and model.safetensors into `dir`, which Python's
    /// `from_pretrained` loads back.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if let Some(lora) = &self.lora {
            return self.save_adapter(lora, dir);
        }
        let mut config = self.config.clone();
        config.base_mut().architectures = Some(vec![self.architecture.to_string()]);
        config.base_mut().set_saved_dtype(dtype_name(self.dtype));
        // Tensors held in another dtype than the model's (f32 norms of a CPU bf16 model)
        // are saved in the model's dtype, as Python saves a bf16 model.
        let mut tensors = self.tensors.clone();
        for (name, p) in &self.packed {
            let t = Tensor::from_vec(p.to_rows(), (p.rows(), p.cols()), &Device::Cpu)?;
            tensors.insert(name.clone(), t);
        }
        for t in tensors.values_mut() {
            if t.dtype() != self.dtype {
                *t = t.to_dtype(self.dtype)?;
            }
        }
        // A tied pair is one tensor in Python: the alias is written from its source
        // (after training, a copy read for the alias would be stale).
        for (alias, source) in self.config.tied_save_keys() {
            if let Some(t) = tensors.get(*source).cloned() {
                tensors.insert(alias.to_string(), t);
            }
        }
        save_safetensors(&tensors, &dir.join("model.safetensors"))?;
        write_atomic(
            &dir.join("config.json"),
            config.to_json_string()?.as_bytes(),
        )
    }
}

impl<M: ?Sized> PreTrainedModel<M> {
    /// A LoRA model saves as PEFT does: adapter_model.safetensors (the adapters and the
    /// `modules_to_save` weights) and adapter_config.json; plus config.json with the
    /// labels (Python ignores it beside adapter_config.json; rustformers reads the labels).
    fn save_adapter(&self, lora: &rustformers_core::lora::LoraState, dir: &Path) -> Result<()> {
        let keep = lora.config.modules_to_save.clone().unwrap_or_default();
        let extra: BTreeMap<String, Tensor> = self
            .vars
            .iter()
            .filter(|(n, _)| !n.contains(".lora_"))
            .filter(|(n, _)| n.split('.').any(|seg| keep.iter().any(|k| k == seg)))
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        lora.save(dir, &extra)?;
        let mut config = self.config.clone();
        config.base_mut().architectures = Some(vec![self.architecture.to_string()]);
        write_atomic(
            &dir.join("config.json"),
            config.to_json_string()?.as_bytes(),
        )
    }
}

/// The dtype to load tensors in, and whether the dense linear layers go to bf16. On
/// CPU, `bf16` means bf16 linear weights run by rustformers' kernel with f32 activations
/// (candle has no CPU bf16 matmul); elsewhere the dtype as asked.
fn cpu_dtype(opts: &LoadOptions) -> (DType, bool) {
    match opts.dtype.unwrap_or(DType::F32) {
        DType::BF16 if opts.device.is_cpu() => (DType::F32, true),
        other => (other, false),
    }
}

type Ctor<T> = fn(Weights, &ModelConfig) -> candle_core::Result<Box<T>>;

/// One row of a task table: model_type, Python class name, constructor.
struct Entry<T: ?Sized + 'static> {
    model_type: &'static str,
    architecture: &'static str,
    ctor: Ctor<T>,
}

/// How a model is loaded for training (`for_training` of the Auto classes).
#[derive(Debug, Clone, Default)]
pub struct TrainLoad {
    /// Label names for a classification head (config.json's id2label/label2id are set
    /// from them, as Python's `num_labels=`/`id2label=` do); `None` keeps the config's.
    pub labels: Option<Vec<String>>,
    /// Seed of the initialisation of weights the checkpoint lacks.
    pub seed: u64,
    /// Initialise checkpoint weights whose shape differs from the config's (a head
    /// trained for other labels) instead of failing, as Python's
    /// `ignore_mismatched_sizes=True`.
    pub ignore_mismatched_sizes: bool,
    /// Train LoRA adapters (on `target_modules`) and the `modules_to_save` instead of
    /// every weight; the save is a PEFT adapter.
    pub lora: Option<rustformers_core::lora::LoraConfig>,
    /// Continue training the adapter saved in this folder (Python's
    /// `PeftModel.from_pretrained(base, dir, is_trainable=True)`); its
    /// adapter_config.json is used when `lora` is `None`.
    pub lora_from: Option<std::path::PathBuf>,
    /// bf16 mixed precision (Python's `TrainingArguments(bf16=True)`): the dense linear
    /// layers' products run in bf16 with f32 sums, forward and backward (AMX or
    /// AVX512-BF16 where the CPU has them); weights, gradients and the optimizer stay f32.
    pub bf16: bool,
    /// Gradient checkpointing (Python's `gradient_checkpointing=True`): each layer keeps
    /// only its input and output; the backward pass runs it again.
    pub gradient_checkpointing: bool,
}

fn load_with<T: ?Sized + 'static>(
    task: &str,
    table: &'static [Entry<T>],
    files: ModelFiles,
    opts: &LoadOptions,
) -> Result<PreTrainedModel<T>> {
    load_mode(task, table, files, opts, None)
}

fn load_mode<T: ?Sized + 'static>(
    task: &str,
    table: &'static [Entry<T>],
    files: ModelFiles,
    opts: &LoadOptions,
    train: Option<&TrainLoad>,
) -> Result<PreTrainedModel<T>> {
    let adapter = match train {
        None => find_adapter(&files)?,
        Some(_) => None,
    };
    let (files, mut config) = base_of(files, adapter.as_ref())?;
    if let Some(labels) = train.and_then(|t| t.labels.as_ref()) {
        if labels.is_empty() {
            return Err(Error::Config {
                path: "labels".into(),
                message: "a classification head needs at least one label".into(),
            });
        }
        config.base_mut().set_labels(labels);
    }
    let entry = table
        .iter()
        .find(|e| e.model_type == config.model_type())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{task} has no implementation for model_type `{}`; known for this task: {}",
                config.model_type(),
                table
                    .iter()
                    .map(|e| e.model_type)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
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

/// A PEFT adapter folder: its settings and tensors.
struct Adapter {
    dir: std::path::PathBuf,
    config: rustformers_core::lora::LoraConfig,
    tensors: BTreeMap<String, Tensor>,
}

/// The adapter in `files`' folder (adapter_config.json), if any: as Python's
/// `from_pretrained` does with PEFT installed, the model is then the base model named by
/// `base_model_name_or_path` with the adapter.
fn find_adapter(files: &ModelFiles) -> Result<Option<Adapter>> {
    let Some(dir) = files.root().map(std::path::Path::to_path_buf) else {
        return Ok(None);
    };
    let cfg_path = dir.join("adapter_config.json");
    if !cfg_path.is_file() {
        return Ok(None);
    }
    let config = rustformers_core::lora::LoraConfig::load(&cfg_path)?;
    let weights = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| Error::Weights {
            path: weights.display().to_string(),
            message: e.to_string(),
        })?
        .into_iter()
        .collect();
    Ok(Some(Adapter {
        dir,
        config,
        tensors,
    }))
}

/// The files and config to build from: the adapter's base model (with the labels of the
/// adapter folder's config.json, which rustformers writes beside it), else `files`.
fn base_of(files: ModelFiles, adapter: Option<&Adapter>) -> Result<(ModelFiles, ModelConfig)> {
    let Some(a) = adapter else {
        let config = ModelConfig::from_files(&files)?;
        return Ok((files, config));
    };
    let base = a
        .config
        .base_model_name_or_path
        .as_deref()
        .ok_or_else(|| Error::Config {
            path: a.dir.join("adapter_config.json").display().to_string(),
            message: "no base_model_name_or_path: the adapter does not say its base model".into(),
        })?;
    let base_files = ModelFiles::resolve(base)?;
    let mut config = ModelConfig::from_files(&base_files)?;
    let own = a.dir.join("config.json");
    if own.is_file() {
        let mine = ModelConfig::from_json_str(&read_to_string(&own)?, &own)?;
        if mine.base().id2label.is_some() {
            let labels = mine.base().labels()?;
            config.base_mut().set_labels(&labels);
        }
    }
    Ok((base_files, config))
}

/// The whole layers an adapter file holds (`modules_to_save`), by model name.
fn adapter_overrides(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .filter(|(k, _)| !k.contains(".lora_"))
        .filter_map(|(k, t)| {
            k.strip_prefix("base_model.model.")
                .map(|n| (n.to_string(), t.clone()))
        })
        .collect()
}

/// Opens the checkpoint (trainable or not, with an adapter or not) and builds the model.
fn build<T: ?Sized + 'static>(
    ctor: Ctor<T>,
    architecture: &'static str,
    config: ModelConfig,
    files: ModelFiles,
    opts: &LoadOptions,
    train: Option<&TrainLoad>,
    adapter: Option<Adapter>,
) -> Result<PreTrainedModel<T>> {
    use rustformers_core::lora::{LoraMode, LoraState};
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let (load_dtype, bf16_linears) = cpu_dtype(opts);
    let paths = safetensors_files(&files)?;
    let prefix = Some(config.base_model_prefix());
    let mut lora = None;
    let ckpt = match train {
        None => {
            let ckpt = Checkpoint::open(&paths, prefix, load_dtype, &opts.device)?;
            match adapter {
                Some(a) => {
                    // Whole layers the adapter saved (a classification head) replace the
                    // base model's; the LoRA pairs merge into their weights.
                    let overrides = adapter_overrides(&a.tensors);
                    lora = Some(Arc::new(LoraState::new(
                        a.config,
                        LoraMode::Load {
                            tensors: a.tensors,
                            merge: opts.merge_adapter,
                            trainable: false,
                        },
                    )));
                    ckpt.with_overrides(overrides)
                }
                None => ckpt,
            }
        }
        Some(t) => {
            if bf16_linears || dtype != DType::F32 {
                return Err(Error::Unsupported(
                    "training runs in f32 (leave dtype unset)".into(),
                ));
            }
            let mut init = train_init(&config, t)?;
            let from = match &t.lora_from {
                Some(dir) => Some(
                    find_adapter(&ModelFiles::resolve(&dir.display().to_string())?)?.ok_or_else(
                        || Error::Config {
                            path: dir.display().to_string(),
                            message: "no adapter_config.json to continue training from".into(),
                        },
                    )?,
                ),
                None => None,
            };
            let cfg = t
                .lora
                .clone()
                .or_else(|| from.as_ref().map(|a| a.config.clone()));
            let mut overrides = BTreeMap::new();
            if let Some(mut cfg) = cfg {
                cfg.validate("LoRA settings")?;
                init.trainable_modules = Some(cfg.modules_to_save.clone().unwrap_or_default());
                if cfg.base_model_name_or_path.is_none() {
                    cfg.base_model_name_or_path = Some(files.reference().to_string());
                }
                let mode = match from {
                    Some(a) => {
                        overrides = adapter_overrides(&a.tensors);
                        LoraMode::Load {
                            tensors: a.tensors,
                            merge: false,
                            trainable: true,
                        }
                    }
                    None => LoraMode::Train { seed: t.seed },
                };
                lora = Some(Arc::new(LoraState::new(cfg, mode)));
            }
            Checkpoint::open_trainable(&paths, prefix, load_dtype, &opts.device, init)?
                .with_overrides(overrides)
        }
    };
    let mut weights = Weights::new(ckpt.var_builder(), None);
    if bf16_linears {
        weights = weights.with_bf16_linears();
    } else if train.is_none() {
        // Inference: dense f32 layers packed for the CPU kernel (no gradients needed).
        weights = weights.with_packed_f32_linears(ckpt.packed_weights());
    }
    if let Some(l) = &lora {
        weights = weights.with_lora(l.clone());
    }
    let train_mode = train.map(|_| Arc::new(rustformers_core::layers::TrainMode::default()));
    if let Some(m) = &train_mode {
        weights = weights.with_train_mode(m.clone());
    }
    let bf16_training = train.is_some_and(|t| t.bf16);
    if bf16_training {
        weights = weights.with_bf16_training();
    }
    let checkpointing = train.filter(|t| t.gradient_checkpointing).map(|_| {
        Arc::new(rustformers_core::checkpoint::Checkpointing::new(
            train_mode.clone(),
        ))
    });
    if let Some(c) = &checkpointing {
        weights = weights.with_checkpointing(c.clone());
    }
    let model = ctor(weights, &config).map_err(|e| ckpt.wrap_error(e))?;
    let report = ckpt.finish()?;
    let mut vars = without_tied_aliases(report.vars, &config);
    if let Some(l) = &lora {
        if l.count() == 0 {
            return Err(Error::Config {
                path: "adapter_config.json".into(),
                message: format!(
                    "target_modules {:?} match no linear layer of this {} model",
                    l.config.target_modules,
                    config.model_type()
                ),
            });
        }
        vars.extend(l.vars());
    }
    if let Some(c) = &checkpointing {
        c.set_params(vars.iter().map(|(_, v)| v.as_tensor().clone()).collect());
    }
    Ok(PreTrainedModel {
        model,
        config,
        files,
        dtype,
        device: opts.device.clone(),
        tensors: report.tensors,
        packed: report.packed,
        architecture,
        vars,
        initialized: report.initialized,
        lora: lora.filter(|l| !l.merges()),
        train_mode,
        bf16_training,
        checkpointing,
    })
}

/// The trainable parameters less the aliases of tied pairs (RoBERTa's
/// `lm_head.decoder.bias`, read only so that the checkpoint counts it as used): Python
/// has one parameter per pair.
fn without_tied_aliases(
    vars: Vec<(String, candle_core::Var)>,
    config: &ModelConfig,
) -> Vec<(String, candle_core::Var)> {
    let aliases: Vec<&str> = config.tied_save_keys().iter().map(|(a, _)| *a).collect();
    vars.into_iter()
        .filter(|(n, _)| !aliases.contains(&n.as_str()))
        .collect()
}

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

type CausalCtor = fn(Weights, &ModelConfig) -> candle_core::Result<Box<dyn CausalLanguageModel>>;

/// One row of the causal-LM table: model_type, Python class name, constructor.
struct CausalEntry {
    model_type: &'static str,
    architecture: &'static str,
    ctor: CausalCtor,
}

static CAUSAL_LM: &[CausalEntry] = &[
    entry!(CausalEntry, "llama", "LlamaForCausalLM", Llama => llama::LlamaForCausalLM),
    entry!(CausalEntry, "mistral", "MistralForCausalLM", Mistral => mistral::MistralForCausalLM),
    entry!(CausalEntry, "qwen2", "Qwen2ForCausalLM", Qwen2 => qwen2::Qwen2ForCausalLM),
    entry!(CausalEntry, "qwen3", "Qwen3ForCausalLM", Qwen3 => qwen3::Qwen3ForCausalLM),
    entry!(CausalEntry, "gemma2", "Gemma2ForCausalLM", Gemma2 => gemma2::Gemma2ForCausalLM),
    entry!(CausalEntry, "phi3", "Phi3ForCausalLM", Phi3 => phi3::Phi3ForCausalLM),
    entry!(CausalEntry, "gpt2", "GPT2LMHeadModel", Gpt2 => gpt2::Gpt2LMHeadModel),
];

/// `AutoModelForCausalLM`: decoder-only language models.
pub struct AutoModelForCausalLM;

fn causal_entry(config: &ModelConfig) -> Result<&'static CausalEntry> {
    CAUSAL_LM
        .iter()
        .find(|e| e.model_type == config.model_type())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "AutoModelForCausalLM has no implementation for model_type `{}`; known: {}",
                config.model_type(),
                CAUSAL_LM
                    .iter()
                    .map(|e| e.model_type)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

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
        let entry = causal_entry(&config)?;
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
        Ok(PreTrainedModel {
            model,
            config,
            files,
            dtype: opts.dtype.unwrap_or(DType::F32),
            device: opts.device.clone(),
            tensors: BTreeMap::new(),
            packed: BTreeMap::new(),
            architecture: entry.architecture,
            vars: Vec::new(),
            initialized: Vec::new(),
            lora: None,
            train_mode: None,
            bf16_training: false,
            checkpointing: None,
        })
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
        let entry = causal_entry(&config)?;
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

/// How a trainable load initialises what the checkpoint lacks (config's
/// `initializer_range`, default 0.02).
fn train_init(
    config: &ModelConfig,
    t: &TrainLoad,
) -> Result<rustformers_core::weights::InitMissing> {
    let json: serde_json::Value =
        serde_json::from_str(&config.to_json_string()?).unwrap_or(serde_json::Value::Null);
    Ok(rustformers_core::weights::InitMissing {
        std: json["initializer_range"].as_f64().unwrap_or(0.02),
        seed: t.seed,
        ignore_mismatched_sizes: t.ignore_mismatched_sizes,
        trainable_modules: None,
    })
}
