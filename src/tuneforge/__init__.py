"""tuneforge: fine-tune open models on your own examples, measure whether it was worth it,
and serve them.

Import layers point one way: config ← data/models ← train/eval/inference ← quickstart/jobs ← api,
with the CLI (`tuneforge.cli`) outside. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
