//! question-answering (extractive), as Python's `QuestionAnsweringPipeline`
//! (transformers 4.46, pipelines/question_answering.py): the context is split into
//! `max_seq_len` windows overlapping by `doc_stride`; in each window start/end
//! probabilities over context tokens give spans of at most `max_answer_len` tokens;
//! spans are aligned to whole words; `handle_impossible_answer` adds the empty answer
//! with the [CLS] score. Output `{score, start, end, answer}` (a list when `top_k` > 1).

use serde_json::{json, Value};

use rustformers_core::tokenizer::slice_chars;
use rustformers_core::{
    AutoTokenizer, BatchEncoding, EncodeOptions, Error, ModelFiles, Result, Side, TextInput,
    Truncation,
};
use rustformers_models::{
    AutoModelForQuestionAnswering, LoadOptions, PreTrainedModel, QuestionAnsweringModel,
};

use crate::common::{batch_size, num, padded_tensors, row_vector};
use crate::params::{ParamReader, Params};
use crate::Pipeline;

/// Options of one call, Python's names and defaults.
#[derive(Debug, Clone)]
pub struct QaOptions {
    pub top_k: usize,
    pub max_answer_len: usize,
    pub handle_impossible_answer: bool,
    pub align_to_words: bool,
    pub max_seq_len: Option<usize>,
    pub doc_stride: Option<usize>,
    pub batch_size: usize,
}

impl Default for QaOptions {
    fn default() -> Self {
        Self {
            top_k: 1,
            max_answer_len: 15,
            handle_impossible_answer: false,
            align_to_words: true,
            max_seq_len: None,
            doc_stride: None,
            batch_size: 1,
        }
    }
}

/// One candidate answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub score: f32,
    pub start: usize,
    pub end: usize,
    pub answer: String,
}

/// The question-answering pipeline.
pub struct QuestionAnsweringPipeline {
    model: PreTrainedModel<dyn QuestionAnsweringModel>,
    tokenizer: AutoTokenizer,
}

/// Spans of one window: probabilities, then the best `top_k` (start, end, score) among
/// all pairs with `start <= end < start + max_answer_len`, kept only when both ends are
/// allowed tokens (as Python's `decode_spans`, which filters after choosing).
fn best_spans(
    start: &[f32],
    end: &[f32],
    allowed: &[bool],
    top_k: usize,
    max_answer_len: usize,
) -> Vec<(usize, usize, f32)> {
    let n = start.len();
    // Pairs inside the band `s <= e < s + max_answer_len`, in row-major order.
    let band = |s: usize, e: usize| e >= s && e - s < max_answer_len;
    let mut chosen: Vec<(usize, usize, f32)> = start
        .iter()
        .enumerate()
        .flat_map(|(s, ps)| {
            end.iter()
                .enumerate()
                .skip(s)
                .take(max_answer_len)
                .map(move |(e, pe)| (s, e, ps * pe))
        })
        .filter(|c| c.2 > 0.0)
        .collect();
    // Descending score; a stable sort keeps row-major order on ties (numpy's argmax).
    chosen.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    chosen.truncate(top_k);
    if chosen.len() < top_k {
        // Python ranks all n*n pairs; the rest score 0 and come in row-major order.
        let zeros = (0..n)
            .flat_map(|s| (0..n).map(move |e| (s, e)))
            .filter(|&(s, e)| !band(s, e) || start[s] * end[e] <= 0.0)
            .map(|(s, e)| (s, e, 0.0));
        let missing = top_k - chosen.len();
        chosen.extend(zeros.take(missing));
    }
    chosen
        .into_iter()
        .filter(|(s, e, _)| allowed[*s] && allowed[*e])
        .collect()
}

/// Softmax of logits with disallowed positions set to -10000 first, as Python.
fn masked_probs(logits: &[f32], allowed: &[bool]) -> Vec<f32> {
    let masked: Vec<f32> = logits
        .iter()
        .zip(allowed)
        .map(|(l, a)| if *a { *l } else { -10000.0 })
        .collect();
    crate::common::softmax(&masked)
}

