"""Checks that Python transformers loads a checkpoint `rustformers train` wrote and
gives the logits rustformers gives. A LoRA folder (adapter_config.json) is loaded with
`peft.PeftModel.from_pretrained` on its base model (transformers' own adapter loading
leaves PEFT's `modules_to_save`, the classification head, out).

    rustformers train --task text-classification --model REF --train-file F --output-dir DIR ...
    rustformers run text-classification --model DIR --top-k None TEXT... > rust.jsonl
    python tools/golden/check_rust_train.py DIR rust.jsonl TEXT...

Compares, for each text, Python's `pipeline("text-classification", top_k=None)` scores
with the rustformers line (labels and scores, 1e-5), and checks that config.json names the
training labels. Exits non-zero on any difference.

Reference stack: transformers 5.25.0 and peft 0.22.0 (tools/golden/requirements.txt). The
base of an adapter is loaded with the labels of the folder's config.json
(`num_labels`, `id2label`, `label2id`, `ignore_mismatched_sizes=True`, as
make_python_loads.py does): the adapter's `modules_to_save` head has the training labels'
shape, which need not be the base checkpoint's.
"""

import json
import sys
from pathlib import Path

import transformers


def main() -> int:
    out, rust_lines, texts = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    if (out / "adapter_config.json").is_file():
        import peft

        base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
        cfg = json.loads((out / "config.json").read_text())
        id2label = {int(k): v for k, v in cfg["id2label"].items()}
        base = transformers.AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(id2label),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True,
        )
        model = peft.PeftModel.from_pretrained(base, str(out)).merge_and_unload()
        tok = transformers.AutoTokenizer.from_pretrained(str(out))
        pipe = transformers.pipeline("text-classification", model=model, tokenizer=tok, top_k=None)
    else:
        pipe = transformers.pipeline("text-classification", model=str(out), top_k=None)
    rust = [json.loads(line) for line in rust_lines.read_text().splitlines() if line.strip()]
    worst = 0.0
    for text, got in zip(texts, rust):
        res = pipe([text])[0]
        want = {d["label"]: d["score"] for d in res}
        have = {d["label"]: d["score"] for d in got}
        if set(want) != set(have):
            print(f"labels differ: {sorted(want)} vs {sorted(have)}")
            return 1
        worst = max(worst, max(abs(want[k] - have[k]) for k in want))
    print(f"{len(texts)} texts, labels {sorted(pipe.model.config.id2label.values())}, max |score diff| {worst:.2e}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
