//! Chat templates: `apply_chat_template` with Jinja through minijinja, set up as Python's
//! transformers renders them (transformers 4.46, `_compile_jinja_template`):
//! `trim_blocks` and `lstrip_blocks`, Python string methods (`.strip()`, `.split()`,
//! `.startswith()`, ...) through minijinja-contrib's pycompat, `raise_exception`,
//! `strftime_now`, and `tojson` as Python's (no ASCII escaping). Messages, tools and
//! documents are passed as Python passes them. As transformers 5.25
//! (utils/chat_template_utils.py): message keys holding `null` are dropped, reasoning
//! (`reasoning_content`, `thinking` or `reasoning`) is offered under `thinking` and
//! `reasoning_content` too, `continue_final_message` leaves the last message open, and
//! `{% generation %}` blocks mark the assistant's spans (for `assistant_masks`).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Output, State, Value};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// Options of one rendering.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub add_generation_prompt: bool,
    /// Python's `continue_final_message`: the field of the last message the rendering
    /// ends inside (`content` for `true`); `None` renders the chat closed.
    pub continue_final_message: Option<String>,
    /// Python's `chat_template` argument: the name of one of the tokenizer's templates
    /// (or a whole template); `None` picks as `get_chat_template` does.
    pub chat_template: Option<String>,
    pub tools: Option<Json>,
    pub documents: Option<Json>,
    /// Extra variables (bos_token, eos_token, ...), as Python passes the special tokens.
    pub extra: serde_json::Map<String, Json>,
}

