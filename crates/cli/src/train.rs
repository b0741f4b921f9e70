//! `rustformers train`: fine-tunes a checkpoint from JSONL/CSV files, as Python's
//! `run_classification.py` does with the Trainer, and writes a checkpoint folder that
//! `rustformers run --model DIR` and Python `transformers` load.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use rustformers_core::lora::LoraConfig;
use rustformers_core::{AutoTokenizer, ModelFiles};
use rustformers_models::{
    AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, LoadOptions, ModelConfig, TrainLoad,
};
use rustformers_trainer::args::split_flags;
use rustformers_trainer::data::{text_classification, texts, token_classification, LabelSet};
use rustformers_trainer::trainer::{
    accuracy_metrics, language_modeling_features, last_checkpoint, text_classification_features,
    token_classification_features, unfinished_save, Collator,
};
use rustformers_trainer::{Trainer, TrainingArguments};

pub const TRAIN_HELP: &str = "\
Usage: rustformers train --task TASK --model REF --train-file F [--eval-file F]
                         --output-dir DIR [--args-file ARGS.json] [--max-length N]
                         [--ignore-mismatched-sizes] [--resume-from-checkpoint DIR|last]
                         [--lora-r N [--lora-alpha A] [--lora-target-modules a,b]]
                         [task options] [--TRAINING_ARGUMENT VALUE]...

