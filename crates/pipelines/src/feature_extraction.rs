//! feature-extraction: token vectors as Python's `FeatureExtractionPipeline` returns them
//! (`[1][seq][hidden]` per input), or — with `pooling` — one flat sentence vector per
//! input. A sentence-transformers checkpoint (modules.json with Pooling and Normalize
//! modules, sentence_bert_config.json) gets its own pooling, normalisation and
//! `max_seq_length` automatically, so all-MiniLM-L6-v2 gives its real embeddings.

use candle_core::{DType, Tensor};
use serde_json::Value;

use rustformers_core::error::read_json;
use rustformers_core::{
    AutoTokenizer, EncodeOptions, Error, ModelFiles, Padding, Result, TextInput, Truncation,
};
use rustformers_models::{AutoModel, EncoderModel, LoadOptions, PreTrainedModel};

use crate::common::{batch_size, num, real_range, text_of, to_tensors};
use crate::params::{ParamReader, Params};
use crate::Pipeline;

/// A pooling mode of sentence-transformers' Pooling module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
}

impl Pooling {
    /// Parses `mean`, `cls`, `max`, `mean_sqrt_len_tokens`.
    pub fn parse(s: &str) -> Result<Option<Vec<Pooling>>> {
        Ok(match s {
            "none" => None,
            "mean" | "mean_tokens" => Some(vec![Self::Mean]),
            "cls" | "cls_token" => Some(vec![Self::Cls]),
            "max" | "max_tokens" => Some(vec![Self::Max]),
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => Some(vec![Self::MeanSqrtLen]),
            other => {
                return Err(Error::invalid(format!(
                    "feature-extraction: unknown pooling `{other}`; use mean, cls, max, mean_sqrt_len_tokens or none"
                )))
            }
        })
    }
}

/// What a sentence-transformers checkpoint asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentenceTransformerSettings {
    pub pooling: Option<Vec<Pooling>>,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
}

impl SentenceTransformerSettings {
    /// Reads modules.json and the files it points to; all default when absent.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let mut out = Self::default();
        let Some(modules_path) = files.get("modules.json")? else {
            return Ok(out);
        };
        let modules = read_json(&modules_path)?;
        let list = modules.as_array().ok_or_else(|| Error::Config {
            path: modules_path.display().to_string(),
            message: "expected a list of modules".into(),
        })?;
        for m in list {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            let path = m.get("path").and_then(Value::as_str).unwrap_or("");
            if ty.ends_with("models.Pooling") {
                let cfg_name = if path.is_empty() {
                    "config.json".to_string()
                } else {
                    format!("{path}/config.json")
                };
                let cfg_path = files.require(&cfg_name)?;
                let cfg = read_json(&cfg_path)?;
                out.pooling = Some(pooling_from_config(&cfg));
            } else if ty.ends_with("models.Normalize") {
                out.normalize = true;
            } else if ty.ends_with("models.Transformer") || ty.is_empty() {
                // The transformer itself.
            } else {
                return Err(Error::Unsupported(format!(
                    "sentence-transformers module `{ty}` is not supported (supported: Transformer, Pooling, Normalize)"
                )));
            }
        }
        if let Some(p) = files.get("sentence_bert_config.json")? {
            out.max_seq_length = read_json(&p)?
                .get("max_seq_length")
                .and_then(Value::as_u64)
                .map(|x| x as usize);
        }
        Ok(out)
    }
}

fn pooling_from_config(cfg: &Value) -> Vec<Pooling> {
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    if let Some(mode) = cfg.get("pooling_mode").and_then(Value::as_str) {
        if let Ok(Some(p)) = Pooling::parse(mode) {
            return p;
        }
    }
    // sentence-transformers concatenates in this order.
    let mut out = Vec::new();
    if flag("pooling_mode_cls_token") {
        out.push(Pooling::Cls);
    }
    if flag("pooling_mode_max_tokens") {
        out.push(Pooling::Max);
    }
    if flag("pooling_mode_mean_tokens") {
        out.push(Pooling::Mean);
    }
    if flag("pooling_mode_mean_sqrt_len_tokens") {
        out.push(Pooling::MeanSqrtLen);
    }
    out
}

/// Pools one row of token vectors `[seq, hidden]` (real tokens only).
pub fn pool(tokens: &Tensor, modes: &[Pooling]) -> Result<Tensor> {
    if tokens.dim(0)? == 0 {
        return Err(Error::invalid("cannot pool an input with no tokens"));
    }
    if tokens.dtype() == candle_core::DType::F32 && tokens.rank() == 2 {
        return pool_f32(tokens, modes);
    }
    pool_by_ops(tokens, modes)
}

