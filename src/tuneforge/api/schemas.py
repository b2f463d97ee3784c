"""Request and response bodies, shaped as OpenAI's so that its clients work unchanged.

Requests forbid unknown fields (OpenAI answers "Unrecognized request argument supplied"), so a
typo is an error instead of a silently ignored setting. Responses are declared too: they make
the OpenAPI schema honest, and schemathesis checks the server against it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneforge.config import ResponseFormat, json_output
from tuneforge.data.chat_template import tool_call_prefix

Auto = Literal["auto"]
MAX_ID = 512


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _refused(why: str) -> AfterValidator:
    """For an OpenAI setting tuneforge cannot honour when set (true, or a count): a 400 on the
    field that says why, instead of the setting silently doing nothing."""

    def check(value: Any) -> Any:
        if value:
            raise ValueError(why)
        return value

    return AfterValidator(check)


def _no_hidden_reasoning(value: str | None) -> str | None:
    """Chat's reasoning_effort: "none" and "minimal" are what a model without hidden reasoning
    tokens does anyway; asking for more is a 400 rather than a setting silently ignored."""
    if value not in (None, "none", "minimal"):
        raise ValueError(
            "tuneforge's models do not reason in hidden tokens: reasoning_effort can be none "
            "or minimal, or left out"
        )
    return value


def _metadata_sizes(value: dict[str, str] | None) -> dict[str, str] | None:
    for key, item in (value or {}).items():
        if len(key) > 64 or len(item) > 512:
            raise ValueError("keys are at most 64 characters and values at most 512")
    return value


# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[dict[str, str], Field(max_length=16), AfterValidator(_metadata_sizes)]


def function_tools_only(value: Any, example: str) -> Any:
    """A `tools` list's every entry is a function tool (written as `example`), or ValueError."""
    for i, tool in enumerate(value if isinstance(value, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise ValueError(
                f"tools[{i}] has type {kind!r}: tuneforge serves function tools only ({example})"
            )
    return value


def unique_names(names: list[str]) -> None:
    """ValueError naming a function that two tools define."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two tools are functions named {name!r}; give each its own name")
        seen.add(name)


# ----------------------------------------------------------------------------------------------
# Errors and lists
# ----------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool


# ----------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------


class Hyperparameters(Strict):
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field(
        "auto", description="Passes over the data."
    )
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field(
        "auto", description="Examples per optimizer step."
    )
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        "auto", description="Scales the method's default learning rate."
    )


class Supervised(Strict):
    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = Field(
        "auto",
        description="How strongly the model is held to the reference (the base model): higher "
        "is more conservative. auto: 0.1 (TRL's and the DPO paper's default).",
    )


class Dpo(Strict):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementHyperparameters(Strict):
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field(
        "auto", description="Prompts per optimizer step. auto: 4."
    )
    compute_multiplier: Auto | Annotated[float, Field(gt=0, le=16)] = Field(
        "auto",
        description="Answers sampled per prompt: max(2, round(4 × compute_multiplier)). "
        "auto: 1 (4 answers).",
    )
    eval_interval: Auto | Annotated[int, Field(ge=1)] = Field(
        "auto", description="Steps between validations. auto: about 10 per run."
    )
    eval_samples: Auto | Annotated[int, Field(ge=1)] = Field(
        "auto",
        description="Accepted for OpenAI's clients; validation scores one greedy answer per "
        "prompt.",
    )
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = Field("auto")
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field("auto")
    reasoning_effort: Literal["default", "low", "medium", "high"] = Field(
        "default", description="Accepted for OpenAI's clients; no meaning for local models."
    )


class Reinforcement(Strict):
    grader: dict[str, Any] = Field(
        description="The reward: OpenAI's grader JSON (string_check, text_similarity, python, "
        "score_model, multi)."
    )
    response_format: ResponseFormat = Field(
        None,
        description="json_schema or json_object: every sampled answer is JSON that follows it "
        "(constrained decoding), read by graders as `sample.output_json`.",
    )

    hyperparameters: ReinforcementHyperparameters | None = None


# The `method.type` values this server trains (the Studio lists them from the OpenAPI schema).
METHOD_TYPES = ("supervised", "dpo", "reinforcement")


class Method(Strict):
    type: Literal["supervised", "dpo", "reinforcement"] = Field(
        description="supervised: learn to write the training answers. dpo: learn to prefer "
        "`preferred_output` over `non_preferred_output` (Direct Preference Optimization; the "
        "training file holds OpenAI's DPO JSONL). reinforcement: GRPO on answers sampled for "
        "the prompts of OpenAI's RFT JSONL, rewarded by `reinforcement.grader`. All train LoRA "
        "adapters."
    )
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: Reinforcement | None = None


class WandbSettings(Strict):
    project: str = Field(min_length=1, max_length=128, description="The wandb project.")
    name: str | None = Field(None, max_length=128, description="The wandb run's display name.")
    entity: str | None = Field(None, max_length=128, description="wandb team or user.")
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=50, description="Tags for the wandb run."
    )


class Integration(BaseModel):
    # Not strict, and `wandb` checked by the route: an unknown integration ({"type": "mlflow",
    # "mlflow": {...}}) should fail on its `type`, the field that says what is wrong.
    type: Literal["wandb"] = Field(description="Only Weights and Biases (wandb) is supported.")
    wandb: WandbSettings | None = Field(
        None,
        description="Required for type wandb. Logged offline (RUN/trackers/wandb, upload with "
        "`wandb sync`) unless the server has WANDB_API_KEY or WANDB_MODE set.",
    )


class JobCreate(Strict):
    model: str = Field(
        min_length=1, max_length=MAX_ID, description="Registry name or local model folder."
    )
    training_file: str = Field(min_length=1, max_length=MAX_ID)
    validation_file: str | None = Field(None, max_length=MAX_ID)
    hyperparameters: Hyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of method.supervised.hyperparameters."
    )
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None
    integrations: list[Integration] | None = Field(
        None,
        max_length=1,
        description="Experiment trackers for the job (wandb); the server needs the wandb package.",
    )
    training_config: dict[str, Any] | None = Field(
        None,
        description="tuneforge extension: more TrainConfig fields (e.g. lora_rank, max_steps, "
        "checkpoint_every), checked like `tuneforge config validate`.",
    )


class JobError(BaseModel):
    code: str
    message: str
    param: str | None


class Job(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str]
    status: Literal[
        "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
    ]
    validation_file: str | None
    training_file: str
    hyperparameters: dict[str, Any]
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None
    integrations: list[Integration]
    metadata: dict[str, str] | None
    method: dict[str, Any]
    user_provided_suffix: str | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, float | None]
    fine_tuning_job_id: str


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    has_more: bool
    first_id: str | None
    last_id: str | None


# ----------------------------------------------------------------------------------------------
# Exports (a tuneforge extension)
# ----------------------------------------------------------------------------------------------


class ExportCreate(Strict):
    format: Literal["gguf", "merged", "adapter"] = Field(
        "gguf",
        description="gguf: one .gguf file, the adapter merged in (llama.cpp, LM Studio; with "
        "`ollama`, a .tar with the GGUF and an Ollama Modelfile). merged: a .tar of a Hugging "
        "Face model folder. adapter: a .tar of the LoRA adapter folder (peft, vLLM).",
    )
    quant: str | None = Field(
        None,
        max_length=16,
        description="gguf only: f32, f16 (default), bf16, q8_0, q4_0, q4_1, q5_0 or q5_1.",
    )
    ollama: bool = Field(False, description="gguf only: add an Ollama Modelfile (a .tar).")
    model: str | None = Field(
        None,
        max_length=MAX_ID,
        description="The job's fine_tuned_model (default) or one of its checkpoints' "
        "fine_tuned_model_checkpoint ids.",
    )


class ExportError(BaseModel):
    code: str
    message: str


class Export(BaseModel):
    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    created_at: int
    finished_at: int | None
    fine_tuning_job_id: str
    model: str
    format: Literal["gguf", "merged", "adapter"]
    quant: str | None
    ollama: bool
    status: Literal["queued", "running", "succeeded", "failed"]
    file_id: str | None = Field(
        description="Once succeeded: download with GET /v1/files/{file_id}/content."
    )
    error: ExportError | None


class ExportList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Export]
    has_more: bool


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1, max_length=MAX_ID)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, or a list of up to 2048 texts (each at most 256 tokens of the "
        "model). Token-id arrays are refused: OpenAI's are another tokenizer's ids.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="base64: each embedding as little-endian float32 bytes, base64-encoded "
        "(what the openai package asks for and decodes).",
    )
    dimensions: int | None = Field(None, ge=1, description="Only the model's own: 384.")
    user: str | None = Field(None, max_length=MAX_ID)

    def texts(self) -> list[str] | None:
        """The input as texts, or None when it is token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return list(self.input)  # type: ignore[arg-type]
        return None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ----------------------------------------------------------------------------------------------
# Chat completions
# ----------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    # Not strict: an image part should fail on its `type`, the field that says what is wrong.
    type: Literal["text"] = Field(description="Only text content is supported.")
    text: str


class FunctionCall(Strict):
    name: str = Field(min_length=1)
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_arguments(cls, value: str) -> str:
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON string ({exc.msg})") from None
        return value


class ToolCall(Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(BaseModel):
    # Clients send back assistant messages they received, with fields such as `refusal`;
    # ignoring unknown keys here (not at the top level) keeps those conversations working.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class StreamOptions(Strict):
    include_usage: bool = False
    # Padding OpenAI adds to stream chunks against side channels; tuneforge adds none.
    include_obfuscation: bool | None = None


class FunctionDefinition(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(
        None,
        description="true: the arguments follow `parameters` (constrained decoding, as "
        "structured outputs); a call's JSON is then always well formed.",
    )


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition

    def as_sent(self) -> dict[str, Any]:
        """The definition as the model sees it in its prompt: OpenAI's key order, the order
        its fine-tuning guide's examples (and so most training files) write tools in, without
        `strict`: a decoding setting, which those files do not carry."""
        return self.model_dump(exclude_none=True, exclude={"function": {"strict"}})


class FunctionName(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


LOGPROBS_INCLUDE = "message.output_text.logprobs"  # the Responses API's ask for logprobs


class ChatCompletionRequest(Strict):
    model: str = Field(min_length=1, max_length=MAX_ID)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1; 0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=MAX_ID)
    presence_penalty: float | None = Field(
        None,
        ge=-2,
        le=2,
        description="Subtracted from a token's logit once it is in the answer (OpenAI's).",
    )
    frequency_penalty: float | None = Field(
        None,
        ge=-2,
        le=2,
        description="Subtracted from a token's logit as often as it is in the answer (OpenAI's).",
    )
    logprobs: bool | None = Field(
        None,
        description="true: each answer token's log-probability (the model's own distribution, "
        "before temperature and top_p) in choices[].logprobs.content.",
    )
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="With logprobs: this many of the most likely tokens at each position.",
    )
    response_format: ResponseFormat = Field(
        None,
        description="text (the default), json_object, or json_schema ({name, schema}): the "
        "answer is held to it by constrained decoding.",
    )
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description="auto (the default with tools): the model decides; required or a named "
        "function: the answer is started as a call; none: the tools are left out of the prompt.",
    )
    parallel_tool_calls: bool | None = Field(
        None, description="false: only the first call of an answer is returned."
    )
    store: bool | None = Field(
        None,
        description="true: keep the request and its answer (GET /v1/chat/completions lists "
        "them; evals and the Studio's Logs page read them). Default false (true on a server "
        "started with --store).",
    )
    metadata: Metadata | None = Field(
        None, description="Up to 16 key-value pairs kept with a stored completion, to filter by."
    )
    logit_bias: Annotated[
        dict[str, float] | None,
        _refused(
            "logit_bias names tokens by their ids in OpenAI's tokenizer, which are other "
            "tokens in this model's; to hold answers to a few labels, use response_format with "
            'a JSON schema such as {"enum": ["yes", "no"]} (constrained decoding)'
        ),
    ] = None
    reasoning_effort: Annotated[str | None, AfterValidator(_no_hidden_reasoning)] = Field(
        None, description="none or minimal (what these models do); more is a 400 that says why."
    )
    # Accepted so that OpenAI code runs unchanged; none changes what tuneforge generates.
    service_tier: Literal["auto", "default"] | None = None
    prompt_cache_key: str | None = Field(None, max_length=MAX_ID)
    safety_identifier: str | None = Field(None, max_length=MAX_ID)

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, value: Any) -> Any:
        return function_tools_only(
            value, '{"type": "function", "function": {"name": ..., "parameters": ...}}'
        )

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[Tool] | None) -> list[Tool] | None:
        unique_names([t.function.name for t in value or ()])
        return value

    def tool_choice_problem(self) -> str | None:
        """Why tool_choice cannot be honoured (checked by the route, to name the field)."""
        choice = self.tool_choice
        if choice is not None and not self.tools:
            return "tool_choice is only allowed when tools are given"
        if isinstance(choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or ()]
            if choice.function.name not in names:
                return (
                    f"tool_choice names the function {choice.function.name!r}, which is not in "
                    f"tools ({', '.join(names)})"
                )
        return None

    def prompt_tools(self) -> list[dict[str, Any]] | None:
        """The tool definitions the model is shown: none for tool_choice "none"."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.as_sent() for t in self.tools]

    def forced_call(self) -> str | None:
        """Text the answer must start with for tool_choice "required" or a named function."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return tool_call_prefix(self.tool_choice.function.name)
        if self.tool_choice == "required":
            return tool_call_prefix()
        return None

    def output_schema(self) -> tuple[bool, dict[str, Any] | None]:
        """(whether the answer is JSON, its schema: None for any JSON object)."""
        return json_output(self.response_format) if self.response_format else (False, None)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop sequences are 1 to 256 characters")
        return value

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def logprobs_problem(self) -> str | None:
        """Why the log-probability fields cannot go together (checked by the route)."""
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs needs logprobs: true, as OpenAI requires; add it or leave it out"
        return None

    def logprobs_wanted(self) -> int | None:
        """The engine's `SamplingParams.logprobs`: None, or the alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    service_tier: Literal["default"] = "default"


# ----------------------------------------------------------------------------------------------
# Responses (OpenAI's newer API for the same chat models: `client.responses.create`)
# ----------------------------------------------------------------------------------------------


class ResponseFunctionTool(FunctionDefinition):
    """The Responses API writes a function tool flat: chat's definition beside its type."""

    type: Literal["function"]

    def as_chat_tool(self) -> dict[str, Any]:
        """The same function as chat completions (and training files) write it."""
        return {
            "type": "function",
            "function": self.model_dump(exclude={"type"}, exclude_none=True),
        }


