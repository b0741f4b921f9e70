#!/usr/bin/env bash
# Saves every tiny model fixture checkpoint (encoders, decoders with each rope type,
# decoder seq-cls heads) with rustformers' save_pretrained and checks that Python
# transformers (5.25.0) loads each one with outputs identical to the original's.
#   bash tools/golden/check_rust_saves.sh [PYTHON]   (PYTHON: a venv with requirements.txt)
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
for dir in tests/fixtures/tiny-{llama,mistral,qwen2,qwen3,gemma2,phi3,gpt2}*/; do
  name="$(basename "$dir")"
  case "$name" in *-seqcls) head=seqcls ;; *) head=causal ;; esac
  ./target/debug/examples/save_pretrained "$head" "$dir" "$out/$name" >/dev/null
  "$python" tools/golden/check_rust_save.py "$dir" "$out/$name" | tail -n 1
done
