#!/usr/bin/env bash
# Set up, then make an image with the embedded model and print what it is made of.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mobilediff info tiny
.venv/bin/mobilediff generate --model tiny "a red circle on a blue background" -o out/quickstart.png --force
