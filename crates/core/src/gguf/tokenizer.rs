//! The tokenizer of a GGUF file (tokenizer.json and tokenizer_config.json values), as
//! transformers 5.25 builds it (integrations/gguf/gguf_tokenizer_mapping.py).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use super::{bad, GgufFile};
use crate::error::{Error, Result};

/// tokenizer.json text for the GGUF's tokenizer, as transformers' GGUF converter builds it.
///
/// - `tokenizer.ggml.model` gpt2: byte-level BPE with the tokens and merges of the file;
///   control and user-defined tokens become special added tokens.
/// - `llama` (sentencepiece-style): BPE with byte fallback over the tokens, merges derived
///   from the scores (llama.cpp stores none), and BOS added when
///   `tokenizer.ggml.add_bos_token` says so (default true), as transformers 5.25's
///   `sentencepiece_tokenizer` (integrations/gguf/gguf_tokenizer_mapping.py) builds it:
///   `LlamaTokenizer`'s `Metaspace` pre-tokenizer (`▁` for spaces, prepended to the first
///   piece unless it starts with one), except for `phi3` files, whose `▁` comes from a
///   normalizer (prepend, replace spaces) as Phi-3's own tokenizer.json has it; the
///   decoder undoes either.
pub fn tokenizer_json(g: &GgufFile) -> Result<String> {
    let model = g.meta_str("tokenizer.ggml.model").unwrap_or("");
    let tok = match model {
        "gpt2" => gpt2_tokenizer(g)?,
        "llama" => spm_tokenizer(g)?,
        _ => {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer model `{model}` is not supported yet (gpt2 and llama are)"
            )))
        }
    };
    serde_json::to_string(&tok).map_err(|e| Error::Json {
        context: "building tokenizer.json from GGUF".into(),
        source: e,
    })
}

