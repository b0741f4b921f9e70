"""Checks that Python transformers loads what `rustformers convert` wrote from the
SmolLM2 GGUF, and decodes greedily exactly as transformers' own GGUF loading did
(tests/fixtures/smollm2/expected.json).

    rustformers convert HuggingFaceTB/SmolLM2-135M-Instruct-GGUF OUT
    python tools/golden/check_converted_gguf.py OUT
"""

import json
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    out = Path(sys.argv[1])
    expected = json.loads((ROOT / "tests/fixtures/smollm2/expected.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    bad = 0
    for case in expected["generation"]:
        ids = tok(case["prompt_text"], add_special_tokens=False)["input_ids"]
        same_ids = ids == case["prompt_ids"]
        with torch.no_grad():
            seq = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24,
                                 eos_token_id=2, pad_token_id=2)[0].tolist()
        same = seq == case["output_ids"]
        bad += (not same) + (not same_ids)
        print(f"{case['name']}: prompt ids equal: {same_ids}; greedy equal: {same}")
    print("OK" if bad == 0 else f"{bad} difference(s)")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
