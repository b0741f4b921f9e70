//! Training data as Python's `datasets` reads it for the example scripts: JSONL and CSV
//! files whose columns are named as in `run_classification.py` / `run_ner.py` (`text`,
//! `text_pair` or `sentence1`/`sentence2`, `label`; `tokens` + `ner_tags`). Every problem
//! is an error naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Result, TrainerError};

/// One row: its 1-based line number (for errors) and its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: usize,
    pub columns: Map<String, Value>,
}

/// Reads `path` by its extension: `.jsonl`/`.json` (one object per line) or `.csv`.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = || std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e));
    match ext.as_str() {
        "jsonl" | "json" => read_jsonl(&text()?, path),
        "csv" => read_csv(&text()?, path),
        "parquet" => read_parquet(path),
        other => Err(TrainerError::Data {
            path: path.display().to_string(),
            line: 0,
            message: format!("unknown data file type `.{other}` (use .jsonl, .csv or .parquet)"),
        }),
    }
}

/// A Parquet file (as `datasets`, pandas and polars write them: Snappy, LZ4, gzip, zstd
/// or Brotli pages), row `i` numbered `i + 1` in errors. Lists (`tokens`, `ner_tags`)
/// become JSON arrays.
fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| TrainerError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| data_err(path, 0, format!("not a readable Parquet file: {e}")))?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| data_err(path, 0, format!("Parquet: {e}")))?;
    let mut rows = Vec::new();
    for (i, row) in iter.enumerate() {
        let row = row.map_err(|e| data_err(path, i + 1, format!("Parquet row: {e}")))?;
        let columns = match row.to_json_value() {
            Value::Object(m) => m,
            _ => return Err(data_err(path, i + 1, "a Parquet row that is not a record")),
        };
        rows.push(Row {
            line: i + 1,
            columns,
        });
    }
    if rows.is_empty() {
        return Err(data_err(path, 0, "no rows"));
    }
    Ok(rows)
}

fn data_err(path: &Path, line: usize, message: impl Into<String>) -> TrainerError {
    TrainerError::Data {
        path: path.display().to_string(),
        line,
        message: message.into(),
    }
}

fn read_jsonl(text: &str, path: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(columns)) => rows.push(Row {
                line: i + 1,
                columns,
            }),
            Ok(_) => return Err(data_err(path, i + 1, "expected a JSON object")),
            Err(e) => return Err(data_err(path, i + 1, format!("invalid JSON: {e}"))),
        }
    }
    if rows.is_empty() {
        return Err(data_err(path, 0, "no rows"));
    }
    Ok(rows)
}

/// RFC 4180 CSV with a header row: quoted fields may hold commas, quotes (`""`) and
/// newlines. Numbers stay strings unless the column is `label` and parses as an integer.
fn read_csv(text: &str, path: &Path) -> Result<Vec<Row>> {
    let mut records: Vec<(usize, Vec<String>)> = Vec::new();
    let mut field = String::new();
    let mut record = Vec::new();
    let (mut line, mut start_line) = (1usize, 1usize);
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                if !(record.len() == 1 && record[0].is_empty()) {
                    records.push((start_line, std::mem::take(&mut record)));
                }
                record.clear();
                line += 1;
                start_line = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(data_err(path, start_line, "unterminated quoted field"));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push((start_line, record));
    }
    let mut it = records.into_iter();
    let Some((_, header)) = it.next() else {
        return Err(data_err(path, 0, "empty CSV file"));
    };
    let mut rows = Vec::new();
    for (line, rec) in it {
        if rec.len() != header.len() {
            return Err(data_err(
                path,
                line,
                format!("{} fields, the header has {}", rec.len(), header.len()),
            ));
        }
        let columns = header
            .iter()
            .zip(rec)
            .map(|(h, v)| (h.clone(), Value::String(v)))
            .collect();
        rows.push(Row { line, columns });
    }
    if rows.is_empty() {
        return Err(data_err(path, 0, "no rows after the header"));
    }
    Ok(rows)
}

/// A label as written in a file: a class name or a class id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LabelValue {
    Name(String),
    Id(i64),
}

/// A text-classification example.
#[derive(Debug, Clone, PartialEq)]
pub struct TextExample {
    pub line: usize,
    pub text: String,
    pub text_pair: Option<String>,
    pub label: LabelValue,
}

/// The text columns tried in order (Python's `run_glue.py` / `run_classification.py`).
const TEXT_COLUMNS: [&str; 3] = ["text", "sentence", "sentence1"];
const PAIR_COLUMNS: [&str; 3] = ["text_pair", "sentence2", "question"];

