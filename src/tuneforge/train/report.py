"""What a finished run leaves for people: `loss.png` and a model card (`README.md`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge import run_dir as rd


def write_loss_plot(run_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # no display; never opens a window
    import matplotlib.pyplot as plt

    rows = rd.read_metrics(run_dir)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(
        [r["step"] for r in rows], [r["train_loss"] for r in rows], label="train_loss", linewidth=1
    )
    valid = [(r["step"], r["valid_loss"]) for r in rows if "valid_loss" in r]
    initial = (rd.read_status(run_dir) or {}).get("initial_valid_loss")
    if initial is not None:
        valid.insert(0, (0, initial))  # the base model, before any training
    if valid:
        ax.plot(*zip(*valid, strict=True), "o-", label="valid_loss (step 0: base model)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per trained token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def write_model_card(run_dir: Path, config: Any, plan: Any, final: dict[str, Any]) -> Path:
    train_tokens = sum(len(e.input_ids) for e in plan.train)
    trained = sum(e.n_trained for e in plan.train)
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in final.items()) or "| (none) | |"
    hyper = "\n".join(
        f"| {k} | {v} |"
        for k, v in config.model_dump(mode="json").items()
        if k not in ("train_file", "validation_file", "output_dir")
    )
    text = f"""# Fine-tuned {config.model}{f" ({config.suffix})" if config.suffix else ""}

Trained with [tuneforge](https://pypi.org/project/tuneforge/) by supervised fine-tuning
({config.method}) on `{config.train_file}`.

## Data
| | |
|---|---|
| training examples | {len(plan.train)} |
| validation examples | {len(plan.validation)} |
| tokens per epoch | {train_tokens:,} |
| trained (assistant) tokens per epoch | {trained:,} |
| epochs | {config.epochs} |
| optimizer steps | {plan.total_steps} |

## Final metrics
| metric | value |
|---|---|
{metrics}

![loss](loss.png)

## Hyperparameters
| field | value |
|---|---|
{hyper}

## Use it
```bash
tuneforge generate {run_dir} "your prompt"
tuneforge chat {run_dir}
tuneforge export {run_dir} --merged merged-model/   # a plain transformers folder
```
The chat template used in training is saved with the tokenizer in `model/`; prompts must use it.
"""
    path = Path(run_dir) / "README.md"
    rd.atomic_write_text(path, text)
    return path
