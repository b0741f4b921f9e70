//! Chat templates: `apply_chat_template` with Jinja through minijinja, set up as Python's
//! transformers renders them (transformers 4.46, `_compile_jinja_template`):
//! `trim_blocks` and `lstrip_blocks`, Python string methods (`.strip()`, `.split()`,
//! `.startswith()`, ...) through minijinja-contrib's pycompat, `raise_exception`,
//! `strftime_now`, and `tojson` as Python's (no ASCII escaping). Messages, tools and
//! documents are passed as Python passes them.

use minijinja::value::Kwargs;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
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
/// indent=indent, separators=..., sort_keys=False)`.
fn tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let indent = indent.or(kwargs.get::<Option<usize>>("indent")?);
    // Accepted for compatibility; the output keeps Python's defaults for these.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("separators")?;
    let json: Json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = match indent {
        Some(n) => {
            let mut buf = Vec::new();
            let indent_str = " ".repeat(n);
            let fmt = serde_json::ser::PrettyFormatter::with_indent(indent_str.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(&json, &mut ser)
                .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8_lossy(&buf).into_owned()
        }
        None => python_compact_json(&json),
    };
    Ok(Value::from_safe_string(text))
}

/// `json.dumps` default separators: `", "` and `": "`.
fn python_compact_json(v: &Json) -> String {
    match v {
        Json::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(python_compact_json)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Json::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", Json::String(k.clone()), python_compact_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
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
        if let Some(t) = &opts.tools {
            ctx.insert("tools".into(), t.clone());
        }
        if let Some(d) = &opts.documents {
            ctx.insert("documents".into(), d.clone());
        }
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
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }
}
