"""Faster fp32 linear layers for inference on x86 CPUs: weights packed once for a faster GEMM.

Why this exists (measured, `bench/small_gemm.py`, `bench/serve_throughput.py` and BENCHMARKS.md
"Serving throughput"): PyTorch's CPU `nn.Linear` calls MKL's sgemm. On our AMD EPYC (AVX2) MKL's
kernels for the few-row products of decoding are slow: 8 rows cost ~2× one row, where reading
the weights (the real bound) costs the same for both. Two packed forms, best first:

- our AVX2 kernel (`small_gemm.py`), weights in 16-column panels, at the row counts where it
  beats MKL on this machine (`small_gemm.kernel_row_counts`: measured once and cached; on our
  AMD EPYC up to 128 rows, 1.6-1.8× oneDNN at 1-8; on an Intel Xeon with AVX-512 at 1 and 4-16
  rows, where MKL's few-row GEMMs are good). The other row counts (prefill, large batches) go
  to MKL with the original weight (there oneDNN would be ~10% faster, at the cost of a third
  copy);
- where the kernel cannot be built: oneDNN's matmul on a weight reordered once into its blocked
  layout (`torch.ops.mkldnn._reorder_linear_weight`, the kernel torch.compile's CPU "freezing"
  uses), at every row count: 8 rows at ~1.2-1.5× one row, never slower than MKL.

The results differ from MKL's in the last bits (|Δ| ~1e-5 on a logit), as any other GEMM's
would; greedy answers are the same except where two tokens tie to that precision.

bf16 prefill (`tuneforge serve --prefill-precision bf16`, on CPUs with AMX-BF16 or AVX512-BF16):
`add_bf16_copies` keeps a third, bf16 copy of each packed weight (half an fp32 copy's size),
and inside `bf16_linears()` those layers multiply in bf16 (input rounded to bf16, fp32 result):
2-2.5× faster matrix products where the CPU has bf16 units, a 256-token prefill forward 1.5-1.75×
faster on an AMD EPYC with AVX512-BF16; decode steps stay in fp32. The KV cache it leaves is the
bf16-rounded one, so answers can differ from fp32's (measured in BENCHMARKS.md).

bf16 weights (`tuneforge serve --weight-precision`, `use_bf16_weights`): our kernel's panels
hold the weights in bf16 and it widens them to fp32 in registers (`small_gemm.c`), so a decode
step reads half the bytes: 1.5-2.2× faster at 1-8 rows than the fp32 kernel on an AMD EPYC with
AVX-512 (BENCHMARKS.md), at the same row counts as before (MKL at the others). The weights
themselves are rounded to bf16 first, so every path computes with the same model: the one its
bf16 checkpoint would be. For a model whose weights are bf16 values already (a bf16 checkpoint
loaded in fp32, most of the hub's), nothing is rounded and the kernel adds the same products in
the same order as the fp32 one: results are the fp32 kernel's to the bit — what `auto`
(`only_exact=True`) takes. Otherwise answers can differ from fp32's (opt-in).

Cost: each packed weight is a second copy (the original stays, for peft, `state_dict` and the
MKL path), so a packed model holds its linear weights twice. Only for frozen weights: the packed
copy does not follow later changes to `weight` (merging, loading a state dict) — use it on
models that only generate. Where autograd is recording (training), a packed layer falls back to
`F.linear`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tuneforge.inference import small_gemm


def can_prepack(model: nn.Module) -> bool:
    """fp32 on CPU with the oneDNN ops in this torch build."""
    try:
        parameter = next(model.parameters())
    except StopIteration:
        return False
    return (
        parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


_bf16 = threading.local()  # `bf16_linears()`: on for this thread's forward passes


@contextmanager
def bf16_linears(on: bool = True) -> Iterator[None]:
    """Within: packed layers that have a bf16 copy (`add_bf16_copies`) multiply in bf16."""
    before = getattr(_bf16, "on", False)
    _bf16.on = on
    try:
        yield
    finally:
        _bf16.on = before


class _PackedForward:
    """Replaces one `nn.Linear` instance's `forward`; the module stays an `nn.Linear` (so peft
    can still wrap it with LoRA layers, which call it as their base layer)."""

    def __init__(self, linear: nn.Linear, kernel: bool) -> None:
        self.kernel_rows: frozenset[int] = frozenset()  # others go to MKL (`prepack_linears`)
        # The live parameters, for the autograd fallback.
        self.weight, self.live_bias = linear.weight, linear.bias
        weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.out_features = weight.shape[0]
        self.panels = self.panel_bias = self.packed = None
        self.bf16_weight: torch.Tensor | None = None  # `add_bf16_copies`
        # `share_panels`: (panels, bias) of the group whose shared tensor `panels` is a view of
        self.shared: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if kernel:
            self.panels, self.panel_bias = small_gemm.pack(weight), small_gemm.pad_bias(self.bias)
        else:
            # The batch-size hint only tunes the layout; any row count works with it.
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        training = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if training or x.dtype != torch.float32:
            # Neither packed op has a backward (anything that trains gets the plain layer), and
            # both take fp32 only.
            return nn.functional.linear(x, self.weight, self.live_bias)
        rows = x.reshape(-1, x.shape[-1])
        if not rows.is_contiguous():
            rows = rows.contiguous()
        if self.bf16_weight is not None and getattr(_bf16, "on", False):
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            y = nn.functional.linear(rows.to(torch.bfloat16), self.bf16_weight, bias).float()
        elif self.panels is None:
            y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        elif rows.shape[0] in self.kernel_rows:
            y = small_gemm.linear(rows, self.panels, self.panel_bias, self.out_features)
        else:
            y = nn.functional.linear(rows, self.weight.detach(), self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    @property
    def kind(self) -> str:
        if self.panels is None:
            return "oneDNN"
        return "small_gemm_bf16w" if self.panels.dtype == torch.bfloat16 else "small_gemm"


def kernel_rows(module: Any) -> frozenset[int]:
    """The row counts at which a packed layer runs our kernel (empty: never, or not packed)."""
    forward = getattr(module, "__dict__", {}).get("forward")
    return forward.kernel_rows if isinstance(forward, _PackedForward) else frozenset()


def _is_adapter_layer(name: str) -> bool:
    """peft's LoRA layers: `…q_proj.lora_A.default`, `…lora_B.default`."""
    return any(part.startswith("lora_") for part in name.split("."))


