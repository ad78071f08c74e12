#!/bin/sh
# The GPU benchmark suite in one command (benchmarks/gpu.py: generators' images/s, judge pairs/s on vLLM vs
# transformers, Ray Train vs a plain loop, pipeline efficiency). Full size on one GPU in under 25 minutes;
# `--tiny` on CPU with the tiny kit. Python: $PYTHON, else the repo's .venv, else python3.
set -e
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" RAY_USAGE_STATS_ENABLED=0
exec "$PY" benchmarks/gpu.py "$@"
