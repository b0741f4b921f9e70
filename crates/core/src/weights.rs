//! Checkpoint weights: safetensors (single or sharded), memory-mapped, with the
//! missing/unexpected key report Python gives and the `base_model_prefix` rules that
//! let a base-model checkpoint load into a model with a head and the other way round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::error::{read_json, Error, Result};
use crate::hub::ModelFiles;

/// Keys Python never reports as unexpected: non-persistent buffers some checkpoints hold.
const IGNORED_UNEXPECTED_SUFFIXES: &[&str] = &["position_ids", "token_type_ids"];

/// Finds the safetensors file(s) of a model: the single file named by the reference,
/// `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
pub fn safetensors_files(files: &ModelFiles) -> Result<Vec<PathBuf>> {
    if let Some(f) = files.single_file() {
        if f.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            return Ok(vec![f.to_path_buf()]);
        }
    }
    if let Some(p) = files.get("model.safetensors")? {
        return Ok(vec![p]);
    }
    if let Some(index) = files.get("model.safetensors.index.json")? {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Weights {
                path: index.display().to_string(),
                message: "no `weight_map` object".into(),
            })?;
        let shards: BTreeSet<String> = map
            .values()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        if shards.is_empty() {
            return Err(Error::Weights {
                path: index.display().to_string(),
                message: "`weight_map` lists no shard".into(),
            });
        }
        let mut out = Vec::with_capacity(shards.len());
        for s in shards {
            if s.contains("..") || s.starts_with('/') {
                return Err(Error::Weights {
                    path: index.display().to_string(),
                    message: format!("shard name `{s}` escapes the model folder"),
                });
            }
            out.push(files.require(&s)?);
        }
        return Ok(out);
    }
    let has_bin = files.get("pytorch_model.bin").ok().flatten().is_some();
    Err(Error::MissingFile {
        reference: files.reference().to_string(),
        file: "model.safetensors".into(),
        hint: if has_bin {
            " (only pytorch_model.bin is present: convert it to safetensors, e.g. with \
             Python `model.save_pretrained(dir, safe_serialization=True)`)"
                .into()
        } else {
            String::new()
        },
    })
}

/// A checkpoint's record of the weights its model packed for the f32 kernel: a packed
/// weight takes its tensor's place, so that the tensor is freed with the layer's.
#[derive(Clone)]
pub struct PackedWeights(Arc<Mutex<Tracker>>);

impl PackedWeights {
    /// The weight asked for as `name` is now held as `packed`.
    pub fn replace(
        &self,
        name: &str,
        packed: Arc<crate::kernels::sgemm::PackedF32>,
    ) -> candle_core::Result<()> {
        let mut tracker = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("weight tracker poisoned".into()))?;
        if tracker.loaded.remove(name).is_some() {
            tracker.packed.insert(name.to_string(), packed);
        }
        Ok(())
    }
}

struct Tracker {
    /// Canonical name → tensor handed to the model (for save_pretrained).
    loaded: BTreeMap<String, Tensor>,
    /// Canonical name → a weight the model holds packed for the f32 kernel instead (its
    /// tensor left `loaded`, so that the file's values are not held twice).
    packed: BTreeMap<String, Arc<crate::kernels::sgemm::PackedF32>>,
    /// For training: every tensor handed out is a `Var` (in `loaded` too, sharing its
    /// storage, so that a save after training writes the trained values); weights the
    /// checkpoint lacks are initialised instead of reported missing.
    trainable: Option<TrainableState>,
    /// Checkpoint keys that were used.
    used: BTreeSet<String>,
    /// Canonical names the checkpoint lacks.
    missing: Vec<String>,
    /// Tensors that replace the checkpoint's (an adapter's `modules_to_save`).
    overrides: BTreeMap<String, Tensor>,
}

/// How weights a checkpoint lacks are initialised for training, as Python's
/// `_init_weights` does for BERT-style and Llama-style models: biases zero,
/// normalisation weights one, every other weight normal(0, `std`) (`initializer_range`).
#[derive(Debug, Clone)]
pub struct InitMissing {
    pub std: f64,
    pub seed: u64,
    /// A checkpoint weight of another shape than the config implies (a head for other
    /// labels) is initialised anew instead of refused (Python's
    /// `ignore_mismatched_sizes=True`).
    pub ignore_mismatched_sizes: bool,
    /// Only weights under these modules (a path segment equal to one of them) become
    /// trainable; the rest load as frozen tensors (LoRA's `modules_to_save`). `None`:
    /// every weight trains.
    pub trainable_modules: Option<Vec<String>>,
}

