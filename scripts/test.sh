#!/usr/bin/env bash
# The test command: set up if needed, then run the whole suite (unit + integration tiers).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not integration"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# Two pytest-xdist workers, a test file each at a time (a file's module fixtures run once): much
# of the suite waits on subprocesses, imports and servers, so two at once finish in about 2/3 of
# the time on 2 cores (tests/conftest.py gives each worker half the threads).
# TUNEFORGE_TEST_WORKERS=0 runs it in one process; a later `-n N` among the arguments wins.
workers=${TUNEFORGE_TEST_WORKERS:-$(( $(nproc) >= 2 ? 2 : 0 ))}
# --no-loadscope-reorder keeps tests/conftest.py's order: the longest files start first.
# --durations: the slowest tests at the end of every run (CI keeps under 30 minutes).
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder \
  --durations=25 "$@"