/// [`pool`] through candle's reductions (other dtypes).
fn pool_by_ops(tokens: &Tensor, modes: &[Pooling]) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(modes.len());
    let n = tokens.dim(0)?;
    for m in modes {
        parts.push(match m {
            Pooling::Cls => tokens.get(0)?,
            Pooling::Max => tokens.max(0)?,
            Pooling::Mean => tokens.mean(0)?,
            Pooling::MeanSqrtLen => (tokens.sum(0)? / (n as f64).sqrt())?,
        });
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// [`pool`] for f32 `[seq, hidden]`, by rows in one read of the values (candle reduces
/// over the sequence dimension with strided reads, serially): sums in token order, then
/// scaled by the reciprocal, as candle's `mean` and the division by a scalar do.
fn pool_f32(tokens: &Tensor, modes: &[Pooling]) -> Result<Tensor> {
    let (n, h) = tokens.dims2()?;
    let values = tokens.flatten_all()?.to_vec1::<f32>()?;
    let rows = values.chunks_exact(h);
    let mut out = Vec::with_capacity(modes.len() * h);
    let sum = || {
        let mut acc = vec![0f32; h];
        for row in rows.clone() {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        acc
    };
    for m in modes {
        match m {
            Pooling::Cls => out.extend_from_slice(&values[..h]),
            Pooling::Max => {
                let mut acc = vec![f32::NEG_INFINITY; h];
                for row in rows.clone() {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a = a.max(*v);
                    }
                }
                out.extend(acc);
            }
            Pooling::Mean => {
                let k = (1.0 / n as f64) as f32;
                out.extend(sum().into_iter().map(|v| v * k));
            }
            Pooling::MeanSqrtLen => {
                let k = (1.0 / (n as f64).sqrt()) as f32;
                out.extend(sum().into_iter().map(|v| v * k));
            }
        }
    }
    let len = out.len();
    Ok(Tensor::from_vec(out, len, tokens.device())?)
}

/// L2-normalises a vector as torch's `F.normalize` (eps 1e-12).
pub fn l2_normalize(v: &Tensor) -> Result<Tensor> {
    let norm = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-12);
    Ok((v / norm as f64)?)
}

/// The feature-extraction pipeline.
pub struct FeatureExtractionPipeline {
    model: PreTrainedModel<dyn EncoderModel>,
    tokenizer: AutoTokenizer,
    st: SentenceTransformerSettings,
}

impl FeatureExtractionPipeline {
    /// Loads model and tokenizer from a reference.
    pub fn from_pretrained(reference: &str, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(reference)?;
        let tokenizer = AutoTokenizer::from_files(&files)?;
        let st = SentenceTransformerSettings::from_files(&files)?;
        let model = AutoModel::from_files(files, opts)?;
        Ok(Self {
            model,
            tokenizer,
            st,
        })
    }

    /// The sentence-transformers settings found in the checkpoint.
    pub fn sentence_transformer_settings(&self) -> &SentenceTransformerSettings {
        &self.st
    }

    /// Sentence embeddings with the checkpoint's pooling (mean if it names none), one
    /// vector per text, in the order of `texts`. As sentence-transformers' `encode`, the
    /// texts are batched longest first (by characters), so that each batch pads to
    /// similar lengths; the attention mask makes each vector independent of its batch.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let modes = self
            .st
            .pooling
            .clone()
            .unwrap_or_else(|| vec![Pooling::Mean]);
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].chars().count()));
        let mut out = vec![Vec::new(); texts.len()];
        for idx in order.chunks(batch.max(1)) {
            let chunk: Vec<&str> = idx.iter().map(|&i| texts[i]).collect();
            let rows = self.forward_pooled(
                &chunk,
                Some(&modes),
                self.st.normalize,
                self.st.max_seq_length,
            )?;
            for (&i, t) in idx.iter().zip(rows) {
                out[i] = t.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            }
        }
        Ok(out)
    }

    /// Runs one padded batch; returns per input either pooled vectors (`modes`) or the
    /// `[seq, hidden]` token vectors.
    fn forward_pooled(
        &self,
        texts: &[&str],
        modes: Option<&[Pooling]>,
        normalize: bool,
        max_length: Option<usize>,
    ) -> Result<Vec<Tensor>> {
        let opts = EncodeOptions {
            padding: Padding::Longest,
            truncation: if max_length.is_some() {
                Truncation::LongestFirst
            } else {
                Truncation::None
            },
            max_length,
            ..Default::default()
        };
        let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
        let enc = self.tokenizer.encode_batch(&inputs, &opts)?;
        let t = to_tensors(&enc, &self.model.device)?;
        let out = self.model.model.forward(t.inputs())?;
        let hidden = out.last_hidden_state;
        let mut rows = Vec::with_capacity(texts.len());
        for (i, mask) in enc.attention_mask.iter().enumerate() {
            let (start, len) = real_range(mask);
            let tokens = hidden.get(i)?.narrow(0, start, len)?.to_dtype(DType::F32)?;
            let row = match modes {
                Some(m) => {
                    let v = pool(&tokens, m)?;
                    if normalize {
                        l2_normalize(&v)?
                    } else {
                        v
                    }
                }
                None => tokens,
            };
            rows.push(row);
        }
        Ok(rows)
    }
}

