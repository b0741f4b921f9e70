"""Parquet training files as `datasets` / pandas write them, for the Trainer's data
tests: tests/fixtures/data/{classify,classify-gzip,classify-lz4,classify-zstd,
classify-brotli,ner}.parquet and the same rows as classify.jsonl / ner.jsonl.

pyarrow writes Snappy pages by default (as `Dataset.to_parquet` and pandas do); the
gzip, LZ4, zstd (polars' default) and Brotli copies cover the other codecs rustformers
reads. Written with pyarrow 26.0.1.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from common import FIXTURES

ROWS = [
    {"text": "I loved this film, truly wonderful.", "label": "positive"},
    {"text": "Dull, slow and far too long.", "label": "negative"},
    {"text": "A \"masterpiece\", with commas, quotes\nand a newline.", "label": "positive"},
    {"text": "Ünïcödé and emoji 🎬 are fine.", "label": "negative"},
]
NER = [
    {"tokens": ["John", "lives", "in", "Paris"], "ner_tags": [1, 0, 0, 2]},
    {"tokens": ["Mary", "is", "here"], "ner_tags": [1, 0, 0]},
]


def main() -> None:
    out = FIXTURES / "data"
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, out / "classify.parquet")
    pq.write_table(table, out / "classify-gzip.parquet", compression="gzip")
    pq.write_table(table, out / "classify-lz4.parquet", compression="lz4")
    pq.write_table(table, out / "classify-zstd.parquet", compression="zstd")
    pq.write_table(table, out / "classify-brotli.parquet", compression="brotli")
    (out / "classify.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(NER), out / "ner.parquet")
    (out / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in NER))
    print("pyarrow", pa.__version__)


if __name__ == "__main__":
    main()
