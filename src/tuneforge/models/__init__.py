"""Models: the registry (embedded default + local folders + hub ids) and loading."""

from tuneforge.models.registry import (
    DEFAULT_MODEL,
    REGISTRY,
    describe,
    load_model,
    load_tokenizer,
    resolve_model,
)

__all__ = ["DEFAULT_MODEL", "REGISTRY", "describe", "load_model", "load_tokenizer", "resolve_model"]
