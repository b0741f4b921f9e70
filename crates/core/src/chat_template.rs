//! Chat templates: `apply_chat_template` with Jinja through minijinja, set up as Python's
//! transformers renders them (transformers 4.46, `_compile_jinja_template`):
//! `trim_blocks` and `lstrip_blocks`, Python string methods (`.strip()`, `.split()`,
//! `.startswith()`, ...) through minijinja-contrib's pycompat, `raise_exception`,
//! `strftime_now`, and `tojson` as Python's (no ASCII escaping). Messages, tools and
//! documents are passed as Python passes them.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Output, State, Value};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// Options of one rendering.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub add_generation_prompt: bool,
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

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
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
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Tokenizer(format!("chat template does not compile: {e}")))?;
        Ok(Self { env })
    }

    /// Renders `messages` (a list of `{role, content, ...}` objects).
    pub fn render(&self, messages: &Json, opts: &ChatOptions) -> Result<String> {
        if !messages.is_array() {
            return Err(Error::invalid(
                "chat messages must be a list of {role, content} objects",
            ));
        }
        let mut ctx = opts.extra.clone();
        ctx.insert("messages".into(), messages.clone());
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
        tmpl.render(Value::from_serialize(&ctx))
            .map_err(|e| Error::invalid(format!("chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
