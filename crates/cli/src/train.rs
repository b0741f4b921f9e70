//! `rustformers train`: fine-tunes a checkpoint from JSONL/CSV files, as Python's
//! `run_classification.py` does with the Trainer, and writes a checkpoint folder that
//! `rustformers run --model DIR` and Python `transformers` load.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use rustformers_core::AutoTokenizer;
use rustformers_models::{AutoModelForSequenceClassification, LoadOptions, TrainLoad};
use rustformers_trainer::args::split_flags;
use rustformers_trainer::data::{text_classification, LabelSet};
use rustformers_trainer::trainer::{last_checkpoint, text_classification_features};
use rustformers_trainer::{accuracy, Trainer, TrainingArguments};

pub const TRAIN_HELP: &str = "\
Usage: rustformers train --task text-classification --model REF --train-file F
                         [--eval-file F] --output-dir DIR [--args-file ARGS.json]
                         [--label-column label] [--max-length N] [--ignore-mismatched-sizes]
                         [--resume-from-checkpoint DIR|last] [--TRAINING_ARGUMENT VALUE]...

Fine-tunes REF (a folder, file or Hub id) on a JSONL or CSV file whose rows have a text
column (text, sentence or sentence1), an optional pair column (text_pair, sentence2) and
a label (a class name or an id). The label set comes from the training file and goes to
config.json's id2label/label2id. Any of Python's TrainingArguments can be given as a
flag (--num-train-epochs 3, --learning-rate 2e-5, --eval-strategy epoch,
--save-steps 500, --report-to tensorboard, ...) or in ARGS.json. The model, tokenizer,
trainer_state.json and training_curves.png go to DIR, checkpoints to DIR/checkpoint-N.
Prints the training (and evaluation) metrics as one JSON line.";

const TASKS: [&str; 1] = ["text-classification"];

pub fn train(words: &[String]) -> Result<ExitCode> {
    if words.iter().any(|w| w == "--help" || w == "-h") {
        println!("{TRAIN_HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    let flags = split_flags(words)?;
    let mut own: Map<String, Value> = Map::new();
    let mut rest = Vec::new();
    for (name, value) in flags {
        let key = name.replace('_', "-");
        match key.as_str() {
            "task"
            | "model"
            | "train-file"
            | "eval-file"
            | "args-file"
            | "label-column"
            | "max-length"
            | "resume-from-checkpoint" => {
                let v = value.ok_or_else(|| anyhow!("--{key} needs a value"))?;
                own.insert(key, Value::String(v));
            }
            "ignore-mismatched-sizes" => {
                own.insert(key, Value::Bool(value.is_none_or(|v| v != "false")));
            }
            k if k.starts_with("lora") => bail!(
                "--{k}: LoRA fine-tuning is not supported yet; run full fine-tuning without \
                 the --lora-* flags"
            ),
            _ => rest.push((name, value)),
        }
    }
    let get = |k: &str| own.get(k).and_then(Value::as_str);
    let task = get("task").ok_or_else(|| anyhow!("--task is required ({})", TASKS.join(", ")))?;
    if !TASKS.contains(&task) {
        bail!(
            "--task {task}: training supports {} so far (token-classification, fill-mask and \
             text-generation are not wired yet)",
            TASKS.join(", ")
        );
    }
    let model_ref = get("model").ok_or_else(|| anyhow!("--model is required"))?;
    let train_file =
        PathBuf::from(get("train-file").ok_or_else(|| anyhow!("--train-file is required"))?);
    let base = match get("args-file") {
        Some(p) => TrainingArguments::from_json_file(std::path::Path::new(p))?,
        None => TrainingArguments::default(),
    };
    if !rest
        .iter()
        .any(|(n, _)| n.replace('-', "_") == "output_dir")
        && get("args-file").is_none()
    {
        bail!("--output-dir is required");
    }
    let args = base.with_flags(&rest)?;
    let label_column = get("label-column").unwrap_or("label");
    let max_length = get("max-length")
        .map(|v| {
            v.parse::<usize>()
                .with_context(|| format!("--max-length {v}: not a number"))
        })
        .transpose()?;

    // Data first: a bad file fails before any model is loaded or anything is written.
    let train_ex = text_classification(&train_file, label_column)?;
    let tokenizer = AutoTokenizer::from_pretrained(model_ref)?;
    let labels = LabelSet::from_examples(&train_ex, &train_file, &[])?;
    let train_idx = labels.indices(&train_ex, &train_file)?;
    let eval = match get("eval-file") {
        Some(p) => {
            let path = PathBuf::from(p);
            let ex = text_classification(&path, label_column)?;
            let idx = labels.indices(&ex, &path)?;
            Some(text_classification_features(
                &tokenizer, &ex, &idx, max_length,
            )?)
        }
        None => None,
    };
    let train = text_classification_features(&tokenizer, &train_ex, &train_idx, max_length)?;
    let model = AutoModelForSequenceClassification::for_training(
        model_ref,
        &LoadOptions::default(),
        &TrainLoad {
            labels: Some(labels.names.clone()),
            seed: args.seed,
            ignore_mismatched_sizes: own.get("ignore-mismatched-sizes").and_then(Value::as_bool).unwrap_or(false),
        },
    )
    .map_err(|e| {
        let text = e.to_string();
        if text.contains("has shape") {
            anyhow!("{text} (the checkpoint's head has other labels: add --ignore-mismatched-sizes to train a new head)")
        } else {
            anyhow!(text)
        }
    })?;
    let resume = match get("resume-from-checkpoint") {
        None => None,
        Some("last") => Some(last_checkpoint(&args.output_dir)?.ok_or_else(|| {
            anyhow!(
                "--resume-from-checkpoint last: no checkpoint-N in {}",
                args.output_dir.display()
            )
        })?),
        Some(p) => Some(PathBuf::from(p)),
    };
    let out_dir = args.output_dir.clone();
    let mut trainer = Trainer::new(args, &model, Some(&tokenizer), train, eval)?;
    trainer.set_compute_metrics(Box::new(|p| {
        let mut m = Map::new();
        m.insert("accuracy".into(), json!(accuracy(p)));
        m
    }));
    let out = trainer.train(resume.as_deref())?;
    let mut metrics = out.metrics;
    if trainer.has_eval() {
        metrics.extend(trainer.evaluate()?);
    }
    trainer.save_model(&out_dir)?;
    trainer.save_state()?;
    println!("{}", Value::Object(metrics));
    Ok(ExitCode::SUCCESS)
}
