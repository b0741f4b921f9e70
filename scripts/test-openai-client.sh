#!/usr/bin/env bash
# Drives `rustformers serve` with the official `openai` Python client (PyPI), as the
# server tests of issue 6 ask: see scripts/openai_client_test.py. Installs the client into
# a venv outside the sources (${OPENAI_VENV:-target/openai-venv}) and uses the debug
# binary that `cargo test` built (or builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${OPENAI_VENV:-target/openai-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements"
if ! cmp -s scripts/requirements-openai.txt "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-openai.txt
  cp scripts/requirements-openai.txt "$stamp"
fi
cargo build --locked -q -p rustformers-cli
"$venv/bin/python" scripts/openai_client_test.py \
  --bin target/debug/rustformers \
  --gen tests/fixtures/tiny-llama --emb tests/fixtures/tiny-bert-base
