"""DPO: the invariants (step-0 loss = ln 2, the disabled adapter is the base model), a tiny model
learning a one-token preference, exact resume, starting from an SFT run, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_training, write_lines

from tuneforge import run_dir as rd
from tuneforge.config import build_config
from tuneforge.errors import ConfigError, DataError
from tuneforge.train.plan import make_plan
from tuneforge.train.recipe import resume, train


def dpo_row(i: int, preferred: str, rejected: str) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": f"Question {i}: pick a letter."}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    """One-token preference: every prompt prefers the answer `A` to `B`."""
    write_lines(tmp_path / "train.jsonl", [dpo_row(i, "A", "B") for i in range(16)])
    write_lines(tmp_path / "valid.jsonl", [dpo_row(100 + i, "A", "B") for i in range(4)])
    return tmp_path


def dpo_config(pairs_dir: Path, model: Path, out: Path, **kw):
    return build_config(
        {
            "model": str(model),
            "train_file": str(pairs_dir / "train.jsonl"),
            "validation_file": str(pairs_dir / "valid.jsonl"),
            "output_dir": str(out),
            "objective": "dpo",
            "batch_size": 4,
            "max_steps": 4,
            "eval_every": 2,
            "checkpoint_every": 2,
        }
        | kw
    )


def test_step_0_loss_is_ln_2_and_rewards_are_zero(pairs_dir, tiny_model_dir, tmp_path):
    for method in ("lora", "full"):
        out = tmp_path / method
        _, _ = train(make_plan(dpo_config(pairs_dir, tiny_model_dir, out, method=method)))
        first = rd.read_metrics(out)[0]
        # The policy is the reference at step 0: Δ = 0, so the loss is −log σ(0) = ln 2.
        assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6), method
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert first[key] == pytest.approx(0.0, abs=1e-6), (method, key)
        # TRL's strict `>`: ties count as not preferred.
        assert first["rewards/accuracies"] == 0.0
        status = rd.read_status(out)
        assert status["initial_valid_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert "initial_valid_preference_accuracy" in status
        assert (out / "reference_logps.pt").exists()
        config = rd.read_config(out)
        assert config["dpo_beta"] == 0.1 and config["objective"] == "dpo"
        assert config["learning_rate"] == (5e-5 if method == "lora" else 1e-6)
    # With the SFT term the step-0 loss is ln 2 plus w × the preferred answers' per-token NLL
    # (the same NLL that plain DPO logs at its step 0: the weight changes the loss, not the model).
    out = tmp_path / "sft-term"
    _, _ = train(make_plan(dpo_config(pairs_dir, tiny_model_dir, out, dpo_sft_weight=0.5)))
    first = rd.read_metrics(out)[0]
    assert first["nll_loss"] > 1  # a random tiny model: ~ln(49152) nats per token
    assert first["train_loss"] == pytest.approx(math.log(2) + 0.5 * first["nll_loss"], abs=1e-5)
    plain = rd.read_metrics(tmp_path / "lora")[0]
    assert first["nll_loss"] == pytest.approx(plain["nll_loss"], abs=1e-6)


def test_disabled_adapter_reference_equals_the_base_model(tiny_model_dir, tokenizer, template):
    """The LoRA reference is the policy with its adapter switched off: after the adapter has
    moved, those log-probs still equal the bare base model's, bit for bit."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.data.conversation import Conversation, Message
    from tuneforge.data.tokenize import encode_pair
    from tuneforge.models.attention import use_varlen_attention
    from tuneforge.train import dpo
    from tuneforge.train.plan import TokenizedExample, TokenizedPair
    from tuneforge.train.recipe import lora_config

    conv = Conversation(
        (Message("user", "Pick one."), Message("assistant", "Apples, please.")),
        rejected=(Message("assistant", "No."),),
    )
    chosen, rejected = encode_pair(conv, tokenizer, template)
    pair = TokenizedPair(
        TokenizedExample(chosen.input_ids, chosen.labels),
        TokenizedExample(rejected.input_ids, rejected.labels),
    )
    # Both sequences share the prompt's tokens; only the answers are trained.
    n_prompt = next(i for i, x in enumerate(chosen.labels) if x != -100)
    assert chosen.input_ids[:n_prompt] == rejected.input_ids[:n_prompt]
    assert all(x == -100 for x in rejected.labels[:n_prompt])

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    use_varlen_attention(base)
    batch = dpo.make_pair_batch([pair])
    with torch.no_grad():
        expected, _ = dpo.sequence_logps(base, batch, torch.device("cpu"))
        # The summed log-probs are the full model's, summed over the answer tokens only.
        logits = base(input_ids=torch.tensor([chosen.input_ids])).logits[0, :-1]
        targets = torch.tensor(chosen.input_ids[1:])
        mask = torch.tensor(chosen.labels[1:]) != -100
        by_hand = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0][mask].sum()
    assert expected[0, 0].item() == pytest.approx(by_hand.item(), abs=1e-4)

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        lora_config(build_config({"train_file": "x.jsonl"})),
    )
    use_varlen_attention(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # the adapter has learnt something
        moved, _ = dpo.sequence_logps(model, batch, torch.device("cpu"))
    reference = dpo.compute_reference(model, [[0]], [pair], torch.device("cpu"), True)
    assert not torch.allclose(moved.double(), expected.double())
    assert torch.equal(reference.float(), expected.float())


def summed_logp(model, example) -> float:
    """The answer's summed log-prob from a plain forward pass over this sequence alone."""
    logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1]
    targets = torch.tensor(example.input_ids[1:])
    mask = torch.tensor(example.labels[1:]) != -100
    return torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0][mask].sum().item()


