#!/usr/bin/env bash
# Saves every tiny encoder fixture checkpoint with rustformers' save_pretrained and checks
# that Python transformers (5.25.0) loads each one with outputs identical to the original's.
#   bash tools/golden/check_rust_saves.sh [PYTHON]   (PYTHON: a venv with requirements.txt)
# Only tiny-{bert,distilbert,roberta}-*: the example saves the encoder heads (base, seqcls,
# tokcls, qa, mlm) and check_rust_save.py runs the "model" inputs of expected.json, which
# the decoder folders (tiny-llama, ..., tiny-*-seqcls on decoders) and the tokenizer-only
# tiny-chat-* folders do not have.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${1:-python3}"
cargo build -q -p rustformers --example save_pretrained
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for dir in tests/fixtures/tiny-{bert,distilbert,roberta}-*/; do
  name="$(basename "$dir")"
  head="${name##*-}"
  case "$head" in multi) head=seqcls ;; esac
  ./target/debug/examples/save_pretrained "$head" "$dir" "$out/$name" >/dev/null
  "$python" tools/golden/check_rust_save.py "$dir" "$out/$name" | tail -n 1
done
