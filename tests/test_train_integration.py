"""Training end to end in real processes: exact resume after SIGKILL, Ctrl-C, two-process data
parallelism, merged export, and a short run of the real 135M model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_training, wait_for_step

from tuneforge import run_dir as rd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    from tuneforge.data.demo import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out, seed=2, n=80)
    return out


def args_for(demo_dir: Path, model: Path | str, out: Path, **kw) -> list[str]:
    settings = {
        "max_steps": 8,
        "lora_dropout": 0.1,  # dropout draws random numbers: resume must restore the RNG
        "eval_every": 3,
        "checkpoint_every": 1,
    } | kw
    return [f"{k}={v}" for k, v in tiny_training(demo_dir, model, out, **settings).items()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneforge.cli", *args]


def env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1"}  # two processes on two cores


def losses(run: Path) -> list[float]:
    return [r["train_loss"] for r in rd.read_metrics(run)]


def test_sigkill_then_resume_logs_the_same_losses(demo_dir, tiny_model_dir, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(
        cli("train", *args_for(demo_dir, tiny_model_dir, reference)),
        env=env(),
        check=True,
        capture_output=True,
    )
    killed = tmp_path / "killed"
    kill_at = random.Random().randint(2, 6)
    proc = subprocess.Popen(
        cli("train", *args_for(demo_dir, tiny_model_dir, killed)),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_step(killed, proc, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rd.read_status(killed)["status"] == "running"  # what a kill -9 leaves behind
    done = subprocess.run(
        cli("train", "--resume", str(killed)), env=env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from checkpoint" in done.stderr
    expected, got = losses(reference), losses(killed)
    assert len(got) == len(expected) == 8
    worst = max(abs(a - b) for a, b in zip(expected, got, strict=True))
    assert worst <= 1e-6, f"killed at step {kill_at}: max |Δ train_loss| = {worst}"
    assert rd.read_status(killed)["status"] == "succeeded"


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(demo_dir, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli("train", *args_for(demo_dir, tiny_model_dir, run, max_steps=40, checkpoint_every=100)),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not rd.read_metrics(run) or rd.read_metrics(run)[-1]["step"] < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume with: tuneforge train --resume" in err
    status = rd.read_status(run)
    assert status["status"] == "interrupted"
    step, _ = rd.latest_checkpoint(run)
    assert step == status["step"] >= 2


def test_two_processes_match_one(demo_dir, tiny_model_dir, tmp_path):
    # Small forward passes so each step has several micro-batches to share out.
    common = {
        "max_seq_len": 256,
        "micro_batch_tokens": 256,
        "lora_dropout": 0.0,
        "max_steps": 4,
        "batch_size": 8,
    }
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        cli("train", *args_for(demo_dir, tiny_model_dir, one, **common)),
        env=env(),
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        cli("train", "--nproc", "2", *args_for(demo_dir, tiny_model_dir, two, **common)),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-4
    assert sorted(p.name for p in rd.latest_checkpoint(two)[1].iterdir() if "rng" in p.name) == [
        "rng-0.pt",
        "rng-1.pt",
    ]


def test_merged_export_generates_the_same_tokens(demo_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.data.conversation import Message
    from tuneforge.inference.export import export_merged
    from tuneforge.inference.generate import generate
    from tuneforge.inference.load import load_for_inference

    run = tmp_path / "run"
    subprocess.run(
        cli("train", *args_for(demo_dir, tiny_model_dir, run, max_steps=6, learning_rate=5e-3)),
        env=env(),
        check=True,
        capture_output=True,
    )
    merged = export_merged(run, tmp_path / "merged")
    loaded = load_for_inference(run)
    messages = [Message("user", 'Title: Pie\n\nIngredients: ["1 c. sugar"]')]
    adapter_text, adapter_tokens = generate(loaded, messages, max_new_tokens=24)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ids = loaded.text.prompt_ids(messages)
    with torch.no_grad():
        out = plain.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=2
        )
    assert out[0, len(ids) :].tolist() == adapter_tokens
    # The adapter changed the model: base and fine-tuned answers differ.
    base = load_for_inference(str(tiny_model_dir))
    assert generate(base, messages, max_new_tokens=24)[1] != adapter_tokens


def test_real_model_short_lora_run(demo_dir, default_model_dir, tmp_path, run_cli):
    run = tmp_path / "real"
    code, out, err = run_cli(
        "train",
        *args_for(
            demo_dir,
            "smollm2-135m-instruct",
            run,
            max_steps=3,
            batch_size=2,
            max_seq_len=384,
            micro_batch_tokens=768,
            eval_every=3,
            eval_examples=4,
            lora_dropout=0.0,
        ),
    )
    assert code == 0, err
    rows = rd.read_metrics(run)
    assert len(rows) == 3 and all(r["train_loss"] < 5 for r in rows)  # a pre-trained model
    code, out, _ = run_cli(
        "generate", run, 'Title: Toast\n\nIngredients: ["2 slices bread"]', "--max-tokens", "16"
    )
    assert code == 0 and out.strip()
    _loads_with_plain_peft_by_public_id(run, default_model_dir, tmp_path)


def _loads_with_plain_peft_by_public_id(run: Path, default_model_dir: Path, tmp_path: Path):
    """On "another machine": a fresh process with its own Hugging Face cache, where the base is
    only the public id (a local copy stands in for the hub), loads `model/` with plain peft and
    computes the same logits as tuneforge."""
    import json

    from tuneforge.inference.load import load_for_inference

    public = "HuggingFaceTB/SmolLM2-135M-Instruct"
    adapter = run / "model"
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        == public
    )
    assert json.loads((adapter / "tuneforge-adapter.json").read_text())["base_model"] == (
        "smollm2-135m-instruct"
    )
    assert f"# Fine-tuned {public}" in (run / "README.md").read_text()
    revision = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for file in default_model_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    script = (
        "import json, sys, torch\n"
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n"
        "model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "ids = AutoTokenizer.from_pretrained(sys.argv[1])('Title: Toast', return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(model(**ids).logits[0, -1, :8].tolist()))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TUNEFORGE_"))}
    done = subprocess.run(
        [sys.executable, "-c", script, str(adapter)],
        env=clean | {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    loaded = load_for_inference(run)
    ids = loaded.tokenizer("Title: Toast", return_tensors="pt")
    with torch.no_grad():
        ours = loaded.model(**ids).logits[0, -1, :8]
    assert torch.allclose(ours, theirs, atol=1e-4), (ours, theirs)


def test_chat_streams_and_keeps_history(demo_dir, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    subprocess.run(
        cli("train", *args_for(demo_dir, tiny_model_dir, run, max_steps=1)),
        env=env(),
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        cli("chat", str(run), "--max-tokens", "4"),
        input="hello\nagain\n\n",
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("assistant> ") == 2
    assert "Traceback" not in done.stderr