fn gpt2_tokenizer(g: &GgufFile) -> Result<serde_json::Value> {
    let tokens = g
        .meta_strings("tokenizer.ggml.tokens")
        .ok_or_else(|| bad(g.path(), "no tokenizer.ggml.tokens"))?;
    let merges = g.meta_strings("tokenizer.ggml.merges").unwrap_or_default();
    let types = g.meta_ints("tokenizer.ggml.token_type").unwrap_or_default();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": types.get(i) == Some(&4), "special": types.get(i) == Some(&3)})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// BPE merges of a sentencepiece vocabulary from its scores, as transformers'
/// `GGUFTokenizerSkeleton`: every split of every piece into two pieces, ordered by the
/// parts' scores within a piece, then (stably) by the piece's score, highest first.
fn merges_from_scores<'a>(tokens: &[&'a str], scores: &[f32]) -> Vec<(&'a str, &'a str)> {
    // Python's `{t: scores[i]}`: first position, last score.
    let mut score: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if score
            .insert(t, scores.get(i).copied().unwrap_or(0.0))
            .is_none()
        {
            order.push(t);
        }
    }
    let desc = |a: f32, b: f32| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for piece in order {
        let piece_score = score.get(piece).copied().unwrap_or(0.0);
        let mut local: Vec<(&str, &str)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| score.contains_key(l) && score.contains_key(r))
            .collect();
        local.sort_by(|a, b| {
            let (la, ra) = (score[a.0], score[a.1]);
            let (lb, rb) = (score[b.0], score[b.1]);
            desc(la, lb).then(desc(ra, rb))
        });
        merges.extend(local.into_iter().map(|(l, r)| (l, r, piece_score)));
    }
    merges.sort_by(|a, b| desc(a.2, b.2));
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn spm_tokenizer(g: &GgufFile) -> Result<serde_json::Value> {
    // transformers 5.25 builds Gemma's differently (GemmaTokenizer, whitespace tokens
    // respelled, merges in file order): refused rather than tokenized the llama way.
    let arch = g.meta_str("general.architecture").unwrap_or("");
    if arch.starts_with("gemma") {
        return Err(Error::Unsupported(format!(
            "{}: the sentencepiece tokenizer of a `{arch}` GGUF file is not implemented yet \
             (Gemma's differs from llama's); use the model's tokenizer.json",
            g.path().display()
        )));
    }
    let tokens = g
        .meta_strings("tokenizer.ggml.tokens")
        .ok_or_else(|| bad(g.path(), "no tokenizer.ggml.tokens"))?;
    let scores: Vec<f32> = match g.meta("tokenizer.ggml.scores") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::F32(x) => Some(*x),
                Value::F64(x) => Some(*x as f32),
                _ => None,
            })
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| bad(g.path(), "tokenizer.ggml.scores is not a float array"))?,
        _ => {
            return Err(bad(
                g.path(),
                "no tokenizer.ggml.scores (needed for a llama tokenizer)",
            ))
        }
    };
    let types = g.meta_ints("tokenizer.ggml.token_type");
    let merges: Vec<(String, String)> = match g.meta_strings("tokenizer.ggml.merges") {
        Some(m) => m
            .iter()
            .filter_map(|m| m.split_once(' '))
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect(),
        None => merges_from_scores(&tokens, &scores)
            .into_iter()
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect(),
    };
    let token_at = |key: &str| g.meta_usize(key).and_then(|i| tokens.get(i).copied());
    let unk = token_at("tokenizer.ggml.unknown_token_id");
    let bos = g
        .meta_usize("tokenizer.ggml.bos_token_id")
        .and_then(|i| tokens.get(i).map(|t| (i, *t)));
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.to_string()).or_insert(json!(i));
    }
    let special = |t: &str, i: usize| {
        json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    // Control tokens (type 3), then unk / bos / eos: LlamaTokenizerFast registers its
    // special tokens as added tokens too.
    let mut special_ids: Vec<usize> = match &types {
        Some(types) => (0..tokens.len())
            .filter(|i| types.get(*i) == Some(&3))
            .collect(),
        None => Vec::new(),
    };
    for key in [
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ] {
        if let Some(i) = g.meta_usize(key).filter(|i| *i < tokens.len()) {
            if !special_ids.contains(&i) {
                special_ids.push(i);
            }
        }
    }
    let added: Vec<serde_json::Value> = special_ids
        .into_iter()
        .filter_map(|i| tokens.get(i).map(|t| special(t, i)))
        .collect();
    let add_bos = g.meta_bool("tokenizer.ggml.add_bos_token").unwrap_or(true);
    let post_processor = match bos {
        Some((id, t)) if add_bos => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [id], "tokens": [t]}},
        }),
        _ => serde_json::Value::Null,
    };
    let (normalizer, pre_tokenizer) = if g.meta_str("general.architecture") == Some("phi3") {
        (
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            ]}),
            serde_json::Value::Null,
        )
    } else {
        (
            serde_json::Value::Null,
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first",
                   "split": false}),
        )
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// tokenizer_config.json values for the GGUF's tokenizer: special tokens and the chat template.
pub fn tokenizer_config_json(g: &GgufFile) -> serde_json::Value {
    let tokens = g.meta_strings("tokenizer.ggml.tokens").unwrap_or_default();
    let name = |key: &str| {
        g.meta_usize(key)
            .and_then(|i| tokens.get(i).map(|t| t.to_string()))
    };
    let mut c = serde_json::Map::new();
    for (k, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(t) = name(key) {
            c.insert(k.into(), json!(t));
        }
    }
    if let Some(t) = g.chat_template() {
        c.insert("chat_template".into(), json!(t));
    }
    if let Some(b) = g.meta_bool("tokenizer.ggml.add_bos_token") {
        c.insert("add_bos_token".into(), json!(b));
    }
    // transformers 5.25's GGUF tokenizers decode without the clean-up of spaces before
    // punctuation (4.46's byte-level ones had it).
    c.insert("clean_up_tokenization_spaces".into(), json!(false));
    c.insert(
        "model_max_length".into(),
        json!(g
            .meta_usize(&format!(
                "{}.context_length",
                g.meta_str("general.architecture").unwrap_or("llama")
            ))
            .unwrap_or(2048)),
    );
    serde_json::Value::Object(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_merges_follow_the_scores() {
        // As transformers' GGUFTokenizerSkeleton: splits of each piece whose parts are
        // pieces, by the parts' scores within a piece, then by the piece's score (stable),
        // highest first (checked against transformers 4.46.3).
        let tokens = ["a", "b", "c", "ab", "abc", "bc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        assert_eq!(
            merges_from_scores(&tokens, &scores),
            vec![("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]
        );
    }
}