impl InitMissing {
    fn trains(&self, name: &str) -> bool {
        self.trainable_modules
            .as_ref()
            .is_none_or(|m| name.split('.').any(|seg| m.iter().any(|x| x == seg)))
    }
}

struct TrainableState {
    init: InitMissing,
    rng: crate::rng::Rng,
    vars: Vec<(String, candle_core::Var)>,
    initialized: Vec<String>,
}

impl TrainableState {
    /// The initial value of a weight the checkpoint lacks.
    fn init(
        &mut self,
        name: &str,
        s: &Shape,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let module = name.rsplit_once('.').map_or("", |(m, _)| m);
        let last = module.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        if name.ends_with("bias") || name.ends_with(".beta") {
            return Tensor::zeros(s, dtype, dev);
        }
        if last.contains("norm") || last.starts_with("ln_") || name.ends_with(".gamma") {
            return Tensor::ones(s, dtype, dev);
        }
        let vals: Vec<f32> = (0..s.elem_count())
            .map(|_| (self.rng.normal() * self.init.std) as f32)
            .collect();
        Tensor::from_vec(vals, s, dev)?.to_dtype(dtype)
    }
}

/// A `SimpleBackend` over memory-mapped safetensors that records what the model asks
/// for, maps names across `base_model_prefix`, and collects missing keys instead of
/// failing at the first one.
struct TrackingBackend {
    st: MmapedSafetensors,
    keys: BTreeSet<String>,
    prefix: Option<String>,
    tracker: Arc<Mutex<Tracker>>,
}

impl TrackingBackend {
    fn resolve(&self, name: &str) -> Option<String> {
        let mut candidates = vec![name.to_string()];
        if let Some(p) = &self.prefix {
            let dotted = format!("{p}.");
            match name.strip_prefix(&dotted) {
                Some(rest) => candidates.push(rest.to_string()),
                None => candidates.push(format!("{dotted}{name}")),
            }
        }
        let legacy: Vec<String> = candidates
            .iter()
            .filter_map(|c| {
                if let Some(s) = c.strip_suffix(".weight") {
                    Some(format!("{s}.gamma"))
                } else {
                    c.strip_suffix(".bias").map(|s| format!("{s}.beta"))
                }
            })
            .collect();
        candidates.extend(legacy);
        candidates.into_iter().find(|c| self.keys.contains(c))
    }

    /// Copies tensor `key` out of the mapping, then hands the mapped pages it read back
    /// to the kernel: the copy is what the model keeps, so without this the file would
    /// be resident twice at the peak (the mapping's touched pages and the copies).
    fn load(&self, key: &str, dev: &Device) -> candle_core::Result<Tensor> {
        use candle_core::safetensors::Load;
        let view = self.st.get(key)?;
        let t = view.load(dev)?;
        release_mapped_pages(view.data());
        Ok(t)
    }
}

/// `madvise(MADV_DONTNEED)` over the whole pages inside `bytes`, a slice of a read-only
/// file mapping. Nothing in such a mapping is ever written, so a later read of those
/// pages faults the same bytes back in from the file; the call only lowers the resident
/// set. Failure is harmless (the pages stay resident) and ignored.
fn release_mapped_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no memory arguments.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let Ok(page) = usize::try_from(page) else {
            return;
        };
        if page == 0 {
            return;
        }
        let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: [start, end) lies inside `bytes`, which borrows a read-only file
            // mapping that stays mapped; MADV_DONTNEED on such pages drops them from
            // the resident set and later reads see the file's bytes again.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

