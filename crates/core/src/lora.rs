//! LoRA adapters as PEFT defines them (peft 0.22, `tuners/lora`): a target linear layer
//! `W` gets `y = x Wᵀ + (x Aᵀ) Bᵀ · α/r` with `A` `[r, in]` (Kaiming-uniform, bound
//! `1/√in`) and `B` `[out, r]` (zeros). Saved in PEFT's format: adapter_model.safetensors
//! with keys `base_model.model.{module}.lora_A.weight` / `.lora_B.weight` (and the
//! `modules_to_save` weights under `base_model.model.{name}`), plus adapter_config.json.
//! GPT-2's Conv1D layers (weights `[in, out]`, PEFT's `fan_in_fan_out`) take the same A
//! and B; merging adds the transposed update.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The adapter settings PEFT writes to adapter_config.json (the fields rustformers uses;
/// others are kept and written back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(default = "lora_type")]
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (the last part of a layer's path) that get adapters.
    pub target_modules: Vec<String>,
    /// Layers trained and saved whole (a classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "none")]
    pub bias: String,
    /// Set for GPT-2's Conv1D (weights stored `[in, out]`). A and B have the same shapes
    /// either way; only merging transposes the update.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn lora_type() -> String {
    "LORA".into()
}

fn default_alpha() -> f64 {
    8.0
}

fn none() -> String {
    "none".into()
}

impl LoraConfig {
    /// `α/r` (`α/√r` with rsLoRA), as PEFT scales the update.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Reads and checks adapter_config.json.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(path)?;
        let c: Self = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        c.validate(&path.display().to_string())?;
        Ok(c)
    }

    pub fn validate(&self, source: &str) -> Result<()> {
        let bad = |m: String| {
            Err(Error::Config {
                path: source.to_string(),
                message: m,
            })
        };
        if self.peft_type != "LORA" {
            return bad(format!(
                "peft_type `{}` is not supported (LORA)",
                self.peft_type
            ));
        }
        if self.r == 0 {
            return bad("LoRA rank r must be at least 1".into());
        }
        if self.target_modules.is_empty() {
            return bad("target_modules is empty".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout {} is not a probability in [0, 1)",
                self.lora_dropout
            ));
        }
        if self.bias != "none" {
            return bad(format!("LoRA bias `{}` is not supported (none)", self.bias));
        }
        Ok(())
    }

    /// Whether the layer at `path` (`model.layers.0.self_attn.q_proj`) gets an adapter.
    pub fn targets(&self, path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        self.target_modules
            .iter()
            .any(|t| t == last || path.ends_with(&format!(".{t}")))
    }
}

/// How a model's adapters come to be.
#[derive(Debug)]
pub enum LoraMode {
    /// New adapters to train (A Kaiming-uniform from `seed`, B zeros), as `Var`s.
    Train { seed: u64 },
    /// Adapters read from a PEFT file (`base_model.model.*` keys), kept as separate
    /// layers (`trainable`: as `Var`s, to train further) or merged into the weights.
    Load {
        tensors: BTreeMap<String, Tensor>,
        merge: bool,
        trainable: bool,
    },
}

/// The adapters of one model being built: their settings and what was created.
#[derive(Debug)]
pub struct LoraState {
    pub config: LoraConfig,
    mode: LoraMode,
    rng: Mutex<crate::rng::Rng>,
    /// `(module path, A, B)` of every adapter created.
    created: Mutex<Vec<(String, Tensor, Tensor)>>,
    vars: Mutex<Vec<(String, Var)>>,
}

/// PEFT's key for `name` (a model path).
pub fn peft_key(name: &str) -> String {
    format!("base_model.model.{name}")
}

impl LoraState {
    pub fn new(config: LoraConfig, mode: LoraMode) -> Self {
        let seed = match &mode {
            LoraMode::Train { seed } => *seed,
            LoraMode::Load { .. } => 0,
        };
        Self {
            config,
            mode,
            rng: Mutex::new(crate::rng::Rng::new(seed)),
            created: Mutex::new(Vec::new()),
            vars: Mutex::new(Vec::new()),
        }
    }

