"""One LoRA training step recorded from PEFT, for the Rust Trainer's LoRA parity test.

For tiny-llama (causal LM, LoRA on q_proj/v_proj), tiny-gpt2 (causal LM, LoRA on the
Conv1D c_attn, which PEFT marks fan_in_fan_out) and tiny-bert-seqcls (sequence
classification, LoRA on query/value, classifier in modules_to_save): the adapter is
created with peft.get_peft_model, its A and B set to seeded random values (B is zero at
PEFT's own init, which would leave A without a gradient), saved with save_pretrained as
the starting adapter (tests/fixtures/train-lora/<name>/initial/), then one step as
make_train_step.py takes it (dropout off, clip_grad_norm_ 1.0, AdamW lr 1e-3, weight
decay 0.1 without decay for biases). Writes <name>/step.json and <name>/step.safetensors
with `grad.<param>` and `param.<param>` for the trainable parameters, names as the base
model spells them (`model.layers.0.self_attn.q_proj.lora_A.weight`, `classifier.weight`).

Reference stack: transformers 5.25.0 (requirements.txt) with peft 0.22.0 (tuners/lora,
utils/save_and_load.py, peft_model.py), the first peft that knows 5.24+'s `cache` argument.
Against the peft 0.13.2 recordings, on the same checkpoints: the same tensors (up to the
fused AdamW's last bits) and trainable names; 0.22.0 writes
more keys to adapter_config.json (`peft_version`, `lora_bias`, `exclude_modules`,
`target_parameters`, `trainable_token_indices`, `qalora_group_size`, ... mostly null /
false) and, for SEQ_CLS and TOKEN_CLS, `modules_to_save` gets `pre_classifier` besides
`classifier` and `score` (`CLASSIFIER_MODULE_NAMES`: DistilBERT's randomly initialised
pooler layer; BERT has none, so nothing more trains here). For GPT-2, peft warns that it
turns `fan_in_fan_out` on for the Conv1D target, as 0.13.2 did. The step itself is
`model(...).loss`, the mean over the targets (a 5.25 Trainer would pass
`num_items_in_batch`, which for GPT-2 divides by all 15 labels instead of the 12 shifted
targets: see make_train_step.py; meta records the count and, for tiny-gpt2, `notes`), with
torch.optim.AdamW(fused=True), the 5.25 Trainer's default `adamw_torch_fused`.

Usage:  python tools/golden/make_lora_step.py [--only tiny-llama]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import peft
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, meta, setup, write_json  # noqa: E402
from make_train_step import trainer_num_items_in_batch  # noqa: E402

LR = 1e-3
WEIGHT_DECAY = 0.1
CASES = [
    ("tiny-llama", AutoModelForCausalLM, "CAUSAL_LM", ["q_proj", "v_proj"]),
    ("tiny-gpt2", AutoModelForCausalLM, "CAUSAL_LM", ["c_attn"]),
    ("tiny-bert-seqcls", AutoModelForSequenceClassification, "SEQ_CLS", ["query", "value"]),
]


def plain(name: str) -> str:
    return (
        name.removeprefix("base_model.model.")
        .replace(".default", "")
        .replace("modules_to_save.", "")
    )


def main() -> None:
    if int(transformers.__version__.split(".")[0]) < 5:
        sys.exit(f"make_lora_step.py records with transformers 5.25 (requirements.txt), not {transformers.__version__}")
    setup()
    # `--only NAME` records one case (the others' fixtures stay as they are).
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    for name, auto, task, targets in CASES:
        if only is not None and name != only:
            continue
        out = FIXTURES / "train-lora" / name
        base = auto.from_pretrained(FIXTURES / name)
        cfg = peft.LoraConfig(task_type=task, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
        model = peft.get_peft_model(base, cfg)
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.save_pretrained(out / "initial")
        (out / "initial" / "README.md").unlink(missing_ok=True)
        # The base path as the Rust test resolves it (relative to the fixtures folder).
        acfg = json.loads((out / "initial" / "adapter_config.json").read_text())
        acfg["base_model_name_or_path"] = f"../../{name}"
        # peft keeps target_modules as a set: its saved order follows the string hash
        # (PYTHONHASHSEED); sorted, the file is the same on every run.
        acfg["target_modules"] = sorted(acfg["target_modules"])
        (out / "initial" / "adapter_config.json").write_text(json.dumps(acfg, indent=2))
        model.eval()
        vocab = base.config.vocab_size
        ids = torch.randint(3, vocab, (3, 7), generator=g)
        mask = torch.ones_like(ids)
        for row, n in ((1, 2), (2, 4)):
            ids[row, -n:] = 0
            mask[row, -n:] = 0
        if task == "CAUSAL_LM":
            labels = ids.clone()
            labels[mask == 0] = -100
        else:
            labels = torch.tensor([0, 1, 2])
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        decay = [p for n, p in trainable.items() if "bias" not in n]
        no_decay = [p for n, p in trainable.items() if "bias" in n]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
            lr=LR, betas=(0.9, 0.999), eps=1e-8, fused=True,
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        # What a 5.25 Trainer would pass (it inspects the unwrapped base model).
        count = trainer_num_items_in_batch(base, {"labels": labels})
        targets = int((labels[..., 1:] if task == "CAUSAL_LM" else labels).ne(-100).sum())
        trainer_loss = None
        if count is not None and int(count) != targets:
            with torch.no_grad():
                trainer_loss = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=count).loss
        loss.backward()
        grads = {f"grad.{plain(n)}": p.grad.detach().clone() for n, p in trainable.items()}
        norm = torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
        notes = []
        if trainer_loss is not None:
            c = int(count)
            scaled = norm.item() * targets / c
            notes.append(
                f"transformers 5.25's Trainer passes num_items_in_batch={c} ({type(base).__name__}.loss_type "
                f"is {base.loss_type!r}, so it counts all labels, not labels[..., 1:]) while the loss sums over "
                f"{targets} targets: its loss is {trainer_loss.item():.8g} (`loss` x {targets}/{c}), and its "
                f"gradients and grad norm ({scaled:.8g}) are scaled the same way"
                + (" (both norms are clipped to 1.0, so the update is the same). " if scaled > 1.0 else
                   " (the update differs: that norm is not clipped). ")
                + "`loss`, `grad_norm` and the tensors here are those of the model's own loss (the mean over the "
                "targets)."
            )
        opt.step()
        after = {f"param.{plain(n)}": p.detach().clone().contiguous() for n, p in trainable.items()}
        save_file({**grads, **after}, str(out / "step.safetensors"), metadata={"format": "pt"})
        write_json(
            out / "step.json",
            {
                "meta": meta(
                    "make_lora_step.py",
                    fixture=name,
                    peft=peft.__version__,
                    attn_implementation=base.config._attn_implementation,
                    optim="adamw_torch_fused",
                    trainer_num_items_in_batch=None if count is None else int(count),
                    **({"notes": notes} if notes else {}),
                ),
                "task": task,
                "input_ids": ids.tolist(),
                "attention_mask": mask.tolist(),
                "labels": labels.tolist(),
                "loss": loss.item(),
                "grad_norm": norm.item(),
                "trainable": sorted(plain(n) for n in trainable),
            },
        )
        print(name, "loss", loss.item(), "trainable", len(trainable), file=sys.stderr)


if __name__ == "__main__":
    main()