def prepack_linears(
    model: nn.Module, *, kernel: bool | None = None, kernel_rows: Collection[int] | None = None
) -> int:
    """Pack every plain `nn.Linear` of a frozen fp32 CPU model; returns how many were packed
    (0 when `can_prepack` says no). Call before loading LoRA adapters: peft then wraps the
    packed layers, and its own small A/B layers stay as they are. `kernel`: use our AVX2
    kernel (default: when it is available and beats MKL at some row count here), else oneDNN.
    `kernel_rows`: at which row counts the kernel runs, MKL at the others (default:
    `small_gemm.kernel_row_counts`, measured on this model's weights)."""
    if kernel_rows is not None and not set(kernel_rows) <= set(
        range(1, small_gemm.KERNEL_ROWS + 1)
    ):
        raise ValueError(f"kernel_rows must be row counts from 1 to {small_gemm.KERNEL_ROWS}")
    if not can_prepack(model):
        return 0
    automatic = kernel is None
    if kernel is None:
        kernel = small_gemm.available()
    named = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and not isinstance(module.forward, _PackedForward)
    ]
    linears = [module for _, module in named]
    forwards = [_PackedForward(module, kernel) for module in linears]
    if kernel and kernel_rows is None:
        # Measured on the model's own weights, not LoRA's small A/B layers: a base model and its
        # fine-tunes share one measurement (the cache is keyed by the measured shapes).
        pairs = [
            (forward.weight.detach(), forward.panels)
            for (name, _), forward in zip(named, forwards, strict=True)
            if not _is_adapter_layer(name)
        ]
        kernel_rows = small_gemm.kernel_row_counts(pairs)
        if not kernel_rows and automatic:  # never faster than MKL here: oneDNN instead
            forwards = [_PackedForward(module, kernel=False) for module in linears]
    for forward in forwards:
        forward.kernel_rows = frozenset(kernel_rows or ())
    for module, forward in zip(linears, forwards, strict=True):
        module.forward = forward  # type: ignore[method-assign]
    return len(linears)


def add_bf16_copies(model: nn.Module, *, skip: Collection[nn.Module] = ()) -> int:
    """Give every packed layer of `model` but those in `skip` a bf16 copy of its weight, used
    inside `bf16_linears()`; returns how many got one."""
    count = 0
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, _PackedForward) and not any(module is m for m in skip):
            forward.bf16_weight = forward.weight.detach().to(torch.bfloat16)
            count += 1
    return count


def is_bf16_exact(weight: torch.Tensor) -> bool:
    """Whether every value of `weight` is a bf16 value (rounding it to bf16 changes nothing)."""
    # The low 16 bits of each fp32 are zero. Read as 16-bit halves (a view; `bits & 0xFFFF`
    # would allocate a copy the size of the weight): on a little-endian CPU the low half of
    # each value comes first.
    halves = weight.detach().contiguous().view(torch.int16)
    low = halves[..., 0::2] if sys.byteorder == "little" else halves[..., 1::2]
    return not bool(low.any())


