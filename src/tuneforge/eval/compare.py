"""`tuneforge compare`: is fine-tuning worth it on this data? Every approach answers the same
held-out requests; `compare.json` records quality (the mean and every request's score, with a
bootstrap interval), prompt and output tokens, latency and training cost for each, and a summary
that decides by quality when the difference is clear, by cost when the approaches are
equivalent, and says "undecided" (with how many more requests would settle it) otherwise. The
report (`report.md`, `report.html`) is rendered from `compare.json` alone.

`compare.json` is rewritten (atomically) after every approach, so an interrupted comparison keeps
what it measured, and one approach failing never loses the others' results.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import DataError, TuneforgeError, UsageError
from tuneforge.eval import baselines, stats
from tuneforge.eval.evaluate import Evaluation, Request, answer_room, evaluate, to_request
from tuneforge.eval.metrics import (
    BUILTIN,
    DEFAULT_MARGIN,
    Metric,
    RowMetric,
    load_user_metric,
    per_label,
    primary_metric_for,
)

SCHEMA_VERSION = 2  # 2: per-request scores, intervals, decided_by, leakage, warnings
N_SAMPLES = 5  # side-by-side answers kept per approach (the same test examples for all)
# A training step costs about three forward passes over its tokens (forward + backward); a
# request saves one forward pass over the prompt tokens it no longer sends.
TRAIN_FORWARD_EQUIVALENTS = 3
# Below this many test requests a 95 % interval on a 0-1 metric is wider than about ±0.25
# (half-width ≈ 1/√n at worst), too wide for most questions: the report warns up front.
MIN_TEST_REQUESTS = 16
MAX_LEAKS_LISTED = 20

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
    # An OpenAI grader object (`--grader FILE`'s JSON, the API's `grader`): scored as the metric
    # `grader:<name>`, and the primary metric unless `primary_metric` names another.
    grader: dict[str, Any] | None = None
    primary_metric: str | None = None
    data_format: str | None = None
    seed: int = 0  # few-shot example choice and the bootstrap resamples
    margin: float = DEFAULT_MARGIN
    title: str | None = None
    # An earlier comparison's folder: its approaches' answers are scored again (with this
    # comparison's metrics and grader) instead of generated again, when they answered the same
    # requests (`answers_fingerprint`); approaches it lacks are measured as usual.
    answers_from: Path | None = None


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
        if not 0 <= o.margin <= 1:
            raise UsageError(
                f"--margin {o.margin}: the margin is a quality difference on the primary metric",
                hint="give a number from 0 up to 1, e.g. --margin 0.05 (the default)",
            )
        self.train = [
            to_request(e, str(o.train_file)) for e in load_conversations(o.train_file, fmt_train)
        ]
        examples = load_conversations(o.test_file, fmt_test)
        test = [to_request(e, str(o.test_file)) for e in examples]
        grader_metric = self._grader(test, [e.line for e in examples])
        self.leaked_lines = leaked(self.train, test, [e.line for e in examples])
        self.nothing_held_out = bool(test) and len(self.leaked_lines) == len(test)
        if self.leaked_lines and not self.nothing_held_out:
            lines = set(self.leaked_lines)
            test = [r for r, e in zip(test, examples, strict=True) if e.line not in lines]
        # else: every test example is also a training example; excluding them all would leave
        # nothing to measure, so they stay and the report warns that nothing is held out.
        self.test = test[: o.limit] if o.limit else test
        self.metrics: dict[str, Metric | RowMetric] = dict(BUILTIN)
        for spec in o.user_metrics:
            name, fn = load_user_metric(spec)
            self.metrics[name] = fn
        if grader_metric is not None:
            self.metrics[grader_metric[0]] = grader_metric[1]
        detected, why = primary_metric_for(
            [r.reference for r in self.test], [r.reference for r in self.train + self.test]
        )
        self.label_task = detected == "exact_match"
        if o.primary_metric:
            self.primary = o.primary_metric
            self.primary_reason = (
                f"chosen with --primary-metric (detected: {why})"
                if o.primary_metric != detected
                else why
            )
        elif grader_metric is not None and o.grader is not None:
            self.primary = grader_metric[0]
            self.primary_reason = (
                f"the {o.grader['type']} grader {o.grader['name']!r} given to score the answers "
                f"(without it: {why})"
            )
        else:
            self.primary, self.primary_reason = detected, why
        if self.primary not in self.metrics:
            raise UsageError(
                f"--primary-metric {self.primary!r} is not one of {', '.join(self.metrics)}",
                hint="name a built-in metric, one given with --metric, or grader:<name> of the "
                "--grader",
            )
        # The margin is in the primary metric's units: a share of the range for a grader that
        # scores on another scale than 0-1 (a score_model with range [0, 10]: 0.05 → 0.5).
        primary = self.metrics[self.primary]
        self.margin = o.margin
        if isinstance(primary, RowMetric) and (primary.low, primary.high) != (0.0, 1.0):
            self.margin = o.margin * (primary.high - primary.low)
            self.primary_reason += (
                f"; its scores lie in [{primary.low:g}, {primary.high:g}], so the margin is "
                f"{o.margin:g} of that range, {self.margin:g}"
            )
        if o.model is None:
            from tuneforge import run_dir as rd

            o.model = rd.read_config(o.runs[0])["model"] if o.runs else DEFAULT_MODEL
        self.max_new_tokens = o.max_new_tokens or self._answer_room()
        self.samples = list(range(min(N_SAMPLES, len(self.test))))
        self.fingerprint = self._fingerprint()
        self.previous = self._previous_answers()

    def _fingerprint(self) -> str:
        """What an approach's answers depend on besides its model: the test requests and
        references, the training examples (the shots), the model, and the settings that build
        prompts and bound answers."""
        o = self.options
        data = {
            "test": [[_request_key(r), r.reference, r.tools] for r in self.test],
            "train": [[_request_key(r), r.reference] for r in self.train],
            "model": str(o.model),
            "settings": [self.max_new_tokens, o.k, o.seed, o.retriever],
        }
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def _previous_answers(self) -> dict[str, dict[str, Any]]:
        """`answers_from`'s approaches that can be scored again, by name."""
        folder = self.options.answers_from
        if folder is None:
            return {}
        path = Path(folder) / "compare.json"
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--answers-from {folder}: no readable compare.json there ({exc})",
                hint="give the --out folder of an earlier `tuneforge compare`",
            ) from None
        if earlier.get("use_case", {}).get("answers_fingerprint") != self.fingerprint:
            raise UsageError(
                f"--answers-from {folder}: its answers are to other requests (another test or "
                "training file, model, --limit, --max-tokens, --k, --seed or --retriever), or "
                "it was written before answers were kept",
                hint="run the comparison again without --answers-from",
            )
        return {
            a["name"]: a
            for a in earlier.get("approaches", [])
            if a.get("status") == "ok" and len(a.get("answers") or []) == len(self.test)
        }

    def _grader(self, test: list[Request], lines: list[int]) -> tuple[str, RowMetric] | None:
        """The grader as (metric name, metric), checked before any model loads: its JSON, and
        every `{{ item.… }}` it reads against every test row (a missing field names the line)."""
        from tuneforge.eval.graders import as_metric, check_items, metric_name, validate_grader

        spec = self.options.grader
        if spec is None:
            return None
        validate_grader(spec)
        check_items(
            spec,
            [(line, r.item) for r, line in zip(test, lines, strict=True)],
            str(self.options.test_file),
        )
        return metric_name(spec), as_metric(spec)

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

    def run_fine_tuned(self, run: Path, label: str | None = None) -> None:
        """Add the run's final model, named `fine_tuned:<label>` (default: the run's name)."""
        from tuneforge.inference.load import load_for_inference

        run = Path(run)
        name = f"fine_tuned:{label or run.name}"

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
        previous = self.previous.get(name)
        if previous is not None and _same_run(previous, training):
            self.on_event(f"{name}: scoring the answers kept in {self.options.answers_from} …")
            self._keep(self._rescored(previous))
            return
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
            entry["per_request_scores"] = {
                metric: [s.get(metric) for s in evaluation.scores] for metric in self.metrics
            }
            entry["primary_ci95"] = stats.interval(
                entry["per_request_scores"][self.primary], seed=self.options.seed
            )
            if self.label_task:
                entry["labels"] = per_label(
                    evaluation.answers, [r.reference for r in built.requests]
                )
            entry["samples"] = self._samples(built.requests, evaluation)
            entry["answers"] = evaluation.answers  # for a later --answers-from
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
        self._keep(entry)

    def _keep(self, entry: dict[str, Any]) -> None:
        """Add an approach's results, say them, and save."""
        name = entry["name"]
        if entry["status"] != "ok":
            self.on_event(f"{name}: failed — {entry['error']}")
        else:
            score = entry["metrics"].get(self.primary)
            ci = entry["primary_ci95"]
            shown = f"{score:.3f}" if score is not None else "n/a"
            shown += f" (95% interval {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
            self.on_event(
                f"{name}: {self.primary} {shown}, "
                f"{entry['prompt_tokens_per_request']:.0f} prompt tokens per request"
            )
        self.approaches.append(entry)
        self.save()

    def _rescored(self, previous: dict[str, Any]) -> dict[str, Any]:
        """An earlier approach's kept answers, scored with this comparison's metrics: its
        tokens, latency, loss of the references and training cost stand as measured."""
        from tuneforge.eval.metrics import score_all

        entry = copy.deepcopy(previous)
        answers = previous["answers"]
        references = [r.reference for r in self.test]
        means, scores, problems = score_all(
            self.metrics, answers, references, [r.item for r in self.test]
        )
        if (loss := previous["metrics"].get("test_loss")) is not None:
            means["test_loss"] = loss
        entry["metrics"] = means
        entry["per_request_scores"] = {m: [s.get(m) for s in scores] for m in self.metrics}
        entry["primary_ci95"] = stats.interval(
            entry["per_request_scores"][self.primary], seed=self.options.seed
        )
        entry.pop("labels", None)
        if self.label_task:
            entry["labels"] = per_label(answers, references)
        for sample in entry.get("samples") or []:
            sample["score"] = scores[sample["index"]].get(self.primary)
        entry["notes"] = [
            *previous.get("notes", []),
            *problems,
            f"answers kept from {self.options.answers_from}, scored again",
        ]
        return entry

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
                "n_leaked_test_examples": len(self.leaked_lines),
                "leaked_test_lines": self.leaked_lines[:MAX_LEAKS_LISTED],
                "max_new_tokens": self.max_new_tokens,
                "grader": o.grader,
                "answers_fingerprint": self.fingerprint,
            },
            "primary_metric": self.primary,
            "primary_metric_reason": self.primary_reason,
            "warnings": self.warnings(),
            "approaches": self.approaches,
            "summary": summarize(self.approaches, self.primary, margin=self.margin, seed=o.seed),
        }

    def warnings(self) -> list[str]:
        """What makes the numbers less trustworthy, to be read before them."""
        out = []
        n_leaked = len(self.leaked_lines)
        if self.nothing_held_out:
            out.append(
                f"every one of the {n_leaked} test examples is also in the training file: "
                "nothing is held out, so the scores measure memory, not generalisation; "
                "use a test file with examples the training file does not have"
            )
        elif n_leaked:
            listed = ", ".join(map(str, self.leaked_lines[:MAX_LEAKS_LISTED]))
            more = " …" if n_leaked > MAX_LEAKS_LISTED else ""
            out.append(
                f"{n_leaked} test example(s) also appear in the training file (same request "
                f"after normalising whitespace and case; test file lines {listed}{more}): they "
                "are left out of every score; remove them from one of the files"
            )
        out.extend(self._range_warnings())
        if len(self.test) < MIN_TEST_REQUESTS:
            out.append(
                f"only {len(self.test)} test requests: a 95% interval on a 0-1 metric is about "
                f"±{1 / math.sqrt(max(len(self.test), 1)):.2f} wide at worst, too wide for most "
                f"conclusions; use at least {MIN_TEST_REQUESTS} (better 50 or more)"
            )
        return out

    def _range_warnings(self) -> list[str]:
        """A grader metric whose scores leave the range it is taken to score in (a python or
        multi grader may return any number): the margin and the intervals' warnings assume it."""
        out = []
        for name, metric in self.metrics.items():
            if not isinstance(metric, RowMetric):
                continue
            scores = [
                s
                for a in self.approaches
                for s in (a.get("per_request_scores") or {}).get(name) or []
                if s is not None
            ]
            if scores and (min(scores) < metric.low or max(scores) > metric.high):
                out.append(
                    f"{name} gave scores from {min(scores):g} to {max(scores):g}, outside the "
                    f"[{metric.low:g}, {metric.high:g}] it is taken to score in; the margin "
                    f"(±{self.margin:g}) is in its units, so make the grader return 0-1 (or "
                    "use a score_model grader with its `range`)"
                )
        return out

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
        "per_request_scores": {},
        "primary_ci95": None,
    }


