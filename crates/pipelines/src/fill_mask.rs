//! fill-mask, as Python's `FillMaskPipeline` (transformers 4.46,
//! pipelines/fill_mask.py): `top_k` (default 5), `targets`; one list of candidates per
//! input with one mask, a list of such lists with several masks.

use std::collections::BTreeSet;

use candle_core::DType;
use serde_json::{json, Value};

use rustformers_core::{AutoTokenizer, EncodeOptions, Error, ModelFiles, Result, TextInput};
use rustformers_models::{AutoModelForMaskedLM, LoadOptions, MaskedLmModel, PreTrainedModel};

use crate::common::{argsort_desc, num, softmax, text_of, to_tensors};
use crate::params::{ParamReader, Params};
use crate::Pipeline;

/// The fill-mask pipeline.
pub struct FillMaskPipeline {
    model: PreTrainedModel<dyn MaskedLmModel>,
    tokenizer: AutoTokenizer,
    mask_token: String,
    mask_id: u32,
}

impl FillMaskPipeline {
    pub fn from_pretrained(reference: &str, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(reference)?;
        let tokenizer = AutoTokenizer::from_files(&files)?;
        let mask_token = tokenizer.special_tokens().mask.clone().ok_or_else(|| {
            Error::Tokenizer("fill-mask needs a tokenizer with a mask token".into())
        })?;
        let mask_id = tokenizer.token_to_id(&mask_token).ok_or_else(|| {
            Error::Tokenizer(format!(
                "mask token `{mask_token}` is not in the vocabulary"
            ))
        })?;
        let model = AutoModelForMaskedLM::from_files(files, opts)?;
        Ok(Self {
            model,
            tokenizer,
            mask_token,
            mask_id,
        })
    }

    /// Target words → vocabulary ids, as Python: a word not in the vocabulary is
    /// tokenized and its first piece used.
    fn target_ids(&self, targets: &[String]) -> Result<Vec<u32>> {
        let mut ids = BTreeSet::new();
        for t in targets {
            match self.tokenizer.token_to_id(t) {
                Some(id) => {
                    ids.insert(id);
                }
                None => {
                    let enc = self.tokenizer.encode(
                        TextInput::Single(t),
                        &EncodeOptions {
                            add_special_tokens: false,
                            ..Default::default()
                        },
                    )?;
                    match enc.input_ids.first().and_then(|r| r.first()) {
                        Some(id) => {
                            tracing::warn!(
                                "fill-mask: target `{t}` is not in the vocabulary; using `{}` instead",
                                self.tokenizer.id_to_token(*id).unwrap_or_default()
                            );
                            ids.insert(*id);
                        }
                        None => tracing::warn!("fill-mask: target `{t}` gives no token; ignored"),
                    }
                }
            }
        }
        if ids.is_empty() {
            return Err(Error::invalid("fill-mask: none of the targets is usable"));
        }
        Ok(ids.into_iter().collect())
    }

    fn fill_one(&self, text: &str, top_k: usize, targets: Option<&[u32]>) -> Result<Value> {
        let enc = self
            .tokenizer
            .encode(TextInput::Single(text), &EncodeOptions::default())?;
        let ids = enc.input_ids[0].clone();
        let masked: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == self.mask_id)
            .map(|(i, _)| i)
            .collect();
        if masked.is_empty() {
            return Err(Error::invalid(format!(
                "fill-mask: no mask_token ({}) found on the input",
                self.mask_token
            )));
        }
        let t = to_tensors(&enc, &self.model.device)?;
        let logits = self.model.model.forward(t.inputs())?.get(0)?;
        let single = masked.len() == 1;
        let pad_id = self.tokenizer.pad_token_id();
        let mut per_mask = Vec::with_capacity(masked.len());
        for &pos in &masked {
            let probs = softmax(&logits.get(pos)?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            let (cand_ids, cand_probs): (Vec<u32>, Vec<f32>) = match targets {
                Some(t) => (t.to_vec(), t.iter().map(|&i| probs[i as usize]).collect()),
                None => ((0..probs.len() as u32).collect(), probs),
            };
            let k = top_k.min(cand_ids.len());
            let mut items = Vec::with_capacity(k);
            for &j in argsort_desc(&cand_probs).iter().take(k) {
                let token = cand_ids[j];
                let mut seq: Vec<u32> = ids.clone();
                seq[pos] = token;
                let seq: Vec<u32> = seq.into_iter().filter(|i| Some(*i) != pad_id).collect();
                let sequence = self.tokenizer.decode(&seq, single)?;
                items.push(json!({
                    "score": num(cand_probs[j]),
                    "token": token,
                    "token_str": self.tokenizer.decode(&[token], false)?,
                    "sequence": sequence,
                }));
            }
            per_mask.push(Value::Array(items));
        }
        Ok(if single {
            per_mask.remove(0)
        } else {
            Value::Array(per_mask)
        })
    }
}

impl Pipeline for FillMaskPipeline {
    fn task(&self) -> &'static str {
        "fill-mask"
    }

    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>> {
        let r = ParamReader::new("fill-mask", params);
        let top_k = r.usize("top_k")?.unwrap_or(5);
        if top_k == 0 {
            return Err(Error::invalid("fill-mask: top_k must be at least 1"));
        }
        let targets = match r.strings("targets", false)? {
            Some(t) => Some(self.target_ids(&t)?),
            None => None,
        };
        let _ = r.usize("batch_size")?;
        r.finish()?;
        inputs
            .iter()
            .map(|v| self.fill_one(text_of("fill-mask", v)?, top_k, targets.as_deref()))
            .collect()
    }
}
