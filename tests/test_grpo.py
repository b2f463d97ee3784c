"""GRPO: advantages of a known group, the loss's value and gradient, a tiny model learning a
one-token reward, the preflight that refuses a task without signal, exact resume, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import write_lines

from tuneforge import run_dir as rd
from tuneforge.config import build_config
from tuneforge.errors import ConfigError
from tuneforge.train import grpo
from tuneforge.train.plan import make_plan
from tuneforge.train.recipe import TrainingFailed, resume, train

# One-token answers score 1 when the token's text holds an "e": about a third of the vocabulary,
# so a random model's groups have spread, and the policy can learn to pick such tokens.
HAS_E = {
    "type": "string_check",
    "name": "has_e",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.letter }}",
    "operation": "ilike",
}


def test_advantages_of_a_known_group():
    advantages = grpo.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    # std([1,0,0,1]) with Bessel's correction = 0.57735; A = ±0.5 / (0.57735 + 1e-4).
    assert advantages[0].tolist() == pytest.approx([0.86588, -0.86588, -0.86588, 0.86588], abs=1e-5)
    assert advantages[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_grpo_loss_value_is_zero_but_its_gradient_is_not():
    """With one update per sample batch the ratio is 1: loss_type=grpo's value is −mean(A) = 0,
    while the gradient is REINFORCE's with the group baseline (trl #2703, "why is my loss 0")."""
    logits = torch.zeros(4, requires_grad=True)
    logps = torch.log_softmax(logits, 0)[[0, 1, 2, 3]]  # one token per answer
    adv = grpo.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))[0]
    losses, clipped, kl = grpo.token_losses(logps, logps.detach(), adv, epsilon=0.2)
    weights = torch.tensor(grpo.answer_weights([1, 1, 1, 1], "grpo", 8))
    loss = (losses * weights).sum()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert logits.grad.abs().sum() > 0 and not clipped.any() and kl is None
    # dapo with unequal lengths: −Σ A_i |o_i| / Σ |o_i|.
    assert grpo.answer_weights([2, 1, 1], "dapo", 8) == [0.25, 0.25, 0.25]
    assert grpo.answer_weights([2, 1], "dr_grpo", 8) == [1 / 16, 1 / 16]


def prompts(n: int, start: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Prompt {i}: one token."}], "letter": "e"}
        for i in range(start, start + n)
    ]


@pytest.fixture
def prompt_dir(tmp_path: Path) -> Path:
    write_lines(tmp_path / "train.jsonl", prompts(8))
    write_lines(tmp_path / "valid.jsonl", prompts(4, start=100))
    return tmp_path


def grpo_config(prompt_dir: Path, model: Path, out: Path, **kw):
    return build_config(
        {
            "model": str(model),
            "train_file": str(prompt_dir / "train.jsonl"),
            "validation_file": str(prompt_dir / "valid.jsonl"),
            "output_dir": str(out),
            "objective": "grpo",
            "grader": HAS_E,
            "method": "full",
            "batch_size": 4,
            "grpo_group_size": 8,
            "max_completion_tokens": 1,
            "learning_rate": 1e-3,
            "lr_schedule": "constant",
            "warmup_ratio": 0.0,
            "max_steps": 4,
            "eval_every": 2,
            "checkpoint_every": 2,
        }
        | kw
    )


