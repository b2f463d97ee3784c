"""Training: packing equivalence, loss masking, run-directory contract, config errors, NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_training

from tuneforge.config import build_config
from tuneforge.errors import ConfigError
from tuneforge.train.plan import TokenizedExample, make_plan


def tiny_config(demo_dir: Path, tiny_model_dir: Path, out: Path, **kw):
    settings = {"max_steps": 4, "eval_every": 2, "checkpoint_every": 2} | kw
    return build_config(tiny_training(demo_dir, tiny_model_dir, out, **settings))


def test_packed_logits_equal_unpacked(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.models.attention import use_varlen_attention
    from tuneforge.train.recipe import make_micro_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    examples = [
        TokenizedExample(torch.randint(3, 49152, (n,), generator=g).tolist(), [-100] * n)
        for n in (23, 7, 41)
    ]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples]
        use_varlen_attention(model)
        mb = make_micro_batch(examples)
        packed = model(
            input_ids=mb.input_ids, position_ids=mb.position_ids, segment_bounds=mb.bounds
        ).logits[0]
    expected = torch.cat(alone)
    assert packed.shape == expected.shape
    assert (packed - expected).abs().max().item() <= 1e-4
    # And without our attention (a plain concatenation) examples would see each other:
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        leaky = model(input_ids=mb.input_ids).logits[0]
    assert (leaky - expected).abs().max().item() > 1e-3


def test_our_attention_keeps_the_padding_mask_of_a_left_padded_batch(tiny_model_dir):
    """The trainer's model (our attention) generating for a batch (GRPO's sampler): each
    left-padded row answers as it does alone; transformers builds no mask for an attention it
    does not know, so without our mask function the rows attended to their padding."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models.attention import use_varlen_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    use_varlen_attention(model)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in (9, 4, 6)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows]
        batch = model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)
        ).logits[:, -1]
    for i, expected in enumerate(alone):
        assert (batch[i] - expected).abs().max().item() <= 1e-4, f"row {i}"


def test_loss_equals_reference_on_trained_tokens_only(tiny_model_dir, tokenizer, template):
    """Our head-at-trained-positions loss equals the full-logits loss with -100 labels."""
    from transformers import AutoModelForCausalLM

    from tuneforge.data.conversation import Conversation, Message
    from tuneforge.data.tokenize import encode
    from tuneforge.models.attention import use_varlen_attention
    from tuneforge.train.recipe import forward_sums, make_micro_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    convs = [
        Conversation((Message("user", f"question {i}"), Message("assistant", f"answer {i} " * i)))
        for i in (1, 3, 5)
    ]
    encs = [encode(c, tokenizer, template) for c in convs]
    with torch.no_grad():
        ref_sum, ref_n = 0.0, 0
        for e in encs:
            out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
            n = sum(1 for x in e.labels[1:] if x != -100)
            ref_sum += out.loss.item() * n
            ref_n += n
        use_varlen_attention(model)
        mb = make_micro_batch([TokenizedExample(e.input_ids, e.labels) for e in encs])
        loss_sum, _ = forward_sums(model, mb, torch.device("cpu"))
    assert mb.n_trained == ref_n
    assert loss_sum.item() / ref_n == pytest.approx(ref_sum / ref_n, abs=1e-5)


