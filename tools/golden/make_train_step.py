"""One training step recorded from PyTorch, for the Rust Trainer's parity tests.

For each tiny fixture with a trainable head (sequence and token classification, masked
LM, causal LM: every model family), with
dropout off (model.eval(): the step is then deterministic), one batch with padding:
forward with labels, loss.backward(), torch.nn.utils.clip_grad_norm_(max 1.0) and one
torch.optim.AdamW step with the Trainer's parameter groups: no weight decay for biases
and normalisation weights (`Trainer.get_decay_parameter_names`: LayerNorm modules and the
name patterns bias / layernorm / rmsnorm / norm). Writes tests/fixtures/train/<name>.json
(batch, loss, grad norm, hyper-parameters) and <name>.safetensors (`grad.<param>` before
clipping and `param.<param>` after the step).

Reference stack: transformers 5.25.0 (requirements.txt), every case, tiny-qwen3 included.
How this compares with a step of the 5.25 Trainer:

* `loss` is `model(**batch).loss`, the mean over the targets (causal LMs: the shifted
  labels that are not -100), as before. The 5.25 Trainer instead passes
  `num_items_in_batch` to the forward of models that accept loss kwargs (all here): the
  number of labels that are not -100, taken over `labels[..., 1:]` only when the model's
  `loss_type` maps to ForCausalLMLoss; the `loss_function`s then divide the summed loss by
  it. For one batch without gradient accumulation that is the same mean (bit for bit here),
  except for GPT-2: `GPT2LMHeadModel.loss_type` is None (its class name has no
  `ForCausalLM`), so the Trainer counts all 15 labels while the loss sums over the 12
  shifted targets, and a 5.25 Trainer step on tiny-gpt2 has 12/15 of this loss, of these
  gradients and of this grad norm (both norms are above 1.0, so the clipped update is the
  same). meta records the Trainer's count (`trainer_num_items_in_batch`) and, where it
  differs, `notes`.
* The optimizer is the Trainer's default, `adamw_torch_fused` (torch >= 2.8): AdamW with
  fused=True, lr 1e-3 (no warmup: the linear schedule's first step uses the full lr),
  betas (0.9, 0.999), eps 1e-8, weight decay 0.1 on the decay group.
* Attention: each model's default `attn_implementation` (recorded in meta).

Reference: transformers/trainer.py (get_decay_parameter_names, training_step,
compute_loss, _get_num_items_in_batch), trainer_optimizer.py, torch.optim.AdamW.

Usage:  python tools/golden/make_train_step.py [--only tiny-llama tiny-qwen3 ...]
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
)
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, meta, setup, write_json  # noqa: E402

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
# TrainingArguments' default `optim` with torch >= 2.8.
OPTIM = "adamw_torch_fused"


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


def trainer_num_items_in_batch(model, batch: dict):
    """What `Trainer._get_num_items_in_batch` passes to the forward (None: nothing)."""
    if hasattr(model, "accepts_loss_kwargs"):
        accepts = model.accepts_loss_kwargs
    else:
        params = inspect.signature(model.forward).parameters.values()
        accepts = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    if not accepts:
        return None
    shifts = LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss and not getattr(
        model.config, "is_encoder_decoder", False
    )
    labels = batch["labels"][..., 1:] if shifts else batch["labels"]
    return labels.ne(-100).sum()


def main() -> None:
    if int(transformers.__version__.split(".")[0]) < 5:
        sys.exit(f"make_train_step.py records with transformers 5.25 (requirements.txt), not {transformers.__version__}")
    setup()
    out_dir = FIXTURES / "train"
    out_dir.mkdir(parents=True, exist_ok=True)
    # --only NAME...: record those cases (the others' fixtures stay as they are).
    only = sys.argv[sys.argv.index("--only") + 1 :] if "--only" in sys.argv else None
    for name, kind in CASES:
        if only is not None and name not in only:
            continue
        model = AUTO[kind].from_pretrained(FIXTURES / name)
        model.eval()
        batch = batch_for(model, kind)
        # The Trainer's own rule (it does not use `self`).
        decay = set(Trainer.get_decay_parameter_names(None, model))
        params = dict(model.named_parameters())
        groups = [
            {"params": [p for n, p in params.items() if n in decay], "weight_decay": WEIGHT_DECAY},
            {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8, fused=OPTIM == "adamw_torch_fused")
        out = model(**batch)
        count = trainer_num_items_in_batch(model, batch)
        targets = batch["labels"][..., 1:] if kind == "causal" else batch["labels"]
        trainer_loss = None
        if count is not None and int(count) != int(targets.ne(-100).sum()):
            with torch.no_grad():
                trainer_loss = model(**batch, num_items_in_batch=count).loss.item()
        out.loss.backward()
        grads = {f"grad.{n}": p.grad.detach().clone().contiguous() for n, p in params.items() if p.grad is not None}
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        notes = []
        if trainer_loss is not None:
            n, c = int(targets.ne(-100).sum()), int(count)
            clipped = norm.item() * n / c > MAX_GRAD_NORM
            notes.append(
                f"transformers 5.25's Trainer passes num_items_in_batch={c} (all labels that are not -100: "
                f"{type(model).__name__}.loss_type is {model.loss_type!r}, so it does not count over labels[..., 1:]) "
                f"while the loss sums over {n} targets: its loss is {trainer_loss:.8g} (`loss` x {n}/{c}), and its "
                f"gradients and grad norm ({norm.item() * n / c:.8g}) are scaled the same way"
                + (" (both norms are clipped to max_grad_norm, so the update is the same). " if clipped else
                   " (the update differs: that norm is not clipped). ")
                + "`loss`, `grad_norm` and the `grad.*` / `param.*` tensors here are those of the model's own loss "
                "(the mean over the targets)."
            )
        opt.step()
        after = {f"param.{n}": p.detach().clone().contiguous() for n, p in params.items()}
        save_file({**grads, **after}, str(out_dir / f"{name}.safetensors"), metadata={"format": "pt"})
        write_json(
            out_dir / f"{name}.json",
            {
                "meta": meta(
                    "make_train_step.py",
                    fixture=name,
                    mode="model.eval() (no dropout)",
                    attn_implementation=model.config._attn_implementation,
                    optim=OPTIM,
                    trainer_num_items_in_batch=None if count is None else int(count),
                    **({"notes": notes} if notes else {}),
                ),
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
