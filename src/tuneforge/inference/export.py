"""`tuneforge export RUN --merged OUT`: fold the adapter into the base weights, so plain
transformers (and tools that read Hugging Face folders) load the fine-tuned model directly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tuneforge.errors import UsageError
from tuneforge.inference.load import load_for_inference


def export_merged(
    run_dir: Path, out: Path, *, overwrite: bool = False, weights: Path | None = None
) -> Path:
    """`weights`: one checkpoint of the run instead of its final model (an `ft:…:ckpt-step-N`)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty", hint="pick a new folder or --overwrite")
    loaded = load_for_inference(run_dir, weights=weights)
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    # Training switched attention to our packed-sequence function; exports use the standard one.
    model.config._attn_implementation = "sdpa"
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out
