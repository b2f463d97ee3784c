"""Small builders for test data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tuneforge import run_dir as rd

# The tiny random models' shape: SmolLM2's vocabulary (its real tokenizer), 2 layers of 64, GQA.
TINY_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def chat_example(i: int, system: bool = True) -> dict[str, Any]:
    messages = (
        [{"role": "system", "content": "You answer with the capital city."}] if system else []
    )
    messages += [
        {"role": "user", "content": f"What is the capital of country number {i}?"},
        {"role": "assistant", "content": f"The capital of country {i} is City{i}."},
    ]
    return {"messages": messages}


def good_examples(n: int = 12) -> list[dict[str, Any]]:
    return [chat_example(i) for i in range(n)]


def tiny_training(demo_dir: Path, model: Path | str, out: Path, **settings: Any) -> dict[str, Any]:
    """TrainConfig fields for a few seconds' run on the demo data (`write_demo`'s folder)."""
    return {
        "model": str(model),
        "train_file": str(demo_dir / "train.jsonl"),
        "validation_file": str(demo_dir / "validation.jsonl"),
        "output_dir": str(out),
        "batch_size": 4,
        "learning_rate": 1e-3,
    } | settings


def write_lines(path: Path, rows: list[Any]) -> Path:
    """Write rows as JSONL; a `str` row is written verbatim (for malformed lines)."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            f.write("\n")
    return path


def wait_for_step(run: Path, proc: Any, step: int, timeout: float = 240) -> None:
    """Wait until a training subprocess has logged `step` and checkpointed the step before."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = rd.read_metrics(run)
        found = rd.latest_checkpoint(run)
        if rows and rows[-1]["step"] >= step and found and found[0] >= step - 1:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def serve_model(api: Any, model: Path | str) -> str:
    """Make a server (a TestClient or httpx client) list `model`: a base model is served once
    a job names it, so create one on 12 examples and cancel it at once (no training)."""
    data = "".join(json.dumps(row) + "\n" for row in good_examples(12)).encode()
    upload = api.post(
        "/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}
    )
    assert upload.status_code == 200, upload.text
    job = api.post(
        "/v1/fine_tuning/jobs", json={"model": str(model), "training_file": upload.json()["id"]}
    )
    assert job.status_code == 200, job.text
    assert api.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel").status_code == 200
    return str(model)


def new_home(root: Path, default_model_dir: Path) -> Path:
    """A TUNEFORGE_HOME under `root` whose models folder is the test session's (the converted
    default model, so nothing is converted again)."""
    home = root / "home"
    home.mkdir()
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    return home


def open_api(home: Path, mp: Any) -> Any:
    """The API in-process on `home` (a TestClient; `with` runs its lifespan)."""
    from fastapi.testclient import TestClient

    from tuneforge.api.app import create_app

    mp.setenv("TUNEFORGE_HOME", str(home))
    return TestClient(create_app())


def bf16_checkpoint(model_dir: Path, out: Path) -> Any:
    """A copy of the model at `model_dir` whose linear layers' weights are bf16 values (as a
    bf16 checkpoint loaded in fp32 holds them), saved with its tokenizer to `out`; returns the
    rounded model (fp32, not packed)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Linear:
                module.weight.copy_(module.weight.bfloat16())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return model


async def finished(generations: list[Any]) -> list[Any]:
    """Each engine `Generation`'s `Finished` event, once it has come, in order."""
    from tuneforge.inference.engine import Finished

    out = []
    for generation in generations:
        while not isinstance(event := (await generation.events.get())[1], Finished):
            pass
        out.append(event)
    return out


async def finished_logprobs(generations: list[Any]) -> list[list[tuple[int, float]]]:
    """Each `Generation`'s (token, log-probability) pairs (asked with `logprobs=0`)."""
    return [[(lp.token, lp.logprob) for lp in f.logprobs] for f in await finished(generations)]
