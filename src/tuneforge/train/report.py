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
    objective = (rd.read_config(run_dir) or {}).get("objective")
    ax.set_ylabel(
        {"dpo": "DPO loss (per pair)", "grpo": "GRPO loss (plot the reward instead)"}.get(
            objective, "loss (per trained token)"
        )
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def write_model_card(run_dir: Path, config: Any, plan: Any, final: dict[str, Any]) -> Path:
    """`README.md` of the run, and the same card in `model/` (in place of peft's template, so
    the folder that travels describes itself)."""
    path = Path(run_dir) / "README.md"
    rd.atomic_write_text(path, model_card(run_dir, config, plan, final, loss_plot="loss.png"))
    model_dir = Path(run_dir) / "model"
    if model_dir.is_dir():
        rd.atomic_write_text(
            model_dir / "README.md", model_card(run_dir, config, plan, final, loss_plot=None)
        )
    return path


def _shown(value: Any) -> str:
    """A config value as a person reads it: `-` for unset, lists joined, never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def model_card(
    run_dir: Path, config: Any, plan: Any, final: dict[str, Any], *, loss_plot: str | None
) -> str:
    objective = getattr(config, "objective", "sft")
    dpo = objective == "dpo"
    train_tokens = sum(e.n_tokens if dpo else len(e.input_ids) for e in plan.train)
    trained = sum(getattr(e, "n_trained", 0) for e in plan.train)
    unit = {"dpo": "preference pairs", "grpo": "prompts"}.get(objective, "examples")
    how = {
        "dpo": f"Direct Preference Optimization (DPO, beta {config.dpo_beta})",
        "grpo": "reinforcement learning (GRPO) with the grader "
        f"`{(config.grader or {}).get('name')}`",
    }.get(objective, "supervised fine-tuning")
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in final.items()) or "| (none) | |"
    hyper = "\n".join(
        f"| {k} | {_shown(v)} |"
        for k, v in config.model_dump(mode="json").items()
        if k not in ("train_file", "validation_file", "output_dir")
    )
    from tuneforge.models.registry import public_id

    plot = f"\n![loss]({loss_plot})\n" if loss_plot else ""
    base = public_id(config.model) or config.model
    elsewhere = ""
    if config.method != "full":
        elsewhere = f"""
## Load it elsewhere
`model/` is a peft LoRA adapter whose `adapter_config.json` names its base as `{base}`:
```python
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("path/to/model")  # fetches {base}
```
vLLM serves it with `--enable-lora --lora-modules name=path/to/model`; `tuneforge export RUN
--merged DIR` writes a plain transformers folder for runtimes without LoRA support.
"""
    return f"""# Fine-tuned {base}{f" ({config.suffix})" if config.suffix else ""}

Trained with [tuneforge](https://pypi.org/project/tuneforge/) by {how}
({config.method}) on `{Path(config.train_file).name}`.

## Data
| | |
|---|---|
| training {unit} | {len(plan.train)} |
| validation {unit} | {len(plan.validation)} |
| tokens per epoch | {train_tokens:,} |
| trained (assistant) tokens per epoch | {trained:,} |
| epochs trained | {plan.epochs_trained:g} |
| optimizer steps | {plan.total_steps} |
| peak learning rate | {plan.learning_rate:g} |
| precision | {_shown(getattr(plan, "precision_reason", "") or config.precision)} |
| system prompt of the data | {_shown(plan.system_prompt)} |

## Final metrics
| metric | value |
|---|---|
{metrics}
{plot}
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
{elsewhere}"""
