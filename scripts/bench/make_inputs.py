"""Regenerates the fixed benchmark inputs that rustformers and the peers both read.

    python scripts/bench/make_inputs.py            # writes sentences.txt and prompts.json

sentences.txt   256 lines, 20 words each, drawn with a seeded RNG from the fixed word
                list below (no tokenizer involved: both sides tokenize the text).
prompts.json    token ids for the GGUF items, so that neither side depends on the other's
                tokenizer: "decode" (a short plain-text prompt, as tokenized by llama.cpp)
                and "prefill" (exactly 512 ids, a fixed arithmetic rule). Needs
                llama-cpp-python and the SmolLM2 GGUF in the HF cache
                (scripts/fetch-test-models.sh).

The committed files are the reference; rerunning must reproduce them byte for byte.
"""

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_SENTENCES = 256
N_WORDS = 20
PREFILL_TOKENS = 512
# The same inputs as crates/cli/src/bench.rs: its PROMPT, and its prefill ids
# 100 + (i * 37) % 20000 (the ids' values do not change the work of a prefill).
DECODE_PROMPT = "The history of the city begins"


def prefill_ids() -> list[int]:
    return [100 + (i * 37) % 20_000 for i in range(PREFILL_TOKENS)]

WORDS = """
the of and to in is was for on that with as by at from his her it an be this are
which or had not but were have they one their all been has there more when who will
would so no out up about into than time only other some could these two may then do
first any like new my over such our man me even most made after also did many before
must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long get here
between both life being under never day same another know while last might us great
old year off come since against go came right used take three small house water light
city river mountain garden window morning evening music paper story teacher student
market village forest ocean island winter summer autumn spring bridge train station
doctor kitchen table chair letter friend family country language history science
number animal bird flower tree stone road field school church office street picture
question answer problem reason system program company money power
""".split()


def sentences() -> list[str]:
    rng = random.Random(20240531)
    out = []
    for _ in range(N_SENTENCES):
        words = [rng.choice(WORDS) for _ in range(N_WORDS)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + ".")
    return out


def main() -> int:
    lines = sentences()
    (HERE / "sentences.txt").write_text("\n".join(lines) + "\n")
    sys.path.insert(0, str(HERE))
    import peers

    llm = peers.llama(n_ctx=64, vocab_only=True)
    # add_bos=True: special tokens as the GGUF's tokenizer.ggml.add_bos_token says.
    decode = llm.tokenize(DECODE_PROMPT.encode(), add_bos=True, special=False)
    prefill = prefill_ids()
    prompts = {
        "about": "token ids for SmolLM2-135M-Instruct (GGUF vocab); made by scripts/bench/make_inputs.py",
        "decode_text": DECODE_PROMPT,
        "decode": decode,
        "prefill_rule": "100 + (i * 37) % 20000 for i in 0..512",
        "prefill": prefill,
    }
    (HERE / "prompts.json").write_text(json.dumps(prompts) + "\n")
    print(f"sentences.txt: {len(lines)} lines; decode prompt {len(decode)} ids; prefill {PREFILL_TOKENS} ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