def test_pairs_packed_in_one_row_score_as_each_sequence_alone(tiny_model_dir, tokenizer, template):
    """DPO always packs a micro-batch's pairs into one row ([chosen₀, rejected₀, chosen₁, …]):
    each sequence's summed log-prob equals that sequence run alone through the model (fp32,
    1e-5), and the same row without its segment bounds — every token seeing the earlier
    sequences — does not, so the check can fail."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from tuneforge.data.conversation import Conversation, Message
    from tuneforge.data.tokenize import encode_pair
    from tuneforge.models.attention import use_varlen_attention
    from tuneforge.train import dpo
    from tuneforge.train.plan import TokenizedExample, TokenizedPair

    pairs = []
    for question, good, bad in [
        ("Pick one.", "Apples, please.", "No."),
        ("What is two plus two? Answer briefly.", "Four.", "It is five, I think."),
        ("Name a colour.", "Blue", "A colour is a property of light and of the eye that sees it."),
    ]:
        conv = Conversation(
            (Message("user", question), Message("assistant", good)),
            rejected=(Message("assistant", bad),),
        )
        chosen, rejected = encode_pair(conv, tokenizer, template)
        pairs.append(
            TokenizedPair(
                TokenizedExample(chosen.input_ids, chosen.labels),
                TokenizedExample(rejected.input_ids, rejected.labels),
            )
        )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    use_varlen_attention(model)
    cpu = torch.device("cpu")
    packed = dpo.make_pair_batch(pairs)
    with torch.no_grad():
        together, _ = dpo.sequence_logps(model, packed, cpu)
        alone = torch.tensor(
            [[summed_logp(model, ex) for ex in (p.chosen, p.rejected)] for p in pairs]
        )
        # A single segment over the whole row: the later sequences attend to the earlier ones.
        crossed, _ = dpo.sequence_logps(model, replace(packed, bounds=[0, packed.bounds[-1]]), cpu)
    assert together.shape == (3, 2)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    assert torch.allclose(crossed[0, 0], alone[0, 0], atol=1e-5)  # the first sees nothing before
    assert (crossed.flatten()[1:] - alone.flatten()[1:]).abs().min() > 1e-3


def test_dpo_loss_gradient_is_minus_beta_over_two_at_zero():
    from tuneforge.train import dpo

    policy = torch.zeros(3, 2, requires_grad=True)
    found = dpo.dpo_loss(policy, torch.zeros(3, 2), beta=0.3, chosen_tokens=torch.ones(3))
    found.losses.sum().backward()
    # d/dΔ −log σ(βΔ) = −β σ(−βΔ) = −β/2 at Δ = 0; Δ = chosen − rejected.
    assert torch.allclose(policy.grad[:, 0], torch.full((3,), -0.15))
    assert torch.allclose(policy.grad[:, 1], torch.full((3,), 0.15))


def test_the_sft_term_adds_the_preferred_answers_nll_per_token():
    """TRL's loss_type=["sigmoid", "sft"], loss_weights=[1, w]: + w · (−log π(y⁺) / |y⁺|)."""
    from tuneforge.train import dpo

    policy = torch.tensor([[-6.0, -2.0], [-1.0, -9.0]], requires_grad=True)
    reference = torch.tensor([[-5.0, -3.0], [-2.0, -8.0]])
    tokens = torch.tensor([3.0, 2.0])
    plain = dpo.dpo_loss(policy, reference, beta=0.1, chosen_tokens=tokens)
    mixed = dpo.dpo_loss(policy, reference, beta=0.1, chosen_tokens=tokens, sft_weight=0.5)
    assert torch.allclose(plain.nll, torch.tensor([2.0, 0.5])) and torch.equal(plain.nll, mixed.nll)
    assert torch.allclose(mixed.losses - plain.losses, 0.5 * torch.tensor([2.0, 0.5]))
    mixed.losses.sum().backward()
    # the sft term pulls the preferred answer up by w/|y⁺| on top of DPO's β σ(−βΔ)
    delta = (policy - reference).detach()
    margin = 0.1 * (delta[:, 0] - delta[:, 1])
    dpo_grad = -0.1 * torch.sigmoid(-margin)
    assert torch.allclose(policy.grad[:, 0], dpo_grad - 0.5 / tokens)
    assert torch.allclose(policy.grad[:, 1], -dpo_grad)


