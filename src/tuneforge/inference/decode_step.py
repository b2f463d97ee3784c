"""One decode step of a Llama-family model in plain calls, for the serving engine (`engine.py`).

Why our own rather than transformers' forward (measured, BENCHMARKS.md "A decode step in plain
calls"): once our kernel reads the weights (`prepack.py`), a one-row decode step of SmolLM2-135M
spends as long again outside the matrix products — 211 module calls through `nn.Module.__call__`,
the mask and cache bookkeeping, each projection its own GEMM. `DecodeStep` runs the same
operations in the same order with direct calls (the model's own norms, rotary embedding and
attention function), and computes the projections that read one input in one kernel call — q, k
and v; gate and up — on panels the packed layers share (`prepack.share_panels`: no second copy).
Each output column is computed exactly as before, so the logits are transformers' to the bit
(`tests/test_decode_step.py`), and greedy answers stay those of `generate`.

Where it applies: the architectures whose decoder layer is Llama's (`ARCHITECTURES`), with
every projection packed for our kernel, at the row counts the kernel takes on this machine;
LoRA adapters are added as `lora_rows` adds them (plain LoRA only). Anything else — another
architecture, oneDNN packing, a row count MKL takes, a DoRA adapter, panels changed after it
was built — makes `__call__` return None, and the engine runs transformers' forward instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tuneforge.inference import lora_rows, small_gemm
from tuneforge.inference.kv_cache import full_attention_only
from tuneforge.inference.prepack import kernel_rows, packed_kind, share_panels

log = logging.getLogger(__name__)

# Decoder layers computed as Llama's: pre-norm RMSNorm, rotary q/k, GQA attention, SiLU-gated MLP
ARCHITECTURES = ("llama", "mistral", "qwen2")
_KERNEL_KINDS = ("small_gemm", "small_gemm_bf16w")


class Unsupported(Exception):
    """Why a model has no `DecodeStep`."""


def _lora_type() -> type | None:
    try:
        from peft.tuners.lora import Linear
    except ImportError:
        return None
    return Linear


class _Group:
    """Projections of one layer that read the same input, in one kernel call."""

    def __init__(self, owner: nn.Module, names: tuple[str, ...]) -> None:
        self.owner, self.names = owner, names
        self.linears = [getattr(owner, name) for name in names]  # the packed nn.Linear layers
        if any(packed_kind(linear) not in _KERNEL_KINDS for linear in self.linears):
            raise Unsupported(f"{names} are not all packed for our kernel")
        shared = share_panels(self.linears)
        if shared is None:
            raise Unsupported(f"{names} cannot share one panel tensor")
        self.member_panels = [linear.forward.panels for linear in self.linears]
        self.sizes = [linear.out_features for linear in self.linears]
        self.kernel = small_gemm.Packed(*shared, sum(self.sizes))
        self.loras: list[tuple[Any, slice]] = []  # peft LoRA layers on them, with their columns
        # per adapter: (A, B, B's bias, scaling, columns) of each LoRA layer that has it, read
        # once from peft's module dicts (their lookups are most of a small layer's time)
        self.weights: dict[str, list[tuple[Any, ...]]] = {}

    def refresh(self, lora_type: type | None) -> bool:
        """Read which LoRA layers wrap these projections now; False if anything else does."""
        self.loras, start = [], 0
        self.weights.clear()
        for name, linear, size in zip(self.names, self.linears, self.sizes, strict=True):
            module = getattr(self.owner, name)
            if module is not linear:
                if type(module) is not lora_type or module.base_layer is not linear:
                    return False
                self.loras.append((module, slice(start, start + size)))
            start += size
        return True

    def current(self) -> bool:
        """The layers still read the shared panels (`use_bf16_weights` would give them others)."""
        return all(
            linear.forward.panels is panels
            for linear, panels in zip(self.linears, self.member_panels, strict=True)
        )

    def __call__(
        self, x: torch.Tensor, adapters: list[tuple[str, list[int] | None]]
    ) -> torch.Tensor:
        y = self.kernel(x)
        for name, rows in adapters:
            if name not in self.weights:
                self.weights[name] = [
                    (
                        module.lora_A[name].weight,
                        module.lora_B[name].weight,
                        module.lora_B[name].bias,
                        module.scaling[name],
                        columns,
                    )
                    for module, columns in self.loras
                    if name in module.lora_A
                ]
            part = x if rows is None else x[rows]
            for a, b, bias, scaling, columns in self.weights[name]:
                delta = lora_rows.lora_delta(part, a, b, bias, scaling)
                if rows is None:
                    y[:, columns] += delta
                else:
                    y[rows, columns] += delta
        return y


class _Layer:
    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        norms = (
            getattr(layer, "input_layernorm", None),
            getattr(layer, "post_attention_layernorm", None),
        )
        if (
            hasattr(attn, "q_norm")
            or not hasattr(mlp, "act_fn")
            or not all(_is_rms_norm(n) for n in norms)
        ):
            raise Unsupported(f"{type(layer).__name__} is not laid out as Llama's")
        self.layer, self.mlp = layer, mlp
        self.norm_in, self.norm_post, self.attn, self.act = (
            layer.input_layernorm,
            layer.post_attention_layernorm,
            attn,
            mlp.act_fn,
        )
        self.qkv = _Group(attn, ("q_proj", "k_proj", "v_proj"))
        self.o = _Group(attn, ("o_proj",))
        self.gate_up = _Group(mlp, ("gate_proj", "up_proj"))
        self.down = _Group(mlp, ("down_proj",))
        self.groups = (self.qkv, self.o, self.gate_up, self.down)

    def refresh(self, lora_type: type | None) -> bool:
        """Whether the layer is still made of the modules read at the start (an adapter's
        `modules_to_save` would wrap a norm, say), its projections plain or plain LoRA."""
        layer, mlp = self.layer, self.mlp
        same = (
            layer.input_layernorm is self.norm_in
            and layer.post_attention_layernorm is self.norm_post
            and layer.self_attn is self.attn
            and layer.mlp is mlp
            and mlp.act_fn is self.act
        )
        return same and all(group.refresh(lora_type) for group in self.groups)


def _is_rms_norm(module: Any) -> bool:
    """Llama's RMSNorm (Qwen2's and Mistral's are copies of it): `weight * normalized x`."""
    return type(module).__name__ in {
        f"{a.capitalize()}RMSNorm" for a in ("llama", "mistral", "qwen2")
    }


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' `apply_rotary_pos_emb` for one tensor (Llama's, Mistral's and Qwen2's are
    the same): x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """transformers' Llama RMSNorm on fp32 input, its operations in its order, without the
    module call."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return norm.weight * (x * torch.rsqrt(variance + norm.variance_epsilon))


class DecodeStep:
    """`step(input_ids, position_ids, attention_mask, cache, adapter_names)`: the next-token
    logits (rows, vocabulary) of one decode step, the new keys and values written to `cache`
    (the engine's `BatchCache`); None where it does not apply (see the module docstring).
    Build with `for_model`; call `refresh()` after adapters are loaded or deleted."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        if config.model_type not in ARCHITECTURES:
            raise Unsupported(f"model type {config.model_type!r} is not one of {ARCHITECTURES}")
        if not full_attention_only(config):
            raise Unsupported("some layers do not attend to the whole context")
        if getattr(config, "_attn_implementation", None) != "sdpa":
            raise Unsupported("attention is not transformers' sdpa")
        inner = getattr(model, "model", None)
        if inner is None or not all(
            hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")
        ):
            raise Unsupported(f"{type(model).__name__} is not laid out as LlamaForCausalLM")
        if not _is_rms_norm(inner.norm):
            raise Unsupported(f"the final norm is a {type(inner.norm).__name__}, not Llama's")
        if packed_kind(model.lm_head) not in _KERNEL_KINDS:
            raise Unsupported("the LM head is not packed for our kernel")
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.model, self.inner, self.norm, self.lm_head = model, inner, inner.norm, model.lm_head
        self.steps = 0  # steps it computed (the others ran through transformers' forward)
        self.layers = [_Layer(layer) for layer in inner.layers]
        first = self.layers[0].attn
        self.heads, self.head_dim = config.num_attention_heads, first.head_dim
        self.kv_heads = config.num_key_value_heads
        self.rows = kernel_rows(first.q_proj) & kernel_rows(model.lm_head)
        self.attention: Callable[..., Any] = ALL_ATTENTION_FUNCTIONS["sdpa"]
        self.lora_type = _lora_type()
        self.usable = True
        self.plain: dict[str, bool] = {}  # adapter name → all its layers plain LoRA
        self.refresh()

    @classmethod
    def for_model(cls, model: nn.Module) -> DecodeStep | None:
        """The model's decode step, or None (logged) where transformers' forward must run."""
        try:
            return cls(model)
        except Unsupported as exc:
            log.info("decode steps run through transformers' forward: %s", exc)
        except Exception:  # a layout we did not foresee: never worth failing a request for
            log.warning("decode steps run through transformers' forward", exc_info=True)
        return None

    def refresh(self) -> None:
        """Read the model's modules again: after an adapter is loaded or deleted, or its
        settings changed (scale, merged, disabled). Usable only while the model is made of the
        modules it was built from, with plain or plain-LoRA projections (an adapter's
        `modules_to_save` would put its own copy of a norm or a layer in place)."""
        inner = self.inner
        outer_ok = (
            type(inner.embed_tokens) is nn.Embedding
            and inner.norm is self.norm
            and self.model.lm_head is self.lm_head
            and len(inner.layers) == len(self.layers)
            and all(a is b.layer for a, b in zip(inner.layers, self.layers, strict=False))
        )
        # every layer read again (no short cut), so no layer keeps another state's LoRA list
        layers_ok = [layer.refresh(self.lora_type) for layer in self.layers]
        self.usable = outer_ok and all(layers_ok)
        self.plain.clear()
        loras = [module for layer in self.layers for g in layer.groups for module, _ in g.loras]
        self.has_lora = bool(loras)
        self.adapter_names = {name for module in loras for name in module.lora_A}

    def _adapters(self, names: list[str] | None) -> list[tuple[str, list[int] | None]] | None:
        """[(adapter, its rows or None for all)] for the batch's LoRA rows; None if some
        adapter is not plain LoRA (peft's own forward must run)."""
        if names is None:
            return None if self.has_lora else []  # peft would apply its active adapter
        wanted = {name for name in names if name != lora_rows.BASE}
        if not wanted <= self.adapter_names:
            self.refresh()  # an adapter loaded since (the engine also calls refresh)
            if not self.usable or not wanted <= self.adapter_names:
                return None  # an adapter whose layers this step does not know
        for name in wanted:
            if name not in self.plain:
                self.plain[name] = all(
                    lora_rows.plain(module, {name}, torch.float32)
                    for layer in self.layers
                    for group in layer.groups
                    for module, _ in group.loras
                    if name in module.lora_A
                )
            if not self.plain[name]:
                return None
        if len(wanted) == 1 and len(set(names)) == 1:
            return [(names[0], None)]
        return [(name, [i for i, n in enumerate(names) if n == name]) for name in sorted(wanted)]

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any,
        adapter_names: list[str] | None = None,
    ) -> torch.Tensor | None:
        rows = input_ids.shape[0]
        if (
            not self.usable
            or rows not in self.rows
            or torch.is_grad_enabled()  # packed layers then compute with MKL (`prepack`)
            or self.model.training
            or self.model.config._attn_implementation != "sdpa"
        ):
            return None
        if not all(group.current() for layer in self.layers for group in layer.groups):
            return None
        adapters = self._adapters(adapter_names)
        if adapters is None:
            return None
        dim = self.head_dim
        h = self.inner.embed_tokens(input_ids)  # (rows, hidden)
        cos, sin = self.inner.rotary_emb(h[:, None], position_ids[:, None])
        cos, sin = cos[:, None], sin[:, None]  # (rows, 1, 1, head dim): over every head
        # transformers' sdpa mask for one new token: none when no row has padding (sdpa then
        # takes another path, whose last bits differ), else True where a row may look
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        qk_heads = self.heads + self.kv_heads
        for index, layer in enumerate(self.layers):
            x = _rms_norm(h, layer.norm_in)
            qkv = layer.qkv(x, adapters)
            # q and k rotated in one go: they are adjacent columns, and rotation is per element
            qk = qkv[:, : qk_heads * dim].view(rows, 1, qk_heads, dim).transpose(1, 2)
            qk = _rotate(qk, cos, sin)
            q, k = qk[:, : self.heads], qk[:, self.heads :]
            v = qkv[:, qk_heads * dim :].view(rows, 1, self.kv_heads, dim).transpose(1, 2)
            keys, values = cache.layers[index].update(k, v)
            attended, _ = self.attention(
                layer.attn, q, keys, values, mask, dropout=0.0, scaling=layer.attn.scaling
            )
            h = h + layer.o(attended.reshape(rows, self.heads * dim), adapters)
            x = _rms_norm(h, layer.norm_post)
            gate, up = layer.gate_up(x, adapters).split(layer.gate_up.sizes, dim=-1)
            h = h + layer.down(layer.act(gate) * up, adapters)
        self.steps += 1
        return self.model.lm_head(_rms_norm(h, self.norm))
