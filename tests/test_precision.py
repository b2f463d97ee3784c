"""Precision by hardware: bf16 autocast where the CPU (or GPU) makes it faster, fp32 elsewhere,
and bf16 on a CPU without bf16 units refused as a config error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_training

import tuneforge.models.precision as precision
from tuneforge import run_dir as rd
from tuneforge.config import build_config
from tuneforge.errors import ConfigError
from tuneforge.models.precision import (
    Calibration,
    CpuInfo,
    PrecisionUnavailable,
    choose_precision,
    cpu_info,
)
from tuneforge.train.plan import make_plan

AVX2 = "fpu sse sse2 avx avx2 fma"
AVX512_BF16 = AVX2 + " avx512f avx512bw avx512vl avx512_bf16"
AMX = AVX512_BF16 + " amx_bf16 amx_tile amx_int8"


def cpu(flags: str) -> CpuInfo:
    return CpuInfo("Test CPU", frozenset(flags.split()))


def timed(fp32: float, bf16: float):
    calls = []

    def calibrate(_cpu: CpuInfo) -> Calibration:
        calls.append(_cpu)
        return Calibration(fp32_seconds=fp32, bf16_seconds=bf16)

    calibrate.calls = calls
    return calibrate


def never(_cpu: CpuInfo) -> Calibration:
    raise AssertionError("no calibration on a CPU without bf16 units")


def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        f"flags\t\t: {AMX}\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    )
    found = cpu_info(info)
    assert found.model == "Intel(R) Xeon(R) Processor"
    assert found.bf16_units == ["AMX-BF16", "AVX512-BF16"]
    assert found.vector_isa == "AVX-512"
    missing = cpu_info(tmp_path / "absent")
    assert missing.flags == frozenset() and missing.bf16_units == []


def test_amx_cpu_takes_bf16_when_calibration_shows_it_faster():
    calibrate = timed(fp32=0.036, bf16=0.010)
    chosen = choose_precision("auto", "cpu", cpu=cpu(AMX), calibrate=calibrate)
    assert chosen.bf16 and chosen.name == "bf16"
    assert "AMX-BF16" in chosen.reason and "3.60×" in chosen.reason
    assert len(calibrate.calls) == 1


def test_avx512_bf16_only_cpu_keeps_fp32_when_bf16_is_not_clearly_faster():
    chosen = choose_precision("auto", "cpu", cpu=cpu(AVX512_BF16), calibrate=timed(0.033, 0.030))
    assert not chosen.bf16
    assert "AVX512-BF16" in chosen.reason and "not at least" in chosen.reason
    faster = choose_precision("auto", "cpu", cpu=cpu(AVX512_BF16), calibrate=timed(0.04, 0.02))
    assert faster.bf16


def test_avx2_only_cpu_uses_fp32_without_calibrating_and_refuses_bf16():
    chosen = choose_precision("auto", "cpu", cpu=cpu(AVX2), calibrate=never)
    assert not chosen.bf16 and "no bf16 units" in chosen.reason
    with pytest.raises(PrecisionUnavailable, match="no bf16 units.*precision=fp32"):
        choose_precision("bf16", "cpu", cpu=cpu(AVX2), calibrate=never)
    # Asking explicitly on a CPU with the units needs no calibration; fp32 is always fp32.
    assert choose_precision("bf16", "cpu", cpu=cpu(AMX), calibrate=never).bf16
    assert not choose_precision("fp32", "cpu", cpu=cpu(AMX), calibrate=never).bf16


def test_cuda_precision_follows_the_gpu():
    assert choose_precision("auto", "cuda", cuda_bf16=lambda: True).bf16
    assert not choose_precision("auto", "cuda", cuda_bf16=lambda: False).bf16
    with pytest.raises(PrecisionUnavailable, match="GPU does not support bf16"):
        choose_precision("bf16", "cuda", cuda_bf16=lambda: False)


def test_calibration_is_measured_once_per_machine(tmp_path, monkeypatch):
    measured = []

    def fake_calibrate() -> Calibration:
        measured.append(1)
        return Calibration(0.03, 0.01)

    monkeypatch.setattr(precision, "calibrate_cpu", fake_calibrate)
    first = precision.cached_calibration(cpu(AMX), home=tmp_path)
    again = precision.cached_calibration(cpu(AMX), home=tmp_path)
    assert first == again == Calibration(0.03, 0.01) and len(measured) == 1
    precision.cached_calibration(cpu(AVX512_BF16), home=tmp_path)  # another machine
    assert len(measured) == 2
    (tmp_path / precision.CALIBRATION_FILE).write_text("{not json")
    precision.cached_calibration(cpu(AMX), home=tmp_path)  # a damaged cache is measured anew
    assert len(measured) == 3
    assert json.loads((tmp_path / precision.CALIBRATION_FILE).read_text())


def test_the_real_calibration_times_both_precisions():
    # 32 tokens, not 512: on a CPU without bf16 units (where auto never calibrates) bf16 is
    # emulated and the full-size timing takes ~40 s; the code timed is the same.
    measured = precision.calibrate_cpu(tokens=32)
    assert measured.fp32_seconds > 0 and measured.bf16_seconds > 0


def _config(demo_dir: Path, tiny_model_dir: Path, out: Path, **kw):
    settings = {"max_steps": 2, "eval_every": 2, "checkpoint_every": 2} | kw
    return build_config(tiny_training(demo_dir, tiny_model_dir, out, **settings))


def test_bf16_on_a_cpu_without_bf16_units_is_a_config_error(
    demo_dir, tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(precision, "cpu_info", lambda: cpu(AVX2))
    config = _config(demo_dir, tiny_model_dir, tmp_path / "run", precision="bf16")
    with pytest.raises(ConfigError) as exc:
        make_plan(config)
    assert "`precision`: this CPU (Test CPU (AVX2, no bf16 units)) has no bf16 units" in str(
        exc.value
    )


def test_a_bf16_run_records_its_precision_and_why(demo_dir, tiny_model_dir, tmp_path, monkeypatch):
    from tuneforge.train.recipe import train

    monkeypatch.setattr(precision, "cpu_info", lambda: cpu(AMX))
    monkeypatch.setattr(precision, "cached_calibration", timed(0.036, 0.010))
    out = tmp_path / "run"
    plan = make_plan(_config(demo_dir, tiny_model_dir, out))
    assert plan.use_bf16 and plan.config.precision == "bf16"
    seen = []
    train(plan, on_step=seen.append)
    status = rd.read_status(out)
    assert status["status"] == "succeeded"
    assert status["precision"] == "bf16" and "AMX-BF16" in status["precision_reason"]
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in seen)
    assert (
        "| precision | auto: bf16 autocast, the CPU has AMX-BF16" in (out / "README.md").read_text()
    )
    assert rd.read_config(out)["precision"] == "bf16"  # so a resume keeps it


def test_casting_once_gives_plain_autocasts_forward(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.train.bf16 import cast_once_for_bf16

    def lora_model():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        return get_peft_model(model, config)

    ids = torch.randint(0, 1000, (2, 12))
    plain, once = lora_model(), lora_model()
    stored = cast_once_for_bf16(once)
    assert stored == sum(1 for n, _ in once.named_modules() if n.endswith("base_layer"))
    assert all(p.dtype == torch.float32 for p in once.parameters() if p.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain(input_ids=ids).logits
        got = once(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.float().sum().backward()
    assert all(p.grad is not None for p in once.parameters() if p.requires_grad)


def test_cuda_plans_choose_bf16_and_check_qlora_before_loading(
    demo_dir, tiny_model_dir, tmp_path, monkeypatch
):
    """The GPU paths, checked on a CPU: what the plan decides for a (pretended) CUDA machine."""
    import importlib.util

    import tuneforge.train.plan as plan_module
    from tuneforge.train.recipe import qlora_quantization

    monkeypatch.setattr(plan_module, "cuda_available", lambda: True)
    monkeypatch.setattr(precision, "_cuda_bf16", lambda: True)
    plan = make_plan(_config(demo_dir, tiny_model_dir, tmp_path / "lora"))
    assert plan.device == "cuda" and plan.use_bf16 and "GPU supports bf16" in plan.precision_reason

    config = _config(demo_dir, tiny_model_dir, tmp_path / "qlora", method="qlora")
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match="`method`: qlora needs the bitsandbytes package"):
            make_plan(config)
    else:
        assert make_plan(config).use_bf16
    quant = qlora_quantization(bf16=True)
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert qlora_quantization(bf16=False).bnb_4bit_compute_dtype == torch.float32

    monkeypatch.setattr(precision, "_cuda_bf16", lambda: False)  # e.g. a T4
    plan = make_plan(_config(demo_dir, tiny_model_dir, tmp_path / "t4"))
    assert not plan.use_bf16
    with pytest.raises(ConfigError, match="`precision`: this GPU does not support bf16"):
        make_plan(_config(demo_dir, tiny_model_dir, tmp_path / "t4b", precision="bf16"))


def test_one_process_trains_a_bf16_run_then_an_fp32_run():
    # accelerate's state is process-wide; the job worker and `compare` train runs of different
    # precisions one after another (an SFT run in bf16, then a DPO run in fp32).
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from tuneforge.train.recipe import _forget_other_precision

    try:
        _forget_other_precision("bf16")
        Accelerator(cpu=True, mixed_precision="bf16")
        _forget_other_precision("no")
        assert Accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)


def test_compile_trains_like_eager(demo_dir, tiny_model_dir, tmp_path, monkeypatch):
    # `compile: true` fuses each layer's MLP and norms (train/compiled.py); the step's numbers
    # stay those of the eager run, and the saved adapter keeps peft's parameter names.
    from tuneforge.train.recipe import train

    monkeypatch.setattr(precision, "cpu_info", lambda: cpu(AVX2))  # fp32 on any machine
    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"run-{compiled}"
        seen, events = [], []
        train(
            make_plan(_config(demo_dir, tiny_model_dir, out, compile=compiled)),
            on_step=seen.append,
            on_event=events.append,
        )
        losses[compiled] = [m["train_loss"] for m in seen]
        assert rd.read_status(out)["status"] == "succeeded"
        assert any("torch.compile" in e for e in events) == compiled
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] > 0  # compiled indeed, not eager as a fallback
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    saved = json.loads((tmp_path / "run-True" / "model" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA"


def test_compile_is_for_sft_only(demo_dir, tiny_model_dir, tmp_path):
    config = _config(demo_dir, tiny_model_dir, tmp_path / "run", compile=True, objective="dpo")
    with pytest.raises(ConfigError) as exc:
        make_plan(config)
    assert "`compile`: compile is for objective sft only (got dpo)" in str(exc.value)


@pytest.mark.parametrize(
    ("flags", "requested", "calibration", "bf16"),
    [
        (AMX, "bf16", never, True),
        (AMX, "auto", timed(0.036, 0.010), True),
        (AVX512_BF16, "auto", timed(0.030, 0.028), False),  # not clearly faster
        (AVX2, "auto", never, False),
        (AMX, "fp32", never, False),
    ],
)
def test_serve_resolves_its_prefill_precision_by_hardware(
    run_cli, monkeypatch, flags, requested, calibration, bf16
):
    import tuneforge.api.server as server
    import tuneforge.cli._common as common

    monkeypatch.setattr(common, "use_free_cores", lambda: None)  # this process keeps its threads
    monkeypatch.setattr(precision, "cpu_info", lambda: cpu(flags))
    monkeypatch.setattr(precision, "cached_calibration", calibration)
    started = {}
    monkeypatch.setattr(server, "run_server", lambda factory, **options: started.update(options))
    code, _, err = run_cli("serve", "--prefill-precision", requested)
    assert code in (0, None) and started["prefill_bf16"] is bf16
    assert ("prefill precision:" in err) == (requested != "fp32")


def test_serve_refuses_a_bf16_prefill_on_a_cpu_without_bf16_units(run_cli, monkeypatch):
    import tuneforge.api.server as server

    monkeypatch.setattr(precision, "cpu_info", lambda: cpu(AVX2))
    monkeypatch.setattr(server, "run_server", lambda *a, **k: pytest.fail("must not start"))
    code, _, err = run_cli("serve", "--prefill-precision", "bf16")
    assert code == 2
    assert "--prefill-precision bf16: this CPU (Test CPU (AVX2, no bf16 units)) has no bf16" in err
    assert "use precision=fp32" in err
    code, _, err = run_cli("serve", "--prefill-precision", "fast")
    assert code == 2 and "--prefill-precision takes fp32, bf16 or auto, not 'fast'" in err


def test_the_servers_engine_gets_the_bf16_prefill(monkeypatch, isolated_home):
    """What the CLI resolved reaches the engine: run_server → the app factory → InferenceEngine."""
    import uvicorn
    from fastapi.testclient import TestClient

    from tuneforge.api.server import run_server
    from tuneforge.ui import create_app

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    for bf16, weights in ((True, "bf16"), (False, "fp32")):
        run_server(
            lambda **options: apps.append(create_app(**options)) or apps[-1],
            host="127.0.0.1",
            port=0,
            api_key=None,
            prefill_bf16=bf16,
            weight_precision=weights,
        )
    for app, bf16, weights in zip(apps, (True, False), ("bf16", "fp32"), strict=True):
        with TestClient(app):
            assert app.state.engine.prefill_bf16 is bf16
            assert app.state.engine.weight_precision == weights


def test_serve_takes_a_weight_precision_and_refuses_bf16_without_the_kernel(run_cli, monkeypatch):
    import tuneforge.api.server as server
    import tuneforge.cli._common as common
    from tuneforge.inference import small_gemm

    monkeypatch.setattr(common, "use_free_cores", lambda: None)
    started = {}
    monkeypatch.setattr(server, "run_server", lambda factory, **options: started.update(options))
    code, _, _ = run_cli("serve")
    assert code in (0, None) and started["weight_precision"] == "auto"
    monkeypatch.setattr(small_gemm, "available", lambda: True)
    code, _, _ = run_cli("serve", "--weight-precision", "bf16")
    assert code in (0, None) and started["weight_precision"] == "bf16"
    monkeypatch.setattr(small_gemm, "available", lambda: False)
    started.clear()
    code, _, err = run_cli("studio", "--no-open", "--weight-precision", "bf16")
    assert code == 2 and not started
    assert "--weight-precision bf16 needs tuneforge's few-row kernel" in err
    assert "use --weight-precision fp32 or auto" in err
    code, _, err = run_cli("serve", "--weight-precision", "int8")
    assert code == 2 and "--weight-precision takes fp32, bf16 or auto, not 'int8'" in err


def test_generate_and_chat_take_a_weight_precision(run_cli, monkeypatch, tiny_model_dir):
    """`tuneforge generate|chat --weight-precision`: bf16 rounds the weights (when the
    kernel can run), auto only takes exact ones, fp32 none; a bad value is a usage error."""
    from tuneforge.inference import prepack

    calls = []
    real = prepack.use_bf16_weights

    def recording(model, *, only_exact=False):
        calls.append(only_exact)
        return real(model, only_exact=only_exact)

    monkeypatch.setattr(prepack, "use_bf16_weights", recording)
    model = str(tiny_model_dir)
    expected = {"fp32": [], "auto": [True], "bf16": [True, False]}
    if not prepack.small_gemm.available():
        expected["bf16"] = None  # refused below
    for chosen, want in expected.items():
        calls.clear()
        args = ("generate", model, "hi", "--max-tokens", "2", "--weight-precision", chosen)
        code, _, err = run_cli(*args)
        if want is None:
            assert code == 2 and "needs tuneforge's few-row kernel" in err
        else:
            assert code in (0, None), err
            assert calls == want, chosen
    code, _, err = run_cli("chat", model, "--weight-precision", "half")
    assert code == 2 and "--weight-precision takes fp32, bf16 or auto, not 'half'" in err
