//! Decoder parity with Python transformers (tools/golden/make_decoders.py): logits of a
//! left-padded batch ≤1e-4, cached step-by-step decoding equal to the full forward,
//! greedy token ids equal to Python's, one prompt at a time and as a padded batch, and a
//! save_pretrained / from_pretrained round trip.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_generation::{generate, GenerationConfig};
use rustformers_models::{AutoModelForCausalLM, CausalLmInputs, LogitsMode};

fn fixture(name: &str) -> (PathBuf, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(dir.join("expected.json"))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    (dir, serde_json::from_str(&text).unwrap())
}

fn u32s(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn matrix(rows: &[Vec<u32>]) -> Tensor {
    let (b, s) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, s), &Device::Cpu).unwrap()
}

fn check_logits(name: &str, cache_equals_full: bool) {
    let (dir, _) = fixture(name);
    check_logits_of(dir.to_str().unwrap(), name, cache_equals_full);
}

/// The fixture's recorded logits from the model at `reference` (the fixture's own
/// folder, or another file holding the same weights).
fn check_logits_of(reference: &str, name: &str, cache_equals_full: bool) {
    let (_, exp) = fixture(name);
    let model = AutoModelForCausalLM::from_pretrained(reference).unwrap();
    let l = &exp["logits"];
    let ids = u32s(&l["input_ids"]);
    let mask = u32s(&l["attention_mask"]);
    let pos = u32s(&l["position_ids"]);
    let (ids_t, mask_t, pos_t) = (matrix(&ids), matrix(&mask), matrix(&pos));
    let logits = model
        .model
        .forward(
            CausalLmInputs {
                input_ids: &ids_t,
                attention_mask: Some(&mask_t),
                position_ids: Some(&pos_t),
            },
            None,
            LogitsMode::All,
        )
        .unwrap();
    let shape: Vec<usize> = serde_json::from_value(l["logits_shape"].clone()).unwrap();
    assert_eq!(logits.dims(), &shape[..], "{name}");
    let got = logits.to_vec3::<f32>().unwrap();
    let stride = l["logits_stride"].as_u64().unwrap() as usize;
    // Padded positions are recorded as null.
    let strided: Vec<Vec<Option<Vec<f32>>>> =
        serde_json::from_value(l["logits_strided"].clone()).unwrap();
    let lse: Vec<Vec<Option<f32>>> = serde_json::from_value(l["logits_logsumexp"].clone()).unwrap();
    let mut worst = 0f32;
    for b in 0..shape[0] {
        for t in 0..shape[1] {
            if mask[b][t] == 0 {
                continue; // padded positions carry no meaning
            }
            let row = &got[b][t];
            let want = strided[b][t].as_ref().expect("real position recorded");
            for (j, w) in want.iter().enumerate() {
                worst = worst.max((row[j * stride] - w).abs());
            }
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            let l: f32 = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            worst = worst.max((l - lse[b][t].expect("real position recorded")).abs());
        }
    }
    assert!(worst <= 1e-4, "{name}: logits differ by {worst}");

    if !cache_equals_full {
        return;
    }
    // Cached decoding: prompt minus its last token, then one token at a time, equals the
    // full forward at every position.
    let row = &ids[0];
    let full = &got[0];
    let mut cache = model.model.new_cache(None);
    let n = row.len();
    let prefix = Tensor::from_vec(row[..n - 3].to_vec(), (1, n - 3), &Device::Cpu).unwrap();
    let mut outs = vec![model
        .model
        .forward(
            CausalLmInputs::ids(&prefix),
            Some(&mut cache),
            LogitsMode::Last,
        )
        .unwrap()];
    for &token in &row[n - 3..] {
        let one = Tensor::from_vec(vec![token], (1, 1), &Device::Cpu).unwrap();
        outs.push(
            model
                .model
                .forward(
                    CausalLmInputs::ids(&one),
                    Some(&mut cache),
                    LogitsMode::Last,
                )
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), n);
    for (k, o) in outs.iter().enumerate() {
        let pos = n - 4 + k;
        let v = o.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = v
            .iter()
            .zip(&full[pos])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-4, "{name}: cached position {pos} differs by {d}");
    }
}

