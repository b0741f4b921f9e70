"""One training step recorded from PyTorch, for the Rust Trainer's parity tests.

For each tiny fixture with a trainable head (sequence and token classification, masked
LM, causal LM: every model family), with
dropout off (model.eval(): the step is then deterministic), one batch with padding:
forward with labels, loss.backward(), torch.nn.utils.clip_grad_norm_(max 1.0) and one
torch.optim.AdamW step with the Trainer's parameter groups: no weight decay for biases
and normalisation weights, by the name patterns of later Trainers'
`get_decay_parameter_names` (4.46 itself decays Qwen2's RMSNorm weights, because
Qwen2RMSNorm was missing from ALL_LAYERNORM_LAYERS; later releases match by name). Writes
tests/fixtures/train/<name>.json (batch, loss, grad norm, hyper-parameters) and
<name>.safetensors (`grad.<param>` before clipping and `param.<param>` after the step).

Reference: transformers/trainer.py (create_optimizer, training_step), torch.optim.AdamW.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file
import re

from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.trainer_pt_utils import get_parameter_names

from common import FIXTURES, meta, setup, write_json

CASES = [
    ("tiny-bert-seqcls", "seqcls"),
    ("tiny-roberta-seqcls", "seqcls"),
    ("tiny-distilbert-seqcls", "seqcls"),
    ("tiny-llama-seqcls", "seqcls"),
    ("tiny-qwen2-seqcls", "seqcls"),
    ("tiny-bert-tokcls", "tokcls"),
    ("tiny-roberta-tokcls", "tokcls"),
    ("tiny-distilbert-tokcls", "tokcls"),
    ("tiny-bert-mlm", "mlm"),
    ("tiny-roberta-mlm", "mlm"),
    ("tiny-distilbert-mlm", "mlm"),
    ("tiny-llama", "causal"),
    ("tiny-mistral", "causal"),
    ("tiny-qwen2", "causal"),
    ("tiny-qwen3", "causal"),
    ("tiny-gemma2", "causal"),
    ("tiny-phi3", "causal"),
    ("tiny-gpt2", "causal"),
]
AUTO = {
    "seqcls": AutoModelForSequenceClassification,
    "tokcls": AutoModelForTokenClassification,
    "mlm": AutoModelForMaskedLM,
    "causal": AutoModelForCausalLM,
}
LR = 1e-3
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def batch_for(model, kind: str) -> dict:
    cfg = model.config
    vocab = cfg.vocab_size
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    # Sequence classifiers built on decoders pad left (their tokenizers do); everything
    # else pads right. Row 1 has 2 pads, row 2 has 4.
    left = kind == "seqcls" and cfg.model_type in ("llama", "qwen2")
    for row, n in ((1, 2), (2, 4)):
        if left:
            ids[row, :n] = pad
            mask[row, :n] = 0
        else:
            ids[row, -n:] = pad
            mask[row, -n:] = 0
    if kind == "seqcls":
        labels = torch.tensor([0, 1, cfg.num_labels - 1])
    elif kind == "tokcls":
        labels = torch.randint(0, cfg.num_labels, ids.shape, generator=g)
        labels[mask == 0] = -100
        labels[:, 0] = -100  # as the first special token is
    elif kind == "mlm":
        labels = torch.full_like(ids, -100)
        for row, col in ((0, 1), (0, 4), (1, 2), (2, 1)):
            labels[row, col] = ids[row, col]
            ids[row, col] = 4 if cfg.model_type != "roberta" else min(vocab - 1, 4)
    else:
        labels = ids.clone()
        labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def main() -> None:
    setup()
    out_dir = FIXTURES / "train"
    out_dir.mkdir(parents=True, exist_ok=True)
    # --only NAME...: record those cases (tiny-qwen3 needs a newer transformers, see
    # README.md); otherwise every case but tiny-qwen3.
    only = sys.argv[sys.argv.index("--only") + 1 :] if "--only" in sys.argv else None
    for name, kind in CASES:
        if (only is not None and name not in only) or (only is None and name == "tiny-qwen3"):
            continue
        model = AUTO[kind].from_pretrained(FIXTURES / name)
        model.eval()
        batch = batch_for(model, kind)
        decay = set(
            n
            for n in get_parameter_names(model, [torch.nn.LayerNorm])
            if not any(re.search(p, n.lower()) for p in NO_DECAY_PATTERNS)
        )
        params = dict(model.named_parameters())
        groups = [
            {"params": [p for n, p in params.items() if n in decay], "weight_decay": WEIGHT_DECAY},
            {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
        out = model(**batch)
        out.loss.backward()
        grads = {f"grad.{n}": p.grad.detach().clone().contiguous() for n, p in params.items() if p.grad is not None}
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        after = {f"param.{n}": p.detach().clone().contiguous() for n, p in params.items()}
        save_file({**grads, **after}, str(out_dir / f"{name}.safetensors"), metadata={"format": "pt"})
        write_json(
            out_dir / f"{name}.json",
            {
                "meta": meta("make_train_step.py", fixture=name, mode="model.eval() (no dropout)"),
                "task": kind,
                "input_ids": batch["input_ids"].tolist(),
                "attention_mask": batch["attention_mask"].tolist(),
                "labels": batch["labels"].tolist(),
                "loss": out.loss.item(),
                "grad_norm": norm.item(),
                "learning_rate": LR,
                "weight_decay": WEIGHT_DECAY,
                "max_grad_norm": MAX_GRAD_NORM,
                "adam": {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
                "no_decay": sorted(n for n in params if n not in decay),
            },
        )
        print(name, "loss", out.loss.item(), "grad norm", norm.item(), file=sys.stderr)


if __name__ == "__main__":
    main()
