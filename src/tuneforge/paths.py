"""Where tuneforge keeps things. One env var moves it all, so tests point it at a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "TUNEFORGE_HOME"
KERNELS_ENV = "TUNEFORGE_KERNEL_DIR"


def tuneforge_home() -> Path:
    """`$TUNEFORGE_HOME`, default `~/.cache/tuneforge`; callers create what they use."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tuneforge"


def models_dir() -> Path:
    """Converted models live here, one folder per registry name."""
    return tuneforge_home() / "models"


def kernels_dir() -> Path:
    """Our compiled GEMM kernel and its per-machine measurements (`inference/small_gemm.py`):
    `$TUNEFORGE_KERNEL_DIR`, default `$TUNEFORGE_HOME/kernels`. The files are keyed by machine,
    compiler and shapes, so homes on one machine may share a folder (the test suite does: the
    measurement takes ~20 s per model, once instead of once per home)."""
    env = os.environ.get(KERNELS_ENV)
    return Path(env).expanduser() if env else tuneforge_home() / "kernels"
