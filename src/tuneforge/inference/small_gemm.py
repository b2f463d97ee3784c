"""Our few-row fp32 GEMM (`small_gemm.c`): compiled on first use, loaded with ctypes.

Why our own kernel (measured, `bench/small_gemm.py`, BENCHMARKS.md "Serving throughput"): a
decode step of a batch of requests multiplies 1-32 rows by every weight, so it is bound by
reading the weights. On our 2-core AMD EPYC (AVX2), at 8 rows, MKL reads them at ~5 GB/s and
oneDNN at ~8 of the ~20 GB/s the memory gives; this kernel reads them at ~13 GB/s (~17 at 1-4
rows): 1.6-1.8× oneDNN from 1 to 8 rows, 1.1-1.2× at 16-32, and as fast as MKL up to 128 rows.
On an Intel Xeon with AVX-512 and AMX, MKL's few-row GEMMs are far better: the kernel still
wins at 4-16 rows (1.3-1.6×), ties at 1, loses at 2 and from ~32 up.

So which GEMM runs at which row count is decided per machine: `kernel_row_counts` times the
kernel against MKL on the model's own weights once, at row counts from 1 up until MKL is clearly
faster twice in a row, and keeps the kernel at the row counts where it is not clearly slower;
the others go to MKL (`nn.Linear`). The answer is cached in `rows-<key>.json` under
`paths.kernels_dir()` (`$TUNEFORGE_HOME/kernels`, or `$TUNEFORGE_KERNEL_DIR`; key: CPU model and
flags, torch version, threads, kernel build, weight shapes), with the timings it was decided
from; `TUNEFORGE_KERNEL_MAX_ROWS=N` overrides it (the kernel at 1 to N rows; 0: never).

Where it cannot be built — not x86-64 Linux, no AVX2/FMA, no C compiler, or
`TUNEFORGE_NO_KERNEL=1` — `available()` is False and callers use oneDNN (`prepack.py`). The
shared library is cached there too, named by a hash of the source and the
compiler command, and written atomically (temp file + rename), so concurrent first uses are safe.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import torch

from tuneforge.errors import UsageError
from tuneforge.paths import kernels_dir

log = logging.getLogger("tuneforge.kernels")

SOURCE = Path(__file__).with_name("small_gemm.c")
PANEL = 16  # output columns per panel (small_gemm.c)
KERNEL_ROWS = 256  # the most rows small_gemm.c takes in one call
# Row counts `kernel_row_counts` times: until MKL is clearly faster at two in a row. Not just
# the first loss: on the Xeon MKL wins at 2 rows (20 vs 23 ms) but loses at 4-16 (33 vs 22 ms
# at 4), where MKL switches kernels.
TUNE_ROWS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
LOSSES_TO_STOP = 2
# "Clearly": more than 5% slower. Timings of the same GEMM vary by ~2-3% between runs here.
CLEAR_LOSS = 1.05
# Time on this much of the model's weights (a 7B model: 28 GB): one layer of each shape, then
# the others in order. Several times any CPU's last-level cache, so the timings read the
# weights from memory as a decode step does. On SmolLM2-135M (538 MB), AMD EPYC: the verdict
# of all 538 MB (21 s) from 269 (12 s); bench/kernel_measurement.py.
TUNE_BYTES = 256 << 20
MAX_ROWS_ENV = "TUNEFORGE_KERNEL_MAX_ROWS"
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


def _supported_cpu() -> bool:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return capability in ("AVX2", "AVX512")  # both imply AVX2 + FMA


def _compile(compiler: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [*compiler, *FLAGS, str(SOURCE), "-o", tmp],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("TUNEFORGE_NO_KERNEL") == "1" or not _supported_cpu():
        return None
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not found:
        log.info("no C compiler found: linear layers use oneDNN instead of our kernel")
        return None
    compiler = shlex.split(found)  # CC may carry flags ("gcc -m64")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([*compiler, *FLAGS]).encode())
    target = kernels_dir() / f"small_gemm-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _compile(compiler, target)
        # Loaded after torch: its OpenMP runtime (libgomp.so.1) is the one the kernel uses.
        library = ctypes.CDLL(str(target))
        function = library.tuneforge_small_gemm
    except (OSError, AttributeError, ValueError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.info("could not build the small-GEMM kernel (%s %s): using oneDNN", exc, detail[:200])
        return None
    for function in (library.tuneforge_small_gemm, library.tuneforge_small_gemm_bf16w):
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_int]
    return library


def available() -> bool:
    """Whether the kernel is built and loaded (builds it on the first call)."""
    return _library() is not None


def pack(weight: torch.Tensor) -> torch.Tensor:
    """An `nn.Linear` weight (N × K, fp32) as panels of 16 output columns: (⌈N/16⌉, K, 16),
    zero-padded."""
    n, k = weight.shape
    panels = -(-n // PANEL)
    padded = weight.new_zeros(panels * PANEL, k)
    padded[:n] = weight
    return padded.view(panels, PANEL, k).transpose(1, 2).contiguous()


# Where each of a panel's 16 columns sits in a bf16 panel (small_gemm.c: widening a 256-bit load
# works within 128-bit lanes, so columns 0-7 must sit at positions 0-3 and 8-11).
BF16_ORDER = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]


def pack_bf16(weight: torch.Tensor) -> torch.Tensor:
    """An `nn.Linear` weight (N × K) rounded to bf16 (round to nearest even, as `.to(bfloat16)`)
    and packed for `tuneforge_small_gemm_bf16w`: (⌈N/16⌉, K, 16) bf16, each 16 in `BF16_ORDER`."""
    panels = pack(weight.float()).to(torch.bfloat16)
    return panels[:, :, BF16_ORDER].contiguous()


def pad_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None:
        return None
    padded = bias.new_zeros(-(-bias.shape[0] // PANEL) * PANEL)
    padded[: bias.shape[0]] = bias
    return padded


class Packed:
    """Packed weights (`pack` or `pack_bf16`), a padded bias (`pad_bias`) or None, and the
    layer's output size, checked once for many calls: `Packed(...)(x)` is `x @ W.T + bias` for x
    of shape (rows ≤ KERNEL_ROWS, K), fp32, contiguous, on the CPU. (The C code trusts these
    sizes: a mismatch would read past the end of a tensor.)"""

    def __init__(self, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> None:
        library = _library()
        assert library is not None, "check available() first"
        panels = -(-out_features // PANEL)
        if (
            packed.dim() != 3
            or packed.shape[0] != panels
            or packed.shape[2] != PANEL
            or packed.dtype not in (torch.float32, torch.bfloat16)
        ):
            raise ValueError(f"packed weight {tuple(packed.shape)} is not ({panels}, K, {PANEL})")
        on_cpu = packed.device.type == "cpu" and (bias is None or bias.device.type == "cpu")
        if (
            not on_cpu
            or not packed.is_contiguous()
            or (
                bias is not None
                and (
                    bias.shape != (panels * PANEL,)
                    or bias.dtype != torch.float32
                    or not bias.is_contiguous()
                )
            )
        ):
            raise ValueError(
                "packed weight and bias must be contiguous, on the CPU, the bias fp32 and padded "
                "(pad_bias)"
            )
        self.packed, self.bias = packed, bias  # kept alive: the C code reads their memory
        self.out_features, self.k = out_features, packed.shape[1]
        self.function = (
            library.tuneforge_small_gemm_bf16w
            if packed.dtype == torch.bfloat16  # pack_bf16
            else library.tuneforge_small_gemm
        )
        self.pointers = (packed.data_ptr(), None if bias is None else bias.data_ptr())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if not (
            x.dim() == 2
            and 1 <= rows <= KERNEL_ROWS
            and x.shape[1] == self.k
            and x.dtype == torch.float32
            and x.is_contiguous()
            and x.device.type == "cpu"
        ):
            raise ValueError(
                f"small_gemm needs 1-{KERNEL_ROWS} contiguous fp32 CPU rows of {self.k}, "
                f"got {tuple(x.shape)} {x.dtype}"
            )
        y = x.new_empty(rows, self.out_features)
        weights, bias = self.pointers
        status = self.function(
            rows,
            self.out_features,
            self.k,
            x.data_ptr(),
            weights,
            bias,
            y.data_ptr(),
            torch.get_num_threads(),
        )
        if status != 0:
            raise ValueError(f"small_gemm kernel refused {rows} rows")
        return y


def linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """`x @ W.T + bias` for x of shape (rows ≤ KERNEL_ROWS, K), fp32, contiguous, on the CPU
    (`Packed`, checked for this one call)."""
    return Packed(packed, bias, out_features)(x)


# -- which rows go to the kernel on this machine ----------------------------------------------
def _cpu_description() -> str:
    """The CPU model name and feature flags (/proc/cpuinfo): what decides the GEMMs' speed."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() in wanted and name.strip() not in fields:
            fields[name.strip()] = value.strip()
    return " | ".join(fields.get(name, "") for name in wanted)


