//! The RoPE keys of config.json in both forms transformers writes, resolved the way
//! transformers 5.25 resolves them (`RotaryEmbeddingConfigMixin` in
//! modeling_rope_utils.py: `convert_rope_params_to_dict`, `standardize_rope_params`,
//! `validate_rope`):
//!
//! - 4.x: `rope_theta`, `rope_scaling` (`type` or `rope_type`) and `partial_rotary_factor`
//!   at the top level;
//! - 5.x: `rope_parameters = {"rope_type", "rope_theta", ...}`, or one such dict per layer
//!   type (`{"full_attention": {...}, "sliding_attention": {...}}`, keys of `layer_types`).
//!
//! Precedence, as Python's: a non-empty `rope_scaling` replaces `rope_parameters`; inside
//! the dict `rope_theta` wins over the top-level key, which wins over the family's
//! default; `partial_rotary_factor` likewise; a top-level `original_max_position_embeddings`
//! (Phi-3 keeps it there) wins over the dict's for llama3/yarn/longrope, which otherwise
//! defaults to `max_position_embeddings`. Every `rope_type` Python implements is read
//! (default, linear, dynamic, yarn, longrope, llama3, proportional); any other is refused
//! by name. `save_pretrained` writes the 5.x form ([`RopeKeys::to_saved_form`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::rotary::RopeScaling;

/// The RoPE keys of a config.json, flattened into a family's config struct (declare the
/// field before the `PretrainedConfig` one so these keys are not also kept as unknown).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RopeKeys {
    /// 5.x: the parameters, flat or per layer type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// 4.x: the scaling dict (`type` / `rope_type`, `factor`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// 4.x: the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// 4.x: the rotated share of each head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// The pretraining length, at the top level (Phi-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

/// What a family adds to the keys: its defaults and sizes.
#[derive(Debug, Clone, Copy)]
pub struct RopeContext<'a> {
    /// The family's `default_theta` (10000 for every family here).
    pub default_theta: f64,
    pub max_position_embeddings: usize,
    /// The family's layer types (given or derived), which name the nested form's keys.
    pub layer_types: Option<&'a [String]>,
}

/// One standardized parameter set: Python's `rope_parameters` dict after
/// `standardize_rope_params`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParameters {
    pub rope_theta: f64,
    /// `None` when the config does not set one (1.0 in the maths).
    pub partial_rotary_factor: Option<f64>,
    pub scaling: RopeScaling,
    /// The standardized dict, as 5.x saves it.
    pub saved: Map<String, Value>,
}

impl RopeParameters {
    /// The rotated size of a head: `int(head_dim * partial_rotary_factor)` (proportional
    /// RoPE always covers the whole head, with zero frequencies past its share).
    pub fn rotary_dim(&self, head_dim: usize) -> usize {
        match (&self.scaling, self.partial_rotary_factor) {
            (RopeScaling::Proportional { .. }, _) | (_, None) => head_dim,
            (_, Some(f)) => (head_dim as f64 * f) as usize,
        }
    }

    /// The rope type's name, as config.json spells it.
    pub fn rope_type(&self) -> &'static str {
        self.scaling.name()
    }

    /// For families whose attention rotates the whole head (Llama, Mistral, Qwen2/3,
    /// Gemma2): Python's rotary there ignores `partial_rotary_factor` for rope type
    /// `default` and fails on a shape mismatch for the others, so a factor below 1 is
    /// refused by name rather than run one way or the other.
    pub fn refuse_partial_rotary(&self, family: &str) -> Result<()> {
        match self.partial_rotary_factor {
            Some(f) if f != 1.0 => Err(Error::Unsupported(format!(
                "partial_rotary_factor {f}: {family} rotates the whole head (Python's \
                 {family} ignores the key for rope_type default and fails for the others)"
            ))),
            _ => Ok(()),
        }
    }
}

/// The attention window of each layer: `window` on `sliding_attention` layers, none on
/// the others.
pub fn sliding_windows(layer_types: &[String], window: Option<usize>) -> Vec<Option<usize>> {
    layer_types
        .iter()
        .map(|t| window.filter(|_| t == "sliding_attention"))
        .collect()
}

/// More layers than any model has: a config asking for them is refused before a
/// per-layer list is allocated.
pub const MAX_LAYERS: usize = 100_000;

