"""Estimate training time on this machine from a short calibration step of the chosen model.

We time real steps of *our* training loop (LoRA with the default config, a packed row of the
user's own examples, head at trained positions, backward, AdamW) after one warm-up step, which
pays one-off allocation costs, and extrapolate by token count: the loop's cost is close to linear
in tokens for the sequence lengths fine-tuning data has.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

CALIBRATION_TOKENS = 512  # big enough to reach matmul speed, small enough to take seconds


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


def calibrate_tokens_per_second(
    model_name: str, examples: list[Any], steps: int = 2
) -> tuple[float, int]:
    """Tokens/s of LoRA training steps on a packed row of `examples` (TokenizedExample)."""
    import torch
    from peft import get_peft_model

    from tuneforge.config import TrainConfig
    from tuneforge.models import load_model
    from tuneforge.models.attention import use_varlen_attention
    from tuneforge.train.recipe import forward_sums, group_examples, lora_config, make_micro_batch

    row = group_examples(examples, packing=True, micro_batch_tokens=CALIBRATION_TOKENS)[0]
    size = sum(len(ex.input_ids) for ex in row)
    torch.manual_seed(0)
    model = get_peft_model(load_model(model_name), lora_config(TrainConfig(train_file="-")))
    use_varlen_attention(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mb = make_micro_batch(row)

    def step() -> None:
        loss, _ = forward_sums(model, mb, torch.device("cpu"))
        (loss / max(1, mb.n_trained)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return steps * size / elapsed, size


def estimate_training_time(
    model_name: str, examples: list[Any], token_lengths: list[int], epochs: int, max_seq_len: int
) -> TimeEstimate | None:
    """Seconds to train `epochs` over examples of these token lengths, or None if no data."""
    if not token_lengths or not examples:
        return None
    tokens_per_second, size = calibrate_tokens_per_second(model_name, examples)
    per_epoch = sum(min(n, max_seq_len) for n in token_lengths)
    return TimeEstimate(
        tokens_per_second=tokens_per_second,
        calibration_tokens=size,
        epochs=epochs,
        tokens_per_epoch=per_epoch,
        seconds=epochs * per_epoch / tokens_per_second,
    )
