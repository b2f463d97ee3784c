"""Direct Preference Optimization: the pieces the recipe's DPO step is made of.

DPO (Rafailov et al. 2023) trains on pairs (prompt x, preferred y⁺, non-preferred y⁻) against a
frozen reference π_ref — the model the run starts from:

    Δ    = [log π(y⁺|x) − log π_ref(y⁺|x)] − [log π(y⁻|x) − log π_ref(y⁻|x)]
    loss = mean over pairs of −log σ(β·Δ)            (the "sigmoid" loss, TRL's default)

where log π(y|x) is the *sum* of the answer's token log-probabilities (TRL's definition). At
step 0 the policy is the reference, so Δ = 0 and the loss is ln 2 exactly.

`dpo_sft_weight` w > 0 adds the preferred answer's negative log-likelihood per token,
loss = −log σ(βΔ) + w·(−log π(y⁺|x) / |y⁺|): TRL's `loss_type=["sigmoid", "sft"]` with
`loss_weights=[1, w]` (RPO, Pang et al. 2024, w = 1). Plain DPO only ranks the pair: it can push
the other answer down without making the preferred one likely enough to be what the model says;
the NLL term raises the preferred answer itself. `nll_loss` (that per-token NLL) is logged always.

The reference never needs a second model in memory: its log-probabilities are computed once,
before the first step, for exactly the pairs the run will see (`reference_logps`) — for LoRA from
the base with the adapter disabled, for a full fine-tune or a run started from another run's
weights from the model as loaded, which is what a frozen copy would hold. They are saved in the
run directory (`reference_logps.pt`), so a resumed run uses the very same numbers.

Logged under TRL's names: `rewards/chosen` = mean β(log π − log π_ref)(y⁺), `rewards/rejected`,
`rewards/margins` (their difference), `rewards/accuracies` = share of pairs whose chosen reward is
strictly above the rejected one (TRL's strict `>`: 0.0 at step 0, where every pair ties),
`logps/chosen`, `logps/rejected` (mean summed log-probs). `preference_accuracy` (ours) is the share
of pairs where the policy itself gives the preferred answer the higher log-probability, without
the reference: what "the model prefers the preferred answer" means to a person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.train.plan import TokenizedPair

LN2 = math.log(2.0)
REFERENCE_FILE = "reference_logps.pt"
# The sums the step/evaluation accumulate, in this order (one float64 vector, all-reduced as one).
SUM_KEYS = (
    "loss",
    "chosen_rewards",
    "rejected_rewards",
    "reward_accuracies",
    "chosen_logps",
    "rejected_logps",
    "preference_accuracies",
    "chosen_correct",
    "nll",
)


@dataclass
class PairBatch:
    """Pairs flattened into one packed row as [chosen₀, rejected₀, chosen₁, rejected₁, …]."""

    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L)
    bounds: list[int]
    positions: torch.Tensor  # (T,) row positions whose next token is trained
    targets: torch.Tensor  # (T,)
    sequence: torch.Tensor  # (T,) which sequence (2·pair + 0 chosen / 1 rejected) each belongs to
    n_pairs: int
    chosen_tokens: torch.Tensor  # (n_pairs,) trained tokens of each preferred answer


def make_pair_batch(pairs: list[TokenizedPair]) -> PairBatch:
    from tuneforge.train.recipe import make_micro_batch

    sequences = [ex for pair in pairs for ex in (pair.chosen, pair.rejected)]
    mb = make_micro_batch(sequences)
    bounds = torch.tensor(mb.bounds[1:])
    # A trained position belongs to the sequence whose end bound is the first above it.
    sequence = torch.searchsorted(bounds, mb.positions, right=True)
    chosen_tokens = torch.tensor([pair.chosen.n_trained for pair in pairs], dtype=torch.float32)
    return PairBatch(
        mb.input_ids,
        mb.position_ids,
        mb.bounds,
        mb.positions,
        mb.targets,
        sequence,
        len(pairs),
        chosen_tokens,
    )


def sequence_logps(
    model: Any, batch: PairBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probabilities, shape (n_pairs, 2) [chosen, rejected], and the number
    of chosen-answer tokens the model predicts by argmax, per pair (n_pairs,)."""
    from tuneforge.train.recipe import causal_lm

    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=batch.input_ids.to(device),
        position_ids=batch.position_ids.to(device),
        segment_bounds=batch.bounds,
        use_cache=False,
    ).last_hidden_state[0]
    logits = lm.get_output_embeddings()(hidden[batch.positions.to(device)]).float()
    targets = batch.targets.to(device)
    token_logps = -F.cross_entropy(logits, targets, reduction="none")
    sequence = batch.sequence.to(device)
    sums = torch.zeros(2 * batch.n_pairs, device=device, dtype=token_logps.dtype)
    sums = sums.index_add(0, sequence, token_logps)
    correct = (logits.argmax(dim=-1) == targets).float()
    chosen_correct = torch.zeros(2 * batch.n_pairs, device=device).index_add(0, sequence, correct)
    return sums.view(batch.n_pairs, 2), chosen_correct.view(batch.n_pairs, 2)[:, 0].detach()