@pytest.mark.parametrize(
    ("method", "learning_rate", "loss_below"),
    # LoRA cannot move the tiny model's tied embeddings or its final norm, which bounds the
    # logit gap it can open between two tokens: its loss levels off near 0.16 (full: ~0.001).
    [("full", 1e-3, 0.02), ("lora", 1e-2, 0.3)],
)
def test_a_tiny_model_learns_a_one_token_preference(
    pairs_dir, tiny_model_dir, tmp_path, method, learning_rate, loss_below
):
    out = tmp_path / "learn"
    config = dpo_config(
        pairs_dir,
        tiny_model_dir,
        out,
        method=method,
        max_steps=30,
        eval_every=30,
        checkpoint_every=30,
        learning_rate=learning_rate,
        dpo_beta=1.0,
        lr_schedule="constant",
        warmup_ratio=0.0,
    )
    _, last = train(make_plan(config))
    status = rd.read_status(out)
    rows = rd.read_metrics(out)
    assert last["train_loss"] < loss_below, [r["train_loss"] for r in rows]
    assert last["full_valid_rewards/accuracies"] == 1.0
    assert last["full_valid_preference_accuracy"] == 1.0
    assert last["full_valid_rewards/margins"] > 0
    assert status["final_metrics"]["full_valid_loss"] < loss_below
    # The margin grew as the loss fell.
    assert rows[-1]["rewards/margins"] > rows[1]["rewards/margins"] > 0


def test_resume_logs_the_same_dpo_losses(pairs_dir, tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    train(make_plan(dpo_config(pairs_dir, tiny_model_dir, straight, learning_rate=1e-3)))

    broken = tmp_path / "broken"

    def crash_at_step_3(metrics):
        if metrics["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            make_plan(dpo_config(pairs_dir, tiny_model_dir, broken, learning_rate=1e-3)),
            on_step=crash_at_step_3,
        )
    resume(make_plan(rd.load_config(broken), broken))
    a = [(r["step"], r["train_loss"], r["rewards/margins"]) for r in rd.read_metrics(straight)]
    b = [(r["step"], r["train_loss"], r["rewards/margins"]) for r in rd.read_metrics(broken)]
    assert a == b


@pytest.mark.integration
def test_kill_9_mid_run_then_resume_logs_the_same_dpo_losses(pairs_dir, tiny_model_dir, tmp_path):
    """`tuneforge train objective=dpo` killed with SIGKILL at a random step, then `--resume`:
    the same losses, margins and validation figures as an uninterrupted run (the reference
    log-probs are read back, not recomputed; LoRA with dropout: the RNG state is restored)."""
    import os
    import random
    import signal
    import subprocess
    import sys

    from helpers import wait_for_step

    settings = {
        "method": "lora",
        "lora_dropout": 0.1,
        "learning_rate": 1e-3,
        "max_steps": 8,
        "checkpoint_every": 1,
        "eval_every": 4,
    }

    def command(out: Path) -> list[str]:
        fields = dpo_config(pairs_dir, tiny_model_dir, out).model_dump(exclude_unset=True)
        args = [f"{k}={v}" for k, v in (fields | settings).items()]
        return [sys.executable, "-m", "tuneforge.cli", "train", *args]

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
    names = ("step", "train_loss", "rewards/margins", "valid_loss", "valid_rewards/accuracies")

    def rows(run):
        return [tuple(r.get(k) for k in names) for r in rd.read_metrics(run)]

    assert len(rows(straight)) == 8
    assert rows(killed) == rows(straight), f"killed at step {kill_at}"
    assert rd.read_status(killed)["status"] == "succeeded"


def test_dpo_from_a_finished_sft_run(pairs_dir, demo_dir, tiny_model_dir, tmp_path):
    """SFT first, then DPO from its adapter: the reference is the SFT model, so step 0 is ln 2
    again, and the final adapter is a plain adapter on the base."""
    sft = tmp_path / "sft"
    sft_config = build_config(
        {
            "model": str(tiny_model_dir),
            "train_file": str(pairs_dir / "train.jsonl"),  # SFT reads the preferred answers
            "output_dir": str(sft),
            "batch_size": 4,
            "max_steps": 3,
            "learning_rate": 1e-2,
        }
    )
    train(make_plan(sft_config))
    out = tmp_path / "dpo"
    config = dpo_config(pairs_dir, tiny_model_dir, out, init_from=str(sft))
    # `model` left out: it comes from the SFT run.
    plan = make_plan(build_config(config.model_dump(exclude={"model"})))
    assert plan.start_from is not None and plan.config.model == str(tiny_model_dir)
    train(plan)
    first = rd.read_metrics(out)[0]
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # The SFT model already prefers `A` (it was trained to write it).
    assert rd.read_status(out)["initial_valid_preference_accuracy"] == 1.0
    assert (out / "model" / "adapter_model.safetensors").exists()


def test_bad_preference_data_is_a_clear_error(tmp_path, tiny_model_dir):
    same = write_lines(
        tmp_path / "same.jsonl", [dpo_row(0, "A", "B"), dpo_row(1, "Same.", "Same.")]
    )
    with pytest.raises(ConfigError) as info:
        make_plan(
            dpo_config(
                tmp_path, tiny_model_dir, tmp_path / "o", train_file=str(same), validation_file=None
            )
        )
    text = info.value.inline()
    assert "line 2" in text and "identical" in text and "non_preferred_output" in text

    chat = write_lines(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            }
        ],
    )
    with pytest.raises(ConfigError) as info:
        make_plan(
            dpo_config(
                tmp_path, tiny_model_dir, tmp_path / "o", train_file=str(chat), validation_file=None
            )
        )
    (problem,) = info.value.problems
    assert problem.field == "train_file"
    assert "preference pairs" in problem.message and "objective=sft" in problem.message

    prompt_only = write_lines(
        tmp_path / "prompts.jsonl",
        [{"input": {"messages": [{"role": "user", "content": "Hi"}]}}],
    )
    with pytest.raises(ConfigError) as info:
        make_plan(
            dpo_config(
                tmp_path,
                tiny_model_dir,
                tmp_path / "o",
                train_file=str(prompt_only),
                validation_file=None,
            )
        )
    assert "line 1" in info.value.inline() and "preferred_output" in info.value.inline()

    with pytest.raises(ConfigError) as info:
        build_config({"train_file": "x.jsonl", "objective": "dpo", "dpo_beta": 5})
    assert info.value.problems[0].field == "dpo_beta"


