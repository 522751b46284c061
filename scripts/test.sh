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
# The Kotlin core also loads and verifies a real exported bundle (the demo model, LiteRT).
bundle_dir=$(mktemp -d)
trap 'rm -rf "$bundle_dir"' EXIT
.venv/bin/mobilediff export --target tflite -o "$bundle_dir/bundle" >/dev/null
MOBILEDIFF_BUNDLE="$bundle_dir/bundle" bash scripts/test_android.sh
bash scripts/test_ios.sh
