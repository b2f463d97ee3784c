"""Before any weights load: check the config against the data and the model, resolve every
`auto`, and tokenize the data. All problems are collected and reported at once.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import TrainConfig
from tuneforge.data.chat_template import ChatTemplate, TemplateError
from tuneforge.data.formats import (
    detect_format,
    load_conversations,
    load_prompts,
    parse_mapping,
)
from tuneforge.data.tokenize import encode, encode_pair
from tuneforge.data.validate import suggested_epochs
from tuneforge.errors import ConfigError, Problem, TuneforgeError
from tuneforge.models.device import cuda_available
from tuneforge.models.precision import Precision, PrecisionUnavailable, choose_precision
from tuneforge.models.text import auto_max_seq_len, load_text_side
from tuneforge.train.compiled import compiler_missing

TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
}
LORA_LEARNING_RATE = 2e-4  # the usual LoRA range is 1e-4..3e-4 (LoRA/QLoRA papers)
FULL_LEARNING_RATE = 2e-5  # full fine-tuning moves every weight: 10x smaller
# DPO's gradient is a contrast between two answers the model already nearly writes: smaller steps.
# 5e-5 for LoRA (TRL's docs suggest ~1e-5 for long runs; runs of tens of steps need more), 1e-6 for
# full fine-tuning (TRL's DPOConfig default).
DPO_LORA_LEARNING_RATE = 5e-5
DPO_FULL_LEARNING_RATE = 1e-6
PREFERENCE_FORMATS = ("openai-dpo", "prompt-chosen-rejected")
# GRPO: 2e-5 for LoRA (TRL-scale runs of hundreds of steps); prompts per step when `auto`.
GRPO_LORA_LEARNING_RATE = 2e-5
GRPO_AUTO_PROMPTS = 4
DPO_AUTO_BETA = 0.1  # TRL's DPOConfig default and the DPO paper's; OpenAI does not publish its own


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != -100)


@dataclass(frozen=True)
class TokenizedPair:
    """A DPO preference pair: the same prompt with the preferred and the non-preferred answer."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def n_trained(self) -> int:
        return self.chosen.n_trained + self.rejected.n_trained

    @property
    def n_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass(frozen=True)
class StartFrom:
    """A finished run this run starts from (`init_from`): where its weights are."""

    run_dir: Path
    method: str  # lora / qlora: an adapter in `weights`; full: a model folder
    weights: Path