def test_prompt_chosen_rejected_format(tmp_path):
    from tuneforge.data.formats import detect_format, load_conversations

    path = write_lines(
        tmp_path / "pcr.jsonl",
        [
            {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
            {
                "prompt": [{"role": "user", "content": "Say bye"}],
                "chosen": [{"role": "assistant", "content": "Bye!"}],
                "rejected": [{"role": "assistant", "content": "No."}],
                "system": "Be nice.",
            },
        ],
    )
    assert detect_format(path) == "prompt-chosen-rejected"
    first, second = load_conversations(path)
    assert first.conversation.messages[-1].content == "Hi!"
    assert first.conversation.rejected[0].content == "No."
    assert [m.role for m in second.conversation.messages] == ["system", "user", "assistant"]
    bad = write_lines(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "y", "rejected": "y"}])
    with pytest.raises(DataError, match="line 1.*identical"):
        load_conversations(bad)


def test_auto_precision_keeps_dpo_in_fp32_on_a_bf16_cpu(
    pairs_dir, tiny_model_dir, tmp_path, monkeypatch
):
    import tuneforge.models.precision as precision

    amx = precision.CpuInfo("Test CPU", frozenset(["avx2", "avx512f", "avx512_bf16", "amx_bf16"]))
    monkeypatch.setattr(precision, "cpu_info", lambda: amx)
    monkeypatch.setattr(
        precision, "cached_calibration", lambda _cpu: precision.Calibration(0.036, 0.010)
    )
    auto = make_plan(dpo_config(pairs_dir, tiny_model_dir, tmp_path / "auto"))
    assert not auto.use_bf16 and auto.precision_reason == "auto: fp32 for dpo on a CPU"
    asked = make_plan(dpo_config(pairs_dir, tiny_model_dir, tmp_path / "asked", precision="bf16"))
    assert asked.use_bf16


def test_dpo_sft_weight_outside_dpo_is_a_clear_error(pairs_dir, tiny_model_dir, tmp_path, demo_dir):
    config = build_config(
        tiny_training(demo_dir, tiny_model_dir, tmp_path / "o", max_steps=1) | {"dpo_sft_weight": 1}
    )
    with pytest.raises(ConfigError) as info:
        make_plan(config)
    (problem,) = info.value.problems
    assert problem.field == "dpo_sft_weight" and "objective=dpo" in problem.message
    with pytest.raises(ConfigError) as info:  # a negative weight is refused by the config
        dpo_config(pairs_dir, tiny_model_dir, tmp_path / "o", dpo_sft_weight=-1)
    assert "dpo_sft_weight" in info.value.inline() and "greater than or equal to 0" in str(
        info.value.inline()
    )