class ResponseNamedToolChoice(Strict):
    type: Literal["function"]
    name: str


class ResponseTextFormat(Strict):
    """The Responses API's `text.format`: chat's `response_format`, flat."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    def as_response_format(self) -> dict[str, Any]:
        """Chat completions' `response_format` for the same thing."""
        if self.type != "json_schema":
            return {"type": self.type}
        spec = {"name": self.name, "schema": self.schema_, "strict": self.strict}
        spec = {k: v for k, v in spec.items() if v is not None}
        return {"type": "json_schema", "json_schema": spec}

    @model_validator(mode="after")
    def _valid(self) -> ResponseTextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError(
                'a json_schema format is {"type": "json_schema", "name": ..., "schema": '
                "{...JSON Schema...}}"
            )
        json_output(self.as_response_format())
        return self


class ResponseTextConfig(Strict):
    format: ResponseTextFormat | None = None


class ResponseStreamOptions(Strict):
    # Padding OpenAI adds to stream events against side channels; tuneforge adds none.
    include_obfuscation: bool | None = None


NOT_SERVED = "tuneforge does not serve this yet; leave it out"


class ResponseRequest(Strict):
    model: str = Field(min_length=1, max_length=MAX_ID)
    input: str | list[dict[str, Any]] = Field(
        description="A user message, or a list of items: messages ({role, content}), "
        "function_call and function_call_output items.",
    )
    instructions: str | None = Field(
        None, description="A system message put first; not carried over by previous_response_id."
    )
    previous_response_id: str | None = Field(None, max_length=MAX_ID)
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1; 0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool | None = False
    stream_options: ResponseStreamOptions | None = None
    store: bool | None = Field(
        None,
        description="Default true: the response is kept, for GET /v1/responses/{id} and "
        "previous_response_id, until it is deleted.",
    )
    tools: list[ResponseFunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | ResponseNamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseTextConfig | None = None
    truncation: Literal["disabled"] | None = Field(
        None, description='Only "disabled": an input over the context is a 400.'
    )
    metadata: Metadata | None = None
    user: str | None = Field(None, max_length=MAX_ID)
    service_tier: Literal["auto", "default"] | None = None
    prompt_cache_key: str | None = Field(None, max_length=MAX_ID)
    safety_identifier: str | None = Field(None, max_length=MAX_ID)
    # OpenAI settings tuneforge cannot honour: a 400 on the field when set.
    reasoning: Annotated[
        dict[str, Any] | None,
        _refused("tuneforge's models do not reason in hidden tokens; leave reasoning out"),
    ] = None
    include: list[str] | None = Field(
        None,
        description='Only "message.output_text.logprobs": each output token\'s log-probability.',
    )
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="With logprobs: the most likely tokens at each position."
    )
    background: Annotated[bool | None, _refused("tuneforge answers in the foreground only")] = None
    conversation: Annotated[Any, _refused(f"conversations: {NOT_SERVED}")] = None
    prompt: Annotated[Any, _refused(f"stored prompts: {NOT_SERVED}")] = None
    max_tool_calls: Annotated[int | None, _refused(NOT_SERVED)] = None

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, value: Any) -> Any:
        return function_tools_only(value, '{"type": "function", "name": ..., "parameters": ...}')

    @field_validator("tools")
    @classmethod
    def _unique_tools(
        cls, value: list[ResponseFunctionTool] | None
    ) -> list[ResponseFunctionTool] | None:
        unique_names([t.name for t in value or ()])
        return value

    @field_validator("include")
    @classmethod
    def _includable(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if item != LOGPROBS_INCLUDE:
                raise ValueError(
                    f"{item[:80]!r} is not available here; the one item is {LOGPROBS_INCLUDE!r}"
                )
        return value

    def logprobs_wanted(self) -> int | None:
        """The engine's `SamplingParams.logprobs`: asked by `include` or `top_logprobs`."""
        if LOGPROBS_INCLUDE in (self.include or ()) or self.top_logprobs is not None:
            return self.top_logprobs or 0
        return None

    @field_validator("input")
    @classmethod
    def _input_items(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        input_messages(value)  # raises ValueError naming the item
        return value

    def messages(self) -> list[dict[str, Any]]:
        """`input` as chat messages (chat completions' shape)."""
        return input_messages(self.input)

    def chat_tools(self) -> list[dict[str, Any]] | None:
        return [t.as_chat_tool() for t in self.tools] if self.tools else None

    def chat_tool_choice(self) -> Any:
        if isinstance(self.tool_choice, ResponseNamedToolChoice):
            return {"type": "function", "function": {"name": self.tool_choice.name}}
        return self.tool_choice


_INPUT_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text")


def input_messages(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Responses API's input → chat messages: a string is one user message; a
    `function_call` item joins the assistant message before it (or starts one), as the calls of
    one chat answer; a `function_call_output` is a tool message. ValueError names the item."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not value:
        raise ValueError("input is an empty list: send a message")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _INPUT_ROLES:
                raise ValueError(f"{where}.role is {role!r}; use one of {', '.join(_INPUT_ROLES)}")
            out.append(
                {"role": role, "content": _item_text(item.get("content"), f"{where}.content")}
            )
        elif kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments")
            call_id = item.get("call_id")
            if not (isinstance(name, str) and name and isinstance(call_id, str) and call_id):
                raise ValueError(f"{where}: a function_call needs a name and a call_id")
            if not isinstance(arguments, str):
                raise ValueError(f"{where}.arguments must be a JSON string")
            try:
                json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}.arguments must be a JSON string ({exc.msg})") from None
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not (isinstance(call_id, str) and call_id):
                raise ValueError(f"{where}: a function_call_output needs the call_id it answers")
            text = _item_text(item.get("output"), f"{where}.output")
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            raise ValueError(
                f"{where} has type {kind!r}: tuneforge takes message, function_call and "
                "function_call_output items"
            )
    return out


def _item_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where} must be a string or a list of input_text parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise ValueError(
                f"{where}[{j}] has type {kind!r}: tuneforge's models read text only "
                '({"type": "input_text", "text": ...})'
            )
        texts.append(part["text"])
    return "".join(texts)


def cursor_page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's cursor page of `data` (fetched with one more row than `limit`, to tell
    `has_more`)."""
    shown = data[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(data) > limit,
    }
