//! GGUF files: a header check that refuses malformed files before anything is
//! allocated from their numbers, metadata → HF config.json values, llama.cpp tensor
//! names → HF names, tensors as quantized `QTensor`s (run quantized) or dequantized
//! (a `VarBuilder` backend), the tokenizer (gpt2-style byte-level BPE, or the
//! sentencepiece-style `llama` vocab as byte-fallback BPE) and the chat
//! template from the metadata.
//!
//! Architectures: llama, qwen2, qwen3, gemma2, phi3 (names from llama.cpp's
//! gguf-py constants; config keys as transformers' `integrations/ggml.py` reads them).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use serde_json::json;

use crate::error::{Error, Result};
use crate::hub::ModelFiles;
use crate::linear::{QWeight, QuantizedStore};

/// Architectures whose metadata and tensor names are mapped.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma2", "phi3"];

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Weights {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads little-endian numbers from the header, never past the end of the file.
struct Scanner<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Scanner<R> {
    fn take(&mut self, n: u64) -> std::result::Result<Vec<u8>, String> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(format!(
                "truncated header: {n} bytes wanted at offset {}",
                self.pos
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(buf)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
    fn skip(&mut self, n: u64) -> std::result::Result<(), String> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(format!(
                "truncated header: {n} bytes wanted at offset {}",
                self.pos
            ));
        }
        // Read in chunks: the reader may not be seekable.
        let mut left = n;
        let mut buf = [0u8; 8192];
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            self.r
                .read_exact(&mut buf[..k])
                .map_err(|e| e.to_string())?;
            left -= k as u64;
        }
        self.pos += n;
        Ok(())
    }
    fn string(&mut self) -> std::result::Result<(), String> {
        let n = self.u64()?;
        self.skip(n)
    }
    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<(), String> {
        let fixed = |t: u32| -> Option<u64> {
            match t {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            }
        };
        match ty {
            8 => self.string(),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deep".into());
                }
                let inner = self.u32()?;
                let count = self.u64()?;
                match fixed(inner) {
                    Some(sz) => self.skip(count.checked_mul(sz).ok_or("array too large")?),
                    None => {
                        if count > self.len {
                            return Err(format!(
                                "array of {count} entries is longer than the file"
                            ));
                        }
                        for _ in 0..count {
                            self.value(inner, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            t => match fixed(t) {
                Some(sz) => self.skip(sz),
                None => Err(format!("unknown metadata value type {t}")),
            },
        }
    }
}

/// (elements per block, bytes per block) of the ggml types candle can read.
fn ggml_block(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

/// Walks the header with bounds checks, so that candle's reader (which allocates what
/// the header says) only ever sees a well-formed header.
fn check_header(path: &Path, file_len: u64) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut s = Scanner {
        r: BufReader::new(f),
        pos: 0,
        len: file_len,
    };
    let run = |s: &mut Scanner<BufReader<File>>| -> std::result::Result<(), String> {
        let magic = s.u32()?;
        if magic != 0x4655_4747 {
            return Err("not a GGUF file (bad magic)".into());
        }
        let version = s.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 or 3)"));
        }
        let tensors = s.u64()?;
        let kvs = s.u64()?;
        if tensors > file_len || kvs > file_len {
            return Err("tensor or metadata count larger than the file".into());
        }
        for _ in 0..kvs {
            s.string()?;
            let ty = s.u32()?;
            s.value(ty, 0)?;
        }
        for _ in 0..tensors {
            s.string()?;
            let dims = s.u32()?;
            if dims == 0 || dims > 4 {
                return Err(format!("tensor with {dims} dimensions"));
            }
            let mut elems: u64 = 1;
            for _ in 0..dims {
                let d = s.u64()?;
                elems = elems.checked_mul(d).ok_or("tensor too large")?;
            }
            let ty = s.u32()?;
            let (bs, ts) =
                ggml_block(ty).ok_or_else(|| format!("unsupported ggml tensor type {ty}"))?;
            if !elems.is_multiple_of(bs) {
                return Err(format!(
                    "tensor of {elems} elements is not a whole number of {bs}-blocks"
                ));
            }
            let bytes = (elems / bs).checked_mul(ts).ok_or("tensor too large")?;
            let offset = s.u64()?;
            if offset.checked_add(bytes).is_none_or(|end| end > file_len) {
                return Err("tensor data lies beyond the end of the file".into());
            }
        }
        Ok(())
    };
    run(&mut s).map_err(|m| bad(path, m))
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file_len: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish()
    }
}