def test_a_tiny_model_learns_a_one_token_reward(prompt_dir, tiny_model_dir, tmp_path):
    """SFT first teaches the random model to answer one of four letters (a quarter each), then
    GRPO, started from that run, learns that only `A` is rewarded."""
    letters = [
        {
            "messages": [
                {"role": "user", "content": f"Prompt {i % 8}: one token."},
                {"role": "assistant", "content": "ABCD"[i % 4]},
            ]
        }
        for i in range(32)
    ]
    sft = tmp_path / "sft"
    train(
        make_plan(
            build_config(
                {
                    "model": str(tiny_model_dir),
                    "train_file": str(write_lines(tmp_path / "letters.jsonl", letters)),
                    "output_dir": str(sft),
                    "method": "full",
                    "batch_size": 8,
                    "max_steps": 40,
                    "learning_rate": 1e-2,
                    "lr_schedule": "constant",
                }
            )
        )
    )
    sft_loss = rd.read_metrics(sft)[-1]["train_loss"]
    assert sft_loss < 1.5, sft_loss  # ~ln 4 / 2: a quarter each for the letter, then the stop
    is_a = HAS_E | {"name": "is_a", "reference": "A", "operation": "eq"}
    out = tmp_path / "learn"
    config = grpo_config(
        prompt_dir,
        tiny_model_dir,
        out,
        grader=is_a,
        init_from=str(sft),
        max_steps=16,
        learning_rate=3e-3,
        eval_every=16,
        checkpoint_every=16,
    )
    _, last = train(make_plan(build_config(config.model_dump(exclude={"model"}))))
    rows = rd.read_metrics(out)
    rewards = [r["reward"] for r in rows]
    status = rd.read_status(out)
    assert 0.05 < status["preflight_reward_mean"] < 0.6, status["preflight_reward_mean"]
    assert sum(rewards[-4:]) / 4 >= 0.9, rewards
    assert sum(rewards[:4]) / 4 < 0.7, rewards
    assert last["full_valid_reward_mean"] == 1.0
    for key in (
        "reward_std",
        "frac_reward_zero_std",
        "completions/mean_length",
        "completions/clipped_ratio",
        "clip_ratio/region_mean",
        "rewards/is_a/mean",
    ):
        assert key in rows[0], key
    assert all(0.0 <= r["frac_reward_zero_std"] <= 1.0 for r in rows)


def test_preflight_refuses_a_task_where_every_group_scores_the_same(
    prompt_dir, tiny_model_dir, tmp_path
):
    never = HAS_E | {"reference": "no token is this", "operation": "eq"}
    out = tmp_path / "flat"
    with pytest.raises(TrainingFailed, match="nothing to learn"):
        train(make_plan(grpo_config(prompt_dir, tiny_model_dir, out, grader=never)))
    status = rd.read_status(out)
    assert status["status"] == "failed" and status["error"]["code"] == "no_reward_signal"
    assert status["preflight_frac_reward_zero_std"] == 1.0
    assert not rd.read_metrics(out)  # no step was trained


def test_resume_samples_and_logs_the_same(prompt_dir, tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    train(make_plan(grpo_config(prompt_dir, tiny_model_dir, straight)))
    broken = tmp_path / "broken"

    def crash_at_step_3(metrics):
        if metrics["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make_plan(grpo_config(prompt_dir, tiny_model_dir, broken)), on_step=crash_at_step_3)
    resume(make_plan(rd.load_config(broken), broken))

    def keys(run):
        return [(r["step"], r["reward"], r["train_loss"]) for r in rd.read_metrics(run)]

    assert keys(straight) == keys(broken)


def test_bad_prompts_and_graders_are_clear_errors(prompt_dir, tiny_model_dir, tmp_path):
    ends_with_answer = write_lines(
        tmp_path / "answered.jsonl",
        [
            {"messages": [{"role": "user", "content": "Hi"}], "letter": "e"},
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "x"},
                ]
            },
        ],
    )
    with pytest.raises(ConfigError) as info:
        make_plan(
            grpo_config(
                prompt_dir, tiny_model_dir, tmp_path / "o", train_file=str(ends_with_answer)
            )
        )
    assert "line 2" in info.value.inline() and "user message" in info.value.inline()

    missing = HAS_E | {"reference": "{{ item.answer }}"}
    with pytest.raises(ConfigError) as info:
        make_plan(grpo_config(prompt_dir, tiny_model_dir, tmp_path / "o", grader=missing))
    (problem,) = info.value.problems
    assert problem.field == "grader"
    assert "line 1" in problem.message and "item.answer" in problem.message
    assert "letter" in problem.message  # the fields the row does have

    broken = {"type": "python", "name": "py", "source": "def grade(sample, item):\n  return ("}
    with pytest.raises(ConfigError, match="syntax error"):
        make_plan(grpo_config(prompt_dir, tiny_model_dir, tmp_path / "o", grader=broken))
    with pytest.raises(ConfigError, match="needs a grader"):
        make_plan(grpo_config(prompt_dir, tiny_model_dir, tmp_path / "o", grader=None))


