#!/usr/bin/env bash
# The main job on the embedded default model: set up if needed, generate the demo recipe data,
# and validate it against SmolLM2-135M-Instruct (token statistics and a training-time estimate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
out=${1:-tuneforge-out}
.venv/bin/tuneforge data demo "$out/data"
.venv/bin/tuneforge data validate "$out/data/train.jsonl"