impl QuestionAnsweringPipeline {
    pub fn from_pretrained(reference: &str, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(reference)?;
        let tokenizer = AutoTokenizer::from_files(&files)?;
        let model = AutoModelForQuestionAnswering::from_files(files, opts)?;
        Ok(Self { model, tokenizer })
    }

    /// Answers one question about one context.
    pub fn answer(&self, question: &str, context: &str, o: &QaOptions) -> Result<Vec<Answer>> {
        if question.trim().is_empty() {
            return Err(Error::invalid("question-answering: the question is empty"));
        }
        if context.trim().is_empty() {
            return Err(Error::invalid("question-answering: the context is empty"));
        }
        if o.top_k == 0 {
            return Err(Error::invalid(
                "question-answering: top_k must be at least 1",
            ));
        }
        if o.max_answer_len == 0 {
            return Err(Error::invalid(
                "question-answering: max_answer_len must be at least 1",
            ));
        }
        let max_seq_len = o
            .max_seq_len
            .unwrap_or_else(|| self.tokenizer.model_max_length().unwrap_or(384).min(384));
        let doc_stride = o.doc_stride.unwrap_or((max_seq_len / 2).min(128));
        if doc_stride > max_seq_len {
            return Err(Error::invalid(format!(
                "question-answering: doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})"
            )));
        }
        let question_first = self.tokenizer.padding_side() == Side::Right;
        let input = if question_first {
            TextInput::Pair(question, context)
        } else {
            TextInput::Pair(context, question)
        };
        let enc = self.tokenizer.encode(
            input,
            &EncodeOptions {
                truncation: if question_first {
                    Truncation::OnlySecond
                } else {
                    Truncation::OnlyFirst
                },
                max_length: Some(max_seq_len),
                stride: doc_stride,
                return_overflowing_tokens: true,
                ..Default::default()
            },
        )?;
        let cls_id = self
            .tokenizer
            .special_tokens()
            .cls
            .as_deref()
            .and_then(|c| self.tokenizer.token_to_id(c));
        let context_seq = if question_first { 1 } else { 0 };
        let mut answers: Vec<Answer> = Vec::new();
        let mut min_null_score: f32 = 1_000_000.0;
        let rows: Vec<usize> = (0..enc.len()).collect();
        for chunk in rows.chunks(o.batch_size.max(1)) {
            let sub = select_rows(&enc, chunk);
            let pad_id = self.tokenizer.pad_token_id().unwrap_or(0);
            let t = padded_tensors(&sub, pad_id, &self.model.device)?;
            let out = self.model.model.forward(t.inputs())?;
            for (k, &row) in chunk.iter().enumerate() {
                let mask = &enc.attention_mask[row];
                let start_logits = row_vector(&out.start_logits, k, mask)?;
                let end_logits = row_vector(&out.end_logits, k, mask)?;
                // Python's p_mask: only context tokens (and [CLS]) may be in an answer.
                let allowed: Vec<bool> = enc.sequence_ids[row]
                    .iter()
                    .zip(&enc.input_ids[row])
                    .map(|(seq, id)| {
                        let not_context = if question_first {
                            *seq != Some(1)
                        } else {
                            false
                        };
                        !not_context || Some(*id) == cls_id
                    })
                    .collect();
                if start_logits.is_empty() {
                    continue;
                }
                let mut start = masked_probs(&start_logits, &allowed);
                let mut end = masked_probs(&end_logits, &allowed);
                if o.handle_impossible_answer {
                    min_null_score = min_null_score.min(start[0] * end[0]);
                }
                start[0] = 0.0;
                end[0] = 0.0;
                for (s, e, score) in best_spans(&start, &end, &allowed, o.top_k, o.max_answer_len) {
                    let (cs, ce) = char_span(&enc, row, s, e, context_seq, o.align_to_words);
                    answers.push(Answer {
                        score,
                        start: cs,
                        end: ce,
                        answer: slice_chars(context, cs, ce).to_string(),
                    });
                }
            }
        }
        if o.handle_impossible_answer {
            answers.push(Answer {
                score: min_null_score,
                start: 0,
                end: 0,
                answer: String::new(),
            });
        }
        // Stable: equal scores keep their order, as Python's sorted().
        answers.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        answers.truncate(o.top_k);
        Ok(answers)
    }
}