def test_run_directory_contract(demo_dir, tiny_model_dir, tmp_path):
    from tuneforge import run_dir as rd
    from tuneforge.train.recipe import train

    out = tmp_path / "run"
    run, last = train(
        make_plan(tiny_config(demo_dir, tiny_model_dir, out, keep_last=1, max_steps=5))
    )
    assert run == out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "checkpoints",
        "config.yaml",
        "loss.png",
        "metrics.jsonl",
        "model",
        "status.json",
    ]
    # keep_last=1: only the newest complete checkpoint remains, with everything resume needs.
    ((step, ckpt),) = rd.checkpoints(out)
    assert step == 4
    assert {
        "COMPLETE",
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.pt",
        "rng-0.pt",
        "trainer_state.json",
    } <= {p.name for p in ckpt.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {
        p.name for p in (out / "model").iterdir()
    }
    rows = rd.read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all({"step", "epoch", "train_loss", "train_mean_token_accuracy"} <= set(r) for r in rows)
    assert "valid_loss" in rows[1] and "valid_loss" not in rows[0]
    assert {"full_valid_loss", "full_valid_mean_token_accuracy"} <= set(last)
    status = rd.read_status(out)
    assert status["status"] == "succeeded" and status["step"] == 5
    assert status["initial_valid_loss"] > rows[-1]["valid_loss"]
    config = rd.read_config(out)
    assert config["epochs"] != "auto" and config["learning_rate"] == 1e-3
    card = (out / "README.md").read_text()
    assert "full_valid_loss" in card and str(tiny_model_dir) in card
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # Training moved the loss down from the random-init level.
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_final_validation_false_skips_the_whole_set_pass(demo_dir, tiny_model_dir, tmp_path):
    """The last step's sample is scored as usual; the full pass (and its full_valid_ keys in
    the metrics, status and card) is not made."""
    from tuneforge import run_dir as rd
    from tuneforge.train import recipe

    passes = []
    original = recipe.SFTRecipe.evaluate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            recipe.SFTRecipe,
            "evaluate",
            lambda self, ex: passes.append(len(ex)) or original(self, ex),
        )
        out = tmp_path / "run"
        config = tiny_config(
            demo_dir, tiny_model_dir, out, max_steps=2, eval_examples=4, final_validation=False
        )
        _, last = recipe.train(make_plan(config))
    assert passes and set(passes) == {4}  # the periodic sample only, never the whole set
    assert "valid_loss" in last and not any(k.startswith("full_valid_") for k in last)
    assert "full_valid_loss" not in rd.read_status(out)["final_metrics"]


def test_config_errors_are_all_reported_before_weights_load(
    demo_dir, tiny_model_dir, tmp_path, monkeypatch
):
    import tuneforge.models.registry as registry

    def no_weights(*_, **__):
        raise AssertionError("weights must not load for a bad config")

    monkeypatch.setattr(registry, "load_model", no_weights)
    with pytest.raises(ConfigError) as exc:
        build_config({"train_file": "x.jsonl", "epochs": "many", "lora_rank": -1, "colour": "red"})
    text = str(exc.value)
    assert "`epochs`" in text and "`lora_rank`" in text and "`colour`: unknown key" in text

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    other_format = tmp_path / "valid.jsonl"
    other_format.write_text(
        "\n".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) for i in range(12)) + "\n"
    )
    config = tiny_config(
        demo_dir,
        tiny_model_dir,
        tmp_path / "run",
        method="qlora",
        max_seq_len=100_000,
        validation_file=str(other_format),
    )
    with pytest.raises(ConfigError) as exc:
        make_plan(config)
    text = str(exc.value)
    assert "`method`: qlora" in text and "CUDA" in text
    assert "`max_seq_len`: 100000 is over the model's context length" in text
    assert "`validation_file`: its format is prompt-completion" in text
    config = tiny_config(demo_dir, tiny_model_dir, tmp_path / "run", train_file=str(empty))
    with pytest.raises(ConfigError, match="`train_file`.*empty"):
        make_plan(config)
    assert not (tmp_path / "run").exists()


def test_cli_config_commands(run_cli, tmp_path, demo_dir, tiny_model_dir):
    code, out, _ = run_cli("config", "show", "--defaults")
    assert code == 0 and "lora_rank: 16" in out and "# LoRA rank" in out
    good = tmp_path / "run.yaml"
    good.write_text(f"model: {tiny_model_dir}\ntrain_file: {demo_dir / 'train.jsonl'}\n")
    code, out, err = run_cli("config", "validate", good)
    assert code == 0, err
    assert "48 training" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_file: a.jsonl\nlearning_rate: fast\nbatch_sise: 4\n")
    code, _, err = run_cli("config", "validate", bad)
    assert code == 2
    assert "learning_rate" in err and "batch_sise" in err and "Traceback" not in err


