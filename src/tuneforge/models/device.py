"""Which devices this machine offers, asked of torch when needed (importing torch is slow, so the
CLI does it only for commands that use it), and how many CPU threads to use right now."""

from __future__ import annotations

# A CUDA (or ROCm) GPU on Linux shows its driver's files: NVIDIA's control device and /proc
# entry (inside containers given a GPU too), AMD's /dev/kfd, WSL2's /dev/dxg.
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def cuda_available() -> bool:
    """Whether torch can use a CUDA GPU. On Linux with no GPU driver file the answer is no
    without importing torch: 2-4 s that `config validate` need not pay on a CPU machine."""
    import os
    import sys

    if sys.platform == "linux" and not any(os.path.exists(p) for p in GPU_DRIVER_FILES):
        return False
    import torch

    return torch.cuda.is_available()


# -- CPU threads ------------------------------------------------------------------------------
# torch uses every core by default. When another process already keeps a core busy, its OpenMP
# threads wait on each other behind it: on our 2-core machines, generating 40 tokens took 47.5 s
# with 2 threads next to a busy process and 7.3 s with 1 (BENCHMARKS.md, "CPU threads").


def free_cores(sample_seconds: float = 0.3) -> float | None:
    """How many of this process's CPUs are idle right now, from /proc/stat over a short sample;
    None where /proc/stat cannot be read (not Linux)."""
    import os
    import time

    def snapshot() -> list[int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        return [int(x) for x in fields]

    first = snapshot()
    if first is None:
        return None
    time.sleep(sample_seconds)
    second = snapshot()
    if second is None:
        return None
    delta = [b - a for a, b in zip(first, second, strict=False)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal
    if total <= 0:
        return None
    idle = (delta[3] + delta[4]) / total  # idle + iowait
    machine = os.cpu_count() or 1
    return idle * machine


def choose_threads() -> tuple[int, str]:
    """(threads for torch, why): `TUNEFORGE_THREADS` when set, else the cores idle right now
    (at least 1, at most those this process may use)."""
    import os

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = usable or 1
    if os.environ.get("TUNEFORGE_THREADS"):
        try:
            wanted = int(os.environ["TUNEFORGE_THREADS"])
        except ValueError:
            from tuneforge.errors import UsageError

            raise UsageError(
                f"TUNEFORGE_THREADS={os.environ['TUNEFORGE_THREADS']!r} is not a number",
                hint="set it to a thread count such as 2, or unset it",
            ) from None
        return max(1, wanted), "TUNEFORGE_THREADS"
    free = free_cores()
    if free is None:
        return usable, "all cores"
    threads = max(1, min(usable, round(free)))
    if threads < usable:
        return threads, f"{usable - threads} of {usable} cores busy with other work"
    return threads, "all cores"