def python_grader(body: str) -> dict:
    return {"type": "python", "name": "py", "source": "def grade(sample, item):\n" + body}


def test_a_grader_failing_on_some_answers_is_told_once_and_counted(
    prompt_dir, tiny_model_dir, tmp_path
):
    """Answers holding an "e" make the grader raise: they score 0 (OpenAI's rule), the run's
    events name the reason once, and `frac_grader_errors` counts them at every step."""
    picky = python_grader(
        "    if 'e' in sample['output_text'].lower():\n"
        "        raise ValueError('this grader cannot read an e')\n"
        "    return 1.0\n"
    )
    events: list[str] = []
    out = tmp_path / "picky"
    config = grpo_config(
        prompt_dir, tiny_model_dir, out, grader=picky, grpo_group_size=4, batch_size=2, max_steps=2
    )
    train(make_plan(config), on_event=events.append)
    told = [e for e in events if "cannot read an e" in e]
    assert len(told) == 1, events
    assert told[0].startswith("preflight: the grader failed on ") and "score 0" in told[0]
    rows = rd.read_metrics(out)
    assert len(rows) == 2 and all(0.0 <= r["frac_grader_errors"] <= 1.0 for r in rows)
    # An answer fails exactly when it scores 0 here: the fraction is the reward's complement.
    assert [r["frac_grader_errors"] for r in rows] == pytest.approx([1 - r["reward"] for r in rows])


def test_a_grader_that_fails_on_every_answer_stops_the_run_before_training(
    prompt_dir, tiny_model_dir, tmp_path
):
    out = tmp_path / "broken"
    config = grpo_config(
        prompt_dir, tiny_model_dir, out, grader=python_grader("    return 1 / 0\n")
    )
    with pytest.raises(TrainingFailed, match="failed on every answer of the preflight"):
        train(make_plan(config))
    status = rd.read_status(out)
    assert status["error"]["code"] == "grader_failed"
    assert "ZeroDivisionError" in status["error"]["message"]
    assert not rd.read_metrics(out)


def test_a_grader_past_its_time_limit_in_a_row_stops_the_run(
    prompt_dir, tiny_model_dir, tmp_path, monkeypatch
):
    """A looping python grader would cost its whole limit (2 minutes) on every answer: after
    `GRADER_TIMEOUTS_IN_A_ROW` such answers the run stops and says why."""
    from tuneforge.eval import graders
    from tuneforge.train import recipe

    monkeypatch.setattr(graders, "PYTHON_TIMEOUT_S", 0.5)
    runs = []
    original = graders.run_python_source

    def counted(*args, **kwargs):
        runs.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(graders, "run_python_source", counted)
    out = tmp_path / "loops"
    config = grpo_config(
        prompt_dir, tiny_model_dir, out, grader=python_grader("    while True: pass\n")
    )
    with pytest.raises(TrainingFailed, match="time limit on 3 answers in a row"):
        train(make_plan(config))
    # Stopped after 3 answers, not after the preflight's 64.
    assert len(runs) == recipe.GRADER_TIMEOUTS_IN_A_ROW == 3
    status = rd.read_status(out)
    assert status["error"]["code"] == "grader_timeout"
    assert "0.5 s limit" in status["error"]["message"]


def test_a_kl_penalty_with_init_from_is_refused(prompt_dir, tiny_model_dir, tmp_path):
    """With LoRA the KL reference is the adapter switched off: the base, not init_from's run."""
    config = grpo_config(
        prompt_dir,
        tiny_model_dir,
        tmp_path / "o",
        method="lora",
        grpo_beta=0.04,
        init_from=str(tmp_path / "some-sft-run"),
    )
    with pytest.raises(ConfigError) as info:
        make_plan(config)
    (problem,) = [p for p in info.value.problems if p.field == "grpo_beta"]
    assert "not" in problem.message and "grpo_beta=0" in problem.message


