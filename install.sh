#!/usr/bin/env bash
# Install golf-audit and its test tools into the current Python environment.
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build (2.13.0) first, so the
# project's torch range never pulls a multi-GB CUDA build; with a GPU, pip picks the CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch>=2.5,<2.15"
  else
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi
"$PY" -m pip install --quiet -e ".[test,runtime,triage]"
# The sandbox runs submission code in fresh user+network namespaces with bubblewrap.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }) \
      || echo "install.sh: bubblewrap not installed; dynamic audits will fall back to unshare or refuse to run" >&2
  else
    echo "install.sh: bubblewrap (bwrap) not found; install it for the dynamic-audit sandbox" >&2
  fi
fi
# `golf-audit triage` renders index.html; tests/test_triage_html.py loads it in headless Chromium.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
      || echo "install.sh: chromium not installed; the triage page test will be skipped" >&2
  else
    echo "install.sh: chromium not found; install it for the triage page test (apt-get install chromium)" >&2
  fi
fi