fn raise_exception(msg: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    // No timezone database: UTC, as a server would render it.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    format
        .replace("%Y", &format!("{y:04}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m as usize).saturating_sub(1).min(11)])
        .replace("%b", &MONTHS[(m as usize).saturating_sub(1).min(11)][..3])
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Python's `tojson` in transformers' environment: `json.dumps(x, ensure_ascii=False,
/// indent=indent, separators=separators, sort_keys=False)`, every argument honoured.
fn tojson(
    value: Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    // Python: an int is that many spaces, a string is used as is, None is compact.
    let indent = match indent {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v).map_err(|_| {
                JinjaError::new(ErrorKind::InvalidOperation, "tojson: indent must be an int")
            })?)),
        },
        None => None,
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        // json.dumps: (', ', ': '), or (',', ': ') when indenting.
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let json: Json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let dumper = PyJson {
        indent,
        item_sep,
        key_sep,
        sort_keys,
        ensure_ascii,
    };
    let mut out = String::new();
    dumper.dump(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps` layout.
struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        let quoted = Json::String(s.to_string()).to_string();
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }

    fn dump(&self, v: &Json, depth: usize, out: &mut String) {
        match v {
            Json::Array(a) if a.is_empty() => out.push_str("[]"),
            Json::Object(o) if o.is_empty() => out.push_str("{}"),
            Json::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.dump(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            Json::Object(o) => {
                let mut items: Vec<(&String, &Json)> = o.iter().collect();
                if self.sort_keys {
                    items.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in items.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.string(k, out);
                    out.push_str(&self.key_sep);
                    self.dump(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
            Json::String(s) => self.string(s, out),
            Json::Number(n) => match n.as_f64() {
                Some(f) if !(n.is_i64() || n.is_u64()) => out.push_str(&py_float(f)),
                _ => out.push_str(&n.to_string()),
            },
            other => out.push_str(&other.to_string()),
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, `1e-05` / `1e+16` exponents.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let exp = if f == 0.0 {
        0
    } else {
        f.abs().log10().floor() as i32
    };
    if (-5..16).contains(&exp) {
        let s = format!("{f:?}");
        // Debug of f64 in this range is plain decimal with a `.0` where integral.
        if !s.contains('e') {
            return s;
        }
    }
    // Scientific: mantissa digits from `{:e}`, exponent signed with at least two digits.
    let s = format!("{f:e}");
    match s.split_once('e') {
        Some((mant, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{mant}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// Python's `repr(str)`.
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str(x)` for a value Jinja2 prints: `None`, `True`, `{'a': [1, 'x']}`.
/// Returns `None` for values minijinja already prints as Python does.
fn py_str(v: &Value) -> Option<String> {
    match v.kind() {
        ValueKind::None => Some("None".into()),
        ValueKind::Bool => Some(if v.is_true() { "True" } else { "False" }.into()),
        ValueKind::Number if !v.is_integer() => f64::try_from(v.clone()).ok().map(py_float_repr),
        ValueKind::Seq | ValueKind::Map => {
            let mut out = String::new();
            py_repr(v, &mut out);
            Some(out)
        }
        _ => None,
    }
}

/// Python's `repr(x)` of a value inside a container.
fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::String => py_repr_str(v.as_str().unwrap_or_default(), out),
        ValueKind::Number if !v.is_integer() => match f64::try_from(v.clone()) {
            Ok(f) => out.push_str(&py_float_repr(f)),
            Err(_) => out.push_str(&v.to_string()),
        },
        ValueKind::Seq => {
            out.push('[');
            if let Ok(iter) = v.try_iter() {
                for (i, x) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&x, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = v.try_iter() {
                for (i, k) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&k, out);
                    out.push_str(": ");
                    py_repr(&v.get_item(&k).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => match py_str(v) {
            Some(s) => out.push_str(&s),
            None => out.push_str(&v.to_string()),
        },
    }
}

/// Python's float repr (`inf`, `nan` spelled as Python does).
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        py_float(f)
    }
}

/// `{{ x }}` as Jinja2 prints it: Python's `str(x)`.
fn py_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> std::result::Result<(), JinjaError> {
    match py_str(value) {
        Some(s) => out.write_str(&s).map_err(JinjaError::from),
        None => minijinja::escape_formatter(out, state, value),
    }
}

/// `x | string` as Jinja2's: Python's `str(x)`.
fn py_string_filter(value: Value) -> Value {
    match py_str(&value) {
        Some(s) => Value::from(s),
        None if value.kind() == ValueKind::String => value,
        None => Value::from(value.to_string()),
    }
}

/// Stand-ins printed for the start and end of a `{% generation %}` block (characters of
/// Unicode's supplementary private use area, which no chat carries).
const GENERATION_START: char = '\u{F0000}';
const GENERATION_END: char = '\u{F0001}';

/// Rewrites transformers' `{% generation %}` / `{% endgeneration %}` block (its
/// AssistantTracker extension; minijinja has no custom tags) into expressions printing
/// [`GENERATION_START`] / [`GENERATION_END`], keeping the whitespace the tags would
/// leave: their own `-` trimming, and the `lstrip_blocks` / `trim_blocks` a block tag gets
/// (applied here, since an expression does not get them).
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        let (before, tag) = rest.split_at(at);
        let Some(close) = tag[2..].find("%}").map(|i| i + 2) else {
            break;
        };
        let inner = &tag[2..close];
        let left_dash = inner.starts_with('-');
        let left_plus = inner.starts_with('+');
        let right_dash = inner.ends_with('-');
        let word = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let marker = match word {
            "generation" => GENERATION_START,
            "endgeneration" => GENERATION_END,
            _ => {
                out.push_str(before);
                out.push_str(&tag[..close + 2]);
                rest = &tag[close + 2..];
                continue;
            }
        };
        // lstrip_blocks: blanks between the line start and the tag go (`{%+` keeps
        // them), where nothing else stands before the tag on its line in the source.
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let tag_at = source.len() - rest.len() + at;
        let source_line = source[..tag_at].rfind('\n').map_or(0, |i| i + 1);
        let blank_line_start = source[source_line..tag_at]
            .chars()
            .all(|c| c == ' ' || c == '\t');
        if !left_dash && !left_plus && blank_line_start {
            out.push_str(&before[..line_start]);
        } else {
            out.push_str(before);
        }
        out.push_str(if left_dash { "{{- \"" } else { "{{ \"" });
        out.push(marker);
        out.push_str(if right_dash { "\" -}}" } else { "\" }}" });
        rest = &tag[close + 2..];
        // trim_blocks: the first newline after the tag goes.
        if !right_dash {
            rest = rest
                .strip_prefix("\r\n")
                .or_else(|| rest.strip_prefix('\n'))
                .unwrap_or(rest);
        }
    }
    out.push_str(rest);
    out
}