@pytest.mark.integration
def test_kill_9_mid_run_then_resume_samples_and_logs_the_same(prompt_dir, tiny_model_dir, tmp_path):
    """`tuneforge train objective=grpo` killed with SIGKILL at a random step, then
    `--resume`: the same answers are drawn and the same rewards and losses logged as by an
    uninterrupted run (LoRA with dropout: the RNG state is restored too)."""
    import json
    import random
    import signal
    import subprocess
    import sys

    from helpers import wait_for_step

    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(HAS_E))
    settings = {
        "method": "lora",
        "lora_dropout": 0.1,
        "grader": str(grader),
        "max_steps": 8,
        "checkpoint_every": 1,
        "eval_every": 4,
    }

    def command(out: Path) -> list[str]:
        fields = grpo_config(prompt_dir, tiny_model_dir, out).model_dump(exclude_unset=True)
        fields |= settings
        args = [f"{k}={v}" for k, v in fields.items() if k != "grader"]
        return [sys.executable, "-m", "tuneforge.cli", "train", *args, f"grader={grader}"]

    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(straight), env=environment, check=True, capture_output=True)
    kill_at = random.Random().randint(2, 6)
    proc = subprocess.Popen(
        command(killed), env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_step(killed, proc, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rd.read_status(killed)["status"] == "running"  # what a kill -9 leaves behind
    done = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "train", "--resume", str(killed)],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from checkpoint" in done.stderr

    def keys(run):
        return [(r["step"], r["reward"], r["train_loss"]) for r in rd.read_metrics(run)]

    assert len(keys(straight)) == 8
    assert keys(killed) == keys(straight), f"killed at step {kill_at}"
    assert rd.read_status(killed)["status"] == "succeeded"


LABEL = {
    "type": "object",
    "properties": {"label": {"enum": ["yes", "no"]}},
    "required": ["label"],
    "additionalProperties": False,
}
SAYS_YES = HAS_E | {
    "name": "says_yes",
    "input": "{{ sample.output_json.label }}",
    "reference": "yes",
    "operation": "eq",
}


def test_a_json_response_format_makes_every_sampled_answer_follow_the_schema(
    prompt_dir, tiny_model_dir, tmp_path
):
    """OpenAI's RFT `response_format`: the answers are sampled under the schema, so a grader
    reading `sample.output_json` has JSON to read from the first step (the tiny random model
    writes none on its own: every answer would fail the grader and the run would stop)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL}}
    free = tmp_path / "free"
    with pytest.raises(TrainingFailed):
        train(
            make_plan(
                grpo_config(
                    prompt_dir, tiny_model_dir, free, grader=SAYS_YES, max_completion_tokens=12
                )
            )
        )
    out = tmp_path / "json"
    config = grpo_config(
        prompt_dir,
        tiny_model_dir,
        out,
        grader=SAYS_YES,
        max_completion_tokens=12,
        response_format=fmt,
        max_steps=2,
    )
    plan = make_plan(config)
    assert plan.grammar is not None
    train(plan)
    status = rd.read_status(out)
    assert 0.0 < status["preflight_reward_mean"] < 1.0  # both labels sampled, all parsed
    rows = rd.read_metrics(out)
    assert all(r["completions/clipped_ratio"] == 0.0 for r in rows)  # each answer ended


def test_a_response_format_outside_grpo_or_with_a_bad_schema_is_a_config_error(
    prompt_dir, tiny_model_dir, tmp_path
):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(ConfigError, match="response_format"):
        make_plan(grpo_config(prompt_dir, tiny_model_dir, tmp_path / "a", response_format=bad))
    with pytest.raises(ConfigError, match="response_format"):
        build_config({"model": str(tiny_model_dir), "response_format": {"type": "xml"}})
