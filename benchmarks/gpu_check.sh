#!/usr/bin/env bash
# One-GPU speed check of seqbuild: ingest realtime factor, embed faces/s (fp16), resnet27 training
# images/s (AMP, channels_last, SeqFace LSR + DSA), FAISS search of 100k queries against 1M x 512.
# Self-contained and offline; about 3-5 minutes on one H100/H200 (budget: 8). Details: benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh                          # --device cuda, figures in runs/gpu_check/
#   benchmarks/gpu_check.sh --device cpu --quick     # CI-sized, on the CPU (what the test suite runs)
#   benchmarks/gpu_check.sh --out DIR --media DIR    # figures folder; folder holding dev_broadcast.mp4
#
# Python: $PYTHON if set, else the checkout's .venv, else python3 on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu_check "$@"
