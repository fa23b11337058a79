#!/usr/bin/env bash
# Every GPU check in one command (benchmarks/gpu_check.py says what runs, in what time, and what it writes):
#     bash benchmarks/gpu_check.sh [--tiny] [--budget 480] [--only stage,...] [--plan]
# Everything goes under $OUT (set by the device tool on a lent GPU; here runs/gpu_check-<UTC stamp>). PYTHON is
# the interpreter (python3: on the device the one that holds PyTorch). A copy of the checkout without .git
# (the device's) records the commit given as BENCH_GIT_SHA.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_check-$(date -u +%Y%m%d-%H%M%S)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "${PYTHON:-python3}" -m benchmarks.gpu_check --out "$OUT" "$@"