/// Character span of tokens `s..=e` of a row: whole words when `align_to_words`
/// (Python's `token_to_word` + `word_to_chars`), else the token offsets.
fn char_span(
    enc: &BatchEncoding,
    row: usize,
    s: usize,
    e: usize,
    seq: usize,
    align: bool,
) -> (usize, usize) {
    let offsets = &enc.offsets[row];
    let fallback = (offsets[s].0, offsets[e].1);
    if !align {
        return fallback;
    }
    let words = &enc.word_ids[row];
    let seqs = &enc.sequence_ids[row];
    let word_chars = |w: u32| -> Option<(usize, usize)> {
        let idx: Vec<usize> = (0..words.len())
            .filter(|&j| words[j] == Some(w) && seqs[j] == Some(seq))
            .collect();
        Some((offsets[*idx.first()?].0, offsets[*idx.last()?].1))
    };
    match (words[s], words[e]) {
        (Some(ws), Some(we)) => match (word_chars(ws), word_chars(we)) {
            (Some((a, _)), Some((_, b))) => (a, b),
            _ => fallback,
        },
        _ => fallback,
    }
}

fn select_rows(enc: &BatchEncoding, rows: &[usize]) -> BatchEncoding {
    let pick = |v: &Vec<Vec<u32>>| rows.iter().map(|&r| v[r].clone()).collect();
    BatchEncoding {
        input_ids: pick(&enc.input_ids),
        attention_mask: pick(&enc.attention_mask),
        token_type_ids: pick(&enc.token_type_ids),
        ..Default::default()
    }
}

fn parse_input(v: &Value) -> Result<(String, String)> {
    let obj = v.as_object().ok_or_else(|| {
        Error::invalid(format!(
            "question-answering: each input must be a JSON object {{\"question\": .., \"context\": ..}}, got {v}"
        ))
    })?;
    for k in obj.keys() {
        if k != "question" && k != "context" {
            return Err(Error::invalid(format!(
                "question-answering: unknown input field `{k}` (use question, context)"
            )));
        }
    }
    let get = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::invalid(format!("question-answering: input needs a string `{k}`"))
            })
    };
    Ok((get("question")?, get("context")?))
}

impl Pipeline for QuestionAnsweringPipeline {
    fn task(&self) -> &'static str {
        "question-answering"
    }

    fn run(&self, inputs: &[Value], params: &Params) -> Result<Vec<Value>> {
        let r = ParamReader::new("question-answering", params);
        let d = QaOptions::default();
        let o = QaOptions {
            top_k: r.usize("top_k")?.unwrap_or(d.top_k),
            max_answer_len: r.usize("max_answer_len")?.unwrap_or(d.max_answer_len),
            handle_impossible_answer: r.bool("handle_impossible_answer")?.unwrap_or(false),
            align_to_words: r.bool("align_to_words")?.unwrap_or(true),
            max_seq_len: r.usize("max_seq_len")?,
            doc_stride: r.usize("doc_stride")?,
            batch_size: batch_size(r.usize("batch_size")?)?,
        };
        r.finish()?;
        inputs
            .iter()
            .map(|v| {
                let (q, c) = parse_input(v)?;
                let answers: Vec<Value> = self
                    .answer(&q, &c, &o)?
                    .into_iter()
                    .map(|a| json!({"score": num(a.score), "start": a.start, "end": a.end, "answer": a.answer}))
                    .collect();
                // Python returns the answer itself when there is exactly one.
                Ok(if answers.len() == 1 {
                    answers.into_iter().next().unwrap_or(Value::Null)
                } else {
                    Value::Array(answers)
                })
            })
            .collect()
    }
}