def _best_seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up: page faults, OpenMP threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _measure(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Time the kernel and MKL over all these (weight, panels) pairs, as one decode step does,
    at each of `TUNE_ROWS` until MKL is clearly faster at `LOSSES_TO_STOP` in a row. A row
    count between two measured ones takes the lower one's verdict; beyond the last, MKL."""
    inputs = {w.shape[1]: torch.randn(KERNEL_ROWS, w.shape[1]) for w, _ in layers}
    timings, losses = [], 0
    with torch.no_grad():
        for rows in TUNE_ROWS:

            def mkl(rows: int = rows) -> None:
                for weight, _ in layers:
                    torch.nn.functional.linear(inputs[weight.shape[1]][:rows], weight)

            def ours(rows: int = rows) -> None:
                for weight, panels in layers:
                    linear(inputs[weight.shape[1]][:rows], panels, None, weight.shape[0])

            mkl_s, ours_s = _best_seconds(mkl), _best_seconds(ours)
            kernel = ours_s <= CLEAR_LOSS * mkl_s
            timings.append(
                {"rows": rows, "mkl_ms": mkl_s * 1000, "ours_ms": ours_s * 1000, "kernel": kernel}
            )
            losses = 0 if kernel else losses + 1
            if losses == LOSSES_TO_STOP:
                break
    rows = set()
    for timing, following in zip(timings, [*timings[1:], None], strict=True):
        end = following["rows"] if following else timing["rows"] + 1
        if timing["kernel"]:
            rows.update(range(timing["rows"], end))
    return {"kernel_rows": ranges(rows), "timings": timings}


def ranges(rows: set[int] | frozenset[int]) -> list[list[int]]:
    """Row counts as inclusive ranges: {1, 4, 5, 6} → [[1, 1], [4, 6]]."""
    out: list[list[int]] = []
    for r in sorted(rows):
        if out and out[-1][1] == r - 1:
            out[-1][1] = r
        else:
            out.append([r, r])
    return out


def describe(rows: frozenset[int]) -> str:
    """ "1, 4-23 rows" for logs."""
    if not rows:
        return "no row count"
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges(rows)]
    return ", ".join(parts) + " rows"


