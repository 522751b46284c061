#!/usr/bin/env bash
# Set up, then draw a prompt with the embedded demo model (trained here, models/demo),
# export it to a LiteRT bundle and draw the same prompt again from the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MD=.venv/bin/mobilediff
PROMPT=${1:-"a red circle on a blue background"}
$MD info demo
$MD generate "$PROMPT" -o out/quickstart.png --upscale 8 --force
$MD export --target tflite -o out/demo-bundle --force
$MD inspect out/demo-bundle
$MD generate --bundle out/demo-bundle "$PROMPT" -o out/quickstart-bundle.png --upscale 8 --force
echo "images: out/quickstart.png (PyTorch) and out/quickstart-bundle.png (LiteRT bundle)"
