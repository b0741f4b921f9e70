//! fill-mask, as Python's `FillMaskPipeline` (transformers 4.46,
//! pipelines/fill_mask.py): `top_k` (default 5), `targets`; one list of candidates per
//! input with one mask, a list of such lists with several masks.

use std::collections::BTreeSet;

use candle_core::DType;
use serde_json::{json, Value};

use rustformers_core::{
    AutoTokenizer, EncodeOptions, Error, ModelFiles, Padding, Result, TextInput,
};
use rustformers_models::{AutoModelForMaskedLM, LoadOptions, MaskedLmModel, PreTrainedModel};

use crate::common::{
    argsort_desc, batch_size, num, real_range, softmax, text_of, to_tensors, unpad,
};
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

    /// Fills the masks of a padded batch of texts; one output per text.
    fn fill_batch(
        &self,
        texts: &[&str],
        top_k: usize,
        targets: Option<&[u32]>,
    ) -> Result<Vec<Value>> {
        let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
        let enc = self.tokenizer.encode_batch(
            &inputs,
            &EncodeOptions {
                padding: Padding::Longest,
                ..Default::default()
            },
        )?;
        let rows: Vec<Vec<u32>> = enc
            .input_ids
            .iter()
            .zip(&enc.attention_mask)
            .map(|(ids, mask)| unpad(ids, mask))
            .collect();
        if rows.iter().any(|ids| !ids.contains(&self.mask_id)) {
            return Err(Error::invalid(format!(
                "fill-mask: no mask_token ({}) found on the input",
                self.mask_token
            )));
        }
        let t = to_tensors(&enc, &self.model.device)?;
        let logits = self.model.model.forward(t.inputs())?;
        let pad_id = self.tokenizer.pad_token_id();
        let mut out = Vec::with_capacity(texts.len());
        for (i, ids) in rows.iter().enumerate() {
            let (start, len) = real_range(&enc.attention_mask[i]);
            let row_logits = logits.get(i)?.narrow(0, start, len)?;
            let masked: Vec<usize> = ids
                .iter()
                .enumerate()
                .filter(|(_, id)| **id == self.mask_id)
                .map(|(p, _)| p)
                .collect();
            let single = masked.len() == 1;
            let mut per_mask = Vec::with_capacity(masked.len());
            for &pos in &masked {
                let probs = softmax(
                    &row_logits
                        .get(pos)?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?,
                );
                if let Some(bad) =
                    targets.and_then(|t| t.iter().find(|&&i| i as usize >= probs.len()))
                {
                    return Err(Error::invalid(format!(
                        "fill-mask: target id {bad} is outside the model's vocabulary of {}",
                        probs.len()
                    )));
                }
                let (cand_ids, cand_probs): (Vec<u32>, Vec<f32>) = match targets {
                    Some(t) => (t.to_vec(), t.iter().map(|&i| probs[i as usize]).collect()),
                    None => ((0..probs.len() as u32).collect(), probs),
                };
                let k = top_k.min(cand_ids.len());
                let mut items = Vec::with_capacity(k);
                for &j in argsort_desc(&cand_probs).iter().take(k) {
                    let token = cand_ids[j];
                    let mut seq = ids.clone();
                    seq[pos] = token;
                    seq.retain(|id| Some(*id) != pad_id);
                    // Python skips special tokens only when there is a single mask.
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
            out.push(if single {
                per_mask.remove(0)
            } else {
                Value::Array(per_mask)
            });
        }
        Ok(out)
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
        let batch = batch_size(r.usize("batch_size")?)?;
        r.finish()?;
        let texts: Vec<&str> = inputs
            .iter()
            .map(|v| text_of("fill-mask", v))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch) {
            out.extend(self.fill_batch(chunk, top_k, targets.as_deref())?);
        }
        Ok(out)
    }
}
