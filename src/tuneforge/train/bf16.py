"""LoRA under bf16 autocast with each cast done once, not once per consumer.

Under `torch.autocast(dtype=bfloat16)` every linear layer casts its input and its weight to bf16
at every call. In a LoRA model that is wasteful three ways, all measured in the profile of a
SmolLM2-135M step on a 2-core Xeon with AMX (BENCHMARKS.md, "Precision by hardware"), where
`aten::copy_` (the casts) took 17% of the step, more than half the time of the matmuls:

1. The frozen base weights are cast from fp32 to bf16 at every forward. They never change, so
   they are stored in bf16 once: autocast would multiply by exactly these bf16 values.
2. One normed hidden state feeds q, k and v (and gate and up) and each of their LoRA A
   matrices: six casts of the same activations. The RMSNorms before them now return bf16,
   which is what each of those linear layers would cast it to.
3. peft casts a linear's input to the adapter's dtype (fp32) before `lora_A`, and autocast
   casts it back to bf16; that round trip is switched off (`cast_input_dtype_enabled`).

The forward values are the ones plain autocast computes. What differs: the gradient reaching a
norm's output from its consumers is summed in bf16 instead of fp32 (within bf16's rounding; the
bf16-vs-fp32 quickstart in BENCHMARKS.md measures the end result). Only used for SFT with LoRA
where every forward pass runs under autocast.
"""

from __future__ import annotations

from typing import Any

import torch

NORMS_BEFORE_LINEARS = ("input_layernorm", "post_attention_layernorm")


def _emit_bf16(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    if torch.is_autocast_enabled(output.device.type):
        return output.to(torch.bfloat16)
    return output


def cast_once_for_bf16(model: Any) -> int:
    """Prepare a peft LoRA model for bf16 autocast (see the module docstring); returns how many
    frozen base weights it stored in bf16."""
    from peft.tuners.lora import LoraLayer

    stored = 0
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = False
            base = module.get_base_layer()
            weight = getattr(base, "weight", None)
            if isinstance(base, torch.nn.Linear) and not weight.requires_grad:
                base.weight.data = weight.data.to(torch.bfloat16)
                stored += 1
        elif name.endswith(NORMS_BEFORE_LINEARS):
            module.register_forward_hook(_emit_bf16)
    return stored
