"""One typed config for a training run. The CLI flags, YAML files, the jobs API and the UI form
all build a `TrainConfig`; `config.yaml` in the run directory is its resolved form.

Unknown keys are errors, and every problem is reported at once, before any weights load
(`build_config`, then `train.plan.make_plan` against the data and the model), naming the
field and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from tuneforge.errors import ConfigError, Problem

Auto = Literal["auto"]


def _checked_format(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        json_output(value)  # raises ValueError saying what is wrong
    return value


# A `response_format` field, checked by `json_output` (TrainConfig, and the API's requests)
ResponseFormat = Annotated[dict[str, Any] | None, AfterValidator(_checked_format)]


class TrainConfig(BaseModel):
    """Everything that defines a fine-tuning run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- what to train on -----------------------------------------------------------------
    model: str = Field(
        "smollm2-135m-instruct",
        description="Base model: a registry name, a local Hugging Face folder, or a hub id.",
    )
    train_file: str = Field(..., description="Training data (any format `tuneforge data` reads).")
    validation_file: str | None = Field(
        None, description="Held-out data for valid_loss; same format as the training file."
    )
    data_format: str | None = Field(
        None, description="Force the input format instead of detecting it (e.g. openai-chat)."
    )
    column_map: str | None = Field(
        None, description="Column mapping for custom CSV/JSONL, e.g. prompt=title,completion=NER."
    )
    system_prompt: str | None = Field(
        None, description="System message added to examples that have none."
    )

    # --- method ---------------------------------------------------------------------------
    method: Literal["lora", "full", "qlora"] = Field(
        "lora",
        description="lora: train small adapters (fast, small files); full: all weights; "
        "qlora: LoRA on a 4-bit base (CUDA only).",
    )
    objective: Literal["sft", "dpo", "grpo"] = Field(
        "sft",
        description="What the run optimises. sft: learn to write the training answers "
        "(supervised). dpo: learn to prefer the preferred answer over the non-preferred one "
        "(Direct Preference Optimization; needs preference pairs: OpenAI's DPO JSONL or "
        "prompt/chosen/rejected). grpo: reinforcement from a `grader`'s scores of sampled "
        "answers (OpenAI's reinforcement fine-tuning; needs prompts: OpenAI's RFT JSONL). "
        "dpo and grpo work with method lora or full.",
    )
    grader: dict[str, Any] | str | None = Field(
        None,
        description="grpo only: the reward. An OpenAI grader JSON object (string_check, "
        "text_similarity, python, multi, score_model), a path to a .json file holding one, or "
        "package.module:function (called as function(sample, item) -> float).",
    )
    grpo_group_size: int = Field(
        4,
        ge=2,
        le=64,
        description="grpo only: answers sampled per prompt; each is scored against its group's "
        "mean. More gives a steadier signal and costs generation time (TRL's default: 8).",
    )
    grpo_epsilon: float = Field(
        0.2, gt=0, lt=1, description="grpo only: the clip range of the policy ratio (TRL's 0.2)."
    )
    grpo_beta: float = Field(
        0.0,
        ge=0,
        description="grpo only: weight of the KL penalty to the base model (the adapter "
        "switched off). 0 (TRL's default): none, and no reference forward pass. Above 0: LoRA "
        "only, and not with init_from.",
    )
    grpo_loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo",
        description="grpo only: how token losses are averaged (TRL's names). dapo: over all "
        "answer tokens of the step (TRL's default); grpo: per answer, then over answers "
        "(favours short answers); dr_grpo: over answers × max_completion_tokens; bnpo: as dapo "
        "here.",
    )
    max_completion_tokens: int = Field(
        32, ge=1, le=4096, description="grpo only: longest sampled answer, in tokens."
    )
    response_format: ResponseFormat = Field(
        None,
        description="grpo only: OpenAI's response_format, {type: json_schema, json_schema: "
        "{name, schema}} or {type: json_object}: every sampled answer is JSON that follows it "
        "(constrained decoding), so a grader can read `sample.output_json` from the first "
        "step. None: free text.",
    )
    temperature: float = Field(
        1.0, gt=0, le=2, description="grpo only: sampling temperature of the answers."
    )
    dpo_beta: float | Auto = Field(
        "auto",
        description="DPO only: how strongly the model is held to the reference (the starting "
        "model). Higher is more conservative, lower more aggressive (OpenAI's `beta`, 0 to 2). "
        "auto: 0.1, TRL's and the DPO paper's default (OpenAI does not publish its value).",
    )
    dpo_sft_weight: float = Field(
        0.0,
        ge=0,
        le=10,
        description="DPO only: weight of the preferred answer's own loss (its per-token "
        "negative log-likelihood) added to DPO's, as TRL's loss_type=['sigmoid', 'sft'] (RPO; "
        "1.0 is the paper's). 0: plain DPO, as OpenAI's. Use it when DPO ranks the pairs "
        "right but the model still does not answer in the preferred way.",
    )
    init_from: str | None = Field(
        None,
        description="Start from a finished run (its name or folder) instead of the bare base "
        "model: its LoRA adapter is trained further (or its full model, for method=full). "
        "For DPO the reference is this starting model — the usual SFT-then-DPO recipe.",
    )
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank r (capacity of adapters).")
    lora_alpha: float = Field(
        32.0, gt=0, description="LoRA scaling numerator; the update is scaled by alpha / rank."
    )
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input. 0 by default: on CPU the extra copy of every "
        "activation costs ~10% speed, and small task data rarely needs it.",
    )
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Which linear layers get adapters: 'all-linear' or names like q_proj,v_proj.",
    )

    # --- optimisation ---------------------------------------------------------------------
    epochs: int | Auto = Field(
        "auto",
        description="Passes over the data. auto: OpenAI's rule (3, clamped so examples × "
        "epochs lies in [100, 25000]).",
    )
    batch_size: int | Auto = Field(
        "auto", description="Examples per optimizer step. auto: n_examples / 64, within [4, 32]."
    )
    learning_rate: float | Auto = Field(
        "auto", description="Peak learning rate. auto: 2e-4 for LoRA, 2e-5 for full."
    )
    learning_rate_multiplier: float = Field(
        1.0, gt=0, description="Scales the learning rate (OpenAI's knob)."
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warmup."
    )
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Fraction of steps spent warming the learning rate up."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(
        1.0, description="Clip the gradient norm to this (None: no clipping)."
    )
    max_seq_len: int | Auto = Field(
        "auto",
        description="Tokens per example; longer ones are truncated. auto: min(context, 2048).",
    )
    packing: bool = Field(
        True,
        description="Run several examples per forward pass (no attention across examples). "
        "Faster; the same loss as without.",
    )
    micro_batch_tokens: int = Field(
        2048,
        ge=64,
        description="Tokens per forward pass when packing; bigger uses more memory.",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (for smoke tests)."
    )
    seed: int = Field(0, description="Seed for data order, adapter init and dropout.")

    # --- evaluation and checkpoints -------------------------------------------------------
    eval_every: int | None = Field(
        None, ge=1, description="Steps between validation evaluations (default: ~10 per run)."
    )
    eval_examples: int = Field(
        64, ge=1, description="Validation examples scored at each periodic evaluation."
    )
    final_validation: bool = Field(
        True,
        description="After the last step, score the whole validation set (full_valid_loss, "
        "as OpenAI reports it); false skips that pass, for a large validation set on a slow "
        "machine, where the periodic sample (eval_examples) is enough.",
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="Steps between checkpoints (default: once per epoch)."
    )
    keep_last: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")

    # --- where and how --------------------------------------------------------------------
    output_dir: str | None = Field(
        None, description="Run directory (default: $TUNEFORGE_HOME/runs/<name>)."
    )
    suffix: str | None = Field(
        None, max_length=64, description="Name suffix for the run and the fine-tuned model id."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list,
        description="Experiment trackers that also get every metrics.jsonl line, through "
        "accelerate: tensorboard (event files in RUN/trackers), wandb, mlflow, trackio. Each "
        "needs its package installed; wandb/mlflow/trackio follow their own env settings "
        "(wandb logs offline into RUN/trackers unless WANDB_API_KEY or WANDB_MODE is set).",
    )
    tracker_project: str | None = Field(
        None,
        max_length=128,
        description="Project (wandb, trackio) or experiment (mlflow) the trackers log to "
        "(default: the run's name).",
    )
    tracker_run_name: str | None = Field(
        None, max_length=128, description="The run's name in the trackers (wandb's `name`)."
    )
    tracker_tags: list[str] = Field(
        default_factory=list, description="Tags of the tracker run (wandb)."
    )
    wandb_entity: str | None = Field(
        None, max_length=128, description="wandb team or user (default: your wandb default)."
    )
    compile: bool = Field(
        False,
        description="SFT: run each decoder layer's MLP and norms through torch.compile (fuses "
        "RMSNorm, SiLU and LoRA's scaling). Costs about a minute of compiling at the first step "
        "(once per machine and shape family, cached by torch); pays off on runs of many steps. "
        "Needs a C++ compiler on CPU (a GPU: triton).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast (fp32 master weights) on a GPU with bf16 and on a CPU "
        "with AMX-BF16 or AVX512-BF16 where a timed calibration shows it faster (SFT only: DPO "
        "and GRPO on a CPU stay in fp32 unless bf16 is asked for); fp32 otherwise. "
        "bf16 on a CPU without bf16 units is an error.",
    )

    @field_validator("dpo_beta")
    @classmethod
    def _beta_range(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < float(value) <= 2:
            raise ValueError("use a number in (0, 2], or auto (0.1)")
        return value

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("report_to", "tracker_tags", mode="before")
    @classmethod
    def _split_trackers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix_chars(cls, value: str | None) -> str | None:
        if value is not None and not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError("use letters, digits, '-' and '_' only")
        return value


# OpenAI's names for our fields (the jobs API takes OpenAI's; a config file takes ours).
OPENAI_NAMES = {"n_epochs": "epochs", "training_file": "train_file", "model_name": "model"}


def json_output(response_format: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """OpenAI's `response_format` → (whether the answer must be JSON, its JSON schema; None for
    any JSON object). ValueError says what is wrong with it. (Here, the lowest layer, because
    training's GRPO sampling and the server's chat route both read it.)"""
    kind = response_format.get("type")
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind != "json_schema":
        raise ValueError(f"type {kind!r}: use 'text', 'json_object' or 'json_schema'")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise ValueError(
            'a json_schema format is {"type": "json_schema", "json_schema": {"name": ..., '
            '"schema": {...JSON Schema...}}}'
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise ValueError("json_schema.name: 1 to 64 letters, digits, '_' or '-'")
    return True, spec["schema"]


_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _did_you_mean(key: str) -> str | None:
    import difflib

    if key in OPENAI_NAMES:
        return OPENAI_NAMES[key]
    close = difflib.get_close_matches(key, list(TrainConfig.model_fields), n=1, cutoff=0.75)
    return close[0] if close else None


def _format_pydantic(exc: ValidationError) -> list[Problem]:
    problems: dict[str, Problem] = {}  # a Literal union reports once per branch: keep the first
    for error in exc.errors():
        # Union fields report one error per branch (loc = (field, "int")): name the field only.
        where = str(error["loc"][0]) if error["loc"] else None
        if where in problems:
            continue
        if error["type"] == "extra_forbidden":
            guess = _did_you_mean(str(where))
            message = "unknown key" + (f"; did you mean `{guess}`?" if guess else "")
        elif error["type"] == "missing" or (
            error.get("input") is None
            and where in TrainConfig.model_fields
            and TrainConfig.model_fields[where].is_required()
        ):
            message = "required"
        else:
            got = error.get("input")
            shown = repr(got)[:60] if not isinstance(got, dict) else "an object"
            message = f"{error['msg']} (got {shown})"
        problems[str(where)] = Problem(where, message)
    return list(problems.values())


def parse_value(text: str) -> Any:
    """`key=value` overrides take YAML scalars: 3, 0.5, true, null, auto, [a, b]."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build_config(
    data: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """dict (YAML, flags or an API body) + `key=value` overrides → TrainConfig, or ConfigError."""
    merged = dict(data or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override `{item}` is not key=value", hint="write e.g. epochs=3")
        key, value = item.split("=", 1)
        merged[key.strip().replace("-", "_")] = parse_value(value)
    try:
        return TrainConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(
            problems=_format_pydantic(exc),
            hint="fix the fields above; `tuneforge config show --defaults` lists every field",
        ) from None


def load_config_file(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of field: value")
    try:
        return build_config(data, overrides)
    except ConfigError as exc:
        raise ConfigError(
            None if exc.problems else f"{path}: {exc.message}",
            problems=exc.problems,
            subject=str(path),
            hint=exc.hint,
        ) from None


def defaults_yaml() -> str:
    """Every field with its default and description, as a commented YAML file that
    `load_config_file` reads back (required fields are null until you fill them in)."""
    lines = [
        "# tuneforge training config: every field, its default, and what it does.",
        "# Save it, fill in train_file, then: tuneforge config validate FILE",
    ]
    for name, field in TrainConfig.model_fields.items():
        lines.append(f"# {field.description}" + (" (required)" if field.is_required() else ""))
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        lines.append(yaml.safe_dump({name: default}, default_flow_style=False).strip())
    return "\n".join(lines) + "\n"