impl GgufFile {
    /// Opens and checks a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file_len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        check_header(path, file_len)?;
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let content =
            Content::read(&mut BufReader::new(f)).map_err(|e| bad(path, e.to_string()))?;
        for (name, info) in &content.tensor_infos {
            let bytes = info.shape.elem_count() / info.ggml_dtype.block_size()
                * info.ggml_dtype.type_size();
            if content.tensor_data_offset + info.offset + bytes as u64 > file_len {
                return Err(bad(
                    path,
                    format!("tensor `{name}` lies beyond the end of the file"),
                ));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file_len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// All metadata keys, sorted.
    pub fn meta_keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.content.metadata.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A numeric metadata value as f64 (any integer or float type).
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        Some(match self.meta(key)? {
            Value::U8(v) => *v as f64,
            Value::I8(v) => *v as f64,
            Value::U16(v) => *v as f64,
            Value::I16(v) => *v as f64,
            Value::U32(v) => *v as f64,
            Value::I32(v) => *v as f64,
            Value::U64(v) => *v as f64,
            Value::I64(v) => *v as f64,
            Value::F32(v) => *v as f64,
            Value::F64(v) => *v,
            Value::Bool(b) => *b as u8 as f64,
            _ => return None,
        })
    }

    pub fn meta_usize(&self, key: &str) -> Option<usize> {
        self.meta_f64(key).filter(|v| *v >= 0.0).map(|v| v as usize)
    }

    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        match self.meta(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A string array (tokens, merges).
    pub fn meta_strings(&self, key: &str) -> Option<Vec<&str>> {
        match self.meta(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// An integer array (token types).
    pub fn meta_ints(&self, key: &str) -> Option<Vec<i64>> {
        match self.meta(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Some(*x as i64),
                    Value::U32(x) => Some(*x as i64),
                    Value::I64(x) => Some(*x),
                    Value::U8(x) => Some(*x as i64),
                    Value::I8(x) => Some(*x as i64),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// `general.architecture`, checked against the supported ones.
    pub fn architecture(&self) -> Result<&str> {
        let arch = self
            .meta_str("general.architecture")
            .ok_or_else(|| bad(&self.path, "no general.architecture in the metadata"))?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(Error::Unsupported(format!(
                "GGUF architecture `{arch}` ({}) is not supported; supported: {}",
                self.path.display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        Ok(arch)
    }

    /// The chat template stored in the metadata.
    pub fn chat_template(&self) -> Option<&str> {
        self.meta_str("tokenizer.chat_template")
    }

    /// config.json values for the file's architecture (the HF model_type and names).
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let arch = self.architecture()?;
        let a = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| -> Result<usize> {
            self.meta_usize(&a(k))
                .ok_or_else(|| bad(&self.path, format!("metadata `{}` is missing", a(k))))
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let vocab = self
            .meta_usize(&a("vocab_size"))
            .or_else(|| self.meta_strings("tokenizer.ggml.tokens").map(|t| t.len()))
            .or_else(|| {
                self.tensor_dims("token_embd.weight")
                    .and_then(|d| d.first().copied())
            })
            .ok_or_else(|| bad(&self.path, "cannot tell the vocabulary size"))?;
        let mut c = json!({
            "model_type": arch,
            "architectures": [match arch {
                "llama" => "LlamaForCausalLM",
                "qwen2" => "Qwen2ForCausalLM",
                "qwen3" => "Qwen3ForCausalLM",
                "gemma2" => "Gemma2ForCausalLM",
                _ => "Phi3ForCausalLM",
            }],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": need("feed_forward_length")?,
            "num_hidden_layers": need("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.meta_usize(&a("attention.head_count_kv")).unwrap_or(heads),
            "max_position_embeddings": need("context_length")?,
            "rms_norm_eps": self.meta_f64(&a("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
            "rope_theta": self.meta_f64(&a("rope.freq_base")).unwrap_or(10000.0),
            "tie_word_embeddings": !self.content.tensor_infos.contains_key("output.weight"),
        });
        if let Some(o) = c.as_object_mut() {
            if let Some(k) = self.meta_usize(&a("attention.key_length")) {
                if k != hidden / heads.max(1) {
                    o.insert("head_dim".into(), json!(k));
                }
            }
            for (gguf_key, hf_key) in [
                ("tokenizer.ggml.bos_token_id", "bos_token_id"),
                ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                ("tokenizer.ggml.padding_token_id", "pad_token_id"),
            ] {
                if let Some(v) = self.meta_usize(gguf_key) {
                    o.insert(hf_key.into(), json!(v));
                }
            }
            if arch == "qwen2" {
                o.insert("attention_bias".into(), json!(true));
            }
            if let Some(scaling) = self.rope_scaling_json(&a, need("context_length")?)? {
                // Phi-3 reads its pretraining length at the top level (it wins there).
                if let Some(orig) = scaling.get("original_max_position_embeddings") {
                    o.insert("original_max_position_embeddings".into(), orig.clone());
                }
                o.insert("rope_scaling".into(), scaling);
            }
            if let Some(w) = self.meta_usize(&a("attention.sliding_window")) {
                o.insert("sliding_window".into(), json!(w));
            }
            if arch == "gemma2" {
                if let Some(v) = self.meta_f64(&a("attn_logit_softcapping")) {
                    o.insert("attn_logit_softcapping".into(), json!(v));
                }
                if let Some(v) = self.meta_f64(&a("final_logit_softcapping")) {
                    o.insert("final_logit_softcapping".into(), json!(v));
                }
                o.insert("hidden_act".into(), json!("gelu_pytorch_tanh"));
                o.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
                // GGUF has no query_pre_attn_scalar: llama.cpp scales queries by
                // 1/sqrt(key_length), and by 1/sqrt(hidden/heads) for the 46-layer 27B.
                let layers = need("block_count")?;
                let head_dim = self
                    .meta_usize(&a("attention.key_length"))
                    .unwrap_or(hidden / heads.max(1));
                let scalar = if layers == 46 {
                    hidden / heads.max(1)
                } else {
                    head_dim
                };
                o.insert("query_pre_attn_scalar".into(), json!(scalar));
            }
        }
        Ok(c)
    }

    /// llama.cpp's RoPE scaling as config.json's `rope_scaling`: per-frequency divisors in
    /// `rope_freqs.weight` (Llama 3.1+'s llama3 scaling, baked in by the converter: a
    /// frequency `base^(-2i/d) / rope_freqs[i]`, which is longrope's formula with equal
    /// short and long factors and no attention factor), or `rope.scaling.type` linear /
    /// yarn with its factor and original context. Any other type is refused by name.
    fn rope_scaling_json(
        &self,
        key: &dyn Fn(&str) -> String,
        context: usize,
    ) -> Result<Option<serde_json::Value>> {
        let kind = self.meta_str(&key("rope.scaling.type")).unwrap_or("none");
        let f64s = |name: &str| -> Result<Vec<f64>> {
            self.qtensor(name, &Device::Cpu)?
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(|e| bad(&self.path, format!("{name}: {e}")))
        };
        let has = |name: &str| self.content.tensor_infos.contains_key(name);
        // Phi-3's longrope: both factor lists as tensors.
        if has("rope_factors_long.weight") || has("rope_factors_short.weight") {
            let original = self
                .meta_usize(&key("rope.scaling.original_context_length"))
                .unwrap_or(context);
            let mut l = json!({
                "rope_type": "longrope",
                "short_factor": f64s("rope_factors_short.weight")?,
                "long_factor": f64s("rope_factors_long.weight")?,
                "original_max_position_embeddings": original,
            });
            if let (Some(a), Some(o)) = (
                self.meta_f64(&key("rope.scaling.attn_factor")),
                l.as_object_mut(),
            ) {
                o.insert("attention_factor".into(), json!(a));
            }
            return Ok(Some(l));
        }
        if has("rope_freqs.weight") {
            if kind != "none" {
                return Err(bad(
                    &self.path,
                    format!("both rope_freqs.weight and rope.scaling.type `{kind}`"),
                ));
            }
            let t = f64s("rope_freqs.weight")?;
            return Ok(Some(json!({
                "rope_type": "longrope",
                "short_factor": t,
                "long_factor": t,
                "attention_factor": 1.0,
                "original_max_position_embeddings": context,
            })));
        }
        let factor = || {
            self.meta_f64(&key("rope.scaling.factor")).ok_or_else(|| {
                bad(
                    &self.path,
                    format!("rope.scaling.type `{kind}` without rope.scaling.factor"),
                )
            })
        };
        Ok(match kind {
            "none" => None,
            "linear" => Some(json!({"rope_type": "linear", "factor": factor()?})),
            "yarn" => {
                let mut y = json!({
                    "rope_type": "yarn",
                    "factor": factor()?,
                    "original_max_position_embeddings": self
                        .meta_usize(&key("rope.scaling.original_context_length"))
                        .unwrap_or(context),
                });
                for (gguf, hf) in [
                    ("rope.scaling.yarn_beta_fast", "beta_fast"),
                    ("rope.scaling.yarn_beta_slow", "beta_slow"),
                ] {
                    if let (Some(v), Some(o)) = (self.meta_f64(&key(gguf)), y.as_object_mut()) {
                        o.insert(hf.into(), json!(v));
                    }
                }
                Some(y)
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: rope.scaling.type `{other}` is not implemented (linear, yarn, and \
                     rope_freqs.weight are)",
                    self.path.display()
                )))
            }
        })
    }

    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|i| i.shape.dims().to_vec())
    }

    /// GGUF tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(String::as_str)
            .collect();
        n.sort_unstable();
        n
    }

    /// The ggml type of each tensor (for `inspect`).
    pub fn tensor_types(&self) -> HashMap<String, String> {
        self.content
            .tensor_infos
            .iter()
            .map(|(k, v)| (k.clone(), format!("{:?}", v.ggml_dtype)))
            .collect()
    }

    /// Reads one tensor as stored.
    pub fn qtensor(&self, gguf_name: &str, device: &Device) -> Result<QTensor> {
        let f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut r = BufReader::new(f);
        self.content
            .tensor(&mut r, gguf_name, device)
            .map_err(|e| bad(&self.path, format!("tensor `{gguf_name}`: {e}")))
    }

    /// All tensors under their HF names (see [`hf_tensor_name`]), as stored.
    pub fn load_all(&self, device: &Device) -> Result<HashMap<String, Arc<QTensor>>> {
        let arch = self.architecture()?;
        let f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut r = BufReader::new(f);
        let mut names: Vec<(&String, u64)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(k, v)| (k, v.offset))
            .collect();
        names.sort_by_key(|(_, off)| *off);
        let mut out = HashMap::new();
        for (name, _) in names {
            let Some(hf) = hf_tensor_name(arch, name) else {
                tracing::debug!("GGUF tensor `{name}` has no HF counterpart; skipped");
                continue;
            };
            r.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io(&self.path, e))?;
            let t = self
                .content
                .tensor(&mut r, name, device)
                .map_err(|e| bad(&self.path, format!("tensor `{name}`: {e}")))?;
            out.insert(hf, Arc::new(t));
        }
        Ok(out)
    }
}

/// The GGUF file of a reference: the file itself, or the only `.gguf` in a folder that
/// has no config.json. `None` when the model is not a GGUF checkpoint.
pub fn gguf_path(files: &ModelFiles) -> Result<Option<PathBuf>> {
    if let Some(f) = files.single_file() {
        return Ok(
            (f.extension().and_then(|e| e.to_str()) == Some("gguf")).then(|| f.to_path_buf())
        );
    }
    if files.get("config.json")?.is_some() {
        return Ok(None);
    }
    let ggufs: Vec<String> = files
        .list_local()
        .into_iter()
        .filter(|f| f.ends_with(".gguf"))
        .collect();
    match ggufs.as_slice() {
        [] => Ok(None),
        [one] => Ok(files.root().map(|r| r.join(one))),
        many => Err(Error::invalid(format!(
            "`{}` holds several GGUF files ({}); name one: {}/<file>.gguf",
            files.reference(),
            many.join(", "),
            files.reference()
        ))),
    }
}

/// llama.cpp tensor name → HF checkpoint name for an architecture.
pub fn hf_tensor_name(arch: &str, gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => None,
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let hf = match (arch, module) {
        (_, "attn_q") => "self_attn.q_proj",
        (_, "attn_k") => "self_attn.k_proj",
        (_, "attn_v") => "self_attn.v_proj",
        (_, "attn_qkv") => "self_attn.qkv_proj",
        (_, "attn_output") => "self_attn.o_proj",
        (_, "attn_q_norm") => "self_attn.q_norm",
        (_, "attn_k_norm") => "self_attn.k_norm",
        (_, "ffn_gate") => "mlp.gate_proj",
        (_, "ffn_up") if arch == "phi3" => "mlp.gate_up_proj",
        (_, "ffn_up") => "mlp.up_proj",
        (_, "ffn_down") => "mlp.down_proj",
        (_, "attn_norm") => "input_layernorm",
        ("gemma2", "ffn_norm") => "pre_feedforward_layernorm",
        ("gemma2", "post_attention_norm") => "post_attention_layernorm",
        ("gemma2", "post_ffw_norm") => "post_feedforward_layernorm",
        (_, "ffn_norm") => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// A `VarBuilder` backend over GGUF tensors that dequantizes on request.
pub struct GgufBackend {
    tensors: Arc<HashMap<String, Arc<QTensor>>>,
    /// Gemma stores norm weights with the +1 folded in; subtract it back (HF keeps `w`, computes `1 + w`).
    norm_offset: f64,
}

impl GgufBackend {
    pub fn new(tensors: Arc<HashMap<String, Arc<QTensor>>>, norm_offset: f64) -> Self {
        Self {
            tensors,
            norm_offset,
        }
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let q = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("weight `{name}` is not in the GGUF file"))
        })?;
        let t = q.dequantize(dev)?;
        let t = if self.norm_offset != 0.0 && name.ends_with("norm.weight") {
            (t - self.norm_offset)?
        } else {
            t
        };
        t.to_dtype(dtype)
    }
}

impl candle_nn::var_builder::SimpleBackend for GgufBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "weight `{name}` has shape {:?} in the GGUF file but the metadata implies {:?}",
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Whether the tensor can run quantized. On CPU the ggml `_0`/`_1` formats and Q4_K, Q5_K,
/// Q6_K run through rustformers' kernels (any block count). Elsewhere candle's quantized matmul runs them,
/// and its generic Q4_1 / Q5_0 / Q5_1 dot products `debug_assert!` an even number of
/// blocks per row (a leftover of ggml's unrolled loop), so in builds with debug
/// assertions such tensors (rows of 32, 96, ... elements) run dequantized instead.
fn runs_quantized(t: &QTensor) -> bool {
    if t.device().is_cpu() && crate::kernels::qmatmul::QFormat::from_ggml(t.dtype()).is_some() {
        return true;
    }
    let odd_blocks = t
        .shape()
        .dims()
        .last()
        .is_some_and(|cols| (cols / t.dtype().block_size()) % 2 == 1);
    !(cfg!(debug_assertions)
        && odd_blocks
        && matches!(
            t.dtype(),
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        ))
}

/// Moves the quantized linear weights out of a tensor map (everything stored in a block
/// format that can run quantized) into a store, repacking each for the CPU kernels as it
/// goes, so that the file's bytes are not held twice. A tied output layer reuses the
/// token embedding, which stays in the map too (the embedding lookup reads it).
pub fn quantized_store(
    tensors: &mut HashMap<String, Arc<QTensor>>,
) -> candle_core::Result<QuantizedStore> {
    let is_block =
        |t: &QTensor| !matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
    let mut store = QuantizedStore::default();
    let names: Vec<String> = tensors
        .iter()
        .filter(|(name, t)| {
            is_block(t)
                && runs_quantized(t)
                && t.shape().dims().len() == 2
                && name.ends_with(".weight")
                && name.as_str() != "model.embed_tokens.weight"
        })
        .map(|(name, _)| name.clone())
        .collect();
    let mut taken: Vec<(String, Arc<QTensor>)> = names
        .into_iter()
        .filter_map(|name| tensors.remove(&name).map(|t| (name, t)))
        .collect();
    // The token embedding: repacked (with the others), it serves the lookup (rows
    // dequantized on the fly) and, when tied, the output layer, and leaves the map;
    // otherwise the map keeps it for a dense lookup.
    let embed = "model.embed_tokens.weight";
    let embed_tensor = tensors
        .get(embed)
        .filter(|e| is_block(e) && runs_quantized(e))
        .cloned();
    let has_embed = embed_tensor.is_some();
    if let Some(e) = embed_tensor {
        taken.push((embed.to_string(), e));
    }
    let (names, weights): (Vec<String>, Vec<Arc<QTensor>>) = taken.into_iter().unzip();
    let mut repacked = repack_all(weights);
    let embed_repacked = if has_embed { repacked.pop() } else { None };
    for (name, w) in names.into_iter().zip(repacked) {
        store.tensors.insert(name, w?);
    }
    if let Some(q) = embed_repacked {
        let q = q?;
        let tied = !tensors.contains_key("lm_head.weight")
            && !store.tensors.contains_key("lm_head.weight");
        if tied {
            store.tensors.insert("lm_head.weight".into(), q.clone());
        }
        if matches!(q, QWeight::Packed(_)) {
            store.tensors.insert(embed.into(), q);
            tensors.remove(embed);
        }
    }
    Ok(store)
}

/// `QWeight::new` of each tensor, on the pool (largest first, so that the last task to
/// start is a small one): repacking was a third of the time to first token when serial.
/// Each task drops its file tensor once repacked, so that the raw and repacked forms of
/// all weights are never held at once.
fn repack_all(items: Vec<Arc<QTensor>>) -> Vec<candle_core::Result<QWeight>> {
    use std::sync::Mutex;
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].shape().elem_count()));
    let inputs: Vec<Mutex<Option<Arc<QTensor>>>> =
        items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let slots: Vec<Mutex<Option<candle_core::Result<QWeight>>>> =
        inputs.iter().map(|_| Mutex::new(None)).collect();
    let task = |t: usize| {
        let i = order[t];
        let input = inputs[i].lock().ok().and_then(|mut t| t.take());
        if let Some(input) = input {
            let w = QWeight::new(input);
            if let Ok(mut slot) = slots[i].lock() {
                *slot = Some(w);
            }
        }
    };
    crate::kernels::pool::Pool::global().run(slots.len(), &task);
    slots
        .into_iter()
        .map(|s| match s.into_inner() {
            Ok(Some(w)) => w,
            _ => Err(candle_core::Error::Msg(
                "a weight repack did not finish".into(),
            )),
        })
        .collect()
}

mod tokenizer;
pub use tokenizer::{tokenizer_config_json, tokenizer_json};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_tensor_name("llama", "blk.3.attn_q.weight").as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_tensor_name("llama", "blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_tensor_name("gemma2", "blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            hf_tensor_name("llama", "output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(hf_tensor_name("llama", "blk.x.attn_q.weight"), None);
    }

    #[test]
    fn malformed_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("m.gguf");
        let mut header = Vec::new();
        header.extend_from_slice(&0x4655_4747u32.to_le_bytes());
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes());
        header.extend_from_slice(&1u64.to_le_bytes());
        // A key whose length claims far more bytes than the file has.
        header.extend_from_slice(&u64::MAX.to_le_bytes());
        for bytes in [&b""[..], b"GGUF", &header[..], &header[..20]] {
            std::fs::write(&p, bytes).unwrap();
            let err = GgufFile::open(&p).unwrap_err().to_string();
            assert!(err.contains("m.gguf"), "{err}");
        }
    }
}