def _override() -> frozenset[int] | None:
    value = os.environ.get(MAX_ROWS_ENV)
    if value is None or value.strip() == "":
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if not 0 <= limit <= KERNEL_ROWS:
        raise UsageError(
            f"{MAX_ROWS_ENV}={value!r} is not a row count",
            hint=f"set it to a whole number from 0 (never our kernel) to {KERNEL_ROWS}, or unset "
            "it to let tuneforge measure this machine",
        )
    return frozenset(range(1, limit + 1))


def _sample(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> list:
    """The layers timed: the first of each weight shape, then the others in order, until
    `TUNE_BYTES`."""
    shapes: set[tuple[int, ...]] = set()
    first, rest = [], []
    for weight, panels in layers:
        (rest if tuple(weight.shape) in shapes else first).append((weight, panels))
        shapes.add(tuple(weight.shape))
    sample, size = [], 0
    for weight, panels in [*first, *rest]:
        if size >= TUNE_BYTES:
            break
        sample.append((weight, panels))
        size += weight.numel() * weight.element_size()
    return sample


def kernel_row_counts(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> frozenset[int]:
    """The row counts (of 1-256) at which these (weight, panels) pairs should run on our kernel
    rather than MKL on this machine: 1 to `TUNEFORGE_KERNEL_MAX_ROWS` if that is set, else
    measured once (12 s for a 135M model on our AMD EPYC) and cached under
    `paths.kernels_dir()`. Empty when the kernel is not available or never beats MKL."""
    override = _override()
    if override is not None:
        return override
    library = _library()
    if library is None or not layers:
        return frozenset()
    sample = _sample(layers)
    size = sum(w.numel() * w.element_size() for w, _ in sample)
    machine = {
        "cpu": _cpu_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "kernel": Path(library._name).name,
        "shapes": sorted({tuple(w.shape) for w, _ in sample}),
        "weights_mb": round(size / 1e6, 1),
    }
    key = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
    path = kernels_dir() / f"rows-{key}.json"
    try:
        saved = json.loads(path.read_text())["kernel_rows"]
        return frozenset(r for a, b in saved for r in range(int(a), int(b) + 1))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet (or an unreadable file): measure again
    result = _measure(sample)
    rows = frozenset(r for a, b in result["kernel_rows"] for r in range(a, b + 1))
    log.info("our kernel at %s per GEMM, MKL at the others (measured)", describe(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(result | {"machine": machine}, f, indent=2)
    os.replace(tmp, path)
    return rows
