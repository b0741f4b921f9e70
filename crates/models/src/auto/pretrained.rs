//! [`PreTrainedModel`]: loading (adapters, training) and `save_pretrained`.

use super::*;

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

impl<M: ?Sized> PreTrainedModel<M> {
    /// A model whose weights live in the model alone (GGUF): nothing to save or train.
    pub(super) fn inference_only(
        model: Box<M>,
        config: ModelConfig,
        files: ModelFiles,
        opts: &LoadOptions,
        architecture: &'static str,
    ) -> Self {
        Self {
            model,
            config,
            files,
            dtype: opts.dtype.unwrap_or(DType::F32),
            device: opts.device.clone(),
            tensors: BTreeMap::new(),
            packed: BTreeMap::new(),
            architecture,
            vars: Vec::new(),
            initialized: Vec::new(),
            lora: None,
            train_mode: None,
            bf16_training: false,
            checkpointing: None,
        }
    }
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
pub(super) fn cpu_dtype(opts: &LoadOptions) -> (DType, bool) {
    match opts.dtype.unwrap_or(DType::F32) {
        DType::BF16 if opts.device.is_cpu() => (DType::F32, true),
        other => (other, false),
    }
}

pub(super) type Ctor<T> = fn(Weights, &ModelConfig) -> candle_core::Result<Box<T>>;

/// The row of `table` for `config`'s model type; an error naming the task and the model
/// types it knows otherwise.
pub(super) fn find_entry<'t, T: ?Sized>(
    task: &str,
    table: &'t [Entry<T>],
    config: &ModelConfig,
) -> Result<&'t Entry<T>> {
    table
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
        })
}

/// One row of a task table: model_type, Python class name, constructor.
pub(super) struct Entry<T: ?Sized + 'static> {
    pub(super) model_type: &'static str,
    pub(super) architecture: &'static str,
    pub(super) ctor: Ctor<T>,
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

pub(super) fn load_with<T: ?Sized + 'static>(
    task: &str,
    table: &'static [Entry<T>],
    files: ModelFiles,
    opts: &LoadOptions,
) -> Result<PreTrainedModel<T>> {
    load_mode(task, table, files, opts, None)
}

pub(super) fn load_mode<T: ?Sized + 'static>(
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
    let entry = find_entry(task, table, &config)?;
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
pub(super) struct Adapter {
    dir: std::path::PathBuf,
    config: rustformers_core::lora::LoraConfig,
    tensors: BTreeMap<String, Tensor>,
}

/// The adapter in `files`' folder (adapter_config.json), if any: as Python's
/// `from_pretrained` does with PEFT installed, the model is then the base model named by
/// `base_model_name_or_path` with the adapter.
pub(super) fn find_adapter(files: &ModelFiles) -> Result<Option<Adapter>> {
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
pub(super) fn base_of(
    files: ModelFiles,
    adapter: Option<&Adapter>,
) -> Result<(ModelFiles, ModelConfig)> {
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
pub(super) fn build<T: ?Sized + 'static>(
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
