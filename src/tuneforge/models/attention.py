"""Packed-sequence attention that is really isolated per example, on any device.

Packing concatenates several examples into one row. A dense block-diagonal mask would isolate
them but pays attention FLOPs for the whole row (L² instead of Σ lᵢ²) and falls off SDPA's fast
causal kernels. Instead we register an attention function with transformers that runs causal SDPA
on each example's slice: exact isolation, exactly Σ lᵢ² work, no mask tensor. Positions restart at
0 for every example (position_ids), so RoPE sees each example as if it were alone.

The example boundaries reach the attention function as the `segment_bounds` keyword, which
transformers passes from the model's forward through every layer to the attention call.
Without it (generation, ordinary batches) the function behaves exactly like transformers' SDPA.

transformers builds no attention mask at all for an attention implementation it has no mask
function for ("custom attention needs no mask"), which drops the padding of a left-padded batch
(a GRPO group sampled by the trainer's model: every padded row then attended to its padding, 0.3
to 1.0 off in its logits on SmolLM2). So the name is registered with a mask function too:
`varlen_mask`, SDPA's mask, except that a row with no padding mask and no past (one packed
training row) gets none and the attention function keeps the segments apart.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "tuneforge_varlen"
_registered = False


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, heads, seq, head_dim)
    key: torch.Tensor,  # (batch, kv_heads, seq, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    bounds: list[int] | None = kwargs.get("segment_bounds")
    if bounds is None or attention_mask is not None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        # Grouped-query attention: expand K/V once for the row. (SDPA's enable_gqa takes the
        # slow math path on CPU.)
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout if module.training else 0.0,
                is_causal=True,
                scale=scaling,
            )
        )
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(
    *, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor | None:
    """The mask transformers builds for `tuneforge_varlen`: none for a forward without padding
    or past (training's packed rows, where a mask built from the restarting position ids would
    be a dense block-diagonal one: L² work, and `varlen_sdpa_forward` would fall back to SDPA
    with it), else SDPA's own (padding, a cache)."""
    if attention_mask is None and q_length == kv_length:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(
        q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs
    )


def register() -> str:
    """Make `tuneforge_varlen` a valid attn_implementation; returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, varlen_sdpa_forward)
        AttentionMaskInterface.register(NAME, varlen_mask)
        _registered = True
    return NAME


def use_varlen_attention(model: Any) -> None:
    """Switch a loaded model (or a peft wrapper of it) to the packed-sequence attention."""
    name = register()
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    target.set_attn_implementation(name)