@dataclass
class PairLosses:
    """One micro-batch's per-pair losses and what is logged of them, each (n_pairs,)."""

    losses: torch.Tensor  # −log σ(βΔ) + w·nll: what is trained
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    nll: torch.Tensor  # −log π(y⁺|x) / |y⁺|


def dpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    beta: float,
    chosen_tokens: torch.Tensor,
    sft_weight: float = 0.0,
) -> PairLosses:
    """Per-pair sigmoid DPO loss (plus `sft_weight` × the preferred answer's per-token NLL) and
    the implicit rewards β(log π − log π_ref), chosen and rejected. `policy` and `reference`
    are (n_pairs, 2) summed log-probs [chosen, rejected]; `chosen_tokens` the preferred answers'
    lengths."""
    rewards = beta * (policy - reference.to(policy))
    margin = rewards[:, 0] - rewards[:, 1]  # β·Δ
    nll = -policy[:, 0] / chosen_tokens.to(policy).clamp(min=1)
    # −log σ(βΔ), computed as softplus(−βΔ): no overflow for large margins.
    losses = F.softplus(-margin)
    if sft_weight:
        losses = losses + sft_weight * nll
    return PairLosses(losses, rewards[:, 0].detach(), rewards[:, 1].detach(), nll.detach())


def pair_sums(
    found: PairLosses, policy: torch.Tensor, chosen_correct: torch.Tensor
) -> torch.Tensor:
    """The SUM_KEYS sums of one micro-batch, as a float64 vector on the CPU."""
    policy = policy.detach()
    values = [
        found.losses.detach().sum(),
        found.chosen_rewards.sum(),
        found.rejected_rewards.sum(),
        (found.chosen_rewards > found.rejected_rewards).float().sum(),
        policy[:, 0].sum(),
        policy[:, 1].sum(),
        (policy[:, 0] > policy[:, 1]).float().sum(),
        chosen_correct.sum(),
        found.nll.sum(),
    ]
    return torch.stack([v.double().cpu() for v in values])


def metrics_from_sums(sums: torch.Tensor, n_pairs: int, chosen_tokens: int) -> dict[str, float]:
    """Means under TRL's names (+ OpenAI's `loss`/`mean_token_accuracy` for the jobs API)."""
    s = dict(zip(SUM_KEYS, (float(x) for x in sums), strict=True))
    return {
        "loss": s["loss"] / n_pairs,
        "mean_token_accuracy": s["chosen_correct"] / max(1, chosen_tokens),
        "rewards/chosen": s["chosen_rewards"] / n_pairs,
        "rewards/rejected": s["rejected_rewards"] / n_pairs,
        "rewards/margins": (s["chosen_rewards"] - s["rejected_rewards"]) / n_pairs,
        "rewards/accuracies": s["reward_accuracies"] / n_pairs,
        "logps/chosen": s["chosen_logps"] / n_pairs,
        "logps/rejected": s["rejected_logps"] / n_pairs,
        "preference_accuracy": s["preference_accuracies"] / n_pairs,
        "nll_loss": s["nll"] / n_pairs,
    }


@torch.no_grad()
def compute_reference(
    model: Any,
    groups: list[list[int]],
    pairs: list[TokenizedPair],
    device: torch.device,
    adapter_disabled: bool,
) -> torch.Tensor:
    """Reference log-probs (len(pairs), 2) for the pairs in `groups` (lists of pair indices,
    batched exactly as training will batch them, so step 0 reproduces them bit for bit); pairs
    in no group stay NaN."""
    import contextlib

    out = torch.full((len(pairs), 2), float("nan"), dtype=torch.float64)
    was_training = model.training
    model.eval()
    context = model.disable_adapter() if adapter_disabled else contextlib.nullcontext()
    with context:
        for group in groups:
            batch = make_pair_batch([pairs[i] for i in group])
            logps, _ = sequence_logps(model, batch, device)
            out[group] = logps.double().cpu()
    model.train(was_training)
    return out
