//! text-classification, as Python's `TextClassificationPipeline` (transformers 4.46,
//! pipelines/text_classification.py): `function_to_apply` from `problem_type` and the
//! label count, `top_k` (absent: the best label; null: all labels), text pairs.

use serde_json::{json, Value};

use rustformers_core::{
    AutoTokenizer, EncodeOptions, Error, ModelFiles, Padding, Result, TextInput, Truncation,
};
use rustformers_models::{
    AutoModelForSequenceClassification, LoadOptions, PreTrainedModel, SequenceClassificationModel,
};

use crate::common::{argsort_desc, batch_size, num, row_f32, sigmoid, softmax, to_tensors};
use crate::params::{ParamReader, Params};
use crate::Pipeline;

/// Python's `ClassificationFunction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassificationFunction {
    Sigmoid,
    Softmax,
    None,
}

impl ClassificationFunction {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sigmoid" => Ok(Self::Sigmoid),
            "softmax" => Ok(Self::Softmax),
            "none" => Ok(Self::None),
            other => Err(Error::invalid(format!(
                "function_to_apply `{other}` is not one of sigmoid, softmax, none"
            ))),
        }
    }

    pub fn apply(&self, logits: &[f32]) -> Vec<f32> {
        match self {
            Self::Sigmoid => sigmoid(logits),
            Self::Softmax => softmax(logits),
            Self::None => logits.to_vec(),
        }
    }
}

/// The text-classification pipeline.
pub struct TextClassificationPipeline {
    model: PreTrainedModel<dyn SequenceClassificationModel>,
    tokenizer: AutoTokenizer,
    labels: Vec<String>,
}

/// Parses one input: a string, `{"text": .., "text_pair": ..}`, or `[text, pair]`.
fn parse_input(v: &Value) -> Result<(String, Option<String>)> {
    match v {
        Value::String(s) => Ok((s.clone(), None)),
        Value::Object(o) => {
            let text = o.get("text").and_then(Value::as_str).ok_or_else(|| {
                Error::invalid("text-classification: a JSON input needs a string `text` field")
            })?;
            for k in o.keys() {
                if k != "text" && k != "text_pair" {
                    return Err(Error::invalid(format!(
                        "text-classification: unknown input field `{k}` (use text, text_pair)"
                    )));
                }
            }
            let pair = match o.get("text_pair") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => Some(p.clone()),
                Some(other) => {
                    return Err(Error::invalid(format!(
                        "text-classification: text_pair must be a string, got {other}"
                    )))
                }
            };
            Ok((text.to_string(), pair))
        }
        Value::Array(a) if a.len() == 2 && a.iter().all(Value::is_string) => Ok((
            a[0].as_str().unwrap_or_default().to_string(),
            a[1].as_str().map(str::to_string),
        )),
        other => Err(Error::invalid(format!(
            "text-classification: an input must be a string or {{\"text\", \"text_pair\"}}, got {other}"
        ))),
    }
}

impl TextClassificationPipeline {
    pub fn from_pretrained(reference: &str, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(reference)?;
        let tokenizer = AutoTokenizer::from_files(&files)?;
        let model = AutoModelForSequenceClassification::from_files(files, opts)?;
        let labels = model.config.base().labels()?;
        Ok(Self {
            model,
            tokenizer,
            labels,
        })
    }

    /// Label names in class order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The tokenizer's `model_max_length`.
    pub fn model_max_length(&self) -> Option<usize> {
        self.tokenizer.model_max_length()
    }

    /// The function Python picks when the caller gives none.
    pub fn default_function(&self) -> ClassificationFunction {
        let base = self.model.config.base();
        match base.problem_type.as_deref() {
            Some("multi_label_classification") => ClassificationFunction::Sigmoid,
            _ if self.labels.len() == 1 => ClassificationFunction::Sigmoid,
            Some("regression") => ClassificationFunction::None,
            _ => ClassificationFunction::Softmax,
        }
    }

    /// Logits of a batch of (text, pair) inputs.
    pub fn logits(
        &self,
        inputs: &[(String, Option<String>)],
        opts: &EncodeOptions,
    ) -> Result<Vec<Vec<f32>>> {
        let ti: Vec<TextInput> = inputs
            .iter()
            .map(|(t, p)| match p {
                Some(p) => TextInput::Pair(t, p),
                None => TextInput::Single(t),
            })
            .collect();
        let enc = self.tokenizer.encode_batch(&ti, opts)?;
        let t = to_tensors(&enc, &self.model.device)?;
        let logits = self.model.model.forward(t.inputs())?;
        (0..inputs.len()).map(|i| row_f32(&logits, i)).collect()
    }
}

impl Pipeline for TextClassificationPipeline {
    fn task(&self) -> &'static str {
        "text-classification"
    }

    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>> {
        let r = ParamReader::new("text-classification", params);
        let batch = batch_size(r.usize("batch_size")?)?;
        // Python: no top_k → the best label only, as a one-item list; top_k=null → all.
        let legacy = !r.has("top_k");
        let top_k = if legacy { Some(1) } else { r.usize("top_k")? };
        if top_k == Some(0) {
            return Err(Error::invalid(
                "text-classification: top_k must be at least 1",
            ));
        }
        let function = match r.string("function_to_apply")? {
            Some(f) => ClassificationFunction::parse(&f)?,
            None => self.default_function(),
        };
        let truncation = r.truncation()?.unwrap_or(Truncation::None);
        let max_length = r.usize("max_length")?;
        r.finish()?;
        let parsed: Vec<(String, Option<String>)> =
            inputs.iter().map(parse_input).collect::<Result<_>>()?;
        let opts = EncodeOptions {
            padding: Padding::Longest,
            truncation,
            max_length,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(parsed.len());
        let mut is_text = inputs.iter().map(Value::is_string);
        for chunk in parsed.chunks(batch) {
            for logits in self.logits(chunk, &opts)? {
                let scores = function.apply(&logits);
                if scores.len() != self.labels.len() {
                    return Err(Error::invalid(format!(
                        "model gives {} scores but config.json names {} labels",
                        scores.len(),
                        self.labels.len()
                    )));
                }
                let order = argsort_desc(&scores);
                let take = top_k.unwrap_or(order.len()).min(order.len());
                let items: Vec<Value> = order[..take]
                    .iter()
                    .map(|&i| json!({"label": self.labels[i], "score": num(scores[i])}))
                    .collect();
                // Python: without top_k a text gives `[best]`, a {text, text_pair} input `best`.
                let text_input = is_text.next().unwrap_or(true);
                out.push(match (legacy, text_input) {
                    (true, false) => items.into_iter().next().unwrap_or(Value::Null),
                    _ => Value::Array(items),
                });
            }
        }
        Ok(out)
    }
}
