"""`compile: true`: each decoder layer's MLP and norms through `torch.compile`.

Why not our own fused kernels: in a bf16 LoRA step of SmolLM2-135M on a 2-core Xeon with AMX,
matmuls are only a quarter of the time; elementwise work (RMSNorm, SiLU·mul, LoRA's scaling and
adds) and casts are a third (BENCHMARKS.md, "Intel Xeon with AMX"). Inductor fuses exactly those
into a few loops. Measured with `bench/lora_step_anatomy.py` (variants `tuneforge_bf16_once`
and `tuneforge_bf16_compiled`): see BENCHMARKS.md.

Why not the whole layer: packed rows reach our attention function with their example bounds as
a Python list (`models/attention.py`), which dynamo would specialise on, recompiling at every new
packing. The MLP and the norms see only tensors whose length varies, so `dynamic=True` compiles
them once for all lengths. `nn.Module.compile` compiles in place: parameter names, checkpoints
and saved adapters are unchanged.
"""

from __future__ import annotations

import shutil
from typing import Any

PARTS = ("mlp", "input_layernorm", "post_attention_layernorm")


def compiler_missing(device: str) -> str | None:
    """Why torch.compile cannot run here, in words, or None. On CPU inductor builds C++."""
    if device == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "torch.compile on a CPU needs a C++ compiler (apt install g++), or compile=false"
    return None


def compile_layers(model: Any) -> int:
    """Compile the parts of every decoder layer named in PARTS; returns how many layers."""
    import torch._dynamo

    # A graph dynamo cannot compile runs eagerly instead of failing the run.
    torch._dynamo.config.suppress_errors = True
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.get_decoder().layers
    for layer in layers:
        for part in PARTS:
            module = getattr(layer, part, None)
            if module is not None:
                module.compile(dynamic=True)
    return len(layers)
