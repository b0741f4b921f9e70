//! Untrusted files never panic: random bytes and mutations of valid safetensors,
//! config.json and tokenizer.json files give errors (or load), never a panic.
//! A small deterministic fuzz loop (std only), so it runs in every `cargo test`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use rustformers_core::config::{parse_config, PretrainedConfig};
use rustformers_core::{AutoTokenizer, Checkpoint, EncodeOptions, TextInput};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Mutates bytes: flips, overwrites with interesting values, truncates, duplicates.
fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let i = rng.below(b.len());
        match rng.below(6) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = [0u8, 0xff, b'"', b'{', b'}', b'[', b'9', b'-'][rng.below(8)],
            2 => b.truncate(i),
            3 => {
                let j = (i + rng.below(64)).min(b.len());
                let chunk = b[i..j].to_vec();
                b.splice(i..i, chunk);
            }
            4 => {
                // Header length field of safetensors: make it big or small.
                if b.len() >= 8 {
                    let v = [0u64, 1, 7, u32::MAX as u64, u64::MAX, b.len() as u64][rng.below(6)];
                    b[..8].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                let j = (i + rng.below(16)).min(b.len());
                b.drain(i..j);
            }
        }
    }
    b
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn mutated_safetensors_never_panic() {
    let src = std::fs::read(fixture("tiny-bert-seqcls/model.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut loaded = 0;
    for round in 0..300 {
        let bytes = if round % 10 == 0 {
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            mutate(&mut rng, &src)
        };
        let p = write(tmp.path(), "model.safetensors", &bytes);
        if let Ok(ck) = Checkpoint::open(&[p], Some("bert"), DType::F32, &Device::Cpu) {
            let vb = ck.var_builder();
            for key in ck.keys().clone() {
                let _ = vb.get_unchecked(&key);
            }
            loaded += 1;
        }
    }
    // Some mutations leave the file valid (a flipped bit in the data).
    assert!(loaded > 0);
}

#[test]
fn mutated_configs_never_panic() {
    let src = std::fs::read(fixture("tiny-bert-seqcls/config.json")).unwrap();
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let bytes = mutate(&mut rng, &src);
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(c) = parse_config::<PretrainedConfig>(&text, Path::new("config.json")) {
            let _ = c.labels();
        }
    }
}

#[test]
fn mutated_tokenizers_never_panic() {
    let dir = fixture("tiny-bert-seqcls");
    let src = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let cfg = std::fs::read(dir.join("tokenizer_config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    for round in 0..200 {
        let tok = write(tmp.path(), "tokenizer.json", &mutate(&mut rng, &src));
        let cfg_bytes = if round % 2 == 0 {
            mutate(&mut rng, &cfg)
        } else {
            cfg.clone()
        };
        let cfg = write(tmp.path(), "tokenizer_config.json", &cfg_bytes);
        if let Ok(t) = AutoTokenizer::from_paths(&tok, Some(&cfg), None) {
            let _ = t.encode(
                TextInput::Pair("hello world", "paris"),
                &EncodeOptions::default(),
            );
            let _ = t.decode(&[0, 1, 2, 100_000], true);
        }
    }
}
