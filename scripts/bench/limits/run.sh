#!/usr/bin/env bash
# The machine's ceilings that docs/benchmarks.md compares the work items with: DRAM read
# bandwidth (f32 decoding reads every weight once per token), the f32 AVX-512
# multiply-add peak (f32 products), the AVX512-BF16 peak and the AMX bf16 peak.
# Needs gcc; 2 threads like the work items (THREADS to change).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
threads="${THREADS:-2}"
gcc -O2 -march=native -fopenmp "$here/read_bandwidth.c" -o "$out/read_bandwidth"
for mb in 32 1024; do OMP_NUM_THREADS="$threads" "$out/read_bandwidth" "$mb"; done
gcc -O2 -march=native -fopenmp "$here/fma_peak.c" -o "$out/fma_peak"
OMP_NUM_THREADS="$threads" "$out/fma_peak"
if gcc -O2 -march=native -fopenmp "$here/bf16_peak.c" -o "$out/bf16_peak" 2>/dev/null; then
    OMP_NUM_THREADS="$threads" "$out/bf16_peak" || true
else
    echo '{"limit": "bf16_avx512_peak", "error": "gcc cannot build AVX512-BF16 code here"}'
fi
if gcc -O2 -march=native -mamx-tile -mamx-bf16 -fopenmp "$here/amx_peak.c" -o "$out/amx_peak" 2>/dev/null; then
    OMP_NUM_THREADS="$threads" "$out/amx_peak" || true
else
    echo '{"limit": "amx_bf16_peak", "error": "gcc cannot build AMX code here"}'
fi
