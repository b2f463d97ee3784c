#!/usr/bin/env bash
# The real-data check of issue 4: OpenAI's "How to fine-tune chat models" data (the first 195
# RecipeNLG rows: title + ingredients → the generic ingredient list `NER`), split with a fixed
# seed, fine-tuned with LoRA, and compared with zero-shot, few-shot and retrieval prompting.
#
#   bash bench/recipes_nlg.sh [WORK_DIR]        (default /tmp/tuneforge-recipes-nlg)
#
# Results: WORK_DIR/compare/compare.json and report.html (each approach's set-F1 with its 95%
# bootstrap interval, the gain's interval and p-value, and what decided); the numbers go into
# BENCHMARKS.md. `--seed 0 --margin 0.05` are the defaults, written out so the run can be redone.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
work=${1:-/tmp/tuneforge-recipes-nlg}
tf=.venv/bin/tuneforge
system="You are a helpful recipe assistant. You are to extract the generic ingredients from each of the recipes provided."

rm -rf "$work"
$tf data split ../shared/data/recipes_nlg_sample.csv "$work/data" \
    --map prompt=title+ingredients,completion=NER --system "$system" \
    --seed 0 --validation 0.1 --test 0.2
$tf data validate "$work/data/train.jsonl" --no-estimate
time $tf train -t "$work/data/train.jsonl" -v "$work/data/validation.jsonl" --out "$work/run" \
    epochs=2 batch_size=8 learning_rate=1e-3 warmup_ratio=0.1 eval_every=6 eval_examples=19
time $tf compare --train "$work/data/train.jsonl" --test "$work/data/test.jsonl" \
    --run "$work/run" --out "$work/compare" --k 4 --latency-requests 8 --seed 0 --margin 0.05 \
    --title "RecipeNLG generic ingredients (OpenAI's tutorial data)"
.venv/bin/python scripts/check_report.py "$work/compare" --screenshot "$work/compare/report.png"