/// Text-classification examples from `path`: a text column (`text`, `sentence` or
/// `sentence1`), an optional pair column (`text_pair`, `sentence2`), and `label_column`
/// (a class name or an integer id).
pub fn text_classification(path: &Path, label_column: &str) -> Result<Vec<TextExample>> {
    let rows = read_rows(path)?;
    let first = &rows[0].columns;
    let text_col = TEXT_COLUMNS
        .iter()
        .find(|c| first.contains_key(**c))
        .ok_or_else(|| {
            data_err(
                path,
                rows[0].line,
                format!(
                    "no text column (one of {}); columns: {}",
                    TEXT_COLUMNS.join(", "),
                    first.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
    if !first.contains_key(label_column) {
        return Err(data_err(
            path,
            rows[0].line,
            format!(
                "no label column `{label_column}`; columns: {}",
                first.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let pair_col = PAIR_COLUMNS.iter().find(|c| first.contains_key(**c));
    // CSV has no types: an integer in the label column is a class id (as pandas reads
    // an integer column), whatever the column's name.
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    rows.into_iter()
        .map(|r| {
            let text = match r.columns.get(*text_col) {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(data_err(
                        path,
                        r.line,
                        format!("`{text_col}` is not a string"),
                    ))
                }
            };
            let text_pair = match pair_col.map(|c| r.columns.get(*c)) {
                None | Some(None) | Some(Some(Value::Null)) => None,
                Some(Some(Value::String(s))) => Some(s.clone()),
                Some(Some(_)) => {
                    return Err(data_err(path, r.line, "the pair column is not a string"))
                }
            };
            let label = match r.columns.get(label_column) {
                Some(Value::String(s)) => match s.trim().parse::<i64>() {
                    Ok(id) if csv => LabelValue::Id(id),
                    _ => LabelValue::Name(s.clone()),
                },
                Some(Value::Number(n)) if n.as_i64().is_some() => {
                    LabelValue::Id(n.as_i64().unwrap_or_default())
                }
                Some(other) => {
                    return Err(data_err(
                        path,
                        r.line,
                        format!("label `{other}` is neither a class name nor an integer id"),
                    ))
                }
                None => {
                    return Err(data_err(
                        path,
                        r.line,
                        format!("no `{label_column}` column"),
                    ))
                }
            };
            Ok(TextExample {
                line: r.line,
                text,
                text_pair,
                label,
            })
        })
        .collect()
}

/// A token-classification example: words and one tag per word.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenExample {
    pub line: usize,
    pub tokens: Vec<String>,
    pub tags: Vec<LabelValue>,
}

/// Token-classification examples (`run_ner.py`'s columns): a list of words (`tokens`)
/// and a list of tags (`tags_column`, e.g. `ner_tags`), names or ids, as long as the
/// words.
pub fn token_classification(path: &Path, tags_column: &str) -> Result<Vec<TokenExample>> {
    let rows = read_rows(path)?;
    rows.into_iter()
        .map(|r| {
            let list = |col: &str| -> Result<Vec<Value>> {
                match r.columns.get(col) {
                    Some(Value::Array(a)) => Ok(a.clone()),
                    Some(_) => Err(data_err(path, r.line, format!("`{col}` is not a list"))),
                    None => Err(data_err(
                        path,
                        r.line,
                        format!(
                            "no `{col}` column; columns: {}",
                            r.columns.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    )),
                }
            };
            let tokens = list("tokens")?
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(data_err(path, r.line, "`tokens` holds a non-string")),
                })
                .collect::<Result<Vec<_>>>()?;
            let tags = list(tags_column)?
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(LabelValue::Name(s)),
                    Value::Number(n) if n.as_i64().is_some() => {
                        Ok(LabelValue::Id(n.as_i64().unwrap_or_default()))
                    }
                    other => Err(data_err(
                        path,
                        r.line,
                        format!("tag `{other}` is neither a name nor an integer id"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            if tags.len() != tokens.len() {
                return Err(data_err(
                    path,
                    r.line,
                    format!("{} tokens but {} tags", tokens.len(), tags.len()),
                ));
            }
            Ok(TokenExample {
                line: r.line,
                tokens,
                tags,
            })
        })
        .collect()
}

/// The texts of `text_column` (language modelling).
pub fn texts(path: &Path, text_column: &str) -> Result<Vec<String>> {
    let rows = read_rows(path)?;
    rows.into_iter()
        .map(|r| match r.columns.get(text_column) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(data_err(
                path,
                r.line,
                format!("`{text_column}` is not a string"),
            )),
            None => Err(data_err(
                path,
                r.line,
                format!(
                    "no `{text_column}` column; columns: {}",
                    r.columns.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        })
        .collect()
}

/// The class names of a classification task and each example's class index.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    pub names: Vec<String>,
    index: BTreeMap<LabelValue, u32>,
}

impl LabelSet {
    /// The label set of the training data: class names sorted (as Python's example
    /// scripts sort `unique` labels); integer ids `0..n` take the names of
    /// `config_names` when it has exactly `n` of them (else `LABEL_i`); other integers
    /// (ratings 1-5) are classes named by their digits, sorted as text, as Python's
    /// `run_classification.py` turns labels into strings and sorts them.
    pub fn from_examples(
        examples: &[TextExample],
        path: &Path,
        config_names: &[String],
    ) -> Result<Self> {
        let values: Vec<(usize, &LabelValue)> =
            examples.iter().map(|e| (e.line, &e.label)).collect();
        Self::from_values(&values, path, config_names)
    }

    /// The tag set of token-classification examples (as [`Self::from_examples`]).
    pub fn from_tags(
        examples: &[TokenExample],
        path: &Path,
        config_names: &[String],
    ) -> Result<Self> {
        let values: Vec<(usize, &LabelValue)> = examples
            .iter()
            .flat_map(|e| e.tags.iter().map(move |t| (e.line, t)))
            .collect();
        Self::from_values(&values, path, config_names)
    }

    fn from_values(
        all: &[(usize, &LabelValue)],
        path: &Path,
        config_names: &[String],
    ) -> Result<Self> {
        let values: BTreeSet<&LabelValue> = all.iter().map(|(_, v)| *v).collect();
        let (ids, names): (Vec<&LabelValue>, Vec<&LabelValue>) = values
            .into_iter()
            .partition(|v| matches!(v, LabelValue::Id(_)));
        if !ids.is_empty() && !names.is_empty() {
            let line = all
                .iter()
                .find(|(_, v)| matches!(v, LabelValue::Name(_)))
                .map_or(0, |(l, _)| *l);
            return Err(data_err(
                path,
                line,
                "labels mix class names and integer ids",
            ));
        }
        if names.is_empty() {
            let n = ids.len();
            // `ids` is sorted: ids proper when they are exactly 0..n.
            let dense = ids
                .iter()
                .enumerate()
                .all(|(i, v)| **v == LabelValue::Id(i as i64));
            if !dense {
                let mut named: Vec<(String, i64)> = ids
                    .iter()
                    .filter_map(|v| match v {
                        LabelValue::Id(x) => Some((x.to_string(), *x)),
                        LabelValue::Name(_) => None,
                    })
                    .collect();
                named.sort();
                let mut index = BTreeMap::new();
                for (i, (name, x)) in named.iter().enumerate() {
                    index.insert(LabelValue::Id(*x), i as u32);
                    index.insert(LabelValue::Name(name.clone()), i as u32);
                }
                let names = named.into_iter().map(|(name, _)| name).collect();
                return Ok(Self { names, index });
            }
            let names: Vec<String> = if config_names.len() == n {
                config_names.to_vec()
            } else {
                (0..n).map(|i| format!("LABEL_{i}")).collect()
            };
            let index = (0..n as i64)
                .map(|i| (LabelValue::Id(i), i as u32))
                .collect();
            return Ok(Self { names, index });
        }
        let names: Vec<String> = names
            .iter()
            .filter_map(|v| match v {
                LabelValue::Name(s) => Some(s.clone()),
                LabelValue::Id(_) => None,
            })
            .collect();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (LabelValue::Name(n.clone()), i as u32))
            .collect();
        Ok(Self { names, index })
    }

    /// A label set from known names (a fine-tuned model's id2label).
    pub fn from_names(names: Vec<String>) -> Self {
        let mut index: BTreeMap<LabelValue, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (LabelValue::Name(n.clone()), i as u32))
            .collect();
        for i in 0..names.len() {
            index.insert(LabelValue::Id(i as i64), i as u32);
        }
        Self { names, index }
    }

    /// The class index of each example; a label outside the set names its line.
    pub fn indices(&self, examples: &[TextExample], path: &Path) -> Result<Vec<u32>> {
        examples
            .iter()
            .map(|e| self.index_of(&e.label, e.line, path))
            .collect()
    }

    /// The tag indices of each token-classification example.
    pub fn tag_indices(&self, examples: &[TokenExample], path: &Path) -> Result<Vec<Vec<u32>>> {
        examples
            .iter()
            .map(|e| {
                e.tags
                    .iter()
                    .map(|t| self.index_of(t, e.line, path))
                    .collect()
            })
            .collect()
    }

    fn index_of(&self, label: &LabelValue, line: usize, path: &Path) -> Result<u32> {
        self.index.get(label).copied().ok_or_else(|| {
            let shown = match label {
                LabelValue::Name(s) => format!("`{s}`"),
                LabelValue::Id(i) => i.to_string(),
            };
            data_err(
                path,
                line,
                format!(
                    "label {shown} is not one of the training labels ({})",
                    self.names.join(", ")
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn jsonl_and_csv_give_the_same_examples() {
        let d = tempfile::tempdir().unwrap();
        let j = write(
            d.path(),
            "a.jsonl",
            "{\"text\": \"good, really\", \"label\": \"pos\"}\n\n{\"text\": \"bad\", \"label\": \"neg\"}\n",
        );
        let c = write(
            d.path(),
            "a.csv",
            "text,label\n\"good, really\",pos\nbad,neg\n",
        );
        let a = text_classification(&j, "label").unwrap();
        let b = text_classification(&c, "label").unwrap();
        // File lines: JSONL skips the blank line, CSV counts its header.
        assert_eq!((a[0].line, a[1].line), (1, 3));
        assert_eq!((b[0].line, b[1].line), (2, 3));
        let strip = |v: &[TextExample]| -> Vec<(String, LabelValue)> {
            v.iter()
                .map(|e| (e.text.clone(), e.label.clone()))
                .collect()
        };
        assert_eq!(strip(&a), strip(&b));
        let set = LabelSet::from_examples(&a, &j, &[]).unwrap();
        assert_eq!(set.names, ["neg", "pos"]);
        assert_eq!(set.indices(&a, &j).unwrap(), [1, 0]);
        // Quoted newlines and quotes in CSV.
        let q = write(d.path(), "q.csv", "text,label\n\"a \"\"b\"\"\nc\",1\nd,0\n");
        let e = text_classification(&q, "label").unwrap();
        assert_eq!(e[0].text, "a \"b\"\nc");
        assert_eq!(e[0].label, LabelValue::Id(1));
        assert_eq!(e[1].line, 4);
        let ids = LabelSet::from_examples(&e, &q, &["no".into(), "yes".into()]).unwrap();
        assert_eq!(ids.names, ["no", "yes"]);
        // Ids in a label column of another name; a JSONL string stays a name.
        let t = write(
            d.path(),
            "t.csv",
            "sentence,target
x,2
y,0
",
        );
        let e = text_classification(&t, "target").unwrap();
        assert_eq!(e[0].label, LabelValue::Id(2));
        let n = write(d.path(), "n.jsonl", "{\"text\": \"x\", \"label\": \"2\"}\n");
        let e = text_classification(&n, "label").unwrap();
        assert_eq!(e[0].label, LabelValue::Name("2".into()));
        // Pairs.
        let p = write(
            d.path(),
            "p.jsonl",
            "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 0}\n",
        );
        let e = text_classification(&p, "label").unwrap();
        assert_eq!(e[0].text_pair.as_deref(), Some("b"));
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/data")
            .join(name)
    }

    /// Parquet files written by pyarrow (tools/golden/make_parquet.py: Snappy, gzip, LZ4,
    /// zstd and Brotli pages, list columns) read as the same rows as their JSONL twins.
    #[test]
    fn parquet_files_read_as_their_jsonl_twins() {
        let want = text_classification(&fixture("classify.jsonl"), "label").unwrap();
        for name in [
            "classify.parquet",
            "classify-gzip.parquet",
            "classify-lz4.parquet",
            "classify-zstd.parquet",
            "classify-brotli.parquet",
        ] {
            let got = text_classification(&fixture(name), "label").unwrap();
            assert_eq!(got, want, "{name}");
        }
        let want = token_classification(&fixture("ner.jsonl"), "ner_tags").unwrap();
        let got = token_classification(&fixture("ner.parquet"), "ner_tags").unwrap();
        assert_eq!(got, want);
        let e = text_classification(&fixture("ner.parquet"), "label")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ner.parquet:1: no text column"), "{e}");
    }

    #[test]
    fn token_classification_files() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "t.jsonl",
            "{\"tokens\": [\"John\", \"lives\"], \"ner_tags\": [\"B-PER\", \"O\"]}\n{\"tokens\": [\"Paris\"], \"ner_tags\": [\"B-LOC\"]}\n",
        );
        let ex = token_classification(&p, "ner_tags").unwrap();
        let set = LabelSet::from_tags(&ex, &p, &[]).unwrap();
        assert_eq!(set.names, ["B-LOC", "B-PER", "O"]);
        assert_eq!(set.tag_indices(&ex, &p).unwrap(), vec![vec![1, 2], vec![0]]);
        for (text, want) in [
            (
                "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [\"O\"]}\n",
                ":1: 2 tokens but 1 tags",
            ),
            (
                "{\"tokens\": \"a b\", \"ner_tags\": [\"O\"]}\n",
                ":1: `tokens` is not a list",
            ),
            (
                "{\"tokens\": [\"a\"], \"tags\": [\"O\"]}\n",
                ":1: no `ner_tags` column",
            ),
        ] {
            let q = write(d.path(), "bad.jsonl", text);
            let e = token_classification(&q, "ner_tags")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        let lm = write(
            d.path(),
            "lm.jsonl",
            "{\"text\": \"a b\"}\n{\"txt\": \"c\"}\n",
        );
        let e = texts(&lm, "text").unwrap_err().to_string();
        assert!(e.contains("lm.jsonl:2: no `text` column"), "{e}");
    }

    #[test]
    fn bad_files_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (
                "a.jsonl",
                "{\"text\": \"x\", \"label\": 0}\n{oops\n",
                ":2: invalid JSON",
            ),
            (
                "b.jsonl",
                "{\"text\": \"x\", \"label\": 0}\n[1]\n",
                ":2: expected a JSON object",
            ),
            (
                "c.jsonl",
                "{\"txt\": \"x\", \"label\": 0}\n",
                ":1: no text column",
            ),
            (
                "d.jsonl",
                "{\"text\": \"x\", \"y\": 0}\n",
                ":1: no label column `label`",
            ),
            (
                "e.jsonl",
                "{\"text\": \"x\", \"label\": 0}\n{\"text\": 3, \"label\": 0}\n",
                ":2: `text` is not a string",
            ),
            (
                "f.jsonl",
                "{\"text\": \"x\", \"label\": 0.5}\n",
                ":1: label `0.5`",
            ),
            ("g.csv", "text,label\na,1,2\n", ":2: 3 fields"),
            ("h.csv", "text,label\n\"a,1\n", ":2: unterminated"),
            ("i.txt", "x", "unknown data file type"),
            ("j.parquet", "x", "not a readable Parquet file"),
        ];
        for (name, text, want) in cases {
            let p = write(d.path(), name, text);
            let e = text_classification(&p, "label").unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        let p = write(
            d.path(),
            "k.jsonl",
            "{\"text\": \"x\", \"label\": 0}\n{\"text\": \"y\", \"label\": 5}\n",
        );
        // Integers other than 0..n (ratings): classes named by their digits, sorted as
        // text (Python's run_classification.py), so 10 comes before 5.
        let ex = text_classification(&p, "label").unwrap();
        let set = LabelSet::from_examples(&ex, &p, &["a".into(), "b".into()]).unwrap();
        assert_eq!(set.names, ["0", "5"]);
        assert_eq!(set.indices(&ex, &p).unwrap(), [0, 1]);
        let r = write(d.path(), "r.csv", "text,stars\nx,5\ny,10\nz,1\n");
        let ratings = text_classification(&r, "stars").unwrap();
        let set = LabelSet::from_examples(&ratings, &r, &[]).unwrap();
        assert_eq!(set.names, ["1", "10", "5"]);
        assert_eq!(set.indices(&ratings, &r).unwrap(), [2, 1, 0]);
        let q = write(d.path(), "q.csv", "text,stars\nx,3\n");
        let e = set
            .indices(&text_classification(&q, "stars").unwrap(), &q)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":2: label 3 is not one of the training labels (1, 10, 5)"),
            "{e}"
        );
        let p2 = write(
            d.path(),
            "l.jsonl",
            "{\"text\": \"x\", \"label\": \"a\"}\n{\"text\": \"y\", \"label\": \"b\"}\n",
        );
        let train = text_classification(&p2, "label").unwrap();
        let set = LabelSet::from_examples(&train, &p2, &[]).unwrap();
        let p3 = write(
            d.path(),
            "m.jsonl",
            "{\"text\": \"x\", \"label\": \"a\"}\n{\"text\": \"y\", \"label\": \"c\"}\n",
        );
        let eval = text_classification(&p3, "label").unwrap();
        let e = set.indices(&eval, &p3).unwrap_err().to_string();
        assert!(
            e.contains("m.jsonl:2: label `c` is not one of the training labels (a, b)"),
            "{e}"
        );
    }
}
