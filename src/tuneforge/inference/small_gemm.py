"""Our few-row fp32 GEMM (`small_gemm.c`): compiled on first use, loaded with ctypes.

Why our own kernel (measured, `bench/small_gemm.py`, BENCHMARKS.md "Serving throughput"): a
decode step of a batch of requests multiplies 1-32 rows by every weight, so it is bound by
reading the weights. On our 2-core AMD EPYC (AVX2), at 8 rows, MKL reads them at ~5 GB/s and
oneDNN at ~8 of the ~20 GB/s the memory gives; this kernel reads them at ~13 GB/s (~17 at 1-4
rows): 1.6-1.8× oneDNN from 1 to 8 rows, 1.1-1.2× at 16-32. At 64-128 rows it is still at least
as fast as MKL (oneDNN is faster there); beyond `MAX_ROWS` (prefill of long prompts) callers use
MKL (`nn.Linear`).

Where it cannot be built — not x86-64 Linux, no AVX2/FMA, no C compiler, or
`TUNEFORGE_NO_KERNEL=1` — `available()` is False and callers use oneDNN (`prepack.py`). The
shared library is cached under `$TUNEFORGE_HOME/kernels`, named by a hash of the source and the
compiler command, and written atomically (temp file + rename), so concurrent first uses are safe.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from tuneforge.paths import tuneforge_home

log = logging.getLogger("tuneforge.kernels")

SOURCE = Path(__file__).with_name("small_gemm.c")
PANEL = 16  # output columns per panel (small_gemm.c)
# More rows go to MKL (nn.Linear): as fast there (bench/small_gemm.py). The kernel takes 256.
MAX_ROWS = 128
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
    target = tuneforge_home() / "kernels" / f"small_gemm-{key.hexdigest()[:16]}.so"
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


def pad_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None:
        return None
    padded = bias.new_zeros(-(-bias.shape[0] // PANEL) * PANEL)
    padded[: bias.shape[0]] = bias
    return padded


def linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """`x @ W.T + bias` for x of shape (rows ≤ MAX_ROWS, K), fp32, contiguous, on the CPU."""
    library = _library()
    assert library is not None, "check available() first"
    rows, k = x.shape
    if not (1 <= rows <= 256 and x.dtype == torch.float32 and x.is_contiguous()):
        raise ValueError(f"small_gemm.linear needs 1-256 contiguous fp32 rows, got {x.shape}")
    # The C code trusts these sizes: a mismatch would read past the end of a tensor.
    panels = -(-out_features // PANEL)
    if packed.shape != (panels, k, PANEL) or packed.dtype != torch.float32:
        raise ValueError(f"packed weight {tuple(packed.shape)} is not ({panels}, {k}, {PANEL})")
    if not packed.is_contiguous() or (bias is not None and bias.shape != (panels * PANEL,)):
        raise ValueError("packed weight must be contiguous and bias padded (pad_bias)")
    y = x.new_empty(rows, out_features)
    status = library.tuneforge_small_gemm(
        rows,
        out_features,
        k,
        x.data_ptr(),
        packed.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        torch.get_num_threads(),
    )
    if status != 0:
        raise ValueError(f"small_gemm kernel refused {rows} rows")
    return y