Fine-tunes REF (a folder, file or Hub id; GGUF must be converted first) on JSONL,
Parquet or CSV files (by extension), as Python's example scripts do:
  text-classification   rows with a text column (text, sentence or sentence1), an
                        optional pair (text_pair, sentence2) and a label (name or id;
                        --label-column label). The label set comes from the training
                        file and goes to config.json's id2label/label2id.
  token-classification  rows {\"tokens\": [words], \"ner_tags\": [tags]} (--tags-column);
                        the first sub-token of each word takes its tag.
  fill-mask             rows {\"text\": ...} (--text-column); texts concatenated into
                        blocks (--block-size, default 128), --mlm-probability 0.15.
  text-generation       rows {\"text\": ...}; causal LM on blocks (--block-size).
Any of Python's TrainingArguments can be given as a flag (--num-train-epochs 3,
--learning-rate 2e-5, --eval-strategy epoch, --save-steps 500, --report-to tensorboard,
...) or in ARGS.json. The model, tokenizer, trainer_state.json and training_curves.png
go to DIR, checkpoints to DIR/checkpoint-N. Prints the metrics as one JSON line.
A DIR that already holds files is refused unless --overwrite-output-dir; one that
holds checkpoints resumes from the newest, as Python's example scripts do.
With --lora-r, only LoRA adapters (PEFT's default targets for the model type unless
--lora-target-modules) and the classification head train, and DIR holds a PEFT adapter
(adapter_model.safetensors, adapter_config.json) that `rustformers run --model DIR` and
Python (with peft) load on top of the base model.";

const TASKS: [&str; 4] = [
    "text-classification",
    "token-classification",
    "fill-mask",
    "text-generation",
];

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
            | "resume-from-checkpoint"
            | "tags-column"
            | "text-column"
            | "block-size"
            | "mlm-probability" => {
                let v = value.ok_or_else(|| anyhow!("--{key} needs a value"))?;
                own.insert(key, Value::String(v));
            }
            "ignore-mismatched-sizes" => {
                own.insert(key, Value::Bool(value.is_none_or(|v| v != "false")));
            }
            "lora-r" | "lora-alpha" | "lora-dropout" | "lora-target-modules" => {
                let v = value.ok_or_else(|| anyhow!("--{key} needs a value"))?;
                own.insert(key, Value::String(v));
            }
            _ => rest.push((name, value)),
        }
    }
    let get = |k: &str| own.get(k).and_then(Value::as_str);
    let task = get("task").ok_or_else(|| anyhow!("--task is required ({})", TASKS.join(", ")))?;
    if !TASKS.contains(&task) {
        bail!("--task {task}: training supports {}", TASKS.join(", "));
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
    let max_length = get("max-length")
        .map(|v| {
            v.parse::<usize>()
                .with_context(|| format!("--max-length {v}: not a number"))
        })
        .transpose()?;
    let block_size = get("block-size")
        .map(|v| {
            v.parse::<usize>()
                .with_context(|| format!("--block-size {v}: not a number"))
        })
        .transpose()?
        .unwrap_or(128);
    let mlm_probability = get("mlm-probability")
        .map(|v| {
            v.parse::<f64>()
                .with_context(|| format!("--mlm-probability {v}: not a number"))
        })
        .transpose()?
        .unwrap_or(0.15);
    if !(0.0..1.0).contains(&mlm_probability) || mlm_probability == 0.0 {
        bail!("--mlm-probability must lie in (0, 1), got {mlm_probability}");
    }
    let eval_file = get("eval-file").map(PathBuf::from);
    let resume_arg = get("resume-from-checkpoint").map(str::to_string);
    let ignore_mismatched = own
        .get("ignore-mismatched-sizes")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // As Python's example scripts: an output folder that holds files is refused unless
    // --overwrite-output-dir; one that holds checkpoints resumes from the newest.
    // The checkpoint to resume from, found before anything loads. As Python's example
    // scripts: an output folder that holds files is refused unless
    // --overwrite-output-dir; one that holds checkpoints resumes from the newest.
    let out = &args.output_dir;
    let (resume_from, detected) = match resume_arg.as_deref() {
        Some("last") => {
            let last = last_checkpoint(out)?.ok_or_else(|| {
                anyhow!(
                    "--resume-from-checkpoint last: no checkpoint-N in {}",
                    out.display()
                )
            })?;
            (Some(last), false)
        }
        Some(p) => (Some(PathBuf::from(p)), false),
        None if args.overwrite_output_dir => (None, false),
        None => {
            let last = last_checkpoint(out)?;
            // What a killed save left behind is the Trainer's to clear, not a user's file.
            let has_files = std::fs::read_dir(out)
                .map(|d| {
                    d.flatten()
                        .any(|e| unfinished_save(&e.file_name().to_string_lossy()).is_none())
                })
                .unwrap_or(false);
            if last.is_none() && has_files {
                bail!(
                    "output directory {} already exists and is not empty: use \
                     --overwrite-output-dir to train into it",
                    out.display()
                );
            }
            let detected = last.is_some();
            (last, detected)
        }
    };
    // Said once the data and the model have loaded, right before training.
    let resume = || -> Option<PathBuf> {
        if let (true, Some(l)) = (detected, &resume_from) {
            eprintln!(
                "checkpoint detected, resuming training at {} (--overwrite-output-dir to \
                 train from scratch)",
                l.display()
            );
        }
        resume_from.clone()
    };
    let load_err = |e: rustformers_core::Error| {
        let text = e.to_string();
        if text.contains("has shape") {
            anyhow!("{text} (the checkpoint's head has other labels: add --ignore-mismatched-sizes to train a new head)")
        } else {
            anyhow!(text)
        }
    };
    let opts = LoadOptions::default();
    let lora = lora_config(&own, model_ref, task)?;

    // Data first: a bad file fails before any model is loaded or anything is written.
    match task {
        "text-classification" => {
            let label_column = get("label-column").unwrap_or("label");
            let train_ex = text_classification(&train_file, label_column)?;
            let labels = LabelSet::from_examples(&train_ex, &train_file, &[])?;
            let train_idx = labels.indices(&train_ex, &train_file)?;
            let eval_ex = match &eval_file {
                Some(p) => {
                    let ex = text_classification(p, label_column)?;
                    let idx = labels.indices(&ex, p)?;
                    Some((ex, idx))
                }
                None => None,
            };
            let tokenizer = AutoTokenizer::from_pretrained(model_ref)?;
            let train =
                text_classification_features(&tokenizer, &train_ex, &train_idx, max_length)?;
            let eval = eval_ex
                .map(|(ex, idx)| text_classification_features(&tokenizer, &ex, &idx, max_length))
                .transpose()?;
            let model = AutoModelForSequenceClassification::for_training(
                model_ref,
                &opts,
                &train_load(
                    Some(labels.names.clone()),
                    &args,
                    ignore_mismatched,
                    lora.clone(),
                ),
            )
            .map_err(load_err)?;
            let resume = resume();
            finish(
                Trainer::new(args, &model, Some(&tokenizer), train, eval)?,
                Collator::Classification,
                resume,
            )
        }
        "token-classification" => {
            let tags_column = get("tags-column").unwrap_or("ner_tags");
            let train_ex = token_classification(&train_file, tags_column)?;
            let labels = LabelSet::from_tags(&train_ex, &train_file, &[])?;
            let train_idx = labels.tag_indices(&train_ex, &train_file)?;
            let eval_ex = match &eval_file {
                Some(p) => {
                    let ex = token_classification(p, tags_column)?;
                    let idx = labels.tag_indices(&ex, p)?;
                    Some((ex, idx))
                }
                None => None,
            };
            let tokenizer = AutoTokenizer::from_pretrained(model_ref)?;
            let train =
                token_classification_features(&tokenizer, &train_ex, &train_idx, max_length)?;
            let eval = eval_ex
                .map(|(ex, idx)| token_classification_features(&tokenizer, &ex, &idx, max_length))
                .transpose()?;
            let model = AutoModelForTokenClassification::for_training(
                model_ref,
                &opts,
                &train_load(
                    Some(labels.names.clone()),
                    &args,
                    ignore_mismatched,
                    lora.clone(),
                ),
            )
            .map_err(load_err)?;
            let resume = resume();
            finish(
                Trainer::new(args, &model, Some(&tokenizer), train, eval)?,
                Collator::TokenClassification,
                resume,
            )
        }
        _ => {
            let text_column = get("text-column").unwrap_or("text");
            let train_texts = texts(&train_file, text_column)?;
            let eval_texts = eval_file
                .as_ref()
                .map(|p| texts(p, text_column))
                .transpose()?;
            let tokenizer = AutoTokenizer::from_pretrained(model_ref)?;
            let train = language_modeling_features(&tokenizer, &train_texts, block_size)?;
            let eval = eval_texts
                .map(|t| language_modeling_features(&tokenizer, &t, block_size))
                .transpose()?;
            let resume = resume();
            let load = train_load(None, &args, ignore_mismatched, lora.clone());
            if task == "fill-mask" {
                let mask_id = tokenizer
                    .special_tokens()
                    .mask
                    .as_deref()
                    .and_then(|m| tokenizer.token_to_id(m))
                    .ok_or_else(|| {
                        anyhow!("fill-mask training needs a tokenizer with a mask token")
                    })?;
                let collator = Collator::MaskedLm {
                    probability: mlm_probability,
                    mask_id,
                    vocab_size: tokenizer.vocab_size(),
                    special_ids: tokenizer.all_special_ids(),
                };
                let model = AutoModelForMaskedLM::for_training(model_ref, &opts, &load)
                    .map_err(load_err)?;
                finish(
                    Trainer::new(args, &model, Some(&tokenizer), train, eval)?,
                    collator,
                    resume,
                )
            } else {
                let model = AutoModelForCausalLM::for_training(model_ref, &opts, &load)
                    .map_err(load_err)?;
                finish(
                    Trainer::new(args, &model, Some(&tokenizer), train, eval)?,
                    Collator::CausalLm,
                    resume,
                )
            }
        }
    }
}

