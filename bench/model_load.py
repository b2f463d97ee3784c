"""How long loading the embedded default model takes: first use (GGUF → safetensors conversion)
and later uses (the cache). Each measurement runs in a fresh process; "load" is the time of
`load_tokenizer` + `load_model` after the Python imports (torch and transformers' modules), which
are reported separately because every transformers program pays them, model or not.

Run:  .venv/bin/python bench/model_load.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch, transformers  # noqa: F401  (imports are timed separately)
# transformers imports its submodules lazily, on first use; touch the ones loading needs so
# that "load" measures reading the model, not importing Python code.
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast
from tuneforge.models import load_model, load_tokenizer
t1 = time.perf_counter()
tokenizer = load_tokenizer("smollm2-135m-instruct")
model = load_model("smollm2-135m-instruct")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def measure(home: str) -> dict[str, float]:
    env = os.environ | {"TUNEFORGE_HOME": home, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    home = tempfile.mkdtemp(prefix="tuneforge-load-bench-")
    first = measure(home)
    later = [measure(home) for _ in range(3)]
    print(f"first use (converts the GGUF): load {first['load_s']:.1f} s")
    for i, m in enumerate(later, 1):
        print(f"cached use {i}: load {m['load_s']:.2f} s (imports {m['import_s']:.1f} s)")
    print(f"cached_load_s_max={max(m['load_s'] for m in later):.2f}")


if __name__ == "__main__":
    main()
