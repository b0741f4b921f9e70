//! `AutoTokenizer`: tokenizer.json (the `tokenizers` crate, the same Rust code Python's
//! fast tokenizers run) plus tokenizer_config.json and special_tokens_map.json, with the
//! padding and truncation options of Python's `tokenizer(...)` call.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde_json::Value;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{read_json, write_atomic, Error, Result};
use crate::hub::ModelFiles;

/// Python's `padding` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// `padding=False`.
    #[default]
    None,
    /// `padding=True` / `"longest"`: to the longest sequence of the batch.
    Longest,
    /// `padding="max_length"`: to `max_length` (or the model's maximum).
    MaxLength,
}

/// Python's `truncation` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// `truncation=False`.
    #[default]
    None,
    /// `truncation=True` / `"longest_first"`.
    LongestFirst,
    /// `"only_first"`.
    OnlyFirst,
    /// `"only_second"`.
    OnlySecond,
}

impl Truncation {
    /// Parses Python's spelling (`longest_first`, `only_first`, `only_second`, `true`, `false`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "longest_first" | "true" | "True" => Ok(Self::LongestFirst),
            "only_first" => Ok(Self::OnlyFirst),
            "only_second" => Ok(Self::OnlySecond),
            "do_not_truncate" | "false" | "False" => Ok(Self::None),
            other => Err(Error::invalid(format!(
                "unknown truncation `{other}`; use longest_first, only_first, only_second or false"
            ))),
        }
    }
}

/// Left or right, for padding and truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    Left,
    #[default]
    Right,
}

/// Options of one tokenizer call, named as in Python.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub add_special_tokens: bool,
    pub padding: Padding,
    pub truncation: Truncation,
    /// Defaults to the tokenizer's `model_max_length` where padding or truncation needs one.
    pub max_length: Option<usize>,
    pub stride: usize,
    pub return_overflowing_tokens: bool,
    pub pad_to_multiple_of: Option<usize>,
    /// Overrides the tokenizer's `padding_side`.
    pub padding_side: Option<Side>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            add_special_tokens: true,
            padding: Padding::None,
            truncation: Truncation::None,
            max_length: None,
            stride: 0,
            return_overflowing_tokens: false,
            pad_to_multiple_of: None,
            padding_side: None,
        }
    }
}

/// One input: a text or a pair of texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextInput<'a> {
    Single(&'a str),
    Pair(&'a str, &'a str),
    /// Words already split (Python's `is_split_into_words=True`): `word_ids` index them.
    Words(&'a [String]),
}

/// The result of a batch call, one row per (possibly overflowing) sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchEncoding {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    pub token_type_ids: Vec<Vec<u32>>,
    pub special_tokens_mask: Vec<Vec<u32>>,
    /// Character offsets into the input text (as Python's `return_offsets_mapping`).
    pub offsets: Vec<Vec<(usize, usize)>>,
    pub word_ids: Vec<Vec<Option<u32>>>,
    /// Which text of a pair each token comes from (`None` for special tokens).
    pub sequence_ids: Vec<Vec<Option<usize>>>,
    pub tokens: Vec<Vec<String>>,
    /// For each row, the index of the input it comes from.
    pub overflow_to_sample_mapping: Vec<usize>,
}

impl BatchEncoding {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Special tokens of a tokenizer, as tokenizer_config.json / special_tokens_map.json name them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub pad: Option<String>,
    pub unk: Option<String>,
    pub cls: Option<String>,
    pub sep: Option<String>,
    pub mask: Option<String>,
    pub bos: Option<String>,
    pub eos: Option<String>,
}

/// A tokenizer with Python's call semantics.
pub struct AutoTokenizer {
    inner: Mutex<Tokenizer>,
    /// tokenizer_config.json as read (written back on save).
    config: serde_json::Map<String, Value>,
    special_tokens_map: Option<Value>,
    specials: SpecialTokens,
    model_max_length: Option<usize>,
    padding_side: Side,
    truncation_side: Side,
    clean_up_tokenization_spaces: bool,
    /// Named chat templates (`default` first when there is one): chat_template.jinja and
    /// additional_chat_templates/*.jinja, else tokenizer_config.json's `chat_template`,
    /// else a processor's chat_template.json.
    chat_templates: Vec<(String, String)>,
}