impl candle_nn::var_builder::SimpleBackend for TrackingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut tracker = self
            .tracker
            .lock()
            .map_err(|_| candle_core::Error::Msg("weight tracker poisoned".into()))?;
        if tracker.trainable.is_some() {
            // A tied weight asked for twice is one parameter.
            if let Some(t) = tracker.loaded.get(name) {
                return Ok(t.clone());
            }
        }
        if let Some(t) = tracker.overrides.get(name).cloned() {
            if t.shape() != &s {
                candle_core::bail!(
                    "adapter weight `{name}` has shape {:?} but the config implies {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            let t = t.to_device(dev)?.to_dtype(dtype)?;
            if let Some(key) = self.resolve(name) {
                tracker.used.insert(key);
            }
            if tracker.trainable.is_some() {
                return make_var(&mut tracker, name, t);
            }
            tracker.loaded.insert(name.to_string(), t.clone());
            return Ok(t);
        }
        let Some(key) = self.resolve(name) else {
            if let Some(tr) = tracker.trainable.as_mut() {
                let t = tr.init(name, &s, dtype, dev)?;
                tr.initialized.push(name.to_string());
                return make_var(&mut tracker, name, t);
            }
            tracker.missing.push(name.to_string());
            // Stand-in so that construction can go on and report every missing key.
            return Tensor::zeros(s, dtype, dev);
        };
        let t = self.load(&key, dev)?;
        if t.shape() != &s {
            if let Some(tr) = tracker.trainable.as_mut() {
                if tr.init.ignore_mismatched_sizes {
                    tracing::warn!(
                        "`{key}` has shape {:?} in the checkpoint, the config implies {:?}: \
                         newly initialized",
                        t.dims(),
                        s.dims()
                    );
                    let t = tr.init(name, &s, dtype, dev)?;
                    tr.initialized.push(name.to_string());
                    tracker.used.insert(key);
                    return make_var(&mut tracker, name, t);
                }
            }
            return Err(candle_core::Error::Msg(format!(
                "weight `{key}` has shape {:?} in the checkpoint but the config implies {:?}",
                t.dims(),
                s.dims()
            )));
        }
        let t = if t.dtype() == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        };
        tracker.used.insert(key);
        if tracker.trainable.is_some() {
            return make_var(&mut tracker, name, t);
        }
        tracker.loaded.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut tracker = self
            .tracker
            .lock()
            .map_err(|_| candle_core::Error::Msg("weight tracker poisoned".into()))?;
        let key = self.resolve(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("weight `{name}` is not in the checkpoint"))
        })?;
        let t = self.load(&key, dev)?;
        let t = if t.dtype() == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        };
        tracker.used.insert(key);
        if tracker.trainable.is_some() {
            return make_var(&mut tracker, name, t);
        }
        tracker.loaded.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }
}

/// Records `t` as the trainable parameter `name` (frozen when the trainable modules
/// leave it out) and hands out its tensor.
fn make_var(tracker: &mut Tracker, name: &str, t: Tensor) -> candle_core::Result<Tensor> {
    if tracker
        .trainable
        .as_ref()
        .is_some_and(|tr| !tr.init.trains(name))
    {
        tracker.loaded.insert(name.to_string(), t.clone());
        return Ok(t);
    }
    let var = candle_core::Var::from_tensor(&t)?;
    let out = var.as_tensor().clone();
    tracker.loaded.insert(name.to_string(), out.clone());
    if let Some(tr) = tracker.trainable.as_mut() {
        tr.vars.push((name.to_string(), var));
    }
    Ok(out)
}

/// An open checkpoint: hands out a [`VarBuilder`] and, once the model is built,
/// checks that every weight was found.
pub struct Checkpoint {
    paths: Vec<PathBuf>,
    keys: BTreeSet<String>,
    tracker: Arc<Mutex<Tracker>>,
    vb: VarBuilder<'static>,
}

/// What a load produced besides the model: the tensors by canonical name (what
/// save_pretrained writes) and the checkpoint keys the model did not use.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub tensors: BTreeMap<String, Tensor>,
    /// Weights held packed for the f32 kernel (not in `tensors`; rebuilt for a save).
    pub packed: BTreeMap<String, Arc<crate::kernels::sgemm::PackedF32>>,
    pub unexpected: Vec<String>,
    /// Trainable parameters (opened with [`Checkpoint::open_trainable`]), by name.
    pub vars: Vec<(String, candle_core::Var)>,
    /// Weights the checkpoint lacked, initialised for training.
    pub initialized: Vec<String>,
}