/// save_pretrained then from_pretrained gives the same model: identical logits, the same
/// config, and the Python class name in `architectures`.
fn check_save_round_trip(name: &str) {
    let (dir, exp) = fixture(name);
    let model = AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let ids = matrix(&u32s(&exp["logits"]["input_ids"])[..1]);
    let before = model
        .model
        .forward(CausalLmInputs::ids(&ids), None, LogitsMode::All)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(out.path()).unwrap();
    let again = AutoModelForCausalLM::from_pretrained(out.path().to_str().unwrap()).unwrap();
    assert_eq!(again.architecture(), model.architecture(), "{name}");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["architectures"][0], model.architecture(), "{name}");
    assert_eq!(again.config, model.config, "{name}");
    let after = again
        .model
        .forward(CausalLmInputs::ids(&ids), None, LogitsMode::All)
        .unwrap();
    let d = (before - after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(
        d, 0.0,
        "{name}: logits after a save round trip differ by {d}"
    );
}

fn check_greedy(name: &str) {
    let (dir, exp) = fixture(name);
    let model = AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let g = &exp["greedy"];
    let files = rustformers_core::ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let base = GenerationConfig::from_files(&files, model.config.base()).unwrap();
    let config = base
        .with_overrides(g["kwargs"].as_object().unwrap())
        .unwrap();
    let tokenizer = rustformers_core::AutoTokenizer::from_files(&files).unwrap();
    for case in g["cases"].as_array().unwrap() {
        let ids = u32s(&case["input_ids"]);
        let mask = u32s(&case["attention_mask"]);
        if case.get("messages").is_some() {
            // The chat prompt: the template renders and tokenizes as in Python.
            let opts = rustformers_core::chat_template::ChatOptions {
                add_generation_prompt: true,
                ..Default::default()
            };
            let text = tokenizer
                .apply_chat_template(&case["messages"], &opts)
                .unwrap();
            assert_eq!(text, case["rendered"].as_str().unwrap(), "{name}");
            let enc = tokenizer
                .encode(
                    rustformers_core::TextInput::Single(&text),
                    &rustformers_core::EncodeOptions {
                        add_special_tokens: case["add_special_tokens"].as_bool().unwrap(),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(enc.input_ids, ids, "{name}: chat prompt ids");
        }
        // The prompts without their left padding.
        let prompts: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .filter(|(_, m)| **m == 1)
                    .map(|(t, _)| *t)
                    .collect()
            })
            .collect();
        // Python's cached generate (where its uncached run differs, as with dynamic
        // RoPE, the fixture also has `sequences_uncached`; the cached run is the one users
        // get).
        let want = u32s(&case["sequences"]);
        let out = generate(model.model.as_ref(), &prompts, &config, &Device::Cpu, None).unwrap();
        let pad = config.pad_id().unwrap_or(0);
        for (i, w) in want.iter().enumerate() {
            // Python's rows: left padding + prompt + generated + trailing padding after eos.
            let start = mask[i].iter().position(|m| *m == 1).unwrap();
            let mut w = w[start..].to_vec();
            let prompt_len = prompts[i].len();
            while w.len() > prompt_len && w.last() == Some(&pad) && !config.eos_ids().contains(&pad)
            {
                w.pop();
            }
            assert_eq!(out.sequences[i], w, "{name} {}: row {i}", case["name"]);
        }
    }
}