@dataclass
class Plan:
    config: TrainConfig  # with every `auto` resolved
    run_dir: Path
    # SFT: examples; DPO: preference pairs
    train: list[TokenizedExample] | list[TokenizedPair]
    validation: list[TokenizedExample] | list[TokenizedPair]
    steps_per_epoch: int
    total_steps: int
    tokenizer: Any
    template: ChatTemplate
    context_length: int | None
    device: str
    use_bf16: bool
    precision_reason: str = ""  # why bf16 or fp32, in words (models/precision.py)
    system_prompt: str | None = None  # the training data's usual system message, for chat
    start_from: StartFrom | None = None  # `init_from`, resolved
    eos_ids: frozenset[int] = frozenset()  # where sampled answers stop (grpo)
    grammar: str | None = None  # grpo with a JSON response_format: what answers follow

    @property
    def learning_rate(self) -> float:
        """The peak learning rate the optimizer uses: `learning_rate` × `learning_rate_multiplier`
        (OpenAI's knob scales whatever rate was chosen, `auto` or explicit)."""
        return float(self.config.learning_rate) * self.config.learning_rate_multiplier

    @property
    def epochs_trained(self) -> float:
        """Passes over the data the run makes: `epochs`, or fewer when `max_steps` stops it."""
        return round(self.total_steps / self.steps_per_epoch, 2)

    def describe(self) -> str:
        """One line for people: "60 steps of 8 (1 epoch of 480 examples)"."""
        epochs = self.epochs_trained
        amount = f"{epochs:g} epoch{'s' if epochs != 1 else ''}"
        if self.config.max_steps and self.total_steps == self.config.max_steps:
            amount += f", stopped by max_steps={self.config.max_steps}"
        unit = "preference pairs" if self.config.objective == "dpo" else "examples"
        return (
            f"{self.total_steps} steps of {self.config.batch_size} "
            f"({amount} of {len(self.train)} {unit})"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "run"


def default_run_dir(config: TrainConfig) -> Path:
    from tuneforge.run_dir import runs_root

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = "-".join(filter(None, [_slug(Path(config.model).name), config.suffix, stamp]))
    # Two runs started in the same second (a script, two jobs) get their own folders.
    candidate, n = runs_root() / name, 1
    while candidate.exists():
        n += 1
        candidate = runs_root() / f"{name}-{n}"
    return candidate


def _tokenize(
    examples: list,
    tokenizer: Any,
    template: ChatTemplate,
    max_len: int,
    label: str,
    problems: list[Problem],
) -> list[TokenizedExample]:
    out = []
    for example in examples:
        try:
            enc = encode(example.conversation, tokenizer, template, max_len)
        except TemplateError as exc:
            problems.append(Problem(label, f"line {example.line}: {exc.message}"))
            continue
        if enc.n_trained:
            out.append(TokenizedExample(enc.input_ids, enc.labels))
    return out


def _tokenize_pairs(
    examples: list,
    tokenizer: Any,
    template: ChatTemplate,
    max_len: int,
    label: str,
    problems: list[Problem],
) -> list[TokenizedPair]:
    """Preference pairs; a pair whose answer is cut away entirely by max_seq_len is dropped (as
    SFT drops examples with no trained token)."""
    out = []
    for example in examples:
        if example.conversation.rejected is None:
            continue  # reported by _check_pairs
        try:
            chosen, rejected = encode_pair(example.conversation, tokenizer, template, max_len)
        except TemplateError as exc:
            problems.append(Problem(label, f"line {example.line}: {exc.message}"))
            continue
        if chosen.n_trained and rejected.n_trained:
            out.append(
                TokenizedPair(
                    TokenizedExample(chosen.input_ids, chosen.labels),
                    TokenizedExample(rejected.input_ids, rejected.labels),
                )
            )
    return out


def _preference_format(path: Path, key: str, problems: list[Problem]) -> str | None:
    """objective=dpo: the file's preference format. A file that looks like no format is read
    as OpenAI's DPO JSONL, so each line says what it lacks; a chat or RFT prompt file is one
    problem, said once."""
    try:
        fmt = detect_format(path)
    except TuneforgeError:
        return "openai-dpo"
    if fmt in PREFERENCE_FORMATS:
        return fmt
    problems.append(
        Problem(
            key,
            f"objective=dpo trains on preference pairs, but this file is {fmt} (no "
            "non-preferred answers); give OpenAI's DPO JSONL (input, preferred_output, "
            "non_preferred_output) or prompt/chosen/rejected rows — or train with objective=sft",
        )
    )
    return None


@dataclass(frozen=True)
class PromptExample:
    """A GRPO prompt: its tokens (the chat template with the generation prompt) and the row's
    other fields, which the grader reads as `{{ item.x }}`."""

    input_ids: list[int]
    item: dict[str, Any]
    line: int

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def _grader(config: TrainConfig, examples: dict, problems: list[Problem]) -> dict | None:
    """`grader` → a checked grader JSON object; every template is tried on every row, so a field
    a row lacks is an error naming the line, not a silent reward of 0."""
    import json

    from tuneforge.eval.graders import GraderError, check_items, validate_grader

    spec: Any = config.grader
    if spec is None:
        problems.append(
            Problem(
                "grader",
                "objective=grpo needs a grader: an OpenAI grader JSON object, a .json file, or "
                "module:function",
            )
        )
        return None
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if spec.endswith(".json") or path.is_file():
            try:
                spec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                problems.append(Problem("grader", f"{spec}: not a readable JSON file ({exc})"))
                return None
        elif ":" in spec:
            spec = {"type": "python", "name": spec.rsplit(":", 1)[1], "function": spec}
        else:
            problems.append(
                Problem("grader", f"{spec!r} is neither a .json file nor module:function")
            )
            return None
    try:
        validate_grader(spec)
        for key in ("train_file", "validation_file"):
            check_items(spec, [(row.line, row.item) for row in examples[key]], key)
    except GraderError as exc:
        problems.append(Problem("grader", exc.inline()))
        return None
    return spec


def _grammar(
    config: TrainConfig, tokenizer: Any, eos_ids: frozenset[int], problems: list[Problem]
) -> str | None:
    """A JSON `response_format` → the grammar GRPO's answers are sampled under (checked against
    the tokenizer now, so a schema llguidance cannot use is an error before any weights load)."""
    from tuneforge.config import json_output
    from tuneforge.inference import constrained

    if config.response_format is None:
        return None
    as_json, schema = json_output(config.response_format)
    if not as_json:
        return None
    try:
        grammar = constrained.json_grammar(schema)
        problem = constrained.check(grammar, tokenizer, eos_ids)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        problems.append(Problem("response_format", f"the JSON schema cannot be used: {problem}"))
        return None
    return grammar


def _tokenize_prompts(
    rows: list,
    tokenizer: Any,
    template: ChatTemplate,
    max_len: int,
    config: TrainConfig,
    label: str,
    problems: list[Problem],
) -> list[PromptExample]:
    from tuneforge.data.chat_template import template_messages

    out = []
    for row in rows:
        try:
            messages = template_messages(row.messages, row.tools, template.supports_tools)
            tools = list(row.tools) if row.tools and template.supports_tools else None
            text = template.render(messages, tools=tools, add_generation_prompt=True)
        except TemplateError as exc:
            problems.append(Problem(label, f"line {row.line}: {exc.message}"))
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + config.max_completion_tokens > max_len:
            problems.append(
                Problem(
                    label,
                    f"line {row.line}: the prompt ({len(ids)} tokens) plus max_completion_tokens "
                    f"({config.max_completion_tokens}) is over max_seq_len ({max_len}); shorten "
                    "it or raise max_seq_len",
                )
            )
            continue
        out.append(PromptExample(ids, row.item, row.line))
    return out


def _check_pairs(examples: list, label: str, problems: list[Problem]) -> None:
    """objective=dpo needs a non-preferred answer in every example."""
    missing = [e.line for e in examples if e.conversation.rejected is None]
    if not missing:
        return
    lines = ", ".join(map(str, missing[:5])) + (" …" if len(missing) > 5 else "")
    what = "no example has" if len(missing) == len(examples) else f"line(s) {lines} have"
    problems.append(
        Problem(
            label,
            f"objective=dpo trains on preference pairs, but {what} a non-preferred answer; "
            "give OpenAI's DPO JSONL (input, preferred_output, non_preferred_output) or "
            "prompt/chosen/rejected rows — or train with objective=sft",
        )
    )


def _start_from(config: TrainConfig, problems: list[Problem]) -> StartFrom | None:
    """`init_from` → the finished run's weights, checked against this run's method and model."""
    from tuneforge import run_dir as rd

    if config.init_from is None:
        return None
    found = rd.find_run(config.init_from)
    if found is None:
        problems.append(
            Problem(
                "init_from",
                f"{config.init_from}: no such run (a run's name or folder; "
                "`tuneforge runs list` shows them)",
            )
        )
        return None
    status = rd.read_status(found) or {}
    if status.get("status") != "succeeded" or not (found / "model").is_dir():
        problems.append(
            Problem(
                "init_from",
                f"{found}: the run has not finished (status {status.get('status', '?')}); "
                "start from a succeeded run",
            )
        )
        return None
    theirs = rd.read_config(found)
    their_method = theirs.get("method", "lora")
    adapter = their_method in ("lora", "qlora")
    if adapter != (config.method in ("lora", "qlora")):
        problems.append(
            Problem(
                "init_from",
                f"{found} trained with method={their_method}; a method={config.method} run "
                f"cannot continue it — use method={their_method}"
                + ("" if adapter else f", or start a LoRA run from model={found / 'model'}"),
            )
        )
        return None
    start = StartFrom(found.resolve(), their_method, (found / "model").resolve())
    if "model" in config.model_fields_set and config.model not in (
        theirs.get("model"),
        rd_model(start),
    ):
        problems.append(
            Problem(
                "model",
                f"init_from's run was trained on {theirs.get('model')}; leave `model` out "
                "(it is taken from the run) or name that model",
            )
        )
        return None
    return start


def make_plan(config: TrainConfig, run_dir: Path | None = None) -> Plan:
    """Check everything that can be checked without weights; raise ConfigError listing all."""
    problems: list[Problem] = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (run_dir or config.output_dir):
        problems.append(
            Problem(
                "output_dir",
                "several processes need one run directory named up front; "
                "pass --out DIR (or output_dir=DIR)",
            )
        )
    device = config.device
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        problems.append(
            Problem("device", "cuda was asked for but no CUDA GPU is visible; use device=cpu")
        )
    if config.method == "qlora" and device != "cuda":
        problems.append(
            Problem(
                "method",
                "qlora quantizes the base model to 4 bits with bitsandbytes, which needs a "
                "CUDA GPU; use method=lora on CPU",
            )
        )
    if (
        config.method == "qlora"
        and device == "cuda"
        and importlib.util.find_spec("bitsandbytes") is None
    ):
        problems.append(
            Problem(
                "method",
                "qlora needs the bitsandbytes package, which is not installed; "
                "pip install bitsandbytes (or use method=lora)",
            )
        )
    if config.compile and config.objective != "sft":
        problems.append(
            Problem("compile", f"compile is for objective sft only (got {config.objective})")
        )
    elif config.compile and (missing := compiler_missing(device)):
        problems.append(Problem("compile", missing))
    precision = Precision(False, "fp32")
    if config.precision == "auto" and device == "cpu" and config.objective != "sft":
        # bf16 on CPUs is measured for SFT only; DPO's cached reference log-probs and GRPO's
        # ratios compare two forward passes, which bf16 rounding puts apart (ln 2 ± 7e-6).
        precision = Precision(False, f"auto: fp32 for {config.objective} on a CPU")
    elif device in ("cpu", "cuda"):
        try:
            precision = choose_precision(config.precision, device)
        except PrecisionUnavailable as exc:
            problems.append(Problem("precision", str(exc)))
    use_bf16 = precision.bf16
    for tracker in config.report_to:
        package = TRACKER_PACKAGES[tracker]
        if importlib.util.find_spec(package) is None:
            problems.append(
                Problem(
                    "report_to",
                    f"{tracker} needs the {package} package, which is not installed; "
                    f"pip install {package} (or remove {tracker})",
                )
            )
    start_from = _start_from(config, problems)
    if start_from is not None:
        base = rd_model(start_from)
        config = config.model_copy(update={"model": base})
    mapping = None
    try:
        mapping = parse_mapping(config.column_map, option="column_map")
    except TuneforgeError as exc:
        problems.append(Problem("column_map", exc.inline().removeprefix("column_map: ")))

    # Data files: exist, parse, same format.
    formats: dict[str, str] = {}
    examples: dict[str, list] = {"train_file": [], "validation_file": []}
    for key in ("train_file", "validation_file"):
        value = getattr(config, key)
        if value is None:
            continue
        path = Path(value)
        if not path.is_file():
            problems.append(Problem(key, f"{value}: no such file"))
            continue
        if config.objective == "grpo":
            try:
                examples[key] = load_prompts(path, config.system_prompt)
                formats[key] = "openai-rft"
            except TuneforgeError as exc:
                lines = exc.message.splitlines()
                shown = lines[0] + (f" {lines[1].strip()}" if len(lines) > 1 else "")
                problems.append(Problem(key, TuneforgeError(shown, hint=exc.hint).inline()))
            continue
        try:
            if config.objective == "dpo" and not (config.data_format or mapping):
                fmt = _preference_format(path, key, problems)
                if fmt is None:
                    continue
            else:
                fmt = config.data_format or ("columns" if mapping else detect_format(path))
            formats[key] = fmt
            examples[key] = load_conversations(
                path, None if mapping else fmt, mapping, config.system_prompt
            )
        except TuneforgeError as exc:
            # The summary line and the first problem (with its line number and fix).
            lines = exc.message.splitlines()
            shown = lines[0] + (f" {lines[1].strip()}" if len(lines) > 1 else "")
            first_line = TuneforgeError(shown, hint=exc.hint)
            problems.append(Problem(key, first_line.inline()))
    if len(set(formats.values())) > 1:
        problems.append(
            Problem(
                "validation_file",
                f"its format is {formats['validation_file']} but the training file's is "
                f"{formats['train_file']}; convert it with `tuneforge data convert`",
            )
        )

    # The model's text side (tokenizer, template, context) — no weights.
    tokenizer = template = None
    context = None
    eos_ids: frozenset[int] = frozenset()
    try:
        text = load_text_side(config.model)
        tokenizer, template, context = text.tokenizer, text.template, text.config_context
        eos_ids = text.eos_ids
    except TuneforgeError as exc:
        problems.append(Problem("model", exc.inline()))
    max_len = config.max_seq_len
    if max_len == "auto":
        max_len = auto_max_seq_len(context)
    elif context and max_len > context:
        problems.append(
            Problem(
                "max_seq_len",
                f"{max_len} is over the model's context length ({context}); "
                f"use max_seq_len={context} or less",
            )
        )
    if config.packing and isinstance(max_len, int) and config.micro_batch_tokens < max_len:
        problems.append(
            Problem(
                "micro_batch_tokens",
                f"{config.micro_batch_tokens} is below max_seq_len ({max_len}); a long example "
                "would not fit a forward pass — raise it or lower max_seq_len",
            )
        )
    if config.method == "full" and config.lora_target_modules != "all-linear":
        problems.append(
            Problem("lora_target_modules", "only applies to method=lora/qlora; remove it")
        )

    dpo = config.objective == "dpo"
    grpo = config.objective == "grpo"
    if config.dpo_sft_weight and not dpo:
        problems.append(
            Problem(
                "dpo_sft_weight", "only applies to objective=dpo; remove it or set objective=dpo"
            )
        )
    if dpo:
        for key in ("train_file", "validation_file"):
            _check_pairs(examples[key], key, problems)
    grader = _grader(config, examples, problems) if grpo else None
    grammar = None
    if config.response_format is not None and not grpo:
        problems.append(
            Problem(
                "response_format",
                "only applies to objective=grpo (the sampled answers' format); remove it",
            )
        )
    elif grpo and tokenizer is not None:
        grammar = _grammar(config, tokenizer, eos_ids, problems)
    if grpo and config.grpo_beta > 0 and config.method == "full":
        problems.append(
            Problem(
                "grpo_beta",
                "the KL reference of a full fine-tune would need a second model in memory; "
                "use method=lora, or grpo_beta=0",
            )
        )
    elif grpo and config.grpo_beta > 0 and config.init_from is not None:
        problems.append(
            Problem(
                "grpo_beta",
                "the KL reference is the model with its adapter switched off, which is the base "
                f"model, not {config.init_from} that this run starts from: the penalty would pull "
                "it back toward the base. Use grpo_beta=0 (TRL's default), or leave out init_from",
            )
        )
    train: list = []
    validation: list = []
    if grpo and tokenizer is not None and template is not None:
        for key, out in (("train_file", train), ("validation_file", validation)):
            out.extend(
                _tokenize_prompts(
                    examples[key], tokenizer, template, max_len, config, key, problems
                )
            )
    elif tokenizer is not None and template is not None:
        tokenize = _tokenize_pairs if dpo else _tokenize
        train = tokenize(
            examples["train_file"], tokenizer, template, max_len, "train_file", problems
        )
        validation = tokenize(
            examples["validation_file"], tokenizer, template, max_len, "validation_file", problems
        )
        said = any(p.field == "train_file" for p in problems)
        if examples["train_file"] and not train and not said:
            problems.append(
                Problem(
                    "train_file",
                    "no example has a trained token after truncation; "
                    "raise max_seq_len or check the assistant messages",
                )
            )
    if problems:
        raise ConfigError(
            problems=problems,
            subject="the config (checked against the data and the model)",
            hint="fix the fields named above (nothing was loaded or written)",
        )

    n = len(train)
    epochs = suggested_epochs(n) if config.epochs == "auto" else config.epochs
    batch_size = min(32, max(4, n // 64)) if config.batch_size == "auto" else config.batch_size
    batch_size = min(batch_size, n)
    if grpo and config.batch_size == "auto":
        batch_size = min(GRPO_AUTO_PROMPTS, n)
    if dpo:
        base_lr = DPO_LORA_LEARNING_RATE if config.method != "full" else DPO_FULL_LEARNING_RATE
    elif grpo:
        base_lr = GRPO_LORA_LEARNING_RATE if config.method != "full" else DPO_FULL_LEARNING_RATE
    else:
        base_lr = LORA_LEARNING_RATE if config.method != "full" else FULL_LEARNING_RATE
    lr = base_lr if config.learning_rate == "auto" else config.learning_rate
    beta = DPO_AUTO_BETA if config.dpo_beta == "auto" else config.dpo_beta
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = steps_per_epoch * epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    resolved = config.model_copy(
        update={
            # Paths are resolved when the run is made, so `--resume` works from any folder.
            **{
                key: str(Path(value).resolve())
                for key in ("train_file", "validation_file", "output_dir")
                if (value := getattr(config, key)) is not None
            },
            "model": _local_model_path(config.model),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": lr,
            "dpo_beta": beta,
            "grader": grader if grpo else config.grader,
            "max_seq_len": max_len,
            "device": device,
            "precision": "bf16" if use_bf16 else "fp32",
            "eval_every": config.eval_every or max(1, total_steps // 10),
            "checkpoint_every": config.checkpoint_every or steps_per_epoch,
        }
    )
    return Plan(
        system_prompt=_usual_system_prompt(examples["train_file"]),
        config=resolved,
        run_dir=Path(run_dir or config.output_dir or default_run_dir(config)).resolve(),
        train=train,
        validation=validation,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        tokenizer=tokenizer,
        template=template,
        context_length=context,
        device=device,
        use_bf16=use_bf16,
        precision_reason=precision.reason,
        start_from=start_from,
        eos_ids=eos_ids,
        grammar=grammar,
    )


def rd_model(start_from: StartFrom) -> str:
    """The base model of a run to start from: its config's model, or its own folder (full)."""
    from tuneforge import run_dir as rd

    if start_from.method == "full":
        return str(start_from.weights)
    return str(rd.read_config(start_from.run_dir)["model"])


def _usual_system_prompt(examples: list) -> str | None:
    """The system message most training examples start with: what the model learnt to answer
    under, so `generate`/`chat` use it by default as `eval`/`compare` do (they read it from the
    test data)."""
    from collections import Counter

    counts = Counter(
        m.content
        for e in examples
        for m in (e.conversation.messages if hasattr(e, "conversation") else e.messages)[:1]
        if m.role == "system" and isinstance(m.content, str)
    )
    return counts.most_common(1)[0][0] if counts else None


def _local_model_path(model: str) -> str:
    """A model given as a local folder is recorded as an absolute path; names stay names."""
    from tuneforge.models import REGISTRY

    path = Path(model).expanduser()
    if model not in REGISTRY and path.exists():
        return str(path.resolve())
    return model