impl Checkpoint {
    /// Memory-maps `paths`. `prefix` is the model's `base_model_prefix` (`bert`, ...).
    pub fn open(
        paths: &[PathBuf],
        prefix: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        for p in paths {
            let len = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
            if len < 8 {
                return Err(Error::Weights {
                    path: p.display().to_string(),
                    message: format!("file is {len} bytes, too short to be safetensors"),
                });
            }
        }
        // SAFETY: the files are mapped read-only; like Python and candle we assume they
        // are not truncated or rewritten while the model is loading.
        let st = unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| Error::Weights {
            path: describe(paths),
            message: e.to_string(),
        })?;
        let keys: BTreeSet<String> = st.tensors().into_iter().map(|(k, _)| k).collect();
        let tracker = Arc::new(Mutex::new(Tracker {
            loaded: BTreeMap::new(),
            packed: BTreeMap::new(),
            trainable: None,
            used: BTreeSet::new(),
            missing: Vec::new(),
            overrides: BTreeMap::new(),
        }));
        let backend = TrackingBackend {
            st,
            keys: keys.clone(),
            prefix: prefix.map(str::to_string),
            tracker: tracker.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        Ok(Self {
            paths: paths.to_vec(),
            keys,
            tracker,
            vb,
        })
    }

    /// [`Self::open`] for training: every weight is handed out as a trainable `Var`
    /// (f32 copies, not the mapping) and weights the checkpoint lacks (a new task head)
    /// are initialised as `init` says, listed in the report, rather than an error.
    pub fn open_trainable(
        paths: &[PathBuf],
        prefix: Option<&str>,
        dtype: DType,
        device: &Device,
        init: InitMissing,
    ) -> Result<Self> {
        let ckpt = Self::open(paths, prefix, dtype, device)?;
        if let Ok(mut t) = ckpt.tracker.lock() {
            t.trainable = Some(TrainableState {
                rng: crate::rng::Rng::new(init.seed),
                init,
                vars: Vec::new(),
                initialized: Vec::new(),
            });
        }
        Ok(ckpt)
    }

    /// Tensors (by model name) used instead of the checkpoint's: the whole layers an
    /// adapter saves (`modules_to_save`).
    pub fn with_overrides(self, overrides: BTreeMap<String, Tensor>) -> Self {
        if let Ok(mut t) = self.tracker.lock() {
            t.overrides = overrides;
        }
        self
    }

    /// The builder the model is constructed from.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        self.vb.clone()
    }

    /// Where the model's packed f32 linear layers hand over their weights
    /// ([`crate::linear::Weights::with_packed_f32_linears`]).
    pub fn packed_weights(&self) -> PackedWeights {
        PackedWeights(self.tracker.clone())
    }

    /// All tensor names in the checkpoint.
    pub fn keys(&self) -> &BTreeSet<String> {
        &self.keys
    }

    /// Maps a model construction error to a weights error naming the checkpoint.
    pub fn wrap_error(&self, e: candle_core::Error) -> Error {
        Error::Weights {
            path: describe(&self.paths),
            message: e.to_string(),
        }
    }

    /// Ends a load: an error listing every missing key, else the report (unexpected
    /// keys are logged as a warning, as Python does).
    pub fn finish(self) -> Result<LoadReport> {
        let tracker = self.tracker.lock().map_err(|_| Error::Weights {
            path: describe(&self.paths),
            message: "weight tracker poisoned".into(),
        })?;
        if !tracker.missing.is_empty() {
            let mut keys = tracker.missing.clone();
            keys.sort();
            keys.dedup();
            let count = keys.len();
            let shown: Vec<String> = keys.iter().take(12).cloned().collect();
            let mut list = shown.join(", ");
            if count > shown.len() {
                list.push_str(&format!(", ... ({} more)", count - shown.len()));
            }
            return Err(Error::MissingWeights {
                path: describe(&self.paths),
                count,
                keys: list,
            });
        }
        let unexpected: Vec<String> = self
            .keys
            .iter()
            .filter(|k| !tracker.used.contains(*k))
            .filter(|k| !IGNORED_UNEXPECTED_SUFFIXES.iter().any(|s| k.ends_with(s)))
            .cloned()
            .collect();
        if !unexpected.is_empty() {
            tracing::warn!(
                "some weights of {} were not used: {}",
                describe(&self.paths),
                unexpected.join(", ")
            );
        }
        if let Some(tr) = &tracker.trainable {
            if !tr.initialized.is_empty() {
                tracing::warn!(
                    "some weights were not in {} and are newly initialized: {} (train the \
                     model on a downstream task to use it)",
                    describe(&self.paths),
                    tr.initialized.join(", ")
                );
            }
        }
        let (vars, initialized) = tracker
            .trainable
            .as_ref()
            .map(|t| (t.vars.clone(), t.initialized.clone()))
            .unwrap_or_default();
        Ok(LoadReport {
            tensors: tracker.loaded.clone(),
            packed: tracker.packed.clone(),
            unexpected,
            vars,
            initialized,
        })
    }
}

