//! token-classification (NER), as Python's `TokenClassificationPipeline`
//! (transformers 4.46, pipelines/token_classification.py): per-token entities, or
//! entity groups with `aggregation_strategy` simple/first/average/max; `ignore_labels`.

use serde_json::{json, Value};

use rustformers_core::tokenizer::slice_chars;
use rustformers_core::{
    AutoTokenizer, EncodeOptions, Error, ModelFiles, Padding, Result, TextInput, Truncation,
};
use rustformers_models::{
    AutoModelForTokenClassification, LoadOptions, PreTrainedModel, TokenClassificationModel,
};

use crate::common::{argmax, batch_size, num, row_matrix, softmax, text_of, to_tensors, unpad};
use crate::params::{ParamReader, Params};
use crate::Pipeline;

/// Python's `AggregationStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregationStrategy {
    None,
    Simple,
    First,
    Average,
    Max,
}

impl AggregationStrategy {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "simple" => Ok(Self::Simple),
            "first" => Ok(Self::First),
            "average" => Ok(Self::Average),
            "max" => Ok(Self::Max),
            other => Err(Error::invalid(format!(
                "token-classification: aggregation_strategy `{other}` is not one of none, simple, first, average, max"
            ))),
        }
    }
}

/// One token before aggregation.
#[derive(Debug, Clone)]
struct PreEntity {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// One entity (per token or per word).
#[derive(Debug, Clone)]
struct Entity {
    entity: String,
    score: f32,
    index: Option<usize>,
    word: String,
    start: usize,
    end: usize,
}

/// The token-classification pipeline.
pub struct TokenClassificationPipeline {
    model: PreTrainedModel<dyn TokenClassificationModel>,
    tokenizer: AutoTokenizer,
    labels: Vec<String>,
}

fn split_tag(label: &str) -> (&str, &str) {
    if let Some(t) = label.strip_prefix("B-") {
        ("B", t)
    } else if let Some(t) = label.strip_prefix("I-") {
        ("I", t)
    } else {
        // Python treats any other tag as a continuation.
        ("I", label)
    }
}

fn mean(xs: impl Iterator<Item = f32>) -> f32 {
    let v: Vec<f32> = xs.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        f32::NAN
    } else {
        v.iter().sum::<f32>() / v.len() as f32
    }
}

impl TokenClassificationPipeline {
    pub fn from_pretrained(reference: &str, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(reference)?;
        let tokenizer = AutoTokenizer::from_files(&files)?;
        let model = AutoModelForTokenClassification::from_files(files, opts)?;
        let labels = model.config.base().labels()?;
        Ok(Self {
            model,
            tokenizer,
            labels,
        })
    }

    fn pre_entities(
        &self,
        sentence: &str,
        ids: &[u32],
        scores: &[Vec<f32>],
        offsets: &[(usize, usize)],
        special: &[u32],
        strategy: AggregationStrategy,
    ) -> Result<Vec<PreEntity>> {
        let wordpiece_like = self.tokenizer.has_continuing_subword_prefix();
        let unk = self.tokenizer.unk_token_id();
        let chars: Vec<char> = sentence.chars().collect();
        let mut out = Vec::new();
        for (idx, token_scores) in scores.iter().enumerate() {
            if special[idx] != 0 {
                continue;
            }
            let mut word = self.tokenizer.id_to_token(ids[idx]).unwrap_or_default();
            let (start, end) = offsets[idx];
            let word_ref = slice_chars(sentence, start, end).to_string();
            let mut is_subword = if wordpiece_like {
                word.chars().count() != word_ref.chars().count()
            } else {
                if matches!(
                    strategy,
                    AggregationStrategy::First
                        | AggregationStrategy::Average
                        | AggregationStrategy::Max
                ) {
                    tracing::warn!(
                        "tokenizer has no subword prefix: word boundaries are guessed from spaces"
                    );
                }
                start > 0 && !chars[start - 1..(start + 1).min(chars.len())].contains(&' ')
            };
            if Some(ids[idx]) == unk {
                word = word_ref;
                is_subword = false;
            }
            out.push(PreEntity {
                word,
                scores: token_scores.clone(),
                start,
                end,
                index: idx,
                is_subword,
            });
        }
        Ok(out)
    }

    fn aggregate_word(&self, group: &[PreEntity], strategy: AggregationStrategy) -> Result<Entity> {
        let tokens: Vec<String> = group.iter().map(|e| e.word.clone()).collect();
        let word = self.tokenizer.convert_tokens_to_string(&tokens)?;
        let (idx, score) = match strategy {
            AggregationStrategy::Max => {
                let mut best = &group[0];
                let mut best_max = f32::NEG_INFINITY;
                for e in group {
                    let m = e.scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    if m > best_max {
                        best_max = m;
                        best = e;
                    }
                }
                let i = argmax(&best.scores);
                (i, best.scores[i])
            }
            AggregationStrategy::Average => {
                let n = group[0].scores.len();
                let avg: Vec<f32> = (0..n)
                    .map(|j| mean(group.iter().map(|e| e.scores[j])))
                    .collect();
                let i = argmax(&avg);
                (i, avg[i])
            }
            _ => {
                let i = argmax(&group[0].scores);
                (i, group[0].scores[i])
            }
        };
        Ok(Entity {
            entity: self.labels[idx].clone(),
            score,
            index: None,
            word,
            start: group[0].start,
            end: group[group.len() - 1].end,
        })
    }