/// Beam search equals Python's: for the `beam` and `beam_eos` records (3 beams, 2
/// returned sequences per prompt, early_stopping true, 8 new tokens; `beam_eos` sets an
/// eos the model really produces, so hypotheses finish early and rows are padded), the
/// same sequences and `sequences_scores` within 1e-4.
fn check_beam(name: &str) {
    let (dir, exp) = fixture(name);
    let model = AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let files = rustformers_core::ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let base = GenerationConfig::from_files(&files, model.config.base()).unwrap();
    let mut checked = 0;
    for record in ["beam", "beam_eos"] {
        let b = &exp[record];
        let config = base
            .with_overrides(b["kwargs"].as_object().unwrap())
            .unwrap();
        let eos = config.eos_ids();
        let per_prompt = config.num_return_sequences;
        for case in b["cases"].as_array().unwrap() {
            let ids = u32s(&case["input_ids"]);
            let mask = u32s(&case["attention_mask"]);
            let prompts: Vec<Vec<u32>> = ids
                .iter()
                .zip(&mask)
                .map(|(r, m)| {
                    r.iter()
                        .zip(m)
                        .filter(|(_, m)| **m == 1)
                        .map(|(t, _)| *t)
                        .collect()
                })
                .collect();
            let want = u32s(&case["sequences"]);
            let want_scores: Vec<f32> =
                serde_json::from_value(case["sequences_scores"].clone()).unwrap();
            let out =
                generate(model.model.as_ref(), &prompts, &config, &Device::Cpu, None).unwrap();
            let what = format!("{name} {record} {}", case["name"]);
            assert_eq!(out.sequences.len(), want.len(), "{what}");
            let scores = out.sequences_scores.as_ref().expect("beam scores");
            for (i, w) in want.iter().enumerate() {
                // Python's rows: left padding + prompt + new tokens; a hypothesis that
                // ended on eos is followed by filling (5.25: `pad_token_id or eos`, so eos
                // where pad is 0), which rustformers does not return.
                let p = i / per_prompt;
                let start = mask[p].iter().position(|m| *m == 1).unwrap();
                let prompt_len = prompts[p].len();
                let new = &w[start + prompt_len..];
                let end = new
                    .iter()
                    .position(|t| eos.contains(t))
                    .map_or(new.len(), |e| e + 1);
                let mut w = w[start..start + prompt_len].to_vec();
                w.extend_from_slice(&new[..end]);
                assert_eq!(out.sequences[i], w, "{what}: row {i}");
                assert_eq!(out.new_tokens[i], new[..end], "{what}: row {i}");
                let d = (scores[i] - want_scores[i]).abs();
                assert!(
                    d <= 1e-4,
                    "{what}: row {i} score {} vs Python {}",
                    scores[i],
                    want_scores[i]
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "{name}: beam cases");
}

macro_rules! decoder_tests {
    ($($test:ident => $fixture:literal, cache_equals_full: $cef:literal
),* $(,)?) => {$(
        mod $test {
            #[test]
            fn logits_and_cache() {
                super::check_logits($fixture, $cef);
            }
            #[test]
            fn greedy() {
                super::check_greedy($fixture);
            }
            #[test]
            fn beam() {
                super::check_beam($fixture);
            }
            #[test]
            fn save_round_trip() {
                super::check_save_round_trip($fixture);
            }
        }
    )*};
}

// Dynamic NTK scaling changes the rotary base as the sequence grows, so keys cached at
// an earlier length differ from a full recompute — in Python too; its greedy parity
// (which decodes with the cache, as Python's generate does) is the check that applies.
decoder_tests! {
    llama => "tiny-llama", cache_equals_full: true,
    llama_rope_linear => "tiny-llama-rope-linear", cache_equals_full: true,
    llama_rope_dynamic => "tiny-llama-rope-dynamic", cache_equals_full: false,
    llama_rope_llama3 => "tiny-llama-rope-llama3", cache_equals_full: true,
    llama_rope_yarn => "tiny-llama-rope-yarn", cache_equals_full: true,
    mistral => "tiny-mistral", cache_equals_full: true,
    qwen2 => "tiny-qwen2", cache_equals_full: true,
    qwen3 => "tiny-qwen3", cache_equals_full: true,
    gemma2 => "tiny-gemma2", cache_equals_full: true,
    phi3 => "tiny-phi3", cache_equals_full: true,
    // Longrope: short factors up to 16 positions, long past them; generate recomputes
    // the whole sequence with a fresh cache at the switch, as Python's does.
    phi3_longrope => "tiny-phi3-longrope", cache_equals_full: true,
    gpt2 => "tiny-gpt2", cache_equals_full: true,
}

/// `dtype = bf16` on CPU: linear weights in bf16 through the bf16 kernel, activations in
/// f32. Logits stay within bf16 rounding of the f32 model's (Python's bf16 CPU path
/// differs from f32 by the same order), and a save writes a bf16 checkpoint.
#[test]
fn bf16_on_cpu_runs_close_to_f32() {
    use rustformers_models::auto::LoadOptions;
    for name in [
        "tiny-llama",
        "tiny-qwen2",
        "tiny-gemma2",
        "tiny-phi3",
        "tiny-mistral",
    ] {
        let (dir, exp) = fixture(name);
        let reference = dir.to_str().unwrap();
        let f32_model = AutoModelForCausalLM::from_pretrained(reference).unwrap();
        let opts = LoadOptions {
            dtype: Some(candle_core::DType::BF16),
            ..Default::default()
        };
        let bf16_model = AutoModelForCausalLM::from_pretrained_with(reference, &opts).unwrap();
        let l = &exp["logits"];
        let ids = matrix(&u32s(&l["input_ids"]));
        let mask = matrix(&u32s(&l["attention_mask"]));
        let run = |m: &dyn rustformers_models::traits::CausalLanguageModel| {
            m.forward(
                CausalLmInputs {
                    input_ids: &ids,
                    attention_mask: Some(&mask),
                    position_ids: None,
                },
                None,
                LogitsMode::Last,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        let (a, b) = (
            run(f32_model.model.as_ref()),
            run(bf16_model.model.as_ref()),
        );
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff > 0.0, "{name}: bf16 gave exactly the f32 logits");
        assert!(
            diff <= 0.03 * (1.0 + scale),
            "{name}: {diff} (logits up to {scale})"
        );
        let out = tempfile::tempdir().unwrap();
        bf16_model.save_pretrained(out.path()).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        // 5.x writes `dtype` (4.x's `torch_dtype` is read, not written).
        assert_eq!(cfg["dtype"], "bfloat16", "{name}");
        assert!(cfg.get("torch_dtype").is_none(), "{name}");
    }
}

/// A Qwen3 GGUF file (tools/golden/make_gguf.py: the tiny-qwen3 weights written
/// losslessly in f32, with q/k norms as attn_q_norm / attn_k_norm and the head size as
/// attention.key_length) gives the logits Python recorded for the HF checkpoint, and
/// cached decoding equals the full forward.
#[test]
fn qwen3_gguf_matches_python() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/tiny-qwen3.gguf");
    check_logits_of(path.to_str().unwrap(), "tiny-qwen3", true);
}

/// RoPE scaling as llama.cpp's converter writes it (make_gguf.py --rope): llama3 scaling
/// baked into `rope_freqs.weight`, and yarn as `rope.scaling.*` metadata. Each file gives
/// the logits Python recorded for its HF checkpoint (tiny-llama-rope-llama3 / -yarn).
#[test]
fn gguf_rope_scaling_matches_python() {
    for (file, hf) in [
        ("tiny-llama-rope-llama3.gguf", "tiny-llama-rope-llama3"),
        ("tiny-llama-rope-yarn.gguf", "tiny-llama-rope-yarn"),
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/gguf")
            .join(file);
        check_logits_of(path.to_str().unwrap(), hf, true);
    }
}

/// Every 5.x fixture written in the 4.x form (`rope_theta`, `rope_scaling` with the
/// legacy `type` key, top-level `partial_rotary_factor`, `torch_dtype`; no
/// `rope_parameters`) gives the same logits, bit for bit, and saves back to the 5.x
/// `rope_parameters` Python wrote.
#[test]
fn legacy_4x_configs_give_the_same_logits_and_save_as_5x() {
    let mut checked = 0;
    for name in [
        "tiny-llama",
        "tiny-llama-rope-linear",
        "tiny-llama-rope-dynamic",
        "tiny-llama-rope-llama3",
        "tiny-llama-rope-yarn",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-gemma2",
        "tiny-phi3",
        "tiny-phi3-longrope",
    ] {
        let (dir, exp) = fixture(name);
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let mut config: Value = serde_json::from_str(&text).unwrap();
        let obj = config.as_object_mut().unwrap();
        let mut rope = obj
            .remove("rope_parameters")
            .unwrap_or_else(|| panic!("{name}: no rope_parameters"));
        let rope = rope.as_object_mut().unwrap();
        obj.insert("rope_theta".into(), rope.remove("rope_theta").unwrap());
        if let Some(f) = rope.remove("partial_rotary_factor") {
            obj.insert("partial_rotary_factor".into(), f);
        }
        let kind = rope.remove("rope_type").unwrap();
        if kind != "default" {
            rope.insert("type".into(), kind);
            obj.insert("rope_scaling".into(), Value::Object(rope.clone()));
        }
        if let Some(d) = obj.remove("dtype") {
            obj.insert("torch_dtype".into(), d);
        }
        let legacy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), legacy.path().join(entry.file_name())).unwrap();
            }
        }
        std::fs::write(legacy.path().join("config.json"), config.to_string()).unwrap();
        let ids = matrix(&u32s(&exp["logits"]["input_ids"])[..1]);
        let logits = |reference: &std::path::Path| {
            AutoModelForCausalLM::from_pretrained(reference.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .model
                .forward(CausalLmInputs::ids(&ids), None, LogitsMode::All)
                .unwrap()
        };
        let d = (logits(&dir) - logits(legacy.path()))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name}: the 4.x form gives other logits ({d})");
        let model = AutoModelForCausalLM::from_pretrained(legacy.path().to_str().unwrap()).unwrap();
        let out = tempfile::tempdir().unwrap();
        model.save_pretrained(out.path()).unwrap();
        let saved: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            saved["rope_parameters"], original["rope_parameters"],
            "{name}: saved rope_parameters"
        );
        for key in [
            "rope_theta",
            "rope_scaling",
            "partial_rotary_factor",
            "torch_dtype",
        ] {
            assert!(saved.get(key).is_none(), "{name}: saved `{key}`");
        }
        checked += 1;
    }
    assert_eq!(checked, 11);
}
