"""`tuneforge quickstart`: the whole journey on the embedded default model — demo data, validation,
prompt-engineering baselines, a LoRA fine-tune, the fine-tuned evaluation and the report.

It sits at the jobs level: it strings together data, train and eval through the same functions
the individual commands use, so what it measures is what `tuneforge train` and
`tuneforge compare` would measure. Sizes are chosen to fit the time targets on a 2-core CPU
(BENCHMARKS.md, "quickstart").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError


@dataclass(frozen=True)
class Settings:
    n_examples: int  # demo examples in all (80% train, 10% validation, 10% test)
    test_requests: int  # held-out requests every approach answers
    k: int  # examples in the few-shot and retrieval prompts
    latency_requests: int  # requests answered one at a time for the latency figures
    with_loss: bool  # also score the reference answers' loss (one more forward pass each)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


# A LoRA of rank 16 at a high learning rate learns the answer format in a few dozen steps; more
# steps buy little on this task (BENCHMARKS.md) and cost ~8 s each on our CPU.
FULL = Settings(
    n_examples=600,
    test_requests=20,
    k=4,
    latency_requests=4,
    with_loss=False,
    train={
        "max_steps": 24,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.1,
        "eval_every": 8,
        "eval_examples": 16,
    },
)
FAST = Settings(
    n_examples=100,
    test_requests=6,
    k=2,
    latency_requests=2,
    with_loss=False,
    train={
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "eval_every": 2,
        "eval_examples": 4,
    },
)


@dataclass
class Result:
    data_dir: Path
    run_dir: Path
    compare_json: Path
    report_md: Path
    report_html: Path
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # compare.json's: leakage, a small test set


def _fresh(path: Path) -> Path:
    """`path`, or `path-2`, `path-3` … so a second quickstart never overwrites the first's run."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def quickstart(
    out_dir: Path,
    *,
    fast: bool = False,
    on_event: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_train_start: Callable[[int], None] | None = None,
) -> Result:
    from tuneforge.config import build_config
    from tuneforge.data.demo import write_demo
    from tuneforge.data.validate import validate_file
    from tuneforge.eval.compare import CompareOptions, Comparison
    from tuneforge.models import DEFAULT_MODEL
    from tuneforge.models.text import auto_max_seq_len, load_text_side
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import train

    say = on_event or (lambda _m: None)
    settings = FAST if fast else FULL
    out_dir = Path(out_dir)

    say(f"1/5 writing the demo recipe data ({settings.n_examples} examples) …")
    paths = write_demo(out_dir / "data", n=settings.n_examples)

    say("2/5 validating the training data against the model's tokenizer and chat template …")
    text = load_text_side(DEFAULT_MODEL)
    report = validate_file(
        paths["train"],
        text.tokenizer,
        text.template,
        model_name=DEFAULT_MODEL,
        max_seq_len=auto_max_seq_len(text.context_length),  # the training config's `auto`
    )
    if not report.ok:  # our own generator wrote it: this would be a bug, but say it plainly
        raise DataError(f"{paths['train']}: the demo data failed validation: {report.to_json()}")
    say(
        f"    {report.n_valid} valid examples, {sum(report.tokens)} tokens "
        f"({sum(report.trained)} trained)"
    )

    say("3/5 measuring the prompt-engineering baselines: zero-shot, few-shot, retrieval …")
    comparison = Comparison(
        CompareOptions(
            train_file=paths["train"],
            test_file=paths["test"],
            out_dir=out_dir,
            model=DEFAULT_MODEL,
            k=settings.k,
            limit=settings.test_requests,
            latency_requests=settings.latency_requests,
            with_loss=settings.with_loss,
            title="recipe ingredient extraction (tuneforge demo data)",
        ),
        on_event=say,
        on_progress=on_progress,
    )
    comparison.run_baselines()

    say("4/5 fine-tuning with LoRA …")
    run_dir = _fresh(out_dir / "run")
    config = build_config(
        {
            "model": DEFAULT_MODEL,
            "train_file": str(paths["train"]),
            "validation_file": str(paths["validation"]),
            "output_dir": str(run_dir),
            "suffix": "quickstart",
            **settings.train,
        }
    )
    plan = make_plan(config)
    if on_train_start:
        on_train_start(plan.total_steps)
    train(plan, on_step=on_step, on_event=say)

    say("5/5 evaluating the fine-tuned model and writing the report …")
    comparison.run_fine_tuned(run_dir)
    compare_json, md, html = comparison.finish()
    result = comparison.to_json()
    return Result(
        paths["train"].parent,
        run_dir,
        compare_json,
        md,
        html,
        result["summary"],
        result["warnings"],
    )