    /// The adapter's `(A, B)` for the layer at `path` with a `[out, in]` weight, or `None`
    /// when the layer is not a target.
    pub fn adapter_for(
        &self,
        path: &str,
        out_dim: usize,
        in_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        if !self.config.targets(path) {
            return Ok(None);
        }
        let r = self.config.r;
        let (a, b, trainable) = match &self.mode {
            LoraMode::Train { .. } => {
                let bound = 1.0 / (in_dim as f64).sqrt();
                let mut rng = self
                    .rng
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("LoRA state poisoned".into()))?;
                let vals: Vec<f32> = (0..r * in_dim)
                    .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                let a = Tensor::from_vec(vals, (r, in_dim), device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((out_dim, r), dtype, device)?;
                (a, b, true)
            }
            LoraMode::Load {
                tensors, trainable, ..
            } => {
                let get = |part: &str, shape: (usize, usize)| -> candle_core::Result<Tensor> {
                    let key = peft_key(&format!("{path}.{part}.weight"));
                    let t = tensors.get(&key).ok_or_else(|| {
                        candle_core::Error::Msg(format!("the adapter has no `{key}`"))
                    })?;
                    if t.dims() != [shape.0, shape.1] {
                        candle_core::bail!(
                            "adapter weight `{key}` has shape {:?}, expected [{}, {}]",
                            t.dims(),
                            shape.0,
                            shape.1
                        );
                    }
                    t.to_device(device)?.to_dtype(dtype)
                };
                (
                    get("lora_A", (r, in_dim))?,
                    get("lora_B", (out_dim, r))?,
                    *trainable,
                )
            }
        };
        let (a, b) = if trainable {
            let (va, vb) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
            let (a, b) = (va.as_tensor().clone(), vb.as_tensor().clone());
            let mut vars = self
                .vars
                .lock()
                .map_err(|_| candle_core::Error::Msg("LoRA state poisoned".into()))?;
            vars.push((format!("{path}.lora_A.weight"), va));
            vars.push((format!("{path}.lora_B.weight"), vb));
            (a, b)
        } else {
            (a, b)
        };
        self.created
            .lock()
            .map_err(|_| candle_core::Error::Msg("LoRA state poisoned".into()))?
            .push((path.to_string(), a.clone(), b.clone()));
        Ok(Some((a, b)))
    }

    /// Whether adapters are merged into the weights at load.
    pub fn merges(&self) -> bool {
        matches!(self.mode, LoraMode::Load { merge: true, .. })
    }

    /// The trainable adapter weights, by model path (`….q_proj.lora_A.weight`).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// How many layers got adapters.
    pub fn count(&self) -> usize {
        self.created.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The adapters (and `extra` whole tensors, e.g. a classification head) in PEFT's
    /// format: adapter_model.safetensors and adapter_config.json in `dir`.
    pub fn save(&self, dir: &Path, extra: &BTreeMap<String, Tensor>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let created = self
            .created
            .lock()
            .map_err(|_| Error::invalid("LoRA state poisoned"))?;
        let mut tensors = BTreeMap::new();
        for (path, a, b) in created.iter() {
            tensors.insert(peft_key(&format!("{path}.lora_A.weight")), a.clone());
            tensors.insert(peft_key(&format!("{path}.lora_B.weight")), b.clone());
        }
        for (name, t) in extra {
            tensors.insert(peft_key(name), t.clone());
        }
        crate::weights::save_safetensors(&tensors, &dir.join("adapter_model.safetensors"))?;
        let text = serde_json::to_string_pretty(&self.config)
            .map_err(|e| Error::invalid(e.to_string()))?;
        crate::error::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
    }
}

/// `x Wᵀ` for `x` of rank 2 or 3 and `W` `[out, in]`.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match x.dims() {
        [b, s, i] => x
            .reshape((b * s, *i))?
            .matmul(&w.t()?)?
            .reshape((*b, *s, ())),
        _ => x.broadcast_matmul(&w.t()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_checks() {
        let c: LoraConfig = serde_json::from_value(serde_json::json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj"], "inference_mode": true
        }))
        .unwrap();
        assert_eq!(c.scaling(), 2.0);
        assert!(c.targets("model.layers.0.self_attn.q_proj"));
        assert!(!c.targets("model.layers.0.self_attn.k_proj"));
        assert_eq!(c.extra["inference_mode"], true);
        c.validate("t").unwrap();
        for (bad, want) in [
            (
                serde_json::json!({"peft_type": "IA3", "r": 4, "target_modules": ["q"]}),
                "IA3",
            ),
            (serde_json::json!({"r": 0, "target_modules": ["q"]}), "rank"),
            (serde_json::json!({"r": 2, "target_modules": []}), "empty"),
            (
                serde_json::json!({"r": 2, "target_modules": ["q"], "lora_dropout": 1.0}),
                "probability",
            ),
        ] {
            let c: LoraConfig = serde_json::from_value(bad).unwrap();
            let e = c.validate("t").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
