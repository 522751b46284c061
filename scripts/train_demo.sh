#!/usr/bin/env bash
# Train the embedded demo model from scratch on this machine's CPU and write
# models/demo (8-step student) and models/demo-1step (one-step DiffusionGAN model), with
# their model cards and sample images. Resumes where it stopped when run again.
#
#   bash scripts/train_demo.sh                 # in the foreground
#   nohup bash scripts/train_demo.sh > runs/demo.log 2>&1 &   # in the background
#
# THREADS (default 1): torch CPU threads. On a machine shared with other jobs one thread
# is fastest (more threads spin against each other); on an idle 2-core machine use 2.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}
mkdir -p runs
exec .venv/bin/mobilediff train all --config demo \
  --run-dir runs/demo --threads "$THREADS" \
  -o models/demo --one-step-output models/demo-1step --force "$@"