/// Drops the stand-ins from a rendering; the `{% generation %}` spans, in characters of
/// what remains.
fn take_generation_spans(rendered: &str) -> (String, Vec<(usize, usize)>) {
    let mut text = String::with_capacity(rendered.len());
    let mut spans = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut chars = 0usize;
    for c in rendered.chars() {
        match c {
            GENERATION_START => open.push(chars),
            GENERATION_END => {
                if let Some(start) = open.pop() {
                    spans.push((start, chars));
                }
            }
            _ => {
                text.push(c);
                chars += 1;
            }
        }
    }
    spans.sort_unstable();
    (text, spans)
}

/// transformers' `_normalize_chat_messages` and `_alias_reasoning_fields`: keys holding
/// `null` dropped; the first reasoning field set also offered as `thinking` (unless the
/// message has one) and as `reasoning_content`.
fn normalize_messages(messages: &Json) -> Result<Json> {
    let list = messages
        .as_array()
        .ok_or_else(|| Error::invalid("chat messages must be a list of {role, content} objects"))?;
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let Some(obj) = m.as_object() else {
            return Err(Error::invalid(format!(
                "chat messages must be {{role, content}} objects, got {m}"
            )));
        };
        let mut obj: serde_json::Map<String, Json> = obj
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let reasoning = ["reasoning_content", "thinking", "reasoning"]
            .iter()
            .find_map(|k| obj.get(*k).cloned());
        if let Some(r) = reasoning {
            obj.entry("thinking").or_insert(r.clone());
            obj.insert("reasoning_content".into(), r);
        }
        out.push(Json::Object(obj));
    }
    Ok(Json::Array(out))
}

/// What `continue_final_message` appends to the final message, as Python.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// A rendering with the `{% generation %}` spans (character offsets).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub generation_spans: Vec<(usize, usize)>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The source has `{% generation %}` blocks.
    has_generation: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

