//! Shared model checks (DESIGN.md "a shared model-test macro for every family").
//!
//! Every family × head fixture in `tests/fixtures/tiny-<family>-<head>/` (recorded by
//! `tools/golden/make_encoders.py`) gets the same checks through [`model_tests!`]:
//! output shapes and values against Python, padded batch vs. single input, the
//! save_pretrained round trip, and the two load errors (unknown model_type, missing
//! weight). A missing fixture fails the test; nothing is skipped.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use rustformers_core::{Error, Result};
use rustformers_models::{
    EncoderInputs, EncoderModel, MaskedLmModel, PreTrainedModel, QuestionAnsweringModel,
    SequenceClassificationModel, TokenClassificationModel,
};
use serde_json::Value;

/// Absolute tolerance against the Python outputs.
pub const PYTHON_TOL: f32 = 1e-4;
/// Absolute tolerance between a padded batch row and the same input alone.
pub const PADDING_TOL: f32 = 1e-5;

/// `tests/fixtures` at the workspace root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The folder of one fixture; panics (fails the test) when it or a file the checks
/// need is missing.
pub fn fixture(name: &str) -> PathBuf {
    let dir = fixtures_dir().join(name);
    for f in ["config.json", "model.safetensors", "expected.json"] {
        assert!(
            dir.join(f).is_file(),
            "fixture {} lacks {f}; regenerate with tools/golden/make_encoders.py",
            dir.display()
        );
    }
    dir
}

/// One recorded model call: the inputs Python's tokenizer produced and its outputs.
pub struct Case {
    pub name: String,
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Option<Tensor>,
    pub outputs: serde_json::Map<String, Value>,
}

impl Case {
    pub fn inputs(&self) -> EncoderInputs<'_> {
        EncoderInputs {
            input_ids: &self.input_ids,
            attention_mask: Some(&self.attention_mask),
            token_type_ids: self.token_type_ids.as_ref(),
        }
    }
}

/// The `meta` and `model` parts of a fixture's expected.json.
pub struct Expected {
    pub model_class: String,
    /// The Python `transformers` version that recorded the outputs.
    pub transformers: String,
    pub cases: Vec<Case>,
}

/// Flattens a nested JSON array of numbers into values and shape.
pub fn json_array(v: &Value) -> (Vec<f64>, Vec<usize>) {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => {
                if shape.len() <= depth {
                    shape.push(items.len());
                } else {
                    assert_eq!(shape[depth], items.len(), "ragged JSON array");
                }
                for it in items {
                    walk(it, depth + 1, shape, out);
                }
            }
            Value::Number(n) => out.push(n.as_f64().unwrap()),
            other => panic!("expected a number, got {other}"),
        }
    }
    let mut shape = Vec::new();
    let mut out = Vec::new();
    walk(v, 0, &mut shape, &mut out);
    (out, shape)
}

fn ids_tensor(v: &Value) -> Tensor {
    let (vals, shape) = json_array(v);
    let ids: Vec<u32> = vals.iter().map(|x| *x as u32).collect();
    Tensor::from_vec(ids, shape, &Device::Cpu).unwrap()
}

pub fn load_expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let model_class = v["meta"]["model_class"].as_str().unwrap().to_string();
    let transformers = v["meta"]["transformers"].as_str().unwrap_or("").to_string();
    let cases = v["model"]
        .as_array()
        .expect("expected.json has no `model` cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            input_ids: ids_tensor(&c["input_ids"]),
            attention_mask: ids_tensor(&c["attention_mask"]),
            token_type_ids: match &c["token_type_ids"] {
                Value::Null => None,
                t => Some(ids_tensor(t)),
            },
            outputs: c["outputs"].as_object().unwrap().clone(),
        })
        .collect::<Vec<_>>();
    assert!(!cases.is_empty(), "{}: no model cases", dir.display());
    Expected {
        model_class,
        transformers,
        cases,
    }
}

/// One named output of a forward pass. `per_token` outputs are `[batch, seq, ...]`.
pub struct Out {
    pub name: &'static str,
    pub tensor: Tensor,
    pub per_token: bool,
}