def _same_run(previous: dict[str, Any], run: Path | None) -> bool:
    """Whether an earlier fine-tuned approach measured this run as it is now (the same folder,
    trained as long: a run resumed since has other weights); a baseline always is."""
    if run is None:
        return True
    now = _training_cost(run)
    return all(previous.get(k) == now[k] for k in ("run_dir", "training_seconds", "trained_tokens"))


def _run_description(run: Path) -> str:
    from tuneforge import run_dir as rd

    config = rd.read_config(run)
    method = {"lora": "LoRA", "full": "full", "qlora": "QLoRA"}.get(config.get("method"), "?")
    objective = {"dpo": " DPO", "grpo": " GRPO"}.get(config.get("objective") or "sft", "")
    return f"{method}{objective} fine-tune of {config.get('model')} ({run.name})"


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


def _request_key(request: Request) -> tuple[tuple[str, str], ...]:
    """A request as leakage sees it: its turns (the system prompt aside, which every example
    shares) with case and whitespace normalised, so a re-typed copy still matches."""
    return tuple(
        (m.role, " ".join((m.content or "").lower().split()))
        for m in request.messages
        if m.role != "system"
    )


def leaked(train: list[Request], test: list[Request], test_lines: list[int]) -> list[int]:
    """Test-file lines whose request is also a training request (answer equal or not: a model
    trained on the question has seen it)."""
    seen = {_request_key(r) for r in train}
    return [line for r, line in zip(test, test_lines, strict=True) if _request_key(r) in seen]


