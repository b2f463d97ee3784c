"""The serving engine's KV cache: it grows in place, and a new row joins by left-padding.

transformers' `DynamicLayer` appends a decode step's column with `torch.cat`, copying the whole
cache every step (~15-20% of a batch-8 step of the 135M model on our CPU). `GrowingLayer` writes
into a buffer with room to spare instead; `BatchCache` is a `DynamicCache` made of them, used for
models whose every layer attends to the whole context (`full_attention_only`). `left_pad` lines a
new row's cache (or mask) up with the running batch's.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys`/`values` are views of a buffer with room for more columns:
    a decode step writes its column in place, where `DynamicLayer` copies the whole cache
    (`torch.cat`, ~15-20% of a batch-8 step of the 135M model here). The engine may assign
    `keys`/`values` directly (rows joining or leaving); the next update then starts a new buffer
    from them."""

    ROOM = 64  # columns of headroom per (re)allocation: one copy every 64 decode steps

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def _owns(self, new_states: torch.Tensor, length: int) -> bool:
        buffer = self._key_buffer
        return (
            buffer is not None
            and self._value_buffer is not None
            and self.keys.data_ptr() == buffer.data_ptr()
            and self.values.data_ptr() == self._value_buffer.data_ptr()
            and self.keys.shape[:2] == new_states.shape[:2] == buffer.shape[:2]
            and length <= buffer.shape[2]
        )

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.keys.shape[2] if self.keys.numel() else 0
        new = old + key_states.shape[2]
        if not self._owns(key_states, new):
            batch, heads, _, dim = key_states.shape
            keys = key_states.new_empty(batch, heads, new + self.ROOM, dim)
            values = value_states.new_empty(batch, heads, new + self.ROOM, value_states.shape[3])
            if old:
                keys[:, :, :old] = self.keys
                values[:, :, :old] = self.values
            self._key_buffer, self._value_buffer = keys, values
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[:, :, old:new] = key_states
        self._value_buffer[:, :, old:new] = value_states
        self.keys = self._key_buffer[:, :, :new]
        self.values = self._value_buffer[:, :, :new]
        return self.keys, self.values


class BatchCache(DynamicCache):
    """A `DynamicCache` made of `GrowingLayer`s (for models whose every layer attends to the
    whole context; others keep transformers' own cache)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def full_attention_only(config: Any) -> bool:
    """True when transformers would give every layer a plain `DynamicLayer` (no sliding
    windows, no linear attention): then `GrowingLayer` is a drop-in replacement."""
    try:
        from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs

        layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
        return all(DYNAMIC_LAYER_TYPE_MAPPING.get(t) is DynamicLayer for t in layer_types)
    except Exception:  # an unknown architecture: keep transformers' cache
        return False


def left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
