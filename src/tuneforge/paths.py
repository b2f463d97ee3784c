"""Where tuneforge keeps things. One env var moves it all, so tests point it at a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "TUNEFORGE_HOME"


def tuneforge_home() -> Path:
    """`$TUNEFORGE_HOME`, default `~/.cache/tuneforge`; callers create what they use."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tuneforge"


def models_dir() -> Path:
    """Converted models live here, one folder per registry name."""
    return tuneforge_home() / "models"