def _best(approaches: list[dict[str, Any]], primary: str) -> dict[str, Any] | None:
    scored = [a for a in approaches if a["status"] == "ok" and primary in a["metrics"]]
    # Highest quality; among ties, the cheaper prompt.
    return max(
        scored,
        key=lambda a: (round(a["metrics"][primary], 6), -a["prompt_tokens_per_request"]),
        default=None,
    )


TESTS = {"mcnemar_exact": "McNemar's exact test", "paired_bootstrap": "a paired bootstrap test"}


def summarize(
    approaches: list[dict[str, Any]],
    primary: str,
    *,
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
) -> dict[str, Any]:
    """The best fine-tuned run against the best alternative: the quality gain with its 95 %
    interval, the costs, and a decision.

    Quality decides when the gain's whole interval is beyond ±margin. Cost decides when quality
    cannot change the choice: the interval lies inside ±margin (equivalent), or fine-tuning is at
    most `margin` worse and cheaper, or at most `margin` better and not cheaper. Otherwise the
    answer is "undecided", with the number of test requests that would settle it."""
    baseline = _best([a for a in approaches if a["kind"] != "fine_tuned"], primary)
    tuned = _best([a for a in approaches if a["kind"] == "fine_tuned"], primary)
    summary: dict[str, Any] = {
        "best_baseline": baseline and baseline["name"],
        "best_fine_tuned": tuned and tuned["name"],
        "quality_gain": None,
        "quality_gain_ci95": None,
        "quality_gain_p_value": None,
        "quality_gain_test": None,
        "paired_requests": None,
        "margin": margin,
        "prompt_tokens_saved_per_request": None,
        "prompt_token_ratio": None,
        "latency_saved_per_request_s": None,
        "break_even_requests": None,
        "more_requests_needed": None,
        "recommendation": "undecided",
        "decided_by": "undecided",
        "decision": None,
        "reasons": [],
    }
    reasons = summary["reasons"]
    if baseline is None or tuned is None:
        missing = "no fine-tuned run" if tuned is None else "no prompt baseline"
        summary["decision"] = f"Undecided: {missing} was measured, so there is nothing to weigh."
        reasons.append(f"{missing} was measured, so there is nothing to weigh")
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
    paired = _paired(tuned, baseline, primary, seed)
    quality = (
        f"{tuned['name']} scores {primary} {q_tuned:.3f} against {q_base:.3f} for the best "
        f"alternative, {baseline['name']} ({gain:+.3f}"
    )
    if paired is None:
        reasons.append(quality + "; no per-request scores to tell how sure that is)")
    else:
        lo, hi = paired.ci95
        summary["quality_gain_ci95"] = paired.ci95
        summary["quality_gain_p_value"] = paired.p_value
        summary["quality_gain_test"] = paired.test
        summary["paired_requests"] = paired.n
        reasons.append(
            quality + f", 95% interval {lo:+.3f} to {hi:+.3f} over {paired.n} paired requests; "
            f"p = {paired.p_value:.3g} by {TESTS[paired.test]})"
        )
    cheaper = saved > 0
    worse = paired is not None and paired.ci95[1] < -margin
    if cheaper and not worse and tuned.get("training_tokens"):
        cost = TRAIN_FORWARD_EQUIVALENTS * tuned["training_tokens"]
        summary["break_even_requests"] = math.ceil(cost / saved)
    reasons.append(_cost_reason(summary, tuned, baseline))
    decided_by, recommendation, decision = _decide(summary, paired, primary, margin, cheaper)
    summary["decided_by"], summary["recommendation"] = decided_by, recommendation
    if decided_by == "undecided" and paired is not None:
        total = stats.requests_to_settle(paired.gain, paired.sd, margin, paired.n)
        if total is not None:
            summary["more_requests_needed"] = total - paired.n
            decision += (
                f" About {total - paired.n} more test requests ({total} in all) would settle "
                "it, if the per-request differences keep the spread observed here."
            )
        else:
            decision += (
                " No number of test requests is sure to settle it: the gain sits on the margin."
            )
    summary["decision"] = decision
    return summary


