//! feature-extraction pooling options over the token vectors that golden.rs checks
//! against Python: cls is the first token, max the elementwise maximum, mean the
//! average over real tokens (padding excluded), normalize gives unit L2 norm; and the
//! sentence-transformers modules of a checkpoint select pooling and normalisation.

use std::path::PathBuf;

use serde_json::{json, Value};

use rustformers_pipelines::{pipeline, Params};

fn dir(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn params(v: Value) -> Params {
    v.as_object().unwrap().clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{what}: {x} vs {y}");
    }
}

#[test]
fn pooling_modes_follow_their_definitions() {
    let p = pipeline("feature-extraction", dir("tiny-bert-base").as_str()).unwrap();
    let text = json!("John lives in Paris and works for Google.");
    let tokens = p.run_one(text.clone(), &Params::new()).unwrap();
    let rows: Vec<Vec<f64>> = tokens[0].as_array().unwrap().iter().map(floats).collect();
    let n = rows.len() as f64;
    let dim = rows[0].len();
    let cls = rows[0].clone();
    let max: Vec<f64> = (0..dim)
        .map(|j| rows.iter().map(|r| r[j]).fold(f64::MIN, f64::max))
        .collect();
    let mean: Vec<f64> = (0..dim)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let got = |pooling: &str, normalize: bool| {
        floats(
            &p.run_one(
                text.clone(),
                &params(json!({"pooling": pooling, "normalize": normalize})),
            )
            .unwrap(),
        )
    };
    assert_close(&got("cls", false), &cls, "cls");
    assert_close(&got("max", false), &max, "max");
    assert_close(&got("mean", false), &mean, "mean");
    let sqrt: Vec<f64> = mean.iter().map(|m| m * n / n.sqrt()).collect();
    assert_close(&got("mean_sqrt_len_tokens", false), &sqrt, "mean_sqrt_len");
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
    let unit: Vec<f64> = mean.iter().map(|x| x / norm).collect();
    assert_close(&got("mean", true), &unit, "normalized mean");

    // In a padded batch, padding does not enter the mean.
    let short = json!("Hi");
    let batch = p
        .run(
            &[short.clone(), text.clone()],
            &params(json!({"pooling": "mean", "batch_size": 2})),
        )
        .unwrap();
    assert_close(&floats(&batch[1]), &mean, "batched mean");
    let alone = p
        .run_one(short, &params(json!({"pooling": "mean"})))
        .unwrap();
    assert_close(&floats(&batch[0]), &floats(&alone), "batched short");

    // Bad options are errors.
    for bad in [
        json!({"pooling": "median"}),
        json!({"normalize": true}),
        json!({"batch_size": 0}),
    ] {
        assert!(
            p.run_one(text.clone(), &params(bad.clone())).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn sentence_transformers_modules_choose_pooling() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir("tiny-bert-base")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    std::fs::write(
        tmp.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("1_Pooling")).unwrap();
    std::fs::write(
        tmp.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let st = pipeline("feature-extraction", tmp.path().to_str().unwrap()).unwrap();
    let plain = pipeline("feature-extraction", dir("tiny-bert-base").as_str()).unwrap();
    let text = json!("John lives in Paris.");
    let auto = floats(&st.run_one(text.clone(), &Params::new()).unwrap());
    let manual = floats(
        &plain
            .run_one(
                text.clone(),
                &params(json!({"pooling": "cls", "normalize": true})),
            )
            .unwrap(),
    );
    assert_close(&auto, &manual, "modules.json pooling");
    // Token vectors stay available.
    let tokens = st
        .run_one(text, &params(json!({"pooling": "none"})))
        .unwrap();
    assert_eq!(tokens[0][0].as_array().unwrap().len(), 32);

    // An unknown module type is a clear error.
    std::fs::write(
        tmp.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Dense"}]"#,
    )
    .unwrap();
    let err = pipeline("feature-extraction", tmp.path().to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("models.Dense"), "{err}");
}