/// The attention kind of each layer: config.json's `layer_types` when given (checked:
/// one entry per layer, each `full_attention` or `sliding_attention`), else `derive(i)`.
pub fn layer_types(
    given: Option<&[String]>,
    num_layers: usize,
    derive: impl Fn(usize) -> bool,
) -> Result<Vec<String>> {
    if num_layers > MAX_LAYERS {
        return Err(bad(format!(
            "num_hidden_layers {num_layers} is beyond any model ({MAX_LAYERS} at most)"
        )));
    }
    match given {
        Some(list) => {
            if list.len() != num_layers {
                return Err(bad(format!(
                    "layer_types has {} entries for num_hidden_layers {num_layers}",
                    list.len()
                )));
            }
            if let Some(other) = list
                .iter()
                .find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
            {
                return Err(Error::Unsupported(format!(
                    "layer_types entry `{other}` is not implemented for this family \
                     (full_attention, sliding_attention)"
                )));
            }
            Ok(list.to_vec())
        }
        None => Ok((0..num_layers)
            .map(|i| {
                if derive(i) {
                    "sliding_attention".to_string()
                } else {
                    "full_attention".to_string()
                }
            })
            .collect()),
    }
}

/// The resolved RoPE of a model: one set for every layer, or one per layer type (`None`
/// for a layer type saved as `null`: no rotary there).
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedRope {
    Uniform(RopeParameters),
    PerLayerType(Vec<(String, Option<RopeParameters>)>),
}

fn bad(message: String) -> Error {
    Error::Config {
        path: "config.json".into(),
        message,
    }
}

fn num(v: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("rope_parameters `{key}` must be a number, got {x}"))),
    }
}

fn positive(v: &Map<String, Value>, key: &str, kind: &str) -> Result<f64> {
    let f = num(v, key)?
        .ok_or_else(|| bad(format!("rope_parameters of type `{kind}` needs `{key}`")))?;
    if !f.is_finite() || f <= 0.0 {
        return Err(bad(format!(
            "rope_parameters `{key}` must be positive, got {f}"
        )));
    }
    Ok(f)
}

fn factor_list(v: &Map<String, Value>, key: &str) -> Result<Vec<f64>> {
    let list = v.get(key).and_then(Value::as_array).ok_or_else(|| {
        bad(format!(
            "rope_parameters of type `longrope` needs a `{key}` list"
        ))
    })?;
    let out: Vec<f64> = list.iter().filter_map(Value::as_f64).collect();
    if out.len() != list.len() || out.iter().any(|f| !f.is_finite() || *f <= 0.0) {
        return Err(bad(format!(
            "rope_parameters `{key}` must be a list of positive numbers"
        )));
    }
    Ok(out)
}

/// The keys each rope type reads beyond `rope_type`, `type`, `rope_theta` and
/// `partial_rotary_factor` (Python's `_validate_*_rope_parameters`, required and optional).
fn known_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "linear" | "dynamic" | "proportional" => &["factor"],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        "longrope" => &[
            "short_factor",
            "long_factor",
            "factor",
            "attention_factor",
            "original_max_position_embeddings",
        ],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        _ => &[],
    }
}

impl RopeKeys {
    /// The parameters every layer shares; a config whose layer types differ in RoPE is
    /// refused (the family has one rotary table).
    pub fn uniform(&self, ctx: &RopeContext) -> Result<RopeParameters> {
        match self.resolve(ctx)? {
            ResolvedRope::Uniform(p) => Ok(p),
            ResolvedRope::PerLayerType(list) => {
                let mut sets = list.into_iter();
                let Some((first_name, first)) = sets.next() else {
                    return Err(bad("rope_parameters per layer type is empty".into()));
                };
                for (name, p) in sets {
                    if p != first {
                        return Err(Error::Unsupported(format!(
                            "rope_parameters differ between layer types `{first_name}` and \
                             `{name}`; this model family has one rotary embedding for every layer"
                        )));
                    }
                }
                first.ok_or_else(|| {
                    Error::Unsupported(format!(
                        "rope_parameters `{first_name}` is null (no rotary embedding), which \
                         this model family does not implement"
                    ))
                })
            }
        }
    }

