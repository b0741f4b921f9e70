"""Records what Python `transformers` gives for checkpoints rustformers' Trainer saved.

Runs the Rust test `crates/trainer/tests/python_loads.rs` in record mode
(RUSTFORMERS_RECORD_TRAINED=DIR), which trains four tiny models and saves them into DIR:

    bert-seqcls        BERT sequence classification, full fine-tuning (model.safetensors)
    bert-seqcls-lora   the same with LoRA (a PEFT adapter with the classifier)
    llama-causal       Llama causal LM, full fine-tuning
    gpt2-causal-lora   GPT-2 causal LM with LoRA on its Conv1D `c_attn`

then loads each save the way a Python user would (`from_pretrained(dir)`; adapters with
`peft.PeftModel.from_pretrained` on the fixture base model) and writes
tests/fixtures/python-loads/{case}.json: the inputs, Python's logits, the saved file's
tensors (name -> dtype, shape) and the config.json entries Python's loading depends on.
The Rust test then trains the same way and compares its save with these.

    python tools/golden/make_python_loads.py     (a venv with requirements.txt and peft==0.22.0)
    python tools/golden/make_python_loads.py --saved DIR [--out DIR2]
        (record from the folders a previous record-mode run left in DIR, without cargo;
         --out writes the JSON files to DIR2 instead of tests/fixtures/python-loads)

Reference stack: transformers 5.25.0 with peft 0.22.0 (tools/golden/requirements.txt). The
base fixtures (tiny-bert-seqcls, tiny-llama, tiny-gpt2) are the 5.25 recordings: tiny-llama
has rope_theta 500000 in `rope_parameters`, which both the Rust training and Python's
loading of its save must use. peft 0.22 adds `pre_classifier` to the `modules_to_save` of a
SEQ_CLS adapter when it loads one (DistilBERT's pooler; BERT has none, so nothing changes
for bert-seqcls-lora).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, REPO_ROOT, meta, setup, to_jsonable, write_json  # noqa: E402

CASES = {
    "bert-seqcls": ("tiny-bert-seqcls", "seqcls", False),
    "bert-seqcls-lora": ("tiny-bert-seqcls", "seqcls", True),
    "llama-causal": ("tiny-llama", "causal", False),
    "gpt2-causal-lora": ("tiny-gpt2", "causal", True),
}
SEQCLS_TEXTS = ["the hot one is on", "it was for you and the", "hot"]
CAUSAL_TEXT = "the hot one is on and it was for you"
CONFIG_KEYS = ["architectures", "model_type", "id2label", "label2id", "vocab_size", "hidden_size", "n_embd"]


def tensors(path: Path) -> dict:
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            s = f.get_slice(name)
            out[name] = [s.get_dtype(), list(s.get_shape())]
    return out


def record(saves: Path, out_dir: Path) -> None:
    """Loads the four saves in `saves` with Python and writes `out_dir`/{case}.json."""
    import peft
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (base_name, task, lora) in CASES.items():
        saved = saves / name
        base = FIXTURES / base_name
        auto = (
            transformers.AutoModelForSequenceClassification
            if task == "seqcls"
            else transformers.AutoModelForCausalLM
        )
        if lora:
            kwargs = {}
            if task == "seqcls":
                cfg = json.loads((saved / "config.json").read_text())
                kwargs = {"num_labels": len(cfg["id2label"]), "ignore_mismatched_sizes": True}
            model = auto.from_pretrained(str(base), **kwargs)
            model = peft.PeftModel.from_pretrained(model, str(saved))
            weights = saved / "adapter_model.safetensors"
        else:
            model = auto.from_pretrained(str(saved))
            weights = saved / "model.safetensors"
        model.eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(saved))
        if task == "seqcls":
            enc = tok(SEQCLS_TEXTS, padding=True, return_tensors="pt")
        else:
            enc = tok([CAUSAL_TEXT], return_tensors="pt")
        with torch.no_grad():
            kw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            if "token_type_ids" in enc:
                kw["token_type_ids"] = enc["token_type_ids"]
            logits = model(**kw).logits
        cfg = json.loads((saved / "config.json").read_text())
        write_json(
            out_dir / f"{name}.json",
            {
                "meta": meta("make_python_loads.py", peft=peft.__version__, base=f"tests/fixtures/{base_name}"),
                "input_ids": to_jsonable(enc["input_ids"]),
                "attention_mask": to_jsonable(enc["attention_mask"]),
                "logits": to_jsonable(logits),
                "tensors": tensors(weights),
                "config": {k: cfg[k] for k in CONFIG_KEYS if k in cfg},
            },
        )
        print(f"{name}: logits {tuple(logits.shape)}, {len(tensors(weights))} tensors")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saved", type=Path, help="folders of an earlier record-mode run (skips cargo)")
    ap.add_argument("--out", type=Path, default=FIXTURES / "python-loads")
    args = ap.parse_args()
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        sys.exit(f"make_python_loads.py records with transformers 5.25 (requirements.txt), not {transformers.__version__}")
    setup()
    if args.saved is not None:
        record(args.saved, args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, RUSTFORMERS_RECORD_TRAINED=tmp, HF_HUB_OFFLINE="1")
        subprocess.run(
            ["cargo", "test", "-q", "-p", "rustformers-trainer", "--test", "python_loads"],
            cwd=REPO_ROOT,
            env=env,
            check=True,
        )
        record(Path(tmp), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