def test_nan_loss_stops_with_a_clear_failure(demo_dir, tiny_model_dir, tmp_path, monkeypatch):
    from tuneforge import run_dir as rd
    from tuneforge.train import recipe

    real = recipe.forward_sums
    calls = {"n": 0}

    def poisoned(model, mb, device):
        loss, correct = real(model, mb, device)
        calls["n"] += model.training
        if model.training and calls["n"] > 3:  # step 4 on (one micro-batch per step)
            loss = loss * float("nan")
        return loss, correct

    monkeypatch.setattr(recipe, "forward_sums", poisoned)
    out = tmp_path / "run"
    config = tiny_config(
        demo_dir,
        tiny_model_dir,
        out,
        checkpoint_every=1,
        eval_every=100,
        micro_batch_tokens=100_000,
    )
    with pytest.raises(recipe.TrainingFailed, match="loss became nan"):
        recipe.train(make_plan(config))
    status = rd.read_status(out)
    assert status["status"] == "failed" and status["error"]["code"] == "nan_loss"
    assert "step 4" in status["error"]["message"]
    assert [s for s, _ in rd.checkpoints(out)][-1] == 3  # the last good checkpoint stays


def test_runs_list_and_generate_cli(demo_dir, tiny_model_dir, tmp_path, isolated_home, run_cli):
    from tuneforge.train.recipe import train

    out = isolated_home / "runs" / "tiny-run"
    train(make_plan(tiny_config(demo_dir, tiny_model_dir, out, max_steps=2)))
    code, listing, _ = run_cli("runs", "list", "--json")
    rows = json.loads(listing)
    assert code == 0 and [r["run"] for r in rows] == ["tiny-run"]
    assert rows[0]["status"] == "succeeded" and "full_valid_loss" in rows[0]["final_metrics"]
    code, text, err = run_cli("generate", out, "Title: Soup", "--max-tokens", "5")
    assert code == 0 and text, err  # a random tiny model may well answer in whitespace
    code, _, err = run_cli("generate", tmp_path, "hello")
    assert code == 3 or code == 2
    assert "Traceback" not in err


def test_two_runs_started_in_the_same_second_get_their_own_folders(isolated_home, monkeypatch):
    import time

    from tuneforge.train.plan import default_run_dir

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20270106-120000")
    config = build_config({"train_file": "t.jsonl", "suffix": "recipes"})
    first = default_run_dir(config)
    assert first.name == "smollm2-135m-instruct-recipes-20270106-120000"
    first.mkdir(parents=True)
    second = default_run_dir(config)
    assert second.name == first.name + "-2" and second.parent == first.parent
    second.mkdir()
    assert default_run_dir(config).name == first.name + "-3"


def test_a_lora_run_loaded_to_generate_is_merged_and_computes_the_same(
    demo_dir, tiny_model_dir, isolated_home
):
    """`load_for_inference(packed=True)` (chat, generate, eval, compare) merges a LoRA run's
    adapter into the weights: a plain model, whose logits are the adapter model's."""
    from tuneforge.inference.load import load_for_inference
    from tuneforge.train.recipe import train

    out = isolated_home / "runs" / "lora-run"
    train(make_plan(tiny_config(demo_dir, tiny_model_dir, out, max_steps=2, learning_rate=0.05)))
    adapter = load_for_inference(out)
    merged = load_for_inference(out, packed=True)
    base = load_for_inference(str(tiny_model_dir))
    assert hasattr(adapter.model, "merge_and_unload")
    assert not hasattr(merged.model, "merge_and_unload")
    ids = torch.tensor([adapter.tokenizer("Title: Soup\nIngredients: water, salt")["input_ids"]])
    with torch.no_grad():
        expected = adapter.model(input_ids=ids).logits
        got = merged.model(input_ids=ids).logits
        untrained = base.model(input_ids=ids).logits
    assert (expected - untrained).abs().max() > 1e-2  # the adapter changes the answer…
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # …and merged, it still does
