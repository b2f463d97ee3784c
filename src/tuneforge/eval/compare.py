"""`tuneforge compare`: is fine-tuning worth it on this data? Every approach answers the same
held-out requests; `compare.json` records quality, prompt and output tokens, latency and training
cost for each, and a summary with a recommendation. The report (`report.md`, `report.html`) is
rendered from `compare.json` alone.

`compare.json` is rewritten (atomically) after every approach, so an interrupted comparison keeps
what it measured, and one approach failing never loses the others' results.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import DataError, TuneforgeError, UsageError
from tuneforge.eval import baselines
from tuneforge.eval.evaluate import Evaluation, Request, answer_room, evaluate, to_request
from tuneforge.eval.metrics import BUILTIN, Metric, load_user_metric

SCHEMA_VERSION = 1
N_SAMPLES = 5  # side-by-side answers kept per approach (the same test examples for all)
# A training step costs about three forward passes over its tokens (forward + backward); a
# request saves one forward pass over the prompt tokens it no longer sends.
TRAIN_FORWARD_EQUIVALENTS = 3
# Quality differences smaller than this (on a 0-1 metric) are treated as a tie.
TIE = 0.02

Event = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass
class CompareOptions:
    train_file: Path
    test_file: Path
    out_dir: Path
    model: str | None = None  # None: the base model of the first run, else the default
    runs: list[Path] = field(default_factory=list)
    k: int = 4
    retriever: str = "auto"
    limit: int | None = None
    max_new_tokens: int | None = None  # None: from the longest training answer
    batch_size: int = 8
    latency_requests: int = 8
    with_loss: bool = True
    user_metrics: list[str] = field(default_factory=list)
    primary_metric: str | None = None
    data_format: str | None = None
    seed: int = 0
    title: str | None = None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine() -> str:
    import torch

    from tuneforge.models.device import cuda_available

    where = torch.cuda.get_device_name(0) if cuda_available() else "CPU"
    cpu = platform.processor() or platform.machine()
    return f"{torch.get_num_threads()} threads, {cpu}, {where}, torch {torch.__version__}"


class Comparison:
    """One comparison: load data once, then add approaches one by one, saving after each."""

    def __init__(
        self,
        options: CompareOptions,
        on_event: Event | None = None,
        on_progress: Progress | None = None,
    ) -> None:
        self.options = options
        self.on_event = on_event or (lambda _m: None)
        self.on_progress = on_progress
        self.approaches: list[dict[str, Any]] = []
        self._base: Any = None
        self._prepare()

    # -- set-up: everything that can be wrong with the input, before any model loads ------------
    def _prepare(self) -> None:
        from tuneforge.data.formats import detect_format, load_conversations
        from tuneforge.models import DEFAULT_MODEL

        o = self.options
        for label, path in (("training", o.train_file), ("test", o.test_file)):
            if not Path(path).is_file():
                raise UsageError(f"{path}: no such {label} file", hint="check the path")
        for run in o.runs:
            if not (Path(run) / "config.yaml").is_file():
                raise UsageError(
                    f"{run}: not a run directory (no config.yaml)",
                    hint="pass a folder written by `tuneforge train`",
                )
        fmt_train = o.data_format or detect_format(o.train_file)
        fmt_test = o.data_format or detect_format(o.test_file)
        if fmt_train != fmt_test:
            raise DataError(
                f"{o.test_file} is in {fmt_test} format but the training file {o.train_file} is "
                f"in {fmt_train} format",
                hint=f"convert the test file: tuneforge data convert {o.test_file} TEST.jsonl "
                "--to openai-chat (and the same for the training file)",
            )
        self.train = [
            to_request(e, str(o.train_file)) for e in load_conversations(o.train_file, fmt_train)
        ]
        test = [to_request(e, str(o.test_file)) for e in load_conversations(o.test_file, fmt_test)]
        self.test = test[: o.limit] if o.limit else test
        self.metrics: dict[str, Metric] = dict(BUILTIN)
        for spec in o.user_metrics:
            name, fn = load_user_metric(spec)
            self.metrics[name] = fn
        self.primary = o.primary_metric or self._default_primary()
        if self.primary not in self.metrics:
            raise UsageError(
                f"--primary-metric {self.primary!r} is not one of {', '.join(self.metrics)}",
                hint="name a built-in metric or one given with --metric",
            )
        if o.model is None:
            from tuneforge import run_dir as rd

            o.model = rd.read_config(o.runs[0])["model"] if o.runs else DEFAULT_MODEL
        self.max_new_tokens = o.max_new_tokens or self._answer_room()
        self.samples = list(range(min(N_SAMPLES, len(self.test))))

    def _default_primary(self) -> str:
        """set-F1 when every reference is a JSON list (ingredient lists, tags), else token F1."""
        lists = [BUILTIN["set_f1"](r.reference, r.reference) for r in self.test]
        return "set_f1" if all(v is not None for v in lists) else "token_f1"

    def _answer_room(self) -> int:
        from tuneforge.models import load_tokenizer

        tokenizer = load_tokenizer(str(self.options.model))
        return answer_room(tokenizer, [r.reference for r in self.train])

    # -- the approaches ------------------------------------------------------------------------
    @property
    def base(self) -> Any:
        if self._base is None:
            from tuneforge.inference.load import load_for_inference

            self.on_event(f"loading {self.options.model} …")
            self._base = load_for_inference(str(self.options.model), packed=True)
        return self._base

    def _budget(self, loaded: Any) -> int:
        return loaded.text.context_length - self.max_new_tokens

    def run_baselines(self) -> None:
        o = self.options
        base = lambda: self.base  # noqa: E731 - loaded on first use, inside the approach's try
        self._add("zero_shot", "zero_shot", lambda: baselines.zero_shot(self.test), base)
        self._add(
            "few_shot",
            "few_shot",
            lambda: baselines.few_shot(
                self.base, self.train, self.test, k=o.k, budget=self._budget(self.base), seed=o.seed
            ),
            base,
        )

        def rag() -> baselines.Built:
            self.on_event("embedding the training examples for retrieval …")
            retriever = baselines.make_retriever(baselines.documents(self.train), o.retriever)
            return baselines.retrieval(
                self.base,
                self.train,
                self.test,
                k=o.k,
                budget=self._budget(self.base),
                retriever=retriever,
            )

        self._add("retrieval", "retrieval", rag, base)

    def run_fine_tuned(self, run: Path) -> None:
        from tuneforge.inference.load import load_for_inference

        run = Path(run)
        name = f"fine_tuned:{run.name}"

        def load() -> Any:
            self.on_event(f"loading {run} …")
            return load_for_inference(run, packed=True)

        self._add(name, "fine_tuned", lambda: baselines.zero_shot(self.test), load, training=run)

    def _add(
        self,
        name: str,
        kind: str,
        build: Callable[[], baselines.Built],
        model: Callable[[], Any],
        training: Path | None = None,
    ) -> None:
        """Evaluate one approach; any failure is recorded on it and the comparison goes on."""
        entry: dict[str, Any] = _empty(name, kind)
        self.on_event(f"{name}: answering {len(self.test)} test requests …")
        try:
            loaded = model()
            built = build()
            entry["description"] = built.description
            entry["examples_in_prompt"] = built.examples_in_prompt
            entry["notes"] = list(built.notes)
            evaluation = evaluate(
                loaded,
                built.requests,
                self.metrics,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.options.batch_size,
                latency_requests=self.options.latency_requests,
                with_loss=self.options.with_loss,
                on_progress=(lambda d, t: self.on_progress(name, d, t))
                if self.on_progress
                else None,
            )
            entry.update(evaluation.summary())
            entry["notes"] += evaluation.notes
            entry["samples"] = self._samples(built.requests, evaluation)
            entry["train_examples_used"] = (
                len(self.train) if kind == "retrieval" else built.examples_in_prompt
            )
            if training is not None:
                entry.update(_training_cost(training))
                entry["description"] = _run_description(training)
            entry["status"] = "ok"
        except TuneforgeError as exc:
            entry["error"] = exc.inline()
        except Exception as exc:  # one broken approach must not lose the others' results
            entry["error"] = f"{exc.__class__.__name__}: {exc}"
        if entry["status"] != "ok":
            self.on_event(f"{name}: failed — {entry['error']}")
        else:
            score = entry["metrics"].get(self.primary)
            shown = f"{score:.3f}" if score is not None else "n/a"
            self.on_event(
                f"{name}: {self.primary} {shown}, "
                f"{entry['prompt_tokens_per_request']:.0f} prompt tokens per request"
            )
        self.approaches.append(entry)
        self.save()

    def _samples(self, requests: list[Request], evaluation: Evaluation) -> list[dict[str, Any]]:
        out = []
        for i in self.samples:
            users = [m.content for m in self.test[i].messages if m.role == "user"]
            out.append(
                {
                    "index": i,
                    "request": users[-1] if users else "",
                    "reference": requests[i].reference,
                    "answer": evaluation.answers[i],
                    "score": evaluation.scores[i].get(self.primary),
                }
            )
        return out

    # -- results -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        o = self.options
        system = next(
            (m.content for r in self.test for m in r.messages if m.role == "system"), None
        )
        return {
            "schema_version": SCHEMA_VERSION,
            "created_at": _now(),
            "machine": machine(),
            "use_case": {
                "title": o.title or f"{Path(o.train_file).parent.name}/{Path(o.train_file).name}",
                "system_prompt": system,
                "model": o.model,
                "train_file": str(o.train_file),
                "test_file": str(o.test_file),
                "n_train_examples": len(self.train),
                "n_test_examples": len(self.test),
                "max_new_tokens": self.max_new_tokens,
            },
            "primary_metric": self.primary,
            "approaches": self.approaches,
            "summary": summarize(self.approaches, self.primary),
        }

    def save(self) -> Path:
        self.options.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.options.out_dir / "compare.json"
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def finish(self) -> tuple[Path, Path, Path]:
        """Write compare.json and the report; returns (compare.json, report.md, report.html)."""
        from tuneforge.eval.report import write_report

        path = self.save()
        md, html = write_report(json.loads(path.read_text()), self.options.out_dir)
        return path, md, html


def _empty(name: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "status": "failed",
        "error": None,
        "description": None,
        "examples_in_prompt": None,
        "notes": [],
        "metrics": {},
        "prompt_tokens_per_request": None,
        "output_tokens_per_request": None,
        "latency_p50_s": None,
        "latency_p95_s": None,
        "training_seconds": None,
        "trained_tokens": None,
        "training_tokens": None,
        "train_examples_used": None,
        "run_dir": None,
        "loss_curve": None,
        "samples": [],
    }


def _run_description(run: Path) -> str:
    from tuneforge import run_dir as rd

    config = rd.read_config(run)
    method = {"lora": "LoRA", "full": "full", "qlora": "QLoRA"}.get(config.get("method"), "?")
    return f"{method} fine-tune of {config.get('model')} ({run.name})"


def _training_cost(run: Path) -> dict[str, Any]:
    """Training time and tokens from the run directory, the record of what training cost."""
    from tuneforge import run_dir as rd
    from tuneforge.data.formats import load_conversations

    status = rd.read_status(run) or {}
    metrics = rd.read_metrics(run)
    config = rd.read_config(run)
    train_curve = [[m["step"], m["train_loss"]] for m in metrics if "train_loss" in m]
    valid_curve = [[m["step"], m["valid_loss"]] for m in metrics if "valid_loss" in m]
    if status.get("initial_valid_loss") is not None:
        valid_curve.insert(0, [0, status["initial_valid_loss"]])
    try:
        n_train = len(load_conversations(config["train_file"], config.get("data_format")))
    except TuneforgeError:
        n_train = None  # the training file moved since; the rest of the record still holds
    batch = config.get("batch_size")
    if n_train is not None and isinstance(batch, int) and metrics:
        # A run stopped early (max_steps) saw only its first steps' examples.
        n_train = min(n_train, metrics[-1]["step"] * batch)
    return {
        "training_seconds": status.get("trained_seconds")
        or (metrics[-1].get("elapsed_seconds") if metrics else None),
        "trained_tokens": sum(m.get("trained_tokens", 0) for m in metrics) or None,
        "training_tokens": sum(m.get("tokens", 0) for m in metrics) or None,
        "train_examples_used": n_train,
        "run_dir": str(run),
        "loss_curve": {"train": train_curve, "valid": valid_curve},
    }


def _best(approaches: list[dict[str, Any]], primary: str) -> dict[str, Any] | None:
    scored = [a for a in approaches if a["status"] == "ok" and primary in a["metrics"]]
    # Highest quality; among ties, the cheaper prompt.
    return max(
        scored,
        key=lambda a: (round(a["metrics"][primary], 6), -a["prompt_tokens_per_request"]),
        default=None,
    )


def summarize(approaches: list[dict[str, Any]], primary: str) -> dict[str, Any]:
    """The benefits of the best fine-tuned run over the best alternative, and a recommendation."""
    baseline = _best([a for a in approaches if a["kind"] != "fine_tuned"], primary)
    tuned = _best([a for a in approaches if a["kind"] == "fine_tuned"], primary)
    summary: dict[str, Any] = {
        "best_baseline": baseline and baseline["name"],
        "best_fine_tuned": tuned and tuned["name"],
        "quality_gain": None,
        "prompt_tokens_saved_per_request": None,
        "prompt_token_ratio": None,
        "latency_saved_per_request_s": None,
        "break_even_requests": None,
        "recommendation": "undecided",
        "reasons": [],
    }
    if baseline is None or tuned is None:
        missing = "no fine-tuned run" if tuned is None else "no prompt baseline"
        summary["reasons"].append(f"{missing} was measured, so there is nothing to weigh")
        return summary
    q_tuned, q_base = tuned["metrics"][primary], baseline["metrics"][primary]
    gain = q_tuned - q_base
    p_tuned, p_base = tuned["prompt_tokens_per_request"], baseline["prompt_tokens_per_request"]
    saved = p_base - p_tuned
    summary["quality_gain"] = gain
    summary["prompt_tokens_saved_per_request"] = saved
    summary["prompt_token_ratio"] = p_tuned / p_base if p_base else None
    if tuned["latency_p50_s"] is not None and baseline["latency_p50_s"] is not None:
        summary["latency_saved_per_request_s"] = baseline["latency_p50_s"] - tuned["latency_p50_s"]
    reasons = summary["reasons"]
    reasons.append(
        f"{tuned['name']} scores {primary} {q_tuned:.3f} against {q_base:.3f} for the best "
        f"alternative, {baseline['name']} ({gain:+.3f})"
    )
    if saved > 0 and gain <= -TIE:
        reasons.append(
            f"it sends fewer prompt tokens ({p_tuned:.0f} vs {p_base:.0f} per request), but it "
            "answers worse, so the saving does not pay for the training"
        )
    elif saved > 0 and tuned.get("training_tokens"):
        cost = TRAIN_FORWARD_EQUIVALENTS * tuned["training_tokens"]
        summary["break_even_requests"] = math.ceil(cost / saved)
        reasons.append(
            f"it sends {p_tuned:.0f} prompt tokens per request instead of {p_base:.0f} "
            f"({p_tuned / p_base:.0%}); the training compute ({tuned['training_tokens']} tokens "
            f"× {TRAIN_FORWARD_EQUIVALENTS} forward passes) is paid back after "
            f"{summary['break_even_requests']} requests"
        )
    elif saved <= 0:
        reasons.append(
            f"it sends no fewer prompt tokens ({p_tuned:.0f} vs {p_base:.0f} per request), so "
            "the training cost is never paid back in prompt tokens"
        )
    if gain >= TIE:
        summary["recommendation"] = "fine_tune"
        reasons.append(f"fine-tuning is better on {primary} by more than {TIE}")
    elif gain > -TIE and saved > 0:
        summary["recommendation"] = "fine_tune"
        reasons.append(f"quality is a tie (within {TIE}) and fine-tuning needs shorter prompts")
    else:
        summary["recommendation"] = "prompt_engineering"
        reasons.append(
            f"the fine-tuned model is not better on {primary}: keep {baseline['name']}, and "
            "improve the data or training before trying again"
        )
    return summary
