#!/usr/bin/env bash
# Side-by-side benchmark: rustformers against PyTorch/transformers and llama.cpp, on the
# same machine, in one run, every measurement at 2 threads. See scripts/bench/README.md.
#
#   scripts/bench/run.sh [--runs N] [--skip-setup] [WORK ...]
#
# On a fresh machine it: creates a venv in ${BENCH_VENV:-~/.cache/rustformers-bench-venv}
# (outside the repo) and pip-installs scripts/bench/requirements.txt (llama-cpp-python
# builds llama.cpp for the CPU), seeds the HF cache (scripts/fetch-test-models.sh), builds
# `rustformers` in release mode, then runs each work item through rustformers and its
# peer back to back and prints the table. Raw JSON goes to
# ${BENCH_OUT:-target/bench/results-<date>.jsonl}.
#
# Environment: BENCH_VENV, BENCH_OUT, BENCH_PIP_ARGS (extra pip arguments, e.g. an index
# that serves CPU-only torch wheels), CMAKE_ARGS (overrides the llama.cpp build flags).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/scripts/bench"
venv="${BENCH_VENV:-$HOME/.cache/rustformers-bench-venv}"
runs=""
setup=1
works=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --runs=*) runs="${1#--runs=}"; shift ;;
    --skip-setup) setup=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) works+=("$1"); shift ;;
  esac
done

export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 RAYON_NUM_THREADS=2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py="$venv/bin/python"

if [ "$setup" = 1 ]; then
  if [ ! -x "$py" ]; then
    echo "== creating venv $venv"
    python3 -m venv "$venv"
  fi
  stamp="$venv/.rustformers-bench-requirements"
  if ! cmp -s "$here/requirements.txt" "$stamp"; then
    echo "== pip install -r scripts/bench/requirements.txt (llama.cpp builds from source: minutes)"
    "$py" -m pip install --quiet --upgrade pip
    # CPU-only llama.cpp, tuned for this CPU; no BLAS so that it runs its own kernels.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF}" \
      "$py" -m pip install ${BENCH_PIP_ARGS:-} -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
  fi
  echo "== seeding the HF cache"
  PYTHON="$py" HF_HUB_OFFLINE=0 "$root/scripts/fetch-test-models.sh"
  echo "== cargo build --release -p rustformers-cli"
  (cd "$root" && cargo build --release -p rustformers-cli)
fi

rf="$root/target/release/rustformers"
[ -x "$rf" ] || { echo "no $rf: run without --skip-setup" >&2; exit 1; }
[ -x "$py" ] || { echo "no venv at $venv: run without --skip-setup" >&2; exit 1; }

# WORK and its default runs, from peers.py (the single list of work items).
declare -A default_runs=()
all=()
while read -r w n; do all+=("$w"); default_runs[$w]=$n; done < <("$py" "$here/peers.py" --list)
[ ${#works[@]} -gt 0 ] || works=("${all[@]}")

out="${BENCH_OUT:-$root/target/bench/results-$(date +%Y%m%d-%H%M%S).jsonl}"
mkdir -p "$(dirname "$out")"
: > "$out"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

# record SIDE WORK STDOUT STDERR RC: appends one results line per JSON object found
# (or one with "result": null and the error when there is none).
record() {
  "$py" - "$@" >> "$out" <<'PY'
import json, sys
side, work, stdout, stderr, rc = sys.argv[1:6]
found = []
for line in open(stdout, errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "median" in obj and obj.get("work", work) == work:
            found.append(obj)
# Several lines of one (work, unit), one per process (load-*): merge them.
import statistics
merged = {}
for obj in found:
    merged.setdefault(obj.get("unit"), []).append(obj)
found = []
for objs in merged.values():
    if len(objs) > 1:
        obj = dict(objs[0])
        obj["median"] = statistics.median(o["median"] for o in objs)
        obj["min"] = min(o["min"] for o in objs)
        obj["max"] = max(o["max"] for o in objs)
        obj["runs"] = sum(o.get("runs", 1) for o in objs)
        rss = [o["peak_rss_mb"] for o in objs if o.get("peak_rss_mb") is not None]
        if rss:
            obj.update(peak_rss_mb=statistics.median(rss), peak_rss_mb_min=min(rss), peak_rss_mb_max=max(rss))
        objs = [obj]
    found += objs
for obj in found:
    print(json.dumps({"side": side, "work": work, "result": obj}))
if not found:
    err = open(stderr, errors="replace").read().strip().splitlines()[-3:]
    print(json.dumps({"side": side, "work": work, "result": None, "rc": int(rc),
                      "error": " / ".join(err) or "no JSON output"}))
PY
}

"$py" - "$root" "$venv" >> "$out" <<'PY'
import json, platform, subprocess, sys
from importlib.metadata import version
root = sys.argv[1]
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, cwd=root).stdout.strip()
    except OSError:
        return "?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(json.dumps({"side": "meta", "cpu": cpu, "threads": 2, "cores": sh("nproc"),
    "git": sh("git", "describe", "--always", "--dirty"), "python": platform.python_version(),
    "rustc": sh("rustc", "--version"),
    "peers": {p: version(p) for p in ("torch", "transformers", "sentence-transformers", "llama_cpp_python")}}))
PY

for w in "${works[@]}"; do
  n="${runs:-${default_runs[$w]:-5}}"
  echo "== $w (runs $n)"
  rc=0
  # WORK-busy: WORK while one busy-looping process competes for the cores.
  base="${w%-busy}"
  busy=""
  if [ "$base" != "$w" ]; then
    sh -c 'while :; do :; done' & busy=$!
  fi
  # From the repository root: rustformers reads scripts/bench/sentences.txt from there.
  if [[ "$w" == load-* ]]; then
    # rustformers times a load once per process: a warm-up process, then N processes
    # (record() merges their lines).
    : > "$logs/rf.out"
    for i in $(seq 0 "$n"); do
      (cd "$root" && RAYON_NUM_THREADS=2 "$rf" bench "$w" --runs 1) > "$logs/rf.one" 2> "$logs/rf.err" || { rc=$?; break; }
      [ "$i" = 0 ] || cat "$logs/rf.one" >> "$logs/rf.out"
    done
  else
    (cd "$root" && RAYON_NUM_THREADS=2 "$rf" bench "$base" --runs "$n") > "$logs/rf.out" 2> "$logs/rf.err" || rc=$?
  fi
  [ "$base" = "$w" ] || sed -i "s/\"work\": *\"$base\"/\"work\": \"$w\"/" "$logs/rf.out"
  [ "$rc" = 0 ] || echo "   rustformers: n/a (rc $rc: $(tail -1 "$logs/rf.err" | cut -c1-100))"
  record rustformers "$w" "$logs/rf.out" "$logs/rf.err" "$rc"
  rc=0
  "$py" "$here/peers.py" "$base" --runs "$n" > "$logs/peer.out" 2> "$logs/peer.err" || rc=$?
  [ "$base" = "$w" ] || sed -i "s/\"work\": *\"$base\"/\"work\": \"$w\"/" "$logs/peer.out"
  [ -z "$busy" ] || kill "$busy" 2>/dev/null || true
  record peer "$w" "$logs/peer.out" "$logs/peer.err" "$rc"
  [ "$rc" = 0 ] || { echo "   peer failed (rc $rc):"; tail -3 "$logs/peer.err" | sed 's/^/   /'; }
done

echo
"$py" "$here/table.py" "$out"
echo "raw JSON: $out"