    /// For the families with one rotary table over whole heads (Llama, Mistral, Qwen2,
    /// Qwen3, Gemma2; `default_theta` 10000): [`Self::uniform`], refusing a partial
    /// rotary factor ([`RopeParameters::refuse_partial_rotary`]).
    pub fn whole_head(
        &self,
        family: &str,
        max_position_embeddings: usize,
        layer_types: Option<&[String]>,
    ) -> Result<RopeParameters> {
        let p = self.uniform(&RopeContext {
            default_theta: 10000.0,
            max_position_embeddings,
            layer_types,
        })?;
        p.refuse_partial_rotary(family)?;
        Ok(p)
    }

    /// [`Self::to_saved_form`] with `default_theta` 10000.
    pub fn saved(
        &self,
        max_position_embeddings: usize,
        layer_types: Option<&[String]>,
    ) -> Result<RopeKeys> {
        self.to_saved_form(&RopeContext {
            default_theta: 10000.0,
            max_position_embeddings,
            layer_types,
        })
    }

    /// Resolves the keys as Python 5.25 does.
    pub fn resolve(&self, ctx: &RopeContext) -> Result<ResolvedRope> {
        let scaling = self
            .rope_scaling
            .as_ref()
            .filter(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()));
        let params = scaling.or(self.rope_parameters.as_ref().filter(|v| !v.is_null()));
        let dict = match params {
            None => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(other) => {
                return Err(bad(format!(
                    "rope_parameters must be an object, got {other}"
                )))
            }
        };
        let nested: Vec<&String> = match ctx.layer_types {
            Some(types) => dict.keys().filter(|k| types.contains(k)).collect(),
            None => Vec::new(),
        };
        if nested.is_empty() {
            return Ok(ResolvedRope::Uniform(self.one(dict, ctx, true)?));
        }
        if let Some(stray) = dict.keys().find(|k| !nested.contains(k)) {
            return Err(bad(format!(
                "rope_parameters mixes layer types ({}) with the key `{stray}`",
                nested
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut out = Vec::new();
        for (name, v) in &dict {
            let p = match v {
                Value::Null => None,
                Value::Object(o) => Some(self.one(o.clone(), ctx, false)?),
                other => {
                    return Err(bad(format!(
                        "rope_parameters `{name}` must be an object, got {other}"
                    )))
                }
            };
            out.push((name.clone(), p));
        }
        Ok(ResolvedRope::PerLayerType(out))
    }

    /// Standardizes and reads one parameter dict. `flat`: the dict is the whole
    /// `rope_parameters` (only then does a top-level `original_max_position_embeddings`
    /// override it, as in Python).
    fn one(
        &self,
        mut d: Map<String, Value>,
        ctx: &RopeContext,
        flat: bool,
    ) -> Result<RopeParameters> {
        let kind = match d
            .get("rope_type")
            .filter(|v| !v.is_null())
            .or_else(|| d.get("type"))
        {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(bad(format!("rope_type must be a string, got {other}"))),
        };
        d.remove("type");
        d.insert("rope_type".into(), Value::String(kind.clone()));
        if !d.contains_key("rope_theta") || d["rope_theta"].is_null() {
            let theta = self.rope_theta.unwrap_or(ctx.default_theta);
            d.insert("rope_theta".into(), theta.into());
        }
        if let Some(f) = self.partial_rotary_factor {
            d.entry("partial_rotary_factor").or_insert(f.into());
        }
        if matches!(kind.as_str(), "llama3" | "yarn" | "longrope") {
            match (self.original_max_position_embeddings, flat) {
                (Some(top), true) => {
                    d.insert("original_max_position_embeddings".into(), top.into());
                }
                _ => {
                    d.entry("original_max_position_embeddings")
                        .or_insert(ctx.max_position_embeddings.into());
                }
            }
        }
        let rope_theta = positive(&d, "rope_theta", &kind)?;
        if rope_theta <= 1.0 {
            return Err(bad(format!("rope_theta must be > 1, got {rope_theta}")));
        }
        let partial_rotary_factor = num(&d, "partial_rotary_factor")?;
        if let Some(f) = partial_rotary_factor {
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad(format!(
                    "partial_rotary_factor must be in (0, 1], got {f}"
                )));
            }
        }
        let original_max = || -> Result<usize> {
            let v = positive(&d, "original_max_position_embeddings", &kind)?;
            if v.fract() != 0.0 {
                return Err(bad(format!(
                    "original_max_position_embeddings must be a whole number, got {v}"
                )));
            }
            Ok(v as usize)
        };
        let factor = || positive(&d, "factor", &kind);
        let scaling = match kind.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic {
                factor: factor()?,
                original_max: ctx.max_position_embeddings,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: positive(&d, "low_freq_factor", &kind)?,
                high_freq_factor: positive(&d, "high_freq_factor", &kind)?,
                original_max: original_max()?,
            },
            "yarn" => {
                let original = original_max()?;
                let factor = match num(&d, "factor")? {
                    Some(_) => factor()?,
                    // DeepSeek-V3 style: the ratio of the two lengths.
                    None => ctx.max_position_embeddings as f64 / original as f64,
                };
                RopeScaling::Yarn {
                    factor,
                    original_max: original,
                    beta_fast: num(&d, "beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
                    beta_slow: num(&d, "beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0),
                    attention_factor: num(&d, "attention_factor")?,
                    mscale: num(&d, "mscale")?,
                    mscale_all_dim: num(&d, "mscale_all_dim")?,
                    // Python: `get("truncate", True)`; an explicit null is falsy.
                    truncate: match d.get("truncate") {
                        None => true,
                        Some(Value::Null) => false,
                        Some(Value::Bool(b)) => *b,
                        Some(other) => {
                            return Err(bad(format!(
                                "rope_parameters `truncate` must be true or false, got {other}"
                            )))
                        }
                    },
                }
            }
            "longrope" => {
                let original = original_max()?;
                RopeScaling::Longrope {
                    short_factor: factor_list(&d, "short_factor")?,
                    long_factor: factor_list(&d, "long_factor")?,
                    factor: match num(&d, "factor")? {
                        Some(_) => factor()?,
                        None => ctx.max_position_embeddings as f64 / original as f64,
                    },
                    attention_factor: num(&d, "attention_factor")?,
                    original_max: original,
                }
            }
            "proportional" => RopeScaling::Proportional {
                factor: num(&d, "factor")?
                    .map(|_| factor())
                    .transpose()?
                    .unwrap_or(1.0),
            },
            other => {
                return Err(Error::Unsupported(format!(
                    "rope_type `{other}` is not implemented (default, linear, dynamic, yarn, \
                     longrope, llama3, proportional)"
                )))
            }
        };
        let known = known_keys(&kind);
        for key in d.keys() {
            let common = matches!(
                key.as_str(),
                "rope_type" | "rope_theta" | "partial_rotary_factor"
            );
            if !common && !known.contains(&key.as_str()) {
                // Python warns about unrecognised keys and ignores them too.
                tracing::warn!("rope_parameters of type `{kind}`: key `{key}` is not used");
            }
        }
        Ok(RopeParameters {
            rope_theta,
            partial_rotary_factor,
            scaling,
            saved: d,
        })
    }

    /// The keys as transformers 5.x saves them: the standardized `rope_parameters` (per
    /// layer type where the config has that form), and no top-level `rope_theta`,
    /// `rope_scaling` or `partial_rotary_factor`. A top-level
    /// `original_max_position_embeddings` stays (Phi-3 keeps it there).
    pub fn to_saved_form(&self, ctx: &RopeContext) -> Result<RopeKeys> {
        let params = match self.resolve(ctx)? {
            ResolvedRope::Uniform(p) => Value::Object(p.saved),
            ResolvedRope::PerLayerType(list) => Value::Object(
                list.into_iter()
                    .map(|(k, p)| (k, p.map_or(Value::Null, |p| Value::Object(p.saved))))
                    .collect(),
            ),
        };
        Ok(RopeKeys {
            rope_parameters: Some(params),
            rope_scaling: None,
            rope_theta: None,
            partial_rotary_factor: None,
            original_max_position_embeddings: self.original_max_position_embeddings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: Value) -> RopeKeys {
        serde_json::from_value(v).unwrap()
    }

    const CTX: RopeContext = RopeContext {
        default_theta: 10000.0,
        max_position_embeddings: 64,
        layer_types: None,
    };

    #[test]
    fn theta_inside_rope_parameters_wins() {
        let p = keys(json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}))
            .uniform(&CTX)
            .unwrap();
        assert_eq!((p.rope_theta, &p.scaling), (1e6, &RopeScaling::Default));
        let p = keys(json!({"rope_theta": 5e5})).uniform(&CTX).unwrap();
        assert_eq!(p.rope_theta, 5e5);
        let p = keys(json!({"rope_theta": 5e5, "rope_parameters": {"rope_theta": 2e4}}))
            .uniform(&CTX)
            .unwrap();
        assert_eq!(p.rope_theta, 2e4);
        assert_eq!(keys(json!({})).uniform(&CTX).unwrap().rope_theta, 1e4);
    }

    #[test]
    fn legacy_rope_scaling_replaces_rope_parameters() {
        let k = keys(json!({
            "rope_theta": 5e5,
            "rope_scaling": {"type": "linear", "factor": 2.0},
            "rope_parameters": {"rope_type": "default", "rope_theta": 7e4}
        }));
        let p = k.uniform(&CTX).unwrap();
        assert_eq!(p.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(p.rope_theta, 5e5);
        let saved = k.to_saved_form(&CTX).unwrap();
        assert_eq!(
            saved.rope_parameters.unwrap(),
            json!({"factor": 2.0, "rope_theta": 5e5, "rope_type": "linear"})
        );
        assert!(saved.rope_scaling.is_none() && saved.rope_theta.is_none());
    }

    #[test]
    fn yarn_reads_original_max_and_truncate() {
        let k = keys(json!({"rope_parameters": {
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
            "truncate": false}}));
        match k.uniform(&CTX).unwrap().scaling {
            RopeScaling::Yarn {
                original_max,
                truncate,
                beta_fast,
                ..
            } => assert_eq!((original_max, truncate, beta_fast), (32, false, 32.0)),
            other => panic!("{other:?}"),
        }
        // Missing: max_position_embeddings; a top-level key overrides (Phi-3).
        let k = keys(json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}));
        let p = k.uniform(&CTX).unwrap();
        assert_eq!(p.saved["original_max_position_embeddings"], 64);
        let k = keys(json!({"original_max_position_embeddings": 16,
            "rope_parameters": {"rope_type": "yarn", "factor": 2.0,
                                "original_max_position_embeddings": 32}}));
        assert_eq!(
            k.uniform(&CTX).unwrap().saved["original_max_position_embeddings"],
            16
        );
    }

    #[test]
    fn per_layer_type_form() {
        let types = vec![
            "full_attention".to_string(),
            "sliding_attention".to_string(),
        ];
        let ctx = RopeContext {
            layer_types: Some(&types),
            ..CTX
        };
        let k = keys(json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}));
        match k.resolve(&ctx).unwrap() {
            ResolvedRope::PerLayerType(list) => {
                assert_eq!(list.len(), 2);
                assert_eq!(list[0].1.as_ref().unwrap().rope_theta, 1e6);
                assert_eq!(list[1].1.as_ref().unwrap().scaling, RopeScaling::Default);
            }
            other => panic!("{other:?}"),
        }
        let e = k.uniform(&ctx).unwrap_err().to_string();
        assert!(e.contains("differ between layer types"), "{e}");
        let same = keys(json!({"rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e6}}}));
        assert_eq!(same.uniform(&ctx).unwrap().rope_theta, 1e6);
        // Without layer types the same dict is not nested (as in Python).
        assert!(matches!(
            same.resolve(&CTX).unwrap(),
            ResolvedRope::Uniform(_)
        ));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (v, needle) in [
            (
                json!({"rope_parameters": {"rope_type": "weird"}}),
                "`weird`",
            ),
            (
                json!({"rope_parameters": {"rope_type": "linear"}}),
                "`factor`",
            ),
            (
                json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}),
                "low_freq_factor",
            ),
            (
                json!({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0]}}),
                "long_factor",
            ),
            (
                json!({"rope_parameters": {"rope_theta": -3.0}}),
                "rope_theta",
            ),
            (
                json!({"rope_parameters": {"rope_theta": "big"}}),
                "rope_theta",
            ),
            (json!({"rope_parameters": 3}), "object"),
            (
                json!({"partial_rotary_factor": 1.5}),
                "partial_rotary_factor",
            ),
        ] {
            let e = keys(v.clone()).uniform(&CTX).unwrap_err().to_string();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }
}
