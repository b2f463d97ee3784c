"""What a fresh kernels folder costs: SmolLM2-135M-Instruct loaded for inference (packed) twice,
each in its own process, with a new `TUNEFORGE_KERNEL_DIR`. The first load compiles our GEMM
kernel and measures at which row counts it beats MKL; the second reads both back. The difference
is what every fresh `$TUNEFORGE_HOME` paid in the test suite before it shared one folder.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/kernel_measurement.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

LOAD = """
import time
from tuneforge.inference.load import load_for_inference
from tuneforge.models import resolve_model
start = time.perf_counter()
load_for_inference(resolve_model("smollm2-135m-instruct"), packed=True)
print(f"{time.perf_counter() - start:.1f}")
"""


def main() -> None:
    with open("/proc/cpuinfo") as f:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?"
        )
    with tempfile.TemporaryDirectory() as kernels:
        env = os.environ | {"TUNEFORGE_KERNEL_DIR": kernels}
        times = [
            subprocess.run(
                [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=True
            ).stdout.split()[-1]
            for _ in range(2)
        ]
    print(f"cpu={cpu} threads={os.environ.get('TUNEFORGE_THREADS', 'auto')}")
    print(f"first load (compile + measure) {times[0]} s; second load (kept) {times[1]} s")


if __name__ == "__main__":
    main()
