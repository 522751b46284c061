#!/usr/bin/env bash
# The whole test suite: lint, pytest (slow end-to-end tests included), the Kotlin core of
# the Android app (kotlinc from npm, JUnit 5 from Debian), then the Swift package of the
# iOS app (in a Debian trixie chroot; needs root, made once and cached).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
bash scripts/test_android.sh
bash scripts/test_ios.sh
