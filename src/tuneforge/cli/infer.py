"""`tuneforge generate`, `tuneforge chat`, `tuneforge export`: use a model or a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from tuneforge.cli._common import (
    MaxTokensOpt,
    ModelOrRunArg,
    WeightOpt,
    check_weight_precision,
    err,
    load_model_arg,
    note,
    out,
    use_free_cores,
    working,
)
from tuneforge.errors import TuneforgeError, UsageError


def _system_for(loaded: Any, system: str | None) -> str | None:
    """--system as given; for a run without --system, the training data's system prompt (what
    `eval` and `compare` measured the model with)."""
    if system is not None or loaded.run_dir is None:
        return system or None
    from tuneforge import run_dir as rd

    recorded = (rd.read_status(loaded.run_dir) or {}).get("system_prompt")
    if recorded:
        note(f"system prompt from the training data: {recorded[:100]!r} (--system '' drops it)")
    return recorded


def _messages(prompt: str, system: str | None) -> list[Any]:
    from tuneforge.data.conversation import Message

    return ([Message("system", system)] if system else []) + [Message("user", prompt)]


ChatSystemOpt = Annotated[
    str | None,
    typer.Option(
        "--system", help="System message (default for a run: the training data's; '' for none)."
    ),
]
TemperatureOpt = Annotated[
    float, typer.Option(min=0.0, help="0 answers greedily (reproducible); higher samples.")
]


def generate_cmd(
    model_or_run: ModelOrRunArg,
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    system: ChatSystemOpt = None,
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    weight_precision: WeightOpt = "auto",
) -> None:
    """Answer one prompt with a run or a model. Greedy by default."""
    from tuneforge.inference.generate import generate

    weight_precision = check_weight_precision(weight_precision)
    use_free_cores()
    with working(f"loading {model_or_run} …"):
        loaded = load_model_arg(model_or_run, weight_precision)
    system = _system_for(loaded, system)
    text, ids = generate(
        loaded, _messages(prompt, system), max_new_tokens=max_tokens, temperature=temperature
    )
    print(text)
    if not ids or ids[-1] not in loaded.text.eos_ids:
        if len(ids) >= max_tokens:
            note(f"(cut at --max-tokens {max_tokens})", style="yellow")
        else:
            note(f"(cut at the model's context of {loaded.text.context_length} tokens)", "yellow")


CHAT_HELP = """commands:
  /reset   forget the conversation (keeps the system prompt)
  /help    this list
  an empty line or Ctrl-D ends the chat; Ctrl-C stops an answer"""


def chat_cmd(
    model_or_run: ModelOrRunArg,
    system: ChatSystemOpt = None,
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    weight_precision: WeightOpt = "auto",
) -> None:
    """Chat in the terminal, streamed. Empty line or Ctrl-D ends; Ctrl-C stops an answer;
    /reset forgets the history; /help lists the commands."""
    from tuneforge.data.conversation import Message
    from tuneforge.inference.generate import stream

    weight_precision = check_weight_precision(weight_precision)
    use_free_cores()
    with working(f"loading {model_or_run} …"):
        loaded = load_model_arg(model_or_run, weight_precision)
    system = _system_for(loaded, system)
    start: list[Any] = [Message("system", system)] if system else []
    history = list(start)
    err.print(f"chatting with {loaded.name} (empty line to quit, /help for commands)")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        command = line.strip()
        if not command:
            break
        if command == "/reset":
            history = list(start)
            err.print("(conversation cleared)")
            continue
        if command == "/help":
            err.print(CHAT_HELP)
            continue
        if command.startswith("/") and " " not in command:
            err.print(f"unknown command {command}; /help lists them (a message can't start with /)")
            continue
        history.append(Message("user", line))
        pieces: list[str] = []
        finish: dict[str, Any] = {}
        print("assistant> ", end="", flush=True)
        answer = stream(
            loaded, history, max_new_tokens=max_tokens, temperature=temperature, finish=finish
        )
        try:
            for piece in answer:
                print(piece, end="", flush=True)
                pieces.append(piece)
        except KeyboardInterrupt:
            answer.close()  # cancels the answer (stops and waits for a generation thread)
            finish["reason"] = "cancelled"
        except TuneforgeError as exc:  # the conversation no longer fits the context
            print()
            err.print(Text(f"error: {exc.message}", style="red"))
            if exc.hint:
                err.print(Text(f"  fix: {exc.hint}"))
            history.pop()  # the message that did not fit
            continue
        print()
        if finish.get("reason") == "cancelled":
            err.print("(stopped)")
        elif finish.get("reason") == "length" and finish.get("completion_tokens", 0) < max_tokens:
            context = loaded.text.context_length
            note(f"(cut at the model's context of {context} tokens; /reset starts again)", "yellow")
        elif finish.get("reason") == "length":
            note(f"(cut at --max-tokens {max_tokens})", style="yellow")
        history.append(Message("assistant", "".join(pieces)))


def export_cmd(
    model_or_run: ModelOrRunArg,
    merged: Annotated[
        Path | None, typer.Option("--merged", help="Write a merged Hugging Face model folder.")
    ] = None,
    gguf: Annotated[
        Path | None,
        typer.Option("--gguf", help="Write one GGUF file (llama.cpp, Ollama, LM Studio)."),
    ] = None,
    quant: Annotated[
        str,
        typer.Option(
            "--quant", help="GGUF tensor type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1."
        ),
    ] = "f16",
    ollama: Annotated[
        Path | None,
        typer.Option("--ollama", help="Also write an Ollama Modelfile (and the GGUF) in DIR."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = (
        False
    ),
) -> None:
    """Export a run (its adapter merged) or a model. A merged folder for transformers, a GGUF for
    llama.cpp and Ollama (with --ollama, a Modelfile that renders the training template)."""
    if merged is None and gguf is None and ollama is None:
        raise UsageError(
            "nothing to export to", hint="pass --merged DIR, --gguf OUT.gguf or --ollama DIR"
        )
    weights = None
    source: str | Path = model_or_run
    if model_or_run.startswith("ft:"):
        from tuneforge.jobs.model_ids import resolve_model_id

        source, weights = resolve_model_id(model_or_run)
    else:
        from tuneforge import run_dir as rd

        source = rd.find_run(model_or_run) or model_or_run
    if merged is not None:
        from tuneforge.inference.export import export_merged

        with working("merging …"):
            path = export_merged(Path(source), merged, overwrite=overwrite, weights=weights)
        out.print(f"wrote {path} (load it with AutoModelForCausalLM.from_pretrained)")
    if gguf is not None or ollama is not None:
        from tuneforge.inference.gguf_export import export_gguf

        with working(f"writing GGUF ({quant}) …"):
            result, modelfile = export_gguf(
                source, gguf, quant=quant, ollama=ollama, overwrite=overwrite, weights=weights
            )
        out.print(
            f"wrote {result.path} ({result.architecture}, {quant}, {result.tensors} tensors, "
            f"{result.bytes / 1e6:.0f} MB)"
        )
        if modelfile is not None:
            out.print(f"wrote {modelfile}; create the model with:")
            out.print(f"  ollama create my-model -f {modelfile}")