impl Pipeline for FeatureExtractionPipeline {
    fn task(&self) -> &'static str {
        "feature-extraction"
    }

    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>> {
        let r = ParamReader::new("feature-extraction", params);
        let batch = batch_size(r.usize("batch_size")?)?;
        let pooling = match r.string("pooling")? {
            Some(p) => Pooling::parse(&p)?,
            None => self.st.pooling.clone(),
        };
        let normalize = match r.bool("normalize")? {
            Some(n) => n,
            None => self.st.normalize && pooling.is_some(),
        };
        if normalize && pooling.is_none() {
            return Err(Error::invalid(
                "feature-extraction: normalize needs pooling (mean, cls or max)",
            ));
        }
        // Tokenizer options come as top-level parameters or inside `tokenize_kwargs`.
        let tokenize_kwargs = r.object("tokenize_kwargs")?.unwrap_or_default();
        let tk = ParamReader::new("feature-extraction tokenize_kwargs", &tokenize_kwargs);
        let wants_truncation = r
            .truncation()?
            .or(tk.truncation()?)
            .map(|t| t != Truncation::None);
        let max_length = r.usize("max_length")?.or(tk.usize("max_length")?);
        let truncation = match wants_truncation {
            Some(true) => Some(
                max_length
                    .or(self.st.max_seq_length)
                    .or(self.tokenizer.model_max_length())
                    .unwrap_or(self.model.config.max_position_embeddings()),
            ),
            Some(false) => None,
            // sentence-transformers always truncates to max_seq_length.
            None => max_length.or(if pooling.is_some() {
                self.st.max_seq_length
            } else {
                None
            }),
        };
        // Each batch is padded to its longest input and the padding dropped again.
        let _ = tk.has("padding");
        r.finish()?;
        tk.finish()?;
        let texts: Vec<&str> = inputs
            .iter()
            .map(|v| text_of("feature-extraction", v))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch) {
            let rows = self.forward_pooled(chunk, pooling.as_deref(), normalize, truncation)?;
            for row in rows {
                out.push(if pooling.is_some() {
                    Value::Array(row.to_vec1::<f32>()?.into_iter().map(num).collect())
                } else {
                    let m = row.to_vec2::<f32>()?;
                    Value::Array(vec![Value::Array(
                        m.into_iter()
                            .map(|r| Value::Array(r.into_iter().map(num).collect()))
                            .collect(),
                    )])
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 pooling by rows gives what candle's reductions give, for every mode and
    /// for all modes concatenated (sentence-transformers' order).
    #[test]
    fn row_pooling_equals_candle_reductions() {
        let dev = candle_core::Device::Cpu;
        let tokens = Tensor::randn(0f32, 1.0, (23, 40), &dev).unwrap();
        let all = [
            Pooling::Cls,
            Pooling::Max,
            Pooling::Mean,
            Pooling::MeanSqrtLen,
        ];
        let mut cases: Vec<Vec<Pooling>> = all.iter().map(|m| vec![*m]).collect();
        cases.push(all.to_vec());
        for modes in cases {
            let got = pool(&tokens, &modes).unwrap().to_vec1::<f32>().unwrap();
            let want = pool_by_ops(&tokens, &modes)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got.len(), 40 * modes.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{modes:?}: {a} vs {b}"
                );
            }
        }
        let empty = Tensor::zeros((0, 40), candle_core::DType::F32, &dev).unwrap();
        assert!(pool(&empty, &all).is_err());
    }
}