fn describe(paths: &[PathBuf]) -> String {
    match paths {
        [one] => one.display().to_string(),
        [first, ..] => format!("{} (+{} shards)", first.display(), paths.len() - 1),
        [] => "<no file>".into(),
    }
}

/// Writes tensors as model.safetensors with the `{"format": "pt"}` metadata Python expects.
pub fn save_safetensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut data: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        data.push((k.clone(), t.contiguous()?));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::tensor::serialize(data, Some(meta)).map_err(|e| Error::Weights {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    crate::error::write_atomic(path, &bytes)
}

/// Parses a dtype name as Python writes it (`float32`, `bf16`, ...).
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f64" | "float64" | "double" => Ok(DType::F64),
        other => Err(Error::invalid(format!(
            "unknown dtype `{other}`; use one of f32, f16, bf16"
        ))),
    }
}

/// The name Python uses for a dtype in config.json (`torch_dtype`).
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        DType::U8 => "uint8",
        DType::U32 => "uint32",
        DType::I64 => "int64",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: BTreeMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect();
        save_safetensors(&map, path).unwrap();
    }

    #[test]
    fn prefix_mapping_missing_and_unexpected() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("model.safetensors");
        let dev = Device::Cpu;
        write(
            &p,
            &[
                (
                    "embeddings.weight",
                    Tensor::ones((2, 3), DType::F16, &dev).unwrap(),
                ),
                (
                    "LayerNorm.gamma",
                    Tensor::ones(3, DType::F32, &dev).unwrap(),
                ),
                ("cls.extra", Tensor::ones(1, DType::F32, &dev).unwrap()),
            ],
        );
        // A model with a head (prefix `bert.`) loads a base checkpoint.
        let ck =
            Checkpoint::open(std::slice::from_ref(&p), Some("bert"), DType::F32, &dev).unwrap();
        let vb = ck.var_builder();
        let w = vb.pp("bert").get((2, 3), "embeddings.weight").unwrap();
        assert_eq!(w.dtype(), DType::F32);
        let g = vb.pp("bert.LayerNorm").get(3, "weight").unwrap();
        assert_eq!(g.to_vec1::<f32>().unwrap(), vec![1.0; 3]);
        let report = ck.finish().unwrap();
        assert_eq!(report.unexpected, vec!["cls.extra".to_string()]);
        assert!(report.tensors.contains_key("bert.embeddings.weight"));

        // Missing keys are all listed in one error.
        let ck = Checkpoint::open(std::slice::from_ref(&p), None, DType::F32, &dev).unwrap();
        let vb = ck.var_builder();
        let _ = vb.get(4, "a.weight").unwrap();
        let _ = vb.get(4, "b.bias").unwrap();
        let err = ck.finish().unwrap_err().to_string();
        assert!(
            err.contains("a.weight") && err.contains("b.bias") && err.contains("2 weight"),
            "{err}"
        );

        // Shape mismatch is an error, not a panic.
        let ck = Checkpoint::open(&[p], None, DType::F32, &dev).unwrap();
        assert!(ck.var_builder().get((3, 3), "embeddings.weight").is_err());
    }

    #[test]
    fn released_pages_read_back_the_file() {
        // Tensors spanning many pages, the second starting mid-page: after the first
        // load hands its pages back, loading again reads the same values.
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("model.safetensors");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 3.0 * 70_001.0, &dev)
            .unwrap()
            .reshape((3, 70_001))
            .unwrap();
        let b = (Tensor::arange(0f32, 50_000.0, &dev).unwrap() * -0.5).unwrap();
        write(&p, &[("a", a.clone()), ("b", b.clone())]);
        let ck = Checkpoint::open(std::slice::from_ref(&p), None, DType::F32, &dev).unwrap();
        let vb = ck.var_builder();
        for _ in 0..2 {
            let got = vb.get((3, 70_001), "a").unwrap();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            let got = vb.get(50_000, "b").unwrap();
            assert_eq!(got.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("model.safetensors");
        for bytes in [
            &b""[..],
            b"garbage!",
            b"\xff\xff\xff\xff\xff\xff\xff\x7f{}",
            b"\x02\x00\x00\x00\x00\x00\x00\x00{]",
        ] {
            std::fs::write(&p, bytes).unwrap();
            assert!(
                Checkpoint::open(std::slice::from_ref(&p), None, DType::F32, &Device::Cpu).is_err()
            );
        }
    }
}
