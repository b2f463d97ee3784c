"""Several prompts prefilled in one forward pass, none attending to another (the engine's batched
prefill, `engine.py`).

Why: a CPU prefill is compute-bound, but each forward also reads all the weights and pays the
Python overhead of every layer once; prompts that arrive together share that. Why packed rather
than left-padded: every linear layer then runs on exactly the prompts' tokens (no padding rows),
and no query position is fully masked (each token sees at least itself), so no NaN from an
all-masked softmax can reach a cache that later steps read.

Layout, for pieces 0..k-1 (a piece: the next tokens of one prompt, after the tokens whose KV
cache it brings along — a reused prompt prefix, or its earlier chunks):

- the pieces' new tokens, concatenated: one row of n tokens, position ids continuing each
  piece's own past (so RoPE sees each prompt as if it were alone);
- their pasts, concatenated: the cache holds one past of P columns before the forward;
- an additive mask (1, 1, n, P + n): a token sees its own piece's past and the tokens of its
  own piece up to itself, nothing of any other piece.

Cost: attention over P + n columns per token rather than its own piece's; at chunk sizes of a
few hundred tokens the linear layers dominate. Full-attention models only (every layer sees the
whole context): a sliding window would need its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache


@dataclass
class Piece:
    """The next tokens of one prompt, and the KV cache of the tokens before them: per layer
    (1, kv heads, past tokens, head dim); empty lists when it starts the prompt."""

    ids: list[int]
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def past(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0


@dataclass
class Prefilled:
    """What one packed forward gives back, per piece: the logits after its last token (one row
    each, vocabulary-wide), and its whole KV cache so far (past + new tokens) per layer, as new
    tensors that nothing else writes into."""

    logits: torch.Tensor  # (pieces, vocab)
    keys: list[list[torch.Tensor]]  # [piece][layer]: (1, kv heads, past + new, head dim)
    values: list[list[torch.Tensor]]


def packed_mask(pasts: list[int], lengths: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask (1, 1, Σ lengths, Σ pasts + Σ lengths): 0 where a token may
    look, the dtype's minimum elsewhere (transformers' convention for a ready 4D mask)."""
    piece_of_token = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    piece_of_past = torch.repeat_interleave(torch.arange(len(pasts)), torch.tensor(pasts))
    same_past = piece_of_token[:, None] == piece_of_past[None, :]
    order = torch.arange(len(piece_of_token))
    same_new = (piece_of_token[:, None] == piece_of_token[None, :]) & (
        order[None, :] <= order[:, None]
    )
    allowed = torch.cat([same_past, same_new], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def prefill(model: Any, pieces: list[Piece], *, adapter: str | None = None) -> Prefilled:
    """One forward over all pieces, packed into one row (see the module docstring). `adapter`:
    a peft model's adapter name for the whole row (peft's `adapter_names` is per row, so one
    packed forward serves one adapter)."""
    if not pieces or any(not piece.ids for piece in pieces):
        raise ValueError("every piece needs at least one new token")
    pasts = [piece.past for piece in pieces]
    lengths = [len(piece.ids) for piece in pieces]
    layers = {len(piece.keys) for piece in pieces if piece.keys}
    if len(layers) > 1:
        raise ValueError(f"pieces bring caches of different depths: {sorted(layers)} layers")
    cache = DynamicCache()
    if sum(pasts):
        for layer in range(layers.pop()):
            cache.update(
                torch.cat([piece.keys[layer] for piece in pieces if piece.keys], dim=2),
                torch.cat([piece.values[layer] for piece in pieces if piece.values], dim=2),
                layer,
            )
    ids = torch.tensor([[token for piece in pieces for token in piece.ids]])
    positions = torch.cat(
        [torch.arange(past, past + n) for past, n in zip(pasts, lengths, strict=True)]
    )
    ends = torch.tensor(lengths).cumsum(0)
    dtype = next(model.parameters()).dtype
    inputs: dict[str, Any] = {}
    if adapter is not None:
        inputs["adapter_names"] = [adapter]
    out = model(
        input_ids=ids,
        attention_mask=packed_mask(pasts, lengths, dtype),
        position_ids=positions[None],
        cache=cache,
        use_cache=True,
        logits_to_keep=ends - 1,
        **inputs,
    )
    keys, values = [], []
    column = sum(pasts)  # where the pieces' new columns start in the cache
    for piece, n in zip(pieces, lengths, strict=True):
        new = slice(column, column + n)
        column += n
        layers_out = list(enumerate(out.cache.layers))
        keys.append([_with_past(piece.keys, i, layer.keys[:, :, new]) for i, layer in layers_out])
        values.append(
            [_with_past(piece.values, i, layer.values[:, :, new]) for i, layer in layers_out]
        )
    return Prefilled(out.logits[0], keys, values)


def _with_past(past: list[torch.Tensor], layer: int, new: torch.Tensor) -> torch.Tensor:
    """A piece's whole cache for one layer, as a new tensor (not a view of the packed cache,
    which would keep all of it alive)."""
    return torch.cat([past[layer], new], dim=2) if past else new.clone()
