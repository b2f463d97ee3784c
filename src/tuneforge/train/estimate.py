"""Estimate training time on this machine from a short calibration step of the chosen model.

We time real forward+backward+optimizer steps of a LoRA adapter on the model (after one warm-up
step, which pays one-off allocation costs), and extrapolate by token count. Attention cost grows
with sequence length, so we calibrate at the data's typical length, capped to keep this quick.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

CALIBRATION_TOKENS_CAP = 512


@dataclass(frozen=True)
class TimeEstimate:
    tokens_per_second: float
    calibration_tokens: int
    epochs: int
    tokens_per_epoch: int
    seconds: float
    method: str = "lora"
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "seconds": round(self.seconds, 1),
            "tokens_per_second": round(self.tokens_per_second, 1),
        }


def calibrate_tokens_per_second(model: Any, seq_len: int, steps: int = 2) -> float:
    import torch
    from peft import LoraConfig, get_peft_model

    seq_len = max(16, min(seq_len, CALIBRATION_TOKENS_CAP))
    peft_model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=generator)

    def step() -> None:
        out = peft_model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return steps * seq_len / elapsed


def estimate_training_time(
    model_name: str, token_lengths: list[int], epochs: int, max_seq_len: int
) -> TimeEstimate | None:
    """Seconds to train `epochs` over examples of these token lengths, or None if no data."""
    if not token_lengths:
        return None
    import statistics

    from tuneforge.models import load_model

    model = load_model(model_name)
    typical = int(statistics.median(token_lengths))
    tokens_per_second = calibrate_tokens_per_second(model, min(typical, max_seq_len) * 2)
    per_epoch = sum(min(n, max_seq_len) for n in token_lengths)
    return TimeEstimate(
        tokens_per_second=tokens_per_second,
        calibration_tokens=max(16, min(typical * 2, CALIBRATION_TOKENS_CAP)),
        epochs=epochs,
        tokens_per_epoch=per_epoch,
        seconds=epochs * per_epoch / tokens_per_second,
    )
