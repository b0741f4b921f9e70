//! Pipeline parameters by their Python names, with clear errors for unknown names and
//! wrongly typed values.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::Value;

use rustformers_core::{Error, Result};

/// Parameters of one pipeline call (`top_k`, `aggregation_strategy`, ...).
pub type Params = serde_json::Map<String, Value>;

/// Reads parameters, remembering which were read so that leftovers can be reported.
pub struct ParamReader<'a> {
    params: &'a Params,
    task: &'static str,
    known: RefCell<BTreeSet<&'static str>>,
}

impl<'a> ParamReader<'a> {
    pub fn new(task: &'static str, params: &'a Params) -> Self {
        Self {
            params,
            task,
            known: RefCell::new(BTreeSet::new()),
        }
    }

    fn get(&self, key: &'static str) -> Option<&'a Value> {
        self.known.borrow_mut().insert(key);
        self.params.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::invalid(format!(
            "{}: parameter `{key}` must be {want}, got {got}",
            self.task
        ))
    }

    /// A JSON list (tools, documents), as given.
    pub fn list(&self, key: &'static str) -> Result<Option<Value>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Array(_)) => Ok(Some(v.clone())),
            Some(v) => Err(self.bad(key, "a list", v)),
        }
    }

    /// True when the key was given (even as null).
    pub fn has(&self, key: &'static str) -> bool {
        self.known.borrow_mut().insert(key);
        self.params.contains_key(key)
    }

    pub fn usize(&self, key: &'static str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v {
                Value::Number(n) => n
                    .as_u64()
                    .map(|x| Some(x as usize))
                    .ok_or_else(|| self.bad(key, "a non-negative integer", v)),
                Value::String(s) => s
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| self.bad(key, "a non-negative integer", v)),
                _ => Err(self.bad(key, "a non-negative integer", v)),
            },
        }
    }

    pub fn f64(&self, key: &'static str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v {
                Value::Number(n) => Ok(n.as_f64()),
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| self.bad(key, "a number", v)),
                _ => Err(self.bad(key, "a number", v)),
            },
        }
    }

    pub fn bool(&self, key: &'static str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v {
                Value::Bool(b) => Ok(Some(*b)),
                Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => Ok(Some(true)),
                    "false" | "0" | "no" => Ok(Some(false)),
                    _ => Err(self.bad(key, "true or false", v)),
                },
                _ => Err(self.bad(key, "true or false", v)),
            },
        }
    }

    pub fn string(&self, key: &'static str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.bad(key, "a string", v)),
        }
    }

    /// A list of strings; a single string counts as a one-item list, or, when `split_commas`,
    /// as a comma-separated list (as zero-shot's `candidate_labels`).
    pub fn strings(&self, key: &'static str, split_commas: bool) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(if split_commas {
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            } else {
                vec![s.clone()]
            })),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| match x {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.bad(key, "a list of strings", other)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.bad(key, "a list of strings", v)),
        }
    }

    /// A nested object of parameters (`tokenize_kwargs`).
    pub fn object(&self, key: &'static str) -> Result<Option<Params>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o.clone())),
            Some(v) => Err(self.bad(key, "an object", v)),
        }
    }

    /// Python's `truncation` tokenizer argument: a bool or a strategy name.
    pub fn truncation(&self) -> Result<Option<rustformers_core::Truncation>> {
        use rustformers_core::Truncation;
        match self.get("truncation") {
            None => Ok(None),
            Some(Value::Bool(true)) => Ok(Some(Truncation::LongestFirst)),
            Some(Value::Bool(false)) => Ok(Some(Truncation::None)),
            Some(Value::String(s)) => Truncation::parse(s.trim()).map(Some),
            Some(v) => Err(self.bad("truncation", "a bool or a strategy name", v)),
        }
    }

    /// Fails on any parameter that was never read: a misspelt or unsupported option.
    pub fn finish(&self) -> Result<()> {
        let known = self.known.borrow();
        let unknown: Vec<&String> = self
            .params
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{}: unknown parameter(s) {}; accepted: {}",
            self.task,
            unknown
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            known.iter().copied().collect::<Vec<_>>().join(", ")
        )))
    }
}