def use_bf16_weights(model: nn.Module, *, only_exact: bool = False) -> int:
    """Give every layer of `model` packed for our kernel bf16 panels (`small_gemm.pack_bf16`,
    in place of the fp32 ones); returns how many layers changed. Their weights are first
    rounded to bf16 in place, so every other path (MKL at the row counts the kernel does not
    take, a bf16 prefill copy, peft's base layer) computes with the same weights: the linear
    layers' weights as a bf16 checkpoint would hold them (a tied LM head rounds the input
    embeddings with it; norms, biases and untied embeddings stay fp32). `only_exact`: only
    when every one of those weights is a bf16 value already (`is_bf16_exact`), so nothing is
    rounded or written; else 0 and nothing changes. Layers packed for oneDNN (the kernel not
    available) keep fp32."""
    forwards = [
        forward
        for module in model.modules()
        if isinstance(forward := module.__dict__.get("forward"), _PackedForward)
        and forward.panels is not None
    ]
    if only_exact and not all(is_bf16_exact(forward.weight) for forward in forwards):
        return 0
    with torch.no_grad():
        for forward in forwards:
            weight = forward.weight.detach()
            if not only_exact:  # exact weights are not written (they may be shared or mapped)
                weight.copy_(weight.to(torch.bfloat16))
            forward.panels, forward.shared = small_gemm.pack_bf16(weight), None
    return len(forwards)


def share_panels(linears: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One panel tensor for linear layers that read the same input (q, k and v; gate and up), so
    our kernel computes them in one call (`inference/decode_step.py`): their panels concatenated,
    and each layer's own panels then a view of it (no second copy). Every output column is
    computed as before, so the results are the same to the bit. Returns (panels, padded bias or
    None); None when they cannot share: not all packed for our kernel, different input sizes or
    weight dtypes, or a layer before the last whose outputs do not fill its last panel. Call
    again after `use_bf16_weights` (it gives the layers new panels)."""
    forwards = [module.__dict__.get("forward") for module in linears]
    if not all(isinstance(f, _PackedForward) and f.panels is not None for f in forwards):
        return None
    panels = [f.panels for f in forwards]
    if len({(p.shape[1], p.dtype) for p in panels}) != 1 or any(
        f.out_features % small_gemm.PANEL for f in forwards[:-1]
    ):
        return None
    if len(forwards) == 1:
        return forwards[0].panels, forwards[0].panel_bias
    if forwards[0].shared is not None and all(f.shared is forwards[0].shared for f in forwards):
        return forwards[0].shared  # shared already (a second decode step for the same model)
    shared = torch.cat(panels)
    bias = None
    if any(f.bias is not None for f in forwards):
        bias = torch.cat(
            [
                f.panel_bias if f.panel_bias is not None else torch.zeros(p.shape[0] * p.shape[2])
                for f, p in zip(forwards, panels, strict=True)
            ]
        )
    start, group = 0, (shared, bias)
    for forward in forwards:
        end = start + forward.panels.shape[0]
        forward.panels = shared[start:end]
        forward.shared = group  # one object for the group: how a second call knows it
        start = end
    return group


WEIGHT_PRECISIONS = ("fp32", "bf16", "auto")  # `--weight-precision`


def apply_weight_precision(model: nn.Module, precision: str) -> str | None:
    """`--weight-precision` on a packed model: "auto" gives the kernel bf16 panels where the
    weights are bf16 values already, "bf16" also rounds them first, "fp32" leaves fp32 panels.
    Returns "exact" or "rounded" when the kernel now reads bf16 weights, else None."""
    if precision not in WEIGHT_PRECISIONS:
        raise ValueError(f"weight precision {precision!r} is not one of {WEIGHT_PRECISIONS}")
    if precision == "fp32":
        return None
    if use_bf16_weights(model, only_exact=True):
        return "exact"
    if precision == "bf16" and use_bf16_weights(model):
        return "rounded"
    return None


def unpack_linears(model: nn.Module) -> None:
    """Undo `prepack_linears` (the modules use their `weight` again)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), _PackedForward):
            del module.forward


def packed_kind(module: Any) -> str | None:
    """Which packed form a layer uses: "small_gemm" (our kernel), "small_gemm_bf16w" (our kernel
    on bf16 weights) or "oneDNN"; None when it is not packed."""
    forward = getattr(module, "__dict__", {}).get("forward")
    return forward.kind if isinstance(forward, _PackedForward) else None


def is_packed(module: Any) -> bool:
    return packed_kind(module) is not None