fn train_load(
    labels: Option<Vec<String>>,
    args: &TrainingArguments,
    ignore: bool,
    lora: Option<LoraConfig>,
) -> TrainLoad {
    TrainLoad {
        labels,
        seed: args.seed,
        ignore_mismatched_sizes: ignore,
        lora,
        lora_from: None,
        bf16: args.bf16,
        gradient_checkpointing: args.gradient_checkpointing,
    }
}

/// PEFT's default LoRA targets of the family that reads `model_type`.
fn default_targets(model_type: &str) -> Option<Vec<String>> {
    let family = rustformers_models::auto::family_of(model_type)?;
    Some(family.lora_targets.iter().map(|s| s.to_string()).collect())
}

/// The LoRA settings from the `--lora-*` flags (none given: full fine-tuning).
fn lora_config(
    own: &Map<String, Value>,
    model_ref: &str,
    task: &str,
) -> Result<Option<LoraConfig>> {
    let get = |k: &str| own.get(k).and_then(Value::as_str);
    let Some(r) = get("lora-r") else {
        if own.keys().any(|k| k.starts_with("lora")) {
            bail!("the --lora-* flags need --lora-r (the adapter rank)");
        }
        return Ok(None);
    };
    let r: usize = r
        .parse()
        .with_context(|| format!("--lora-r {r}: not a number"))?;
    let alpha: f64 = match get("lora-alpha") {
        Some(a) => a
            .parse()
            .with_context(|| format!("--lora-alpha {a}: not a number"))?,
        None => 8.0,
    };
    let dropout: f64 = match get("lora-dropout") {
        Some(d) => d
            .parse()
            .with_context(|| format!("--lora-dropout {d}: not a number"))?,
        None => 0.0,
    };
    if !(0.0..1.0).contains(&dropout) {
        bail!("--lora-dropout {dropout}: a probability in [0, 1) is expected");
    }
    let model_type = ModelConfig::from_files(&ModelFiles::resolve(model_ref)?)?
        .model_type()
        .to_string();
    let targets = match get("lora-target-modules") {
        Some(t) => t
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => default_targets(&model_type).ok_or_else(|| {
            anyhow!(
                "no default LoRA targets for model type `{model_type}`: pass --lora-target-modules"
            )
        })?,
    };
    // peft 0.22's CLASSIFIER_MODULE_NAMES: the heads a classification adapter trains and
    // saves (DistilBERT's randomly initialised `pre_classifier` among them).
    let heads = || {
        Some(vec![
            "classifier".to_string(),
            "score".to_string(),
            "pre_classifier".to_string(),
        ])
    };
    let (task_type, modules_to_save) = match task {
        "text-classification" => ("SEQ_CLS", heads()),
        "token-classification" => ("TOKEN_CLS", heads()),
        "text-generation" => ("CAUSAL_LM", None),
        other => bail!("LoRA training supports text-classification, token-classification and text-generation, not {other}"),
    };
    let cfg: LoraConfig = serde_json::from_value(json!({
        "peft_type": "LORA", "task_type": task_type, "r": r, "lora_alpha": alpha,
        "lora_dropout": dropout, "target_modules": targets, "modules_to_save": modules_to_save,
        // GPT-2's layers are Conv1D: PEFT records them as fan_in_fan_out.
        "bias": "none", "fan_in_fan_out": model_type == "gpt2", "inference_mode": true,
    }))?;
    cfg.validate("--lora-* flags")?;
    Ok(Some(cfg))
}

/// Trains, evaluates, saves and prints the metrics.
fn finish(
    mut trainer: Trainer<'_>,
    collator: Collator,
    resume: Option<PathBuf>,
) -> Result<ExitCode> {
    let out_dir = trainer.args.output_dir.clone();
    let classes = collator != Collator::CausalLm && !matches!(collator, Collator::MaskedLm { .. });
    trainer.set_collator(collator);
    if classes {
        trainer.set_compute_metrics(accuracy_metrics());
    }
    let out = trainer.train(resume.as_deref())?;
    let mut metrics = out.metrics;
    if trainer.has_eval() {
        let eval = trainer.evaluate()?;
        if let Some(l) = eval.get("eval_loss").and_then(Value::as_f64) {
            // Python's run_clm / run_mlm report perplexity = exp(eval_loss).
            if !classes {
                metrics.insert("perplexity".into(), json!(l.exp()));
            }
        }
        metrics.extend(eval);
    }
    trainer.save_model(&out_dir)?;
    trainer.save_state()?;
    println!("{}", Value::Object(metrics));
    Ok(ExitCode::SUCCESS)
}