impl ChatTemplate {
    /// Compiles a template; a syntax error is a clear error.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("string", py_string_filter);
        env.set_formatter(py_formatter);
        let rewritten = rewrite_generation_tags(source);
        let has_generation = rewritten != source;
        env.add_template_owned("chat", rewritten)
            .map_err(|e| Error::Tokenizer(format!("chat template does not compile: {e}")))?;
        Ok(Self {
            env,
            has_generation,
        })
    }

    /// Whether the template marks the assistant's turns with `{% generation %}`.
    pub fn has_generation_blocks(&self) -> bool {
        self.has_generation
    }

    /// Renders `messages` (a list of `{role, content, ...}` objects).
    pub fn render(&self, messages: &Json, opts: &ChatOptions) -> Result<String> {
        Ok(self.render_with_spans(messages, opts)?.text)
    }

    /// [`Self::render`], with the spans of the `{% generation %}` blocks.
    pub fn render_with_spans(&self, messages: &Json, opts: &ChatOptions) -> Result<Rendered> {
        let mut messages = normalize_messages(messages)?;
        let mut continued = None;
        if let Some(field) = &opts.continue_final_message {
            if opts.add_generation_prompt {
                return Err(Error::invalid(
                    "continue_final_message and add_generation_prompt cannot both be set: the \
                     final message is either continued or followed by a new assistant turn",
                ));
            }
            continued = Some(self.tag_final_message(&mut messages, field)?);
        }
        let mut ctx = opts.extra.clone();
        ctx.insert("messages".into(), messages);
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(opts.add_generation_prompt),
        );
        // Python always passes both, None when absent: `tools is none` holds.
        ctx.insert("tools".into(), opts.tools.clone().unwrap_or(Json::Null));
        ctx.insert(
            "documents".into(),
            opts.documents.clone().unwrap_or(Json::Null),
        );
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let raw = tmpl
            .render(Value::from_serialize(&ctx))
            .map_err(|e| Error::invalid(format!("chat template: {e}")))?;
        let (mut text, mut generation_spans) = take_generation_spans(&raw);
        if let Some(final_text) = continued {
            let tag = CONTINUE_TAG.trim_end();
            let (Some(at), true) = (text.rfind(tag), text.contains(final_text.trim())) else {
                return Err(Error::invalid(
                    "continue_final_message is set but the final message does not appear in the \
                     chat after applying the chat template (the template changes it)",
                ));
            };
            // Where the template kept the space after the tag, cut there; else the
            // message's trailing blanks were trimmed, and the cut is right-stripped too.
            let keep = if text[at..].starts_with(CONTINUE_TAG) {
                text[..at].to_string()
            } else {
                text[..at].trim_end().to_string()
            };
            let len = keep.chars().count();
            generation_spans.retain(|(s, _)| *s < len);
            for span in &mut generation_spans {
                span.1 = span.1.min(len);
            }
            text = keep;
        }
        Ok(Rendered {
            text,
            generation_spans,
        })
    }

    /// Appends [`CONTINUE_TAG`] to `field` of the last message (the last text block of a
    /// list of content parts); the original text, as Python checks it afterwards.
    fn tag_final_message(&self, messages: &mut Json, field: &str) -> Result<String> {
        let source = self
            .env
            .get_template("chat")
            .ok()
            .map(|t| t.source().to_string())
            .unwrap_or_default();
        let Some(last) = messages.as_array_mut().and_then(|l| l.last_mut()) else {
            return Err(Error::invalid(
                "continue_final_message is set but the conversation is empty",
            ));
        };
        let reasoning = ["reasoning_content", "thinking", "reasoning"];
        let fields: Vec<String> = if reasoning.contains(&field) {
            let value = last.get(field).cloned();
            reasoning
                .iter()
                .filter(|k| value.is_some() && last.get(**k) == value.as_ref())
                .map(|k| k.to_string())
                .collect()
        } else {
            vec![field.to_string()]
        };
        let Some(value) = last.get(field).cloned() else {
            return Err(Error::invalid(format!(
                "continue_final_message is set but the final message has no \"{field}\" to continue"
            )));
        };
        if !fields.iter().any(|f| source.contains(f.as_str())) {
            return Err(Error::invalid(format!(
                "continue_final_message is set to \"{field}\" but the chat template does not read it"
            )));
        }
        match value {
            Json::String(s) => {
                for f in &fields {
                    last[f.as_str()] = Json::String(format!("{s}{CONTINUE_TAG}"));
                }
                Ok(s)
            }
            Json::Array(mut parts) => {
                let Some(text_part) = parts
                    .iter_mut()
                    .rev()
                    .find_map(|p| p.get_mut("text").filter(|t| t.is_string()))
                else {
                    return Err(Error::invalid(
                        "continue_final_message is set but the final message has no text to continue",
                    ));
                };
                let s = text_part.as_str().unwrap_or_default().to_string();
                *text_part = Json::String(format!("{s}{CONTINUE_TAG}"));
                last[field] = Json::Array(parts);
                Ok(s)
            }
            other => Err(Error::invalid(format!(
                "continue_final_message: the final message's \"{field}\" is not text: {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `{% generation %}` keeps the whitespace a block tag would: lstrip only where the
    /// tag starts its line, `{%+` none, trim_blocks one newline (or CRLF); `{%}` is not a
    /// tag (no panic).
    #[test]
    fn generation_tags_keep_block_whitespace() {
        let render = |src: &str| {
            let t = ChatTemplate::new(src).unwrap();
            t.render_with_spans(&json!([]), &ChatOptions::default())
                .unwrap()
        };
        let r = render("a\n  {% generation %}\nB{% endgeneration %}c");
        assert_eq!(
            (r.text.as_str(), r.generation_spans),
            ("a\nBc", vec![(2, 3)])
        );
        let r = render("{% if true %}  {% generation %}X{% endgeneration %}{% endif %}");
        assert_eq!((r.text.as_str(), r.generation_spans), ("  X", vec![(2, 3)]));
        let r = render("  {%+ generation %}X{% endgeneration %}\r\nY");
        assert_eq!(r.text, "  XY");
        assert!(ChatTemplate::new("{%}").is_err());
    }

    #[test]
    fn chatml_with_python_methods() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        )
        .unwrap();
        let out = t
            .render(
                &json!([{"role": "user", "content": "  hi  "}]),
                &ChatOptions {
                    add_generation_prompt: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn errors_are_clear() {
        assert!(ChatTemplate::new("{% for %}").is_err());
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let err = t
            .render(&json!([]), &ChatOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no system role"), "{err}");
        assert!(t
            .render(&json!({"role": "x"}), &ChatOptions::default())
            .is_err());
    }

    #[test]
    fn tojson_is_pythons() {
        let t = ChatTemplate::new("{{ tools | tojson }}|{{ tools | tojson(indent=2) }}").unwrap();
        let out = t
            .render(
                &json!([]),
                &ChatOptions {
                    tools: Some(json!([{"name": "é", "n": 1}])),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            out,
            "[{\"name\": \"é\", \"n\": 1}]|[\n  {\n    \"name\": \"é\",\n    \"n\": 1\n  }\n]"
        );
    }

    #[test]
    fn prints_and_dumps_as_python() {
        // Expected text from transformers 4.46.3's `_compile_jinja_template` (jinja2 3.1.6).
        let t = ChatTemplate::new(
            "{{ none }}|{{ true }}|{{ x }}|{{ x | string }}|{{ y | tojson(indent=2, sort_keys=true) }}|{{ y | tojson(separators=(',', ':')) }}|{{ y | tojson(ensure_ascii=true) }}|{{ [1e-7, 1e16, 0.5, 3] | tojson }}|{{ [1e-7, 1e16] }}|{{ 1e-7 }}|{{ 2.5 | string }}",
        )
        .unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert(
            "x".into(),
            json!({"a": [1, "it's", null, true, 2.5], "b": "q\"\n"}),
        );
        extra.insert("y".into(), json!({"z": [], "é": {"k": 1.0}, "a": {}}));
        let out = t
            .render(
                &json!([]),
                &ChatOptions {
                    extra,
                    ..Default::default()
                },
            )
            .unwrap();
        let want = "None|True|{'a': [1, \"it's\", None, True, 2.5], 'b': 'q\"\\n'}|{'a': [1, \"it's\", None, True, 2.5], 'b': 'q\"\\n'}|{\n  \"a\": {},\n  \"z\": [],\n  \"\u{e9}\": {\n    \"k\": 1.0\n  }\n}|{\"z\":[],\"\u{e9}\":{\"k\":1.0},\"a\":{}}|{\"z\": [], \"\\u00e9\": {\"k\": 1.0}, \"a\": {}}|[1e-07, 1e+16, 0.5, 3]|[1e-07, 1e+16]|1e-07|2.5";
        assert_eq!(out, want);
    }

    #[test]
    fn tools_and_documents_are_none_when_absent() {
        let t = ChatTemplate::new("{{ tools is none }} {{ documents is none }}").unwrap();
        let out = t.render(&json!([]), &ChatOptions::default()).unwrap();
        assert_eq!(out, "True True");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }
}
