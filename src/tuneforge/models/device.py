"""Which devices this machine offers, asked of torch when needed (importing torch is slow, so the
CLI does it only for commands that use it)."""

from __future__ import annotations


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
