#!/usr/bin/env bash
# Create .venv and install mobilediff with what its tests need. Safe to run again.
# torch is pinned in pyproject.toml: torch==2.13.0 installs the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mobilediff-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[export,test]"
  touch "$stamp"
fi
# OpenAI's CLIP vocabulary as PyPI ships it: a test converts it and checks the result
# against models/tokenizer/ (scripts/fetch_clip_vocab.py --wheel takes it too).
wheel=.venv/downloads/open_clip_torch-3.3.0-py3-none-any.whl
if [ ! -f "$wheel" ]; then
  .venv/bin/python -m pip download --quiet --no-deps open-clip-torch==3.3.0 -d .venv/downloads
fi
