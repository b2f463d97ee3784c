#!/usr/bin/env bash
# The main job on the embedded default model: set up if needed, then `tuneforge quickstart`:
# demo data → validation → zero-shot / few-shot / retrieval baselines → LoRA fine-tune →
# evaluation → report. Extra arguments go to quickstart (e.g. --fast, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/tuneforge quickstart "$@"   # writes tuneforge-out/ unless --out DIR