def _paired(
    tuned: dict[str, Any], baseline: dict[str, Any], primary: str, seed: int
) -> stats.PairedGain | None:
    a = (tuned.get("per_request_scores") or {}).get(primary)
    b = (baseline.get("per_request_scores") or {}).get(primary)
    if not a or not b or len(a) != len(b):
        return None
    return stats.paired_gain(a, b, seed=seed)


def _cost_reason(summary: dict[str, Any], tuned: dict[str, Any], baseline: dict[str, Any]) -> str:
    p_tuned, p_base = tuned["prompt_tokens_per_request"], baseline["prompt_tokens_per_request"]
    latency = summary["latency_saved_per_request_s"]
    if latency is None:
        faster = ""
    elif latency >= 0:
        faster = f"; its median latency is {latency:.2f} s per request shorter on this machine"
    else:
        faster = f"; its median latency is {-latency:.2f} s per request longer on this machine"
    if p_tuned >= p_base:
        return (
            f"it sends no fewer prompt tokens ({p_tuned:.0f} vs {p_base:.0f} per request), so "
            f"the training cost is never paid back in prompt tokens{faster}"
        )
    text = (
        f"it sends {p_tuned:.0f} prompt tokens per request instead of {p_base:.0f} "
        f"({p_tuned / p_base:.0%}){faster}"
    )
    if summary["break_even_requests"] is not None:
        text += (
            f"; the training compute ({tuned['training_tokens']} tokens × "
            f"{TRAIN_FORWARD_EQUIVALENTS} forward passes) is paid back after "
            f"{summary['break_even_requests']} requests"
        )
    elif summary["quality_gain_ci95"] and summary["quality_gain_ci95"][1] < -summary["margin"]:
        text += ", but it answers worse, so the saving does not pay for the training"
    return text


