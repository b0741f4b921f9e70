//! zero-shot-classification, as Python's `ZeroShotClassificationPipeline`
//! (transformers 4.46, pipelines/zero_shot_classification.py): each candidate label
//! becomes an NLI hypothesis; entailment scores rank the labels.

use serde_json::{json, Value};

use rustformers_core::{EncodeOptions, Error, Result, Truncation};
use rustformers_models::LoadOptions;

use crate::common::{argsort_desc, batch_size, num, softmax, text_of};
use crate::params::{ParamReader, Params};
use crate::text_classification::TextClassificationPipeline;
use crate::Pipeline;

/// The zero-shot-classification pipeline (over a sequence-classification NLI model).
pub struct ZeroShotClassificationPipeline {
    nli: TextClassificationPipeline,
    entailment_id: usize,
    contradiction_id: usize,
}

impl ZeroShotClassificationPipeline {
    pub fn from_pretrained(reference: &str, opts: &LoadOptions) -> Result<Self> {
        let nli = TextClassificationPipeline::from_pretrained(reference, opts)?;
        let labels = nli.labels();
        let entailment_id = labels
            .iter()
            .position(|l| l.to_lowercase().starts_with("entail"))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "zero-shot-classification needs an NLI model with an `entailment` label; this one has {}",
                    labels.join(", ")
                ))
            })?;
        // Python: the contradiction logit is the first, or the last when entailment is first.
        let contradiction_id = if entailment_id == 0 {
            labels.len() - 1
        } else {
            0
        };
        Ok(Self {
            nli,
            entailment_id,
            contradiction_id,
        })
    }
}

impl Pipeline for ZeroShotClassificationPipeline {
    fn task(&self) -> &'static str {
        "zero-shot-classification"
    }

    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>> {
        let r = ParamReader::new("zero-shot-classification", params);
        let candidate_labels = r.strings("candidate_labels", true)?.unwrap_or_default();
        if candidate_labels.is_empty() {
            return Err(Error::invalid(
                "zero-shot-classification: give at least one candidate label (candidate_labels)",
            ));
        }
        let template = r
            .string("hypothesis_template")?
            .unwrap_or_else(|| "This example is {}.".to_string());
        if !template.contains("{}") {
            return Err(Error::invalid(format!(
                "zero-shot-classification: hypothesis_template `{template}` has no {{}} for the label"
            )));
        }
        let multi_label = r.bool("multi_label")?.unwrap_or(false);
        let batch = batch_size(r.usize("batch_size")?)?;
        r.finish()?;
        let opts = EncodeOptions {
            padding: rustformers_core::Padding::Longest,
            truncation: Truncation::OnlyFirst,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(inputs.len());
        for v in inputs {
            let sequence = text_of("zero-shot-classification", v)?;
            let pairs: Vec<(String, Option<String>)> = candidate_labels
                .iter()
                .map(|l| (sequence.to_string(), Some(template.replacen("{}", l, 1))))
                .collect();
            let mut logits = Vec::with_capacity(pairs.len());
            for chunk in pairs.chunks(batch) {
                let opts = if self.nli.model_max_length().is_some() {
                    opts.clone()
                } else {
                    EncodeOptions {
                        truncation: Truncation::None,
                        ..opts.clone()
                    }
                };
                logits.extend(self.nli.logits(chunk, &opts)?);
            }
            let scores: Vec<f32> = if multi_label || candidate_labels.len() == 1 {
                logits
                    .iter()
                    .map(|l| softmax(&[l[self.contradiction_id], l[self.entailment_id]])[1])
                    .collect()
            } else {
                softmax(
                    &logits
                        .iter()
                        .map(|l| l[self.entailment_id])
                        .collect::<Vec<_>>(),
                )
            };
            let order = argsort_desc(&scores);
            out.push(json!({
                "sequence": sequence,
                "labels": order.iter().map(|&i| candidate_labels[i].clone()).collect::<Vec<_>>(),
                "scores": order.iter().map(|&i| num(scores[i])).collect::<Vec<_>>(),
            }));
        }
        Ok(out)
    }
}
