"""Load a base model or a fine-tuned run for inference, with the chat template used in training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.chat_template import ChatTemplate
from tuneforge.errors import UsageError
from tuneforge.models.text import TextSide, load_text_side


@dataclass
class LoadedModel:
    model: Any
    text: TextSide  # the base model's tokenizer, chat template, context and stop tokens
    name: str
    base_model: str
    run_dir: Path | None = None
    # the server's loop for this model in the calling thread (`generate.py`, made on first use)
    in_place: Any = None

    @property
    def tokenizer(self) -> Any:
        return self.text.tokenizer

    @property
    def template(self) -> ChatTemplate:
        return self.text.template


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").exists()


def run_model_dir(run_dir: Path) -> Path:
    """The weights to use for a run: the final model, else its latest complete checkpoint."""
    from tuneforge import run_dir as rd

    final = run_dir / "model"
    if (final / "adapter_config.json").exists() or (final / "config.json").exists():
        return final
    latest = rd.latest_checkpoint(run_dir)
    if latest is None:
        raise UsageError(
            f"{run_dir}: the run has no model yet (no final model, no complete checkpoint)",
            hint=f"wait for it, or resume it with `tuneforge train --resume {run_dir}`",
        )
    return latest[1]


def load_for_inference(
    model_or_run: str | Path,
    *,
    device: str = "cpu",
    weights: Path | None = None,
    packed: bool = False,
    weight_precision: str = "auto",
) -> LoadedModel:
    """A registry name / model folder / hub id, or a run directory (adapter on its base).

    `packed`: for models that only generate (not changed or saved after): a LoRA run's adapter
    is merged into the weights (peft's `merge_and_unload`), so each token costs what the base
    model's does, as it will once exported merged (unmerged, peft runs every adapted layer's A/B
    path beside it: 111.6 ms/token against 75.6 merged and 68.9 for the base, SmolLM2-135M on
    AMD EPYC, same greedy tokens); then the linear layers' weights are packed once for a faster
    GEMM on x86 CPUs (`inference/prepack.py`). `weight_precision` (packed only): "auto" — where
    they are all bf16 values (a bf16 checkpoint), our kernel reads them in bf16, half the bytes,
    with the same results (`use_bf16_weights(only_exact=True)`); "bf16" — rounded to bf16 and
    read so whatever they are (`tuneforge chat|generate --weight-precision bf16`: faster,
    answers may differ); "fp32" — never.
    """
    loaded = _load(model_or_run, device=device, weights=weights)
    if packed:
        from tuneforge.inference.prepack import apply_weight_precision, prepack_linears

        if hasattr(loaded.model, "merge_and_unload"):
            loaded.model = loaded.model.merge_and_unload()
        prepack_linears(loaded.model)
        apply_weight_precision(loaded.model, weight_precision)
    return loaded


def _load(model_or_run: str | Path, *, device: str, weights: Path | None) -> LoadedModel:
    import torch

    from tuneforge.models import load_model

    if is_run_dir(model_or_run):
        from tuneforge import run_dir as rd

        run_dir = Path(model_or_run)
        config = rd.read_config(run_dir)
        base = config["model"]
        folder = weights or run_model_dir(run_dir)
        text = load_text_side(base, require_fast=False)
        if (folder / "adapter_config.json").exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), folder)
        else:
            from transformers import AutoModelForCausalLM

            if (folder / "config.json").exists():
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            else:  # a full-fine-tuning checkpoint: base architecture + saved weights
                from safetensors.torch import load_file

                model = load_model(base, dtype=torch.float32)
                model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
        model.to(device).eval()
        return LoadedModel(
            model,
            text,
            name=run_dir.name,
            base_model=base,
            run_dir=run_dir,
        )
    model = load_model(str(model_or_run), dtype=torch.float32)
    model.to(device).eval()
    return LoadedModel(
        model,
        load_text_side(str(model_or_run), require_fast=False),
        name=str(model_or_run),
        base_model=str(model_or_run),
    )