def _decide(
    summary: dict[str, Any],
    paired: stats.PairedGain | None,
    primary: str,
    margin: float,
    cheaper: bool,
) -> tuple[str, str, str]:
    """(decided_by, recommendation, the decision in one or two sentences)."""
    tuned, base = summary["best_fine_tuned"], summary["best_baseline"]
    if paired is None:
        return (
            "undecided",
            "undecided",
            (f"Undecided: without per-request {primary} scores there is no interval to weigh."),
        )
    lo, hi = paired.ci95
    band = f"95% interval of the gain {lo:+.3f} to {hi:+.3f}"
    significance = (
        f"the quality difference is not significant (p = {paired.p_value:.3g})"
        if lo <= 0 <= hi
        else f"the quality difference is smaller than the margin ±{margin:g}"
    )
    saving = (
        f"{tuned} sends {summary['prompt_tokens_saved_per_request']:.0f} fewer prompt tokens "
        "per request"
        + (
            f" and pays back its training after {summary['break_even_requests']} requests"
            if summary["break_even_requests"] is not None
            else ""
        )
    )
    if lo > margin:
        return (
            "quality",
            "fine_tune",
            (
                f"Fine-tune, decided by quality: {tuned} is better on {primary} by more than the "
                f"margin {margin:g} ({band}, all above +{margin:g})."
            ),
        )
    if hi < -margin:
        return (
            "quality",
            "prompt_engineering",
            (
                f"Stay with prompt engineering, decided by quality: {tuned} is worse on {primary} "
                f"than {base} by more than the margin {margin:g} ({band}, all below -{margin:g}); "
                "improve the data or training before trying again."
            ),
        )
    if -margin <= lo and hi <= margin:
        if cheaper:
            return (
                "cost",
                "fine_tune",
                (
                    f"Fine-tune, decided by cost: {significance} ({band}, inside ±{margin:g}: "
                    f"equivalent), and {saving}."
                ),
            )
        return (
            "cost",
            "prompt_engineering",
            (
                f"Stay with prompt engineering, decided by cost: {significance} ({band}, inside "
                f"±{margin:g}: equivalent), and fine-tuning sends no fewer prompt tokens, so its "
                "training is never paid back."
            ),
        )
    if lo >= -margin and cheaper:
        return (
            "cost",
            "fine_tune",
            (
                f"Fine-tune, decided by cost: quality does not settle it ({band}), but "
                f"{tuned} is at most {margin:g} worse whichever way it falls, and {saving}."
            ),
        )
    if hi <= margin and not cheaper:
        return (
            "cost",
            "prompt_engineering",
            (
                f"Stay with prompt engineering, decided by cost: quality does not settle it "
                f"({band}), but fine-tuning is at most {margin:g} better whichever way it "
                "falls, and it sends no fewer prompt tokens, so its training is never paid back."
            ),
        )
    sure = "not significant" if lo <= 0 <= hi else "significant, but maybe smaller than the margin"
    return (
        "undecided",
        "undecided",
        (
            f"Undecided: the {band} straddles the margin ±{margin:g}, so quality does not "
            f"decide (the difference is {sure}; p = {paired.p_value:.3g}), and cost cannot "
            "settle it alone "
            + (
                f"({saving}, but it may answer worse)."
                if cheaper
                else "(fine-tuning is not cheaper, but it may answer better)."
            )
        ),
    )
