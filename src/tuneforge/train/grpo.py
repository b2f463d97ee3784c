"""GRPO (Shao et al. 2024, DeepSeekMath), as TRL's GRPOTrainer computes it: the pieces the
recipe's `grpo_step` is made of.

For each prompt, G answers are sampled from the current model and scored by the grader. Each
answer's advantage is its reward against its own group:

    A_i = (r_i − mean(r)) / (std(r) + 1e-4)    (std Bessel-corrected: TRL's scale_rewards="group")

and the loss per answer token is the clipped policy-gradient objective, plus an optional KL term
to the reference (the model the run started from):

    ρ = exp(log π(o_t) − log π_old(o_t))
    ℓ_t = −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β·[exp(log π_ref − log π) − (log π_ref − log π) − 1]

With one update per batch of samples (TRL's default num_iterations=1), π_old is π itself,
detached, so ρ = 1 and nothing is clipped; the clip matters once samples are reused. The
token losses are averaged as `loss_type` says (`dapo`, TRL's default: over every answer token of
the step; `grpo`: per answer, then over answers; `dr_grpo`: over answers × max_completion_tokens;
`bnpo`: over the answer tokens of the micro-batch, here = the step's). With `grpo` and one
update the loss *value* is 0 while its gradient is not — the "why is my loss 0" of GRPO, which
is why rewards, not the loss, show progress.

A group whose answers all score the same has A = 0 everywhere: it teaches nothing.
`frac_reward_zero_std` is the share of such groups; a run whose base model gives such groups
only is stopped before training (see the recipe's preflight).
"""

from __future__ import annotations

import torch

ADVANTAGE_EPS = 1e-4  # TRL's: keeps A finite when a group's rewards barely differ


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) rewards → (P, G) advantages, normalised within each group of G."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token loss ℓ_t (same shape as `logps`: one entry per answer token, `advantages`
    broadcast to its answer), whether the token was clipped, and the per-token KL (or None)."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    is_clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | (
        (ratio > 1 + epsilon) & (advantages > 0)
    )
    kl = None
    if beta and ref_logps is not None:
        delta = (ref_logps - logps).clamp(-20, 20)  # no overflow of exp (NaN-KL reports)
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return loss, is_clipped, kl


def answer_weights(lengths: list[int], loss_type: str, max_completion_tokens: int) -> list[float]:
    """The weight of each answer's tokens in the step's loss, so that Σ_t w·ℓ_t is TRL's
    aggregate for `loss_type` (and micro-batches can be backpropagated one at a time)."""
    n = len(lengths)
    if loss_type == "grpo":
        return [1.0 / (max(1, length) * n) for length in lengths]
    if loss_type == "dr_grpo":
        return [1.0 / (n * max_completion_tokens)] * n
    total = max(1, sum(lengths))  # dapo; bnpo equals it with the whole step as one batch
    return [1.0 / total] * n
