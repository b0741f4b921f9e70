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

/// A small valid GGUF file (llama metadata, a few tensors, a gpt2 tokenizer) written with
/// candle's writer.
fn tiny_gguf(path: &Path, arch: &str) {
    use candle_core::quantized::gguf_file::{write, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let dev = Device::Cpu;
    let t = |rows: usize, cols: usize, q: GgmlDType| {
        let x = candle_core::Tensor::arange(0f32, (rows * cols) as f32, &dev)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        QTensor::quantize(&(x / 100.0).unwrap(), q).unwrap()
    };
    let embd = t(8, 32, GgmlDType::Q8_0);
    let q = t(32, 32, GgmlDType::Q4_1);
    let norm = t(1, 32, GgmlDType::F32);
    let tokens = Value::Array(
        ["a", "b", "c", "ab", "<s>", "</s>", "Ġa", "Ġb"]
            .iter()
            .map(|s| Value::String(s.to_string()))
            .collect(),
    );
    let merges = Value::Array(vec![Value::String("a b".into())]);
    let meta = [
        ("general.architecture", Value::String(arch.into())),
        ("llama.embedding_length", Value::U32(32)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.feed_forward_length", Value::U32(64)),
        ("llama.block_count", Value::U32(1)),
        ("llama.context_length", Value::U32(64)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.merges", merges),
        ("tokenizer.ggml.eos_token_id", Value::U32(5)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    write(
        &mut f,
        &meta_refs,
        &[
            ("token_embd.weight", &embd),
            ("blk.0.attn_q.weight", &q),
            ("output_norm.weight", &norm),
        ],
    )
    .unwrap();
}

#[test]
fn mutated_gguf_files_never_panic() {
    use rustformers_core::gguf::{tokenizer_json, GgufFile};
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.gguf");
    tiny_gguf(&good, "llama");
    // The valid file opens, maps names and builds its tokenizer.
    let g = GgufFile::open(&good).unwrap();
    let tensors = g.load_all(&Device::Cpu).unwrap();
    assert!(tensors.contains_key("model.layers.0.self_attn.q_proj.weight"));
    assert!(tokenizer_json(&g).is_ok());
    assert_eq!(g.config_json().unwrap()["num_hidden_layers"], 1);
    // An architecture without a mapping is a clear error naming the supported ones.
    let other = tmp.path().join("other.gguf");
    tiny_gguf(&other, "mamba");
    let err = GgufFile::open(&other)
        .unwrap()
        .config_json()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`mamba`") && err.contains("supported: llama"),
        "{err}"
    );
    let src = std::fs::read(&good).unwrap();
    let mut rng = Rng(0xC0FFEE);
    let p = tmp.path().join("m.gguf");
    for _ in 0..400 {
        // Mutate mostly inside the header, where the sizes live.
        let mut bytes = src.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(600.min(bytes.len()));
            match rng.below(3) {
                0 => bytes[i] ^= 1 << rng.below(8),
                1 => bytes[i] = [0u8, 0xff, 0x7f, 0x80][rng.below(4)],
                _ => bytes.truncate(rng.below(bytes.len()).max(1)),
            }
        }
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(g) = GgufFile::open(&p) {
            let _ = g.load_all(&Device::Cpu);
            let _ = tokenizer_json(&g);
            let _ = g.config_json();
        }
    }
}
