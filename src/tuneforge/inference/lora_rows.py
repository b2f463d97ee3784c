"""peft's LoRA layers with less Python per call, for the serving engine's mixed-adapter batches.

The engine keeps fine-tuned models as peft adapters on one base model and names each row's
adapter in every forward (`adapter_names`). peft's forward computes, per adapter in the batch,
`result[rows] += lora_B(lora_A(dropout(x[rows]))) * scaling` — the right arithmetic, but through
argument checks, three module calls and list-built indices in each of a model's LoRA layers
(210 in SmolLM2-135M), at every decoding step. `LoraRowsForward` does the same operations in
the same order (so the same numbers, `tests/test_engine.py`) with plain tensor calls: F.linear
with A's and B's weights, the scaling, the add; the whole batch without indexing when every row
has the same adapter. Measured in `bench/lora_decode.py` (BENCHMARKS.md).

Anything else — no `adapter_names`, adapters disabled or merged, training mode, DoRA or another
LoRA variant, a dtype cast — goes to peft's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class LoraRowsForward:
    """Replaces one peft `lora.Linear`'s `forward` (an instance attribute, as `prepack` does)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.peft_forward = type(layer).forward.__get__(layer)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.get("adapter_names")
        if adapter_names is None or len(adapter_names) != len(x):
            return self.peft_forward(x, *args, **kwargs)
        layer = self.layer
        names = {n for n in adapter_names if n != BASE and n in layer.lora_A}
        if not plain(layer, names, x.dtype):
            return self.peft_forward(x, *args, **kwargs)
        kwargs.pop("adapter_names")
        result = layer.base_layer(x, *args, **kwargs)
        for name in names:
            if len(names) == 1 and all(n == name for n in adapter_names):
                return result + delta(layer, name, x)
            rows = [i for i, n in enumerate(adapter_names) if n == name]
            result[rows] += delta(layer, name, x[rows])
        return result


def plain(layer: Any, names: set[str], dtype: torch.dtype) -> bool:
    """Whether peft's forward of this LoRA layer, for these adapters, is `base + delta(…)` for
    each (not merged, not disabled, not training, no DoRA or other variant, weights in `dtype`)."""
    return not (
        layer.training
        or layer.disable_adapters
        or layer.merged
        or any(layer.use_dora.get(n, False) or n in layer.lora_variant for n in names)
        or any(layer.lora_A[n].weight.dtype != dtype for n in names)
    )


def delta(layer: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """What adapter `name` adds to the base layer's output: peft's `lora_B(lora_A(x)) * scaling`
    (dropout is the identity in eval mode; B's bias, peft's `lora_bias`, is scaled too)."""
    b = layer.lora_B[name]
    return lora_delta(x, layer.lora_A[name].weight, b.weight, b.bias, layer.scaling[name])


def lora_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """`delta` on weights already looked up (`decode_step` keeps them per adapter)."""
    return F.linear(F.linear(x, a), b, bias) * scaling


def use_lora_rows(model: torch.nn.Module) -> int:
    """Give every peft LoRA `Linear` of `model` the lean forward (those that have it keep it;
    call again after loading an adapter that adapts other layers). Returns how many got it."""
    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and not isinstance(
            module.__dict__.get("forward"), LoraRowsForward
        ):
            module.forward = LoraRowsForward(module)  # type: ignore[method-assign]
            count += 1
    return count
