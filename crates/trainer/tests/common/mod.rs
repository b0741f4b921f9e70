//! Helpers the trainer's parity tests share.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_trainer::trainer::IGNORE;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A JSON matrix of ids as a `[rows, cols]` u32 tensor, Python's -100 as [`IGNORE`].
pub fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).unwrap();
    let (r, c) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows
        .concat()
        .into_iter()
        .map(|x| if x < 0 { IGNORE } else { x as u32 })
        .collect();
    Tensor::from_vec(flat, (r, c), &Device::Cpu).unwrap()
}

/// `(max |a - b|, max |b|)`.
pub fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (diff, scale)
}