    fn aggregate(&self, pre: Vec<PreEntity>, strategy: AggregationStrategy) -> Result<Vec<Entity>> {
        if matches!(
            strategy,
            AggregationStrategy::None | AggregationStrategy::Simple
        ) {
            return Ok(pre
                .into_iter()
                .map(|p| {
                    let i = argmax(&p.scores);
                    Entity {
                        entity: self.labels[i].clone(),
                        score: p.scores[i],
                        index: Some(p.index),
                        word: p.word,
                        start: p.start,
                        end: p.end,
                    }
                })
                .collect());
        }
        let mut words = Vec::new();
        let mut group: Vec<PreEntity> = Vec::new();
        for e in pre {
            if !group.is_empty() && !e.is_subword {
                words.push(self.aggregate_word(&group, strategy)?);
                group.clear();
            }
            group.push(e);
        }
        if !group.is_empty() {
            words.push(self.aggregate_word(&group, strategy)?);
        }
        Ok(words)
    }

    fn group_entities(&self, entities: &[Entity]) -> Result<Vec<Value>> {
        let mut groups = Vec::new();
        let mut current: Vec<&Entity> = Vec::new();
        for e in entities {
            if let Some(last) = current.last() {
                let (bi, tag) = split_tag(&e.entity);
                let (_, last_tag) = split_tag(&last.entity);
                if !(tag == last_tag && bi != "B") {
                    groups.push(self.group_sub_entities(&current)?);
                    current.clear();
                }
            }
            current.push(e);
        }
        if !current.is_empty() {
            groups.push(self.group_sub_entities(&current)?);
        }
        Ok(groups)
    }

    fn group_sub_entities(&self, entities: &[&Entity]) -> Result<Value> {
        let first = entities[0];
        let tag = first
            .entity
            .split_once('-')
            .map(|(_, t)| t)
            .unwrap_or(&first.entity);
        let tokens: Vec<String> = entities.iter().map(|e| e.word.clone()).collect();
        Ok(json!({
            "entity_group": tag,
            "score": num(mean(entities.iter().map(|e| e.score))),
            "word": self.tokenizer.convert_tokens_to_string(&tokens)?,
            "start": first.start,
            "end": entities[entities.len() - 1].end,
        }))
    }
}

impl Pipeline for TokenClassificationPipeline {
    fn task(&self) -> &'static str {
        "token-classification"
    }

    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>> {
        let r = ParamReader::new("token-classification", params);
        let batch = batch_size(r.usize("batch_size")?)?;
        let strategy = match r.string("aggregation_strategy")? {
            Some(s) => AggregationStrategy::parse(&s)?,
            None => match r.bool("grouped_entities")? {
                Some(true) => AggregationStrategy::Simple,
                _ => AggregationStrategy::None,
            },
        };
        let ignore_labels = r
            .strings("ignore_labels", false)?
            .unwrap_or_else(|| vec!["O".into()]);
        r.finish()?;
        let texts: Vec<&str> = inputs
            .iter()
            .map(|v| text_of("token-classification", v))
            .collect::<Result<_>>()?;
        let opts = EncodeOptions {
            padding: Padding::Longest,
            truncation: if self.tokenizer.model_max_length().is_some() {
                Truncation::LongestFirst
            } else {
                Truncation::None
            },
            ..Default::default()
        };
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch) {
            let ti: Vec<TextInput> = chunk.iter().map(|t| TextInput::Single(t)).collect();
            let enc = self.tokenizer.encode_batch(&ti, &opts)?;
            let t = to_tensors(&enc, &self.model.device)?;
            let logits = self.model.model.forward(t.inputs())?;
            for (i, sentence) in chunk.iter().enumerate() {
                let mask = &enc.attention_mask[i];
                let scores: Vec<Vec<f32>> = row_matrix(&logits, i, mask)?
                    .iter()
                    .map(|l| softmax(l))
                    .collect();
                if scores.first().is_some_and(|s| s.len() != self.labels.len()) {
                    return Err(Error::invalid(format!(
                        "model gives {} scores per token but config.json names {} labels",
                        scores[0].len(),
                        self.labels.len()
                    )));
                }
                let pre = self.pre_entities(
                    sentence,
                    &unpad(&enc.input_ids[i], mask),
                    &scores,
                    &unpad(&enc.offsets[i], mask),
                    &unpad(&enc.special_tokens_mask[i], mask),
                    strategy,
                )?;
                let entities = self.aggregate(pre, strategy)?;
                let values: Vec<Value> = if strategy == AggregationStrategy::None {
                    entities
                        .iter()
                        .map(|e| {
                            json!({
                                "entity": e.entity,
                                "score": num(e.score),
                                "index": e.index,
                                "word": e.word,
                                "start": e.start,
                                "end": e.end,
                            })
                        })
                        .collect()
                } else {
                    self.group_entities(&entities)?
                };
                let kept: Vec<Value> = values
                    .into_iter()
                    .filter(|v| {
                        let label = v
                            .get("entity")
                            .or_else(|| v.get("entity_group"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        !ignore_labels.iter().any(|l| l == label)
                    })
                    .collect();
                out.push(Value::Array(kept));
            }
        }
        Ok(out)
    }
}
