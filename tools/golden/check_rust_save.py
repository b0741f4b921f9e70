"""Checks that Python transformers loads a checkpoint rustformers saved, with outputs
identical to the original's.

    cargo run --example save_pretrained -- HEAD SRC DST
    python tools/golden/check_rust_save.py SRC DST

Loads SRC and DST with the Auto class named by DST's config.json `architectures`, runs
the "model" inputs of SRC/expected.json through both, and compares every output tensor
(exact equality expected: same weights, same code). Also checks that the saved tokenizer
encodes the fixture texts to the same ids. Exits non-zero on any difference.

Decoder folders (tiny-<decoder>[-variant], tiny-*-seqcls): the inputs are the recorded
left-padded `logits` batch (causal LM, with its position_ids) or the `seqcls` batch; the
loaded configs must also resolve to the same `rope_parameters`, and the saved
config.json must be in the 5.x form (`rope_parameters`, `dtype`; no `rope_theta`,
`rope_scaling`, `torch_dtype`).

Reference stack: transformers 5.25.0 (tools/golden/requirements.txt).
"""

import json
import sys
from pathlib import Path

import torch
import transformers


def main() -> int:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    arch = json.loads((dst / "config.json").read_text())["architectures"][0]
    cls = getattr(transformers, arch)
    a = cls.from_pretrained(src).eval()
    b = cls.from_pretrained(dst).eval()
    tok_a = transformers.AutoTokenizer.from_pretrained(src)
    tok_b = transformers.AutoTokenizer.from_pretrained(dst)
    expected = json.loads((src / "expected.json").read_text())
    if "model" not in expected:
        return check_decoder(arch, a, b, src, dst, expected)
    worst = 0.0
    for case in expected["model"]:
        texts = case["text"]
        pairs = case.get("text_pair")
        enc_a = tok_a(texts, pairs, padding=True, return_tensors="pt")
        enc_b = tok_b(texts, pairs, padding=True, return_tensors="pt")
        for k in enc_a:
            if not torch.equal(enc_a[k], enc_b[k]):
                print(f"tokenizer differs on {k} for {case['name']}")
                return 1
        with torch.no_grad():
            out_a = a(**enc_a)
            out_b = b(**enc_b)
        for k, v in out_a.items():
            if v is None or not torch.is_tensor(v):
                continue
            d = (v - out_b[k]).abs().max().item()
            worst = max(worst, d)
            print(f"{arch} {case['name']} {k}: max |diff| = {d:.3g}")
    print(f"{dst}: Python loads it; worst difference {worst:.3g}")
    return 0 if worst == 0.0 else 1


def check_decoder(arch, a, b, src, dst, expected) -> int:
    saved = json.loads((dst / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling", "torch_dtype"):
        if key in saved:
            print(f"{dst}: config.json has the 4.x key {key}")
            return 1
    if "rope_parameters" in json.loads((src / "config.json").read_text()) and "rope_parameters" not in saved:
        print(f"{dst}: config.json lost rope_parameters")
        return 1
    if getattr(a.config, "rope_parameters", None) != getattr(b.config, "rope_parameters", None):
        print(f"{dst}: rope_parameters differ: {a.config.rope_parameters} vs {b.config.rope_parameters}")
        return 1
    if "seqcls" in expected:
        batch = expected["seqcls"]["batch"]
        inputs = {k: torch.tensor(batch[k]) for k in ("input_ids", "attention_mask")}
        key = "logits"
    else:
        rec = expected["logits"]
        inputs = {k: torch.tensor(rec[k]) for k in ("input_ids", "attention_mask", "position_ids")}
        key = "logits"
    with torch.no_grad():
        d = (getattr(a(**inputs), key) - getattr(b(**inputs), key)).abs().max().item()
    print(f"{arch}: max |diff| = {d:.3g}")
    print(f"{dst}: Python loads it; worst difference {d:.3g}")
    return 0 if d == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