impl std::fmt::Debug for AutoTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoTokenizer")
            .field("specials", &self.specials)
            .field("model_max_length", &self.model_max_length)
            .finish()
    }
}

fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn parse_side(v: Option<&Value>, key: &str) -> Result<Side> {
    match v.and_then(|v| v.as_str()) {
        None | Some("right") => Ok(Side::Right),
        Some("left") => Ok(Side::Left),
        Some(other) => Err(Error::Tokenizer(format!(
            "tokenizer_config.json: {key} must be \"left\" or \"right\", not \"{other}\""
        ))),
    }
}

impl AutoTokenizer {
    /// Loads the tokenizer of a model reference (folder, file or Hub id).
    pub fn from_pretrained(reference: &str) -> Result<Self> {
        let files = ModelFiles::resolve(reference)?;
        Self::from_files(&files)
    }

    /// Loads from resolved model files.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        if files.get("tokenizer.json")?.is_none() {
            if let Some(path) = crate::gguf::gguf_path(files)? {
                return Self::from_gguf(&crate::gguf::GgufFile::open(&path)?);
            }
        }
        let tok = files
            .get("tokenizer.json")?
            .ok_or_else(|| Error::MissingFile {
                reference: files.reference().to_string(),
                file: "tokenizer.json".into(),
                hint: " (only fast tokenizers are supported: save one from Python with \
                   `AutoTokenizer.from_pretrained(...).save_pretrained(dir)`)"
                    .into(),
            })?;
        let config = files.get("tokenizer_config.json")?;
        let map = files.get("special_tokens_map.json")?;
        let mut tokenizer = Self::from_paths(&tok, config.as_deref(), map.as_deref())?;
        tokenizer.read_chat_template_files(files)?;
        Ok(tokenizer)
    }

    /// The chat template files transformers saves beside the tokenizer, as 5.25's
    /// `from_pretrained` reads them: chat_template.jinja (`default`) and
    /// additional_chat_templates/NAME.jinja replace tokenizer_config.json's templates;
    /// a processor's chat_template.json (`{"chat_template": ...}`) is used when there is
    /// no other. (Additional templates are found in the local folder or Hub-cache
    /// snapshot, not listed from the Hub.)
    fn read_chat_template_files(&mut self, files: &ModelFiles) -> Result<()> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
        let mut found = Vec::new();
        if let Some(p) = files.get("chat_template.jinja")? {
            found.push(("default".to_string(), read(&p)?));
        }
        for name in files.list_local() {
            // additional_chat_templates/NAME.jinja, not in a subfolder (as Python's glob).
            let Some(stem) = name
                .strip_prefix("additional_chat_templates/")
                .and_then(|n| n.strip_suffix(".jinja"))
                .filter(|n| valid_template_name(n))
            else {
                continue;
            };
            if let Some(p) = files.get(&name)? {
                found.push((stem.to_string(), read(&p)?));
            }
        }
        if !found.is_empty() {
            self.chat_templates = found;
        } else if self.chat_templates.is_empty() {
            if let Some(p) = files.get("chat_template.json")? {
                let v = read_json(&p)?;
                self.chat_templates = named_templates(v.get("chat_template"))
                    .map_err(|m| Error::Tokenizer(format!("{}: {m}", p.display())))?;
            }
        }
        Ok(())
    }

    /// Builds the tokenizer stored in a GGUF file's metadata (tokens, merges, special
    /// tokens, chat template).
    pub fn from_gguf(g: &crate::gguf::GgufFile) -> Result<Self> {
        let json = crate::gguf::tokenizer_json(g)?;
        let inner = Tokenizer::from_str(&json).map_err(|e| {
            Error::Tokenizer(format!(
                "cannot build the tokenizer of {}: {e}",
                g.path().display()
            ))
        })?;
        let config = match crate::gguf::tokenizer_config_json(g) {
            Value::Object(o) => o,
            _ => serde_json::Map::new(),
        };
        Self::new(inner, config, None)
    }

    /// The default chat template, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.named_chat_template("default")
    }

    /// A chat template by name (`default`, or the name of an additional template).
    pub fn named_chat_template(&self, name: &str) -> Option<&str> {
        self.chat_templates
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }

    /// The names of the chat templates.
    pub fn chat_template_names(&self) -> Vec<&str> {
        self.chat_templates
            .iter()
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The template a chat renders with, as Python's `get_chat_template` picks it: the
    /// one `requested` names (or `requested` itself, taken as a whole template, when no
    /// template has that name); else `tool_use` when tools are given (even an empty list)
    /// and the tokenizer has one; else `default`.
    pub fn select_chat_template<'a>(
        &'a self,
        requested: Option<&'a str>,
        with_tools: bool,
    ) -> Result<&'a str> {
        if let Some(r) = requested {
            return Ok(self.named_chat_template(r).unwrap_or(r));
        }
        if with_tools {
            if let Some(t) = self.named_chat_template("tool_use") {
                return Ok(t);
            }
        }
        if let Some(t) = self.chat_template() {
            return Ok(t);
        }
        Err(Error::invalid(if self.chat_templates.is_empty() {
            "this tokenizer has no chat template (chat_template.jinja or tokenizer_config.json \
             `chat_template`)"
                .to_string()
        } else {
            format!(
                "this tokenizer has several chat templates and no default: choose one of {}",
                self.chat_template_names().join(", ")
            )
        }))
    }

    /// Python's `apply_chat_template(messages, tokenize=False, ...)`: renders the chat
    /// template with the special tokens as variables (`bos_token`, `eos_token`, ...).
    pub fn apply_chat_template(
        &self,
        messages: &Value,
        opts: &crate::chat_template::ChatOptions,
    ) -> Result<String> {
        Ok(self.render_chat(messages, opts)?.text)
    }

    /// Python's `apply_chat_template(messages, tokenize=True, return_dict=True,
    /// return_assistant_tokens_mask=...)`: the rendering tokenized without added special
    /// tokens (the template writes them), and with `assistant_masks` 1 on every token that
    /// overlaps a `{% generation %}` block.
    pub fn apply_chat_template_tokenized(
        &self,
        messages: &Value,
        opts: &crate::chat_template::ChatOptions,
        return_assistant_tokens_mask: bool,
    ) -> Result<ChatEncoding> {
        if return_assistant_tokens_mask && opts.continue_final_message.is_some() {
            return Err(Error::invalid(
                "continue_final_message is not compatible with return_assistant_tokens_mask",
            ));
        }
        let rendered = self.render_chat(messages, opts)?;
        let enc = self.encode(
            TextInput::Single(&rendered.text),
            &EncodeOptions {
                add_special_tokens: false,
                ..Default::default()
            },
        )?;
        let input_ids = enc.input_ids.into_iter().next().unwrap_or_default();
        let attention_mask = enc.attention_mask.into_iter().next().unwrap_or_default();
        let assistant_masks = return_assistant_tokens_mask.then(|| {
            if rendered.generation_spans.is_empty() {
                tracing::warn!(
                    "return_assistant_tokens_mask: the chat template has no {{% generation %}} block"
                );
            }
            let offsets = enc.offsets.first().cloned().unwrap_or_default();
            assistant_mask(&offsets, &rendered.generation_spans)
        });
        Ok(ChatEncoding {
            text: rendered.text,
            input_ids,
            attention_mask,
            assistant_masks,
        })
    }

    fn render_chat(
        &self,
        messages: &Value,
        opts: &crate::chat_template::ChatOptions,
    ) -> Result<crate::chat_template::Rendered> {
        let source =
            self.select_chat_template(opts.chat_template.as_deref(), opts.tools.is_some())?;
        let template = crate::chat_template::ChatTemplate::new(source)?;
        let mut opts = opts.clone();
        let s = &self.specials;
        for (k, v) in [
            ("bos_token", &s.bos),
            ("eos_token", &s.eos),
            ("unk_token", &s.unk),
            ("pad_token", &s.pad),
            ("cls_token", &s.cls),
            ("sep_token", &s.sep),
            ("mask_token", &s.mask),
        ] {
            if let Some(v) = v {
                opts.extra
                    .entry(k.to_string())
                    .or_insert_with(|| Value::String(v.clone()));
            }
        }
        template.render_with_spans(messages, &opts)
    }

    /// Loads from explicit file paths.
    pub fn from_paths(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        special_tokens_map: Option<&Path>,
    ) -> Result<Self> {
        let bytes = std::fs::read(tokenizer_json).map_err(|e| Error::io(tokenizer_json, e))?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| {
            Error::Tokenizer(format!("cannot load {}: {e}", tokenizer_json.display()))
        })?;
        let config = match tokenizer_config {
            Some(p) => match read_json(p)? {
                Value::Object(o) => o,
                _ => {
                    return Err(Error::Tokenizer(format!(
                        "{} must hold a JSON object",
                        p.display()
                    )))
                }
            },
            None => serde_json::Map::new(),
        };
        let special_tokens_map = match special_tokens_map {
            Some(p) => Some(read_json(p)?),
            None => None,
        };
        Self::new(inner, config, special_tokens_map)
    }

    fn new(
        mut inner: Tokenizer,
        config: serde_json::Map<String, Value>,
        special_tokens_map: Option<Value>,
    ) -> Result<Self> {
        let lookup = |key: &str| -> Option<String> {
            config.get(key).and_then(token_content).or_else(|| {
                special_tokens_map
                    .as_ref()?
                    .get(key)
                    .and_then(token_content)
            })
        };
        let specials = SpecialTokens {
            pad: lookup("pad_token"),
            unk: lookup("unk_token"),
            cls: lookup("cls_token"),
            sep: lookup("sep_token"),
            mask: lookup("mask_token"),
            bos: lookup("bos_token"),
            eos: lookup("eos_token"),
        };
        // Python treats model_max_length >= 1e30 (VERY_LARGE_INTEGER) as "no limit".
        let model_max_length = config
            .get("model_max_length")
            .and_then(|v| v.as_f64())
            .filter(|v| *v > 0.0 && *v < 1e15)
            .map(|v| v as usize);
        let padding_side = parse_side(config.get("padding_side"), "padding_side")?;
        let truncation_side = parse_side(config.get("truncation_side"), "truncation_side")?;
        // False when tokenizer_config.json does not say (5.25, as 4.46). 5.25 skips the
        // clean-up for BPE models (it was made for WordPiece and corrupts BPE text such
        // as "x != 2") unless the config insists.
        let bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_));
        let insists = config
            .get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let clean_up_tokenization_spaces = config
            .get("clean_up_tokenization_spaces")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
            && (!bpe || insists);
        let chat_templates = named_templates(config.get("chat_template"))
            .map_err(|m| Error::Tokenizer(format!("tokenizer_config.json: {m}")))?;
        // Per-call settings decide padding and truncation, as in Python.
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        Ok(Self {
            inner: Mutex::new(inner),
            config,
            special_tokens_map,
            specials,
            model_max_length,
            padding_side,
            truncation_side,
            clean_up_tokenization_spaces,
            chat_templates,
        })
    }

    /// The special tokens.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.specials
    }

    /// `model_max_length` from tokenizer_config.json, when it is a real limit.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// The side padding goes on by default.
    pub fn padding_side(&self) -> Side {
        self.padding_side
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Tokenizer>> {
        self.inner
            .lock()
            .map_err(|_| Error::Tokenizer("tokenizer lock poisoned".into()))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lock().ok()?.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.lock().ok()?.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.lock().map(|t| t.get_vocab_size(true)).unwrap_or(0)
    }

    /// The pad token id (pad token, else 0 as Python's fast tokenizers fall back to).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.specials
            .pad
            .as_deref()
            .and_then(|p| self.token_to_id(p))
    }

    /// Ids of all special tokens (added tokens marked special).
    pub fn all_special_ids(&self) -> Vec<u32> {
        let Ok(t) = self.lock() else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = t
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, tok)| tok.special)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Joins tokens back into text with the tokenizer's decoder (Python's
    /// `convert_tokens_to_string` for fast tokenizers; a plain space join without one).
    pub fn convert_tokens_to_string(&self, tokens: &[String]) -> Result<String> {
        let tok = self.lock()?;
        match tok.get_decoder() {
            Some(d) => {
                use tokenizers::Decoder;
                d.decode(tokens.to_vec())
                    .map_err(|e| Error::Tokenizer(e.to_string()))
            }
            None => Ok(tokens.join(" ")),
        }
    }

    /// True when the tokenizer model marks word continuations with a prefix (`##` in
    /// WordPiece); Python's token-classification uses this to find sub-words.
    pub fn has_continuing_subword_prefix(&self) -> bool {
        let Ok(tok) = self.lock() else { return false };
        match tok.get_model() {
            tokenizers::ModelWrapper::WordPiece(wp) => !wp.continuing_subword_prefix.is_empty(),
            tokenizers::ModelWrapper::BPE(bpe) => bpe
                .continuing_subword_prefix
                .as_ref()
                .is_some_and(|p| !p.is_empty()),
            _ => false,
        }
    }

    /// The unknown token's id.
    pub fn unk_token_id(&self) -> Option<u32> {
        self.specials
            .unk
            .as_deref()
            .and_then(|u| self.token_to_id(u))
    }

    /// Tokenizes one text without special tokens, padding or truncation (Python's `tokenize`).
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>> {
        let enc = self
            .lock()?
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_tokens().to_vec())
    }

    /// Encodes one input.
    pub fn encode(&self, input: TextInput<'_>, opts: &EncodeOptions) -> Result<BatchEncoding> {
        self.encode_batch(&[input], opts)
    }

    /// Encodes a batch with Python's padding and truncation semantics.
    pub fn encode_batch(
        &self,
        inputs: &[TextInput<'_>],
        opts: &EncodeOptions,
    ) -> Result<BatchEncoding> {
        let mut tok = self.lock()?;
        let is_pair = inputs.iter().any(|i| matches!(i, TextInput::Pair(..)));
        let max_length = opts.max_length.or(self.model_max_length);
        let trunc = match opts.truncation {
            Truncation::None => None,
            t => {
                let Some(max_length) = max_length else {
                    return Err(Error::invalid(
                        "truncation needs max_length: the tokenizer sets no model_max_length",
                    ));
                };
                let added = if opts.add_special_tokens {
                    tok.get_post_processor()
                        .map(|p| p.added_tokens(is_pair))
                        .unwrap_or(0)
                } else {
                    0
                };
                if max_length <= added || max_length - added <= opts.stride {
                    return Err(Error::invalid(format!(
                        "max_length {max_length} leaves no room for text: {added} special \
                         token(s) and stride {} must be smaller",
                        opts.stride
                    )));
                }
                Some(TruncationParams {
                    direction: match self.truncation_side {
                        Side::Left => TruncationDirection::Left,
                        Side::Right => TruncationDirection::Right,
                    },
                    max_length,
                    strategy: match t {
                        Truncation::OnlyFirst => TruncationStrategy::OnlyFirst,
                        Truncation::OnlySecond => TruncationStrategy::OnlySecond,
                        _ => TruncationStrategy::LongestFirst,
                    },
                    stride: opts.stride,
                })
            }
        };
        let pad = match opts.padding {
            Padding::None => None,
            p => {
                let strategy = match p {
                    Padding::MaxLength => PaddingStrategy::Fixed(max_length.ok_or_else(|| {
                        Error::invalid("padding=max_length needs max_length: the tokenizer sets no model_max_length")
                    })?),
                    _ => PaddingStrategy::BatchLongest,
                };
                let pad_token = self.specials.pad.clone().ok_or_else(|| {
                    Error::invalid("padding needs a pad token and this tokenizer has none")
                })?;
                let pad_id = tok.token_to_id(&pad_token).ok_or_else(|| {
                    Error::Tokenizer(format!("pad token `{pad_token}` is not in the vocabulary"))
                })?;
                Some(PaddingParams {
                    strategy,
                    direction: match opts.padding_side.unwrap_or(self.padding_side) {
                        Side::Left => PaddingDirection::Left,
                        Side::Right => PaddingDirection::Right,
                    },
                    pad_to_multiple_of: opts.pad_to_multiple_of,
                    pad_id,
                    pad_type_id: 0,
                    pad_token,
                })
            }
        };
        tok.with_truncation(trunc)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tok.with_padding(pad);
        let owned: Vec<tokenizers::EncodeInput> = inputs
            .iter()
            .map(|i| match i {
                TextInput::Single(a) => tokenizers::EncodeInput::Single((*a).into()),
                TextInput::Pair(a, b) => tokenizers::EncodeInput::Dual((*a).into(), (*b).into()),
                TextInput::Words(w) => tokenizers::EncodeInput::Single((*w).into()),
            })
            .collect();
        let encoded = tok.encode_batch_char_offsets(owned, opts.add_special_tokens);
        // Leave the shared tokenizer without per-call state.
        let _ = tok.with_truncation(None);
        tok.with_padding(None);
        drop(tok);
        let encodings = encoded.map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut out = BatchEncoding::default();
        for (sample, mut enc) in encodings.into_iter().enumerate() {
            let overflow = enc.take_overflowing();
            push_row(&mut out, &enc, sample);
            if opts.return_overflowing_tokens {
                for o in &overflow {
                    push_row(&mut out, o, sample);
                }
            }
        }
        Ok(out)
    }

    /// Decodes ids to text, as Python's `decode` (with `clean_up_tokenization_spaces`
    /// from tokenizer_config.json).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .lock()?
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir`,
    /// and the chat templates as transformers 5.x saves them: `default` in
    /// chat_template.jinja, the others in additional_chat_templates/NAME.jinja.
    pub fn save_pretrained(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = self
            .lock()?
            .to_string(true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut written = Vec::new();
        let p = dir.join("tokenizer.json");
        write_atomic(&p, json.as_bytes())?;
        written.push(p);
        let mut config = self.config.clone();
        config.remove("chat_template");
        for (name, template) in &self.chat_templates {
            if !valid_template_name(name) {
                return Err(Error::Tokenizer(format!(
                    "chat template name `{name}` cannot be a file name (it would be saved \
                     outside additional_chat_templates/)"
                )));
            }
            let p = if name == "default" {
                dir.join("chat_template.jinja")
            } else {
                let sub = dir.join("additional_chat_templates");
                std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
                sub.join(format!("{name}.jinja"))
            };
            write_atomic(&p, template.as_bytes())?;
            written.push(p);
        }
        if !config.contains_key("tokenizer_class") {
            config.insert(
                "tokenizer_class".into(),
                Value::String("PreTrainedTokenizerFast".into()),
            );
        }
        let p = dir.join("tokenizer_config.json");
        write_json_pretty(&p, &Value::Object(config))?;
        written.push(p);
        let map = match &self.special_tokens_map {
            Some(m) => m.clone(),
            None => {
                let mut m = serde_json::Map::new();
                let s = &self.specials;
                for (k, v) in [
                    ("bos_token", &s.bos),
                    ("cls_token", &s.cls),
                    ("eos_token", &s.eos),
                    ("mask_token", &s.mask),
                    ("pad_token", &s.pad),
                    ("sep_token", &s.sep),
                    ("unk_token", &s.unk),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), Value::String(v.clone()));
                    }
                }
                Value::Object(m)
            }
        };
        let p = dir.join("special_tokens_map.json");
        write_json_pretty(&p, &map)?;
        written.push(p);
        Ok(written)
    }
}

/// A template name that can be a file name in additional_chat_templates/ (Python refuses
/// the others when saving).
fn valid_template_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

/// A tokenized chat ([`AutoTokenizer::apply_chat_template_tokenized`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatEncoding {
    /// The rendered chat.
    pub text: String,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// 1 on the tokens the assistant generates (`{% generation %}` blocks).
    pub assistant_masks: Option<Vec<u32>>,
}

/// Python's mask: a token is the assistant's when its character span overlaps a span
/// (both in order, one pass), so a span cut by truncation keeps its remaining tokens.
fn assistant_mask(offsets: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<u32> {
    let mut mask = vec![0u32; offsets.len()];
    let mut s = 0;
    for (i, &(start, end)) in offsets.iter().enumerate() {
        while s < spans.len() && start >= spans[s].1 {
            s += 1;
        }
        if s == spans.len() {
            break;
        }
        if end > spans[s].0 {
            mask[i] = 1;
        }
    }
    mask
}

/// A `chat_template` value: one template (named `default`) or a list of
/// `{"name", "template"}` (as tokenizer_config.json stores several).
fn named_templates(v: Option<&Value>) -> std::result::Result<Vec<(String, String)>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![("default".to_string(), s.clone())]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| {
                let name = t.get("name").and_then(Value::as_str);
                let template = t.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => Ok((n.to_string(), t.to_string())),
                    _ => Err("each entry of a `chat_template` list needs a `name` and a `template` string".to_string()),
                }
            })
            .collect(),
        Some(other) => Err(format!(
            "`chat_template` must be a string or a list of named templates, got {}",
            match other {
                Value::Object(_) => "an object",
                Value::Bool(_) => "a boolean",
                _ => "a number",
            }
        )),
    }
}

fn write_json_pretty(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::Json {
        context: format!("writing {}", path.display()),
        source: e,
    })?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

fn push_row(out: &mut BatchEncoding, enc: &tokenizers::Encoding, sample: usize) {
    out.input_ids.push(enc.get_ids().to_vec());
    out.attention_mask.push(enc.get_attention_mask().to_vec());
    out.token_type_ids.push(enc.get_type_ids().to_vec());
    out.special_tokens_mask
        .push(enc.get_special_tokens_mask().to_vec());
    out.offsets.push(enc.get_offsets().to_vec());
    out.word_ids.push(enc.get_word_ids().to_vec());
    out.sequence_ids.push(enc.get_sequence_ids());
    out.tokens.push(enc.get_tokens().to_vec());
    out.overflow_to_sample_mapping.push(sample);
}

/// Python's `clean_up_tokenization`: removes the spaces decoding puts before punctuation
/// and English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// The byte range of `text` covered by a character-offset range (tokenizer offsets are
/// in characters, as in Python).
pub fn char_range_to_bytes(text: &str, start: usize, end: usize) -> (usize, usize) {
    let mut indices = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()));
    let mut bs = text.len();
    let mut be = text.len();
    for (ci, b) in (&mut indices).enumerate() {
        if ci == start {
            bs = b;
        }
        if ci == end {
            be = b;
            break;
        }
    }
    (bs.min(be), be)
}

/// The substring of `text` between character offsets.
pub fn slice_chars(text: &str, start: usize, end: usize) -> &str {
    let (a, b) = char_range_to_bytes(text, start, end);
    &text[a..b]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_slicing() {
        let t = "héllo wörld";
        assert_eq!(slice_chars(t, 0, 5), "héllo");
        assert_eq!(slice_chars(t, 6, 11), "wörld");
        assert_eq!(slice_chars(t, 6, 100), "wörld");
        assert_eq!(slice_chars(t, 50, 100), "");
    }

    #[test]
    fn clean_up() {
        assert_eq!(
            clean_up_tokenization("hello , world . it 's"),
            "hello, world. it's"
        );
    }
}