/// Runs any head and names its outputs as Python's output classes do.
pub trait RunHead {
    fn run(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Vec<Out>>;
}

impl RunHead for dyn EncoderModel {
    fn run(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Vec<Out>> {
        let o = self.forward(inputs)?;
        let mut v = vec![Out {
            name: "last_hidden_state",
            tensor: o.last_hidden_state,
            per_token: true,
        }];
        if let Some(p) = o.pooler_output {
            v.push(Out {
                name: "pooler_output",
                tensor: p,
                per_token: false,
            });
        }
        Ok(v)
    }
}

impl RunHead for dyn SequenceClassificationModel {
    fn run(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Vec<Out>> {
        Ok(vec![Out {
            name: "logits",
            tensor: self.forward(inputs)?,
            per_token: false,
        }])
    }
}

impl RunHead for dyn TokenClassificationModel {
    fn run(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Vec<Out>> {
        Ok(vec![Out {
            name: "logits",
            tensor: self.forward(inputs)?,
            per_token: true,
        }])
    }
}

impl RunHead for dyn QuestionAnsweringModel {
    fn run(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Vec<Out>> {
        let o = self.forward(inputs)?;
        Ok(vec![
            Out {
                name: "start_logits",
                tensor: o.start_logits,
                per_token: true,
            },
            Out {
                name: "end_logits",
                tensor: o.end_logits,
                per_token: true,
            },
        ])
    }
}

impl RunHead for dyn MaskedLmModel {
    fn run(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Vec<Out>> {
        Ok(vec![Out {
            name: "logits",
            tensor: self.forward(inputs)?,
            per_token: true,
        }])
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    flat(a)
        .iter()
        .zip(flat(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (*g as f64 - *w).abs() as f32;
        assert!(d.is_finite(), "{what}[{i}]: got {g}, want {w}");
        if d > worst.1 {
            worst = (i, d);
        }
    }
    assert!(
        worst.1 <= tol,
        "{what}: max |diff| {} at flat index {} (got {}, want {}) exceeds {tol}",
        worst.1,
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// Compares one output with the Python recording of `case`: shape and values.
/// MLM fixtures store logits as every `logits_stride`-th vocab column plus the
/// per-position logsumexp and argmax over the full vocabulary.
pub fn check_output(fixture: &str, case: &Case, out: &Out) {
    let what = format!("{fixture}/{}/{}", case.name, out.name);
    check_output_values(&what, case, out)
}

fn check_output_values(what: &str, case: &Case, out: &Out) {
    if out.name == "logits" && case.outputs.contains_key("logits_strided") {
        let o = &case.outputs;
        let (shape, _) = json_array(&o["logits_shape"]);
        let shape: Vec<usize> = shape.iter().map(|x| *x as usize).collect();
        assert_eq!(out.tensor.dims(), &shape[..], "{what}: shape");
        let stride = o["logits_stride"].as_u64().unwrap() as usize;
        let vocab = shape[2];
        let cols: Vec<u32> = (0..vocab).step_by(stride).map(|c| c as u32).collect();
        let idx = Tensor::new(cols.as_slice(), &Device::Cpu).unwrap();
        let strided = out.tensor.index_select(&idx, D::Minus1).unwrap();
        let (want, want_shape) = json_array(&o["logits_strided"]);
        assert_eq!(strided.dims(), &want_shape[..], "{what}: strided shape");
        assert_close(
            &format!("{what}[..., ::{stride}]"),
            &flat(&strided),
            &want,
            PYTHON_TOL,
        );

        let logits = out.tensor.to_dtype(DType::F32).unwrap();
        let max = logits.max_keepdim(D::Minus1).unwrap();
        let lse = (logits
            .broadcast_sub(&max)
            .unwrap()
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap()
            + &max)
            .unwrap();
        let (want, _) = json_array(&o["logits_logsumexp"]);
        assert_close(&format!("{what} logsumexp"), &flat(&lse), &want, PYTHON_TOL);

        // Argmax: the logit at Python's argmax must be the maximum (up to the
        // tolerance, so that near-ties cannot flip the check).
        let (want_idx, _) = json_array(&o["logits_argmax"]);
        let rows = flat(&logits);
        let maxes = flat(&max);
        for (pos, (i, m)) in want_idx.iter().zip(maxes).enumerate() {
            let v = rows[pos * vocab + *i as usize];
            assert!(
                m - v <= PYTHON_TOL,
                "{what}: argmax at position {pos}: Python's {i} is {v}, max is {m}"
            );
        }
        return;
    }
    let want = case
        .outputs
        .get(out.name)
        .unwrap_or_else(|| panic!("{what}: the model returns it but Python did not record it"));
    let (want, want_shape) = json_array(want);
    assert_eq!(out.tensor.dims(), &want_shape[..], "{what}: shape");
    assert_close(what, &flat(&out.tensor), &want, PYTHON_TOL);
}

/// Names of the outputs Python recorded for a case (MLM's summary keys count as `logits`).
fn recorded_names(case: &Case) -> Vec<String> {
    let mut names: Vec<String> = case
        .outputs
        .keys()
        .filter(|k| !k.starts_with("logits_"))
        .cloned()
        .collect();
    if case.outputs.contains_key("logits_strided") {
        names.push("logits".into());
    }
    names.sort();
    names
}

pub fn check_matches_python<M: ?Sized + RunHead>(
    name: &str,
    load: impl Fn(&str) -> Result<PreTrainedModel<M>>,
) {
    let dir = fixture(name);
    let expected = load_expected(&dir);
    let model = load(dir.to_str().unwrap()).unwrap();
    assert_eq!(
        model.architecture(),
        expected.model_class,
        "{name}: architecture"
    );
    for case in &expected.cases {
        let outs = model.model.run(case.inputs()).unwrap();
        let mut got: Vec<String> = outs.iter().map(|o| o.name.to_string()).collect();
        got.sort();
        assert_eq!(
            got,
            recorded_names(case),
            "{name}/{}: output names",
            case.name
        );
        for out in &outs {
            check_output(name, case, out);
        }
    }
}

/// Every padded row of every case equals the same input run alone without padding,
/// on its real tokens.
pub fn check_padding_invariance<M: ?Sized + RunHead>(
    name: &str,
    load: impl Fn(&str) -> Result<PreTrainedModel<M>>,
) {
    let dir = fixture(name);
    let expected = load_expected(&dir);
    let model = load(dir.to_str().unwrap()).unwrap();
    let mut padded_rows = 0;
    for case in &expected.cases {
        let batch = model.model.run(case.inputs()).unwrap();
        let mask = case.attention_mask.to_vec2::<u32>().unwrap();
        for (row, m) in mask.iter().enumerate() {
            let n = m.iter().filter(|x| **x == 1).count();
            assert!(
                m[..n].iter().all(|x| *x == 1),
                "{name}: expected right padding"
            );
            if n < m.len() {
                padded_rows += 1;
            }
            let ids = case
                .input_ids
                .narrow(0, row, 1)
                .unwrap()
                .narrow(1, 0, n)
                .unwrap();
            let ones = ids.ones_like().unwrap();
            let types = case
                .token_type_ids
                .as_ref()
                .map(|t| t.narrow(0, row, 1).unwrap().narrow(1, 0, n).unwrap());
            for mask_arg in [Some(&ones), None] {
                let single = model
                    .model
                    .run(EncoderInputs {
                        input_ids: &ids,
                        attention_mask: mask_arg,
                        token_type_ids: types.as_ref(),
                    })
                    .unwrap();
                for (b, s) in batch.iter().zip(&single) {
                    let mut bt = b.tensor.narrow(0, row, 1).unwrap();
                    if b.per_token {
                        bt = bt.narrow(1, 0, n).unwrap();
                    }
                    let d = max_abs_diff(&bt, &s.tensor);
                    assert!(
                        d <= PADDING_TOL,
                        "{name}/{}: row {row} {} differs from the unpadded run by {d} (mask given: {})",
                        case.name,
                        b.name,
                        mask_arg.is_some()
                    );
                }
            }
        }
    }
    assert!(
        padded_rows > 0,
        "{name}: the fixture has no padded row to check"
    );
}

/// save_pretrained then from_pretrained gives identical outputs, the same class, and
/// config.json keeps the keys no typed field claims.
pub fn check_save_reload<M: ?Sized + RunHead>(
    name: &str,
    load: impl Fn(&str) -> Result<PreTrainedModel<M>>,
) {
    let dir = fixture(name);
    let expected = load_expected(&dir);
    let model = load(dir.to_str().unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path()).unwrap();
    let reloaded = load(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(reloaded.architecture(), model.architecture());
    assert_eq!(reloaded.num_parameters(), model.num_parameters());
    assert_eq!(reloaded.config.model_type(), model.config.model_type());
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["architectures"][0], expected.model_class.as_str());
    for (k, v) in original.as_object().unwrap() {
        assert_eq!(
            saved.get(k),
            Some(v),
            "{name}: config.json key `{k}` not written back"
        );
    }
    for case in &expected.cases {
        let a = model.model.run(case.inputs()).unwrap();
        let b = reloaded.model.run(case.inputs()).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                max_abs_diff(&x.tensor, &y.tensor),
                0.0,
                "{name}/{}: {}",
                case.name,
                x.name
            );
        }
    }
}

/// Copies `config.json` of a fixture into a new temp dir, edited by `edit`.
pub fn copy_fixture_with(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> tempfile::TempDir {
    let dir = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        dir.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    tmp
}

/// A config whose model_type nobody implements is an error naming it and listing
/// the known types.
pub fn check_unknown_model_type<M: ?Sized + RunHead>(
    name: &str,
    load: impl Fn(&str) -> Result<PreTrainedModel<M>>,
) {
    let tmp = copy_fixture_with(name, |c| {
        c.insert("model_type".into(), "no-such-model".into());
    });
    let err = load(tmp.path().to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-model") && msg.contains("known model types"),
        "{msg}"
    );
    for known in ["bert", "roberta", "xlm-roberta", "distilbert"] {
        assert!(msg.contains(known), "`{known}` missing from: {msg}");
    }
}

/// A checkpoint without one weight the model needs fails with the missing-weights
/// error naming that weight.
pub fn check_missing_weight<M: ?Sized + RunHead>(
    name: &str,
    load: impl Fn(&str) -> Result<PreTrainedModel<M>>,
) {
    let tmp = copy_fixture_with(name, |_| {});
    let path = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let victim = tensors
        .keys()
        .filter(|k| k.contains(".layer."))
        .max()
        .cloned()
        .expect("no layer weight in the fixture");
    tensors.remove(&victim);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load(tmp.path().to_str().unwrap()).unwrap_err();
    match &err {
        Error::MissingWeights { count, keys, .. } => {
            assert_eq!(*count, 1, "{err}");
            assert!(keys.contains(&victim), "`{victim}` not named in: {err}");
        }
        other => panic!("{name}: expected the missing-weights error, got {other}"),
    }
}

/// One test module per fixture with every shared check. Each line:
/// `module_name: "fixture-folder", AutoClass;`
#[macro_export]
macro_rules! model_tests {
    ($($module:ident: $fixture:literal, $auto:ident;)*) => {$(
        mod $module {
            use super::*;

            fn load(reference: &str) -> rustformers_core::Result<
                rustformers_models::PreTrainedModel<<$auto as common::AutoKind>::Model>,
            > {
                $auto::from_pretrained(reference)
            }

            #[test]
            fn matches_python() {
                common::check_matches_python($fixture, load);
            }

            #[test]
            fn padded_batch_equals_single() {
                common::check_padding_invariance($fixture, load);
            }

            #[test]
            fn save_pretrained_round_trip() {
                common::check_save_reload($fixture, load);
            }

            #[test]
            fn unknown_model_type_is_an_error() {
                common::check_unknown_model_type($fixture, load);
            }

            #[test]
            fn missing_weight_is_an_error() {
                common::check_missing_weight($fixture, load);
            }
        }
    )*};
}

/// Maps an Auto class to the model trait object it loads.
pub trait AutoKind {
    type Model: ?Sized + RunHead;
}

impl AutoKind for rustformers_models::AutoModel {
    type Model = dyn EncoderModel;
}
impl AutoKind for rustformers_models::AutoModelForSequenceClassification {
    type Model = dyn SequenceClassificationModel;
}
impl AutoKind for rustformers_models::AutoModelForTokenClassification {
    type Model = dyn TokenClassificationModel;
}
impl AutoKind for rustformers_models::AutoModelForQuestionAnswering {
    type Model = dyn QuestionAnsweringModel;
}
impl AutoKind for rustformers_models::AutoModelForMaskedLM {
    type Model = dyn MaskedLmModel;
}
