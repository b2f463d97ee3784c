"""Which precision a run computes in: bf16 autocast where the hardware makes it faster, else fp32.

On CUDA, bf16 autocast is the usual choice wherever the GPU supports it. On a CPU it depends on
the chip: Intel's AMX units (and, less so, AVX512-BF16) multiply bf16 matrices several times
faster than fp32 — a LoRA step of SmolLM2-135M took 3.5 s in bf16 autocast and 5.9 s in fp32 on
a 2-core Xeon with AMX (BENCHMARKS.md, "Precision by hardware") — while a CPU without bf16 units
(AVX2 only) emulates bf16 and is many times slower than fp32. So `precision: auto` reads the
CPU's flags, and where bf16 units exist, times one small calibration (a LoRA-shaped linear layer,
forward and input-gradient, fp32 against bf16 autocast, casts included) and takes bf16 only when
it is clearly faster. The measurement is cached per machine (CPU model, flags, torch version,
threads) under the tuneforge home, so it costs ~0.2 s once.

bf16 autocast keeps fp32 master weights and fp32 optimizer state (what accelerate's
`mixed_precision="bf16"` does); only the matmuls run in bf16.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneforge.paths import tuneforge_home

BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
# bf16 is taken when its calibration time is at most this fraction of fp32's: a clear win only,
# since bf16 rounds activations (a 1.1× gain is not worth a small loss in accuracy).
BF16_MIN_SPEEDUP = 1.25
CALIBRATION_FILE = "precision-calibration.json"


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def bf16_units(self) -> list[str]:
        """The bf16 matrix units this CPU has, by their usual names (empty: none)."""
        return [name for flag, name in BF16_FLAGS.items() if flag in self.flags]

    @property
    def vector_isa(self) -> str:
        """The widest vector instruction set, for people: AVX-512, AVX2 or 'no AVX2'."""
        if "avx512f" in self.flags:
            return "AVX-512"
        return "AVX2" if "avx2" in self.flags else "no AVX2"

    def describe(self) -> str:
        units = ", ".join(self.bf16_units) or "no bf16 units"
        return f"{self.model} ({self.vector_isa}, {units})"


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """The CPU's model name and feature flags, from /proc/cpuinfo (Linux); elsewhere the model
    from `platform` and no flags (so no bf16 is assumed)."""
    import platform

    model, flags = "", frozenset[str]()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown CPU", flags)


@dataclass(frozen=True)
class Calibration:
    """Seconds of the calibration workload in each precision (best of a few repeats)."""

    fp32_seconds: float
    bf16_seconds: float

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / self.bf16_seconds


def calibrate_cpu(tokens: int = 512) -> Calibration:
    """Time a LoRA-shaped layer (tokens × 576 → 1536, SmolLM2-135M's MLP width, frozen weight),
    forward and input-gradient, in fp32 and under bf16 autocast, on the threads torch uses now.
    Casting the frozen weight to bf16 at every call is part of what autocast costs, so it is
    timed too. (`tokens`: fewer make a quick check of the timing itself, not a calibration.)"""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(576, 1536, bias=False).requires_grad_(False)
    back = torch.nn.Linear(1536, 576, bias=False).requires_grad_(False)
    x = torch.randn(tokens, 576, requires_grad=True)

    def run(bf16: bool) -> float:
        best = float("inf")
        for _ in range(4):
            start = time.perf_counter()
            for _ in range(3):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    y = back(torch.nn.functional.silu(layer(x)))
                y.float().sum().backward()
                x.grad = None
            best = min(best, time.perf_counter() - start)
        return best

    run(False), run(True)  # warm-up: first calls pick kernels and allocate
    return Calibration(fp32_seconds=run(False), bf16_seconds=run(True))


def _calibration_key(cpu: CpuInfo) -> str:
    import torch

    flags = ",".join(sorted(f for f in cpu.flags if f.startswith(("avx", "amx"))))
    return f"{cpu.model}|{flags}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def cached_calibration(cpu: CpuInfo, home: Path | None = None) -> Calibration:
    """The calibration for this machine, measured once and kept in the tuneforge home."""
    from tuneforge.atomic import atomic_write_text

    path = (home or tuneforge_home()) / CALIBRATION_FILE
    key = _calibration_key(cpu)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict):
        try:
            return Calibration(**cached[key])
        except TypeError:
            pass  # an older layout: measure again
    measured = calibrate_cpu()
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = asdict(measured)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cached, indent=1))
    except OSError:
        pass  # a read-only home: measure again next time
    return measured


@dataclass(frozen=True)
class Precision:
    """What a run computes in and why, in words for status.json and the model card."""

    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


class PrecisionUnavailable(ValueError):
    """bf16 was asked for where the hardware has no bf16 units; the message says what to do."""


def choose_precision(
    requested: str,
    device: str,
    *,
    cpu: CpuInfo | None = None,
    calibrate: Callable[[CpuInfo], Calibration] | None = None,
    cuda_bf16: Callable[[], bool] | None = None,
) -> Precision:
    """Resolve `precision` (auto, fp32 or bf16) for `device` (cpu or cuda).

    `cpu` defaults to this machine's, `calibrate` to the cached calibration. Raises
    PrecisionUnavailable for bf16 on a CPU without bf16 units (or a GPU without bf16)."""
    if requested == "fp32":
        return Precision(False, "fp32 was asked for")
    if device == "cuda":
        supported = (cuda_bf16 or _cuda_bf16)()
        if requested == "bf16" and not supported:
            raise PrecisionUnavailable(
                "this GPU does not support bf16; use precision=fp32 (or auto)"
            )
        if supported:
            why = "asked for" if requested == "bf16" else "auto: the GPU supports bf16"
            return Precision(True, f"bf16 autocast ({why})")
        return Precision(False, "auto: the GPU does not support bf16")
    cpu = cpu or cpu_info()
    units = cpu.bf16_units
    if not units:
        if requested == "bf16":
            raise PrecisionUnavailable(
                f"this CPU ({cpu.describe()}) has no bf16 units (AMX-BF16 or AVX512-BF16), so "
                "bf16 would be emulated and several times slower than fp32; use precision=fp32 "
                "(or auto)"
            )
        return Precision(False, f"auto: fp32, since the CPU has no bf16 units ({cpu.describe()})")
    if requested == "bf16":
        return Precision(True, f"bf16 autocast (asked for; the CPU has {', '.join(units)})")
    measured = (calibrate or cached_calibration)(cpu)
    timing = (
        f"calibration: bf16 {measured.bf16_seconds * 1000:.0f} ms vs fp32 "
        f"{measured.fp32_seconds * 1000:.0f} ms, {measured.speedup:.2f}×"
    )
    if measured.speedup >= BF16_MIN_SPEEDUP:
        return Precision(True, f"auto: bf16 autocast, the CPU has {', '.join(units)} ({timing})")
    return Precision(
        False,
        f"auto: fp32; the CPU has {', '.join(units)} but bf16 was not at least "
        f"{BF16_MIN_SPEEDUP}× faster ({timing})",
    )


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
