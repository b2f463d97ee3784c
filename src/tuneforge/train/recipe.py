"""The supervised fine-tuning recipe: one loop, read top to bottom. The CLI, the jobs worker and
the UI all run this (`train(make_plan(config))`); the run directory is what they read back.

Why our own loop rather than TRL's SFTTrainer (measured in bench/train_throughput.py):
- The LM head runs only at trained positions. For SmolLM2-135M the head (49152 × 576) is a fifth of
  the forward FLOPs and nearly all of them are wasted on prompt tokens that carry no loss.
- Examples are packed into one row with per-example causal attention (models/attention.py): no
  padding, no cross-example attention, no dense L² mask.
- The loss is normalised by the trained tokens of the whole optimizer step (all micro-batches and
  processes), so gradient accumulation and data parallelism give the same update as one big batch.
- Exact resume: the data order is a pure function of (seed, epoch), and checkpoints hold weights,
  optimizer, scheduler and every RNG state, so a resumed run logs the same losses.

Structure (torchtune style): `SFTRecipe.setup()`, `.train()`, `.save_checkpoint()`, `.cleanup()`.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge import run_dir as rd
from tuneforge.config import TrainConfig
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.errors import TuneforgeError, UsageError
from tuneforge.train import dpo, grpo
from tuneforge.train.bf16 import cast_once_for_bf16
from tuneforge.train.compiled import compile_layers
from tuneforge.train.plan import Plan, TokenizedExample

# GRPO: a grader past its time limit on this many answers in a row stops the run (at OpenAI's
# 2-minute limit, a looping grader would otherwise cost hours per step).
GRADER_TIMEOUTS_IN_A_ROW = 3
MAX_GRADER_REASONS = 5  # distinct grader failures told in a run's events; later ones only counted

StepCallback = Callable[[dict[str, Any]], None]


class TrainingFailed(TuneforgeError):
    """The run stopped with an error (e.g. a NaN loss); the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------


@dataclass
class MicroBatch:
    """Several examples flattened into one row; `bounds` are the example boundaries."""

    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L), restarting at 0 for each example
    bounds: list[int]  # [0, l1, l1+l2, ...]
    positions: torch.Tensor  # (T,) row positions whose next token is trained
    targets: torch.Tensor  # (T,) the trained next tokens

    @property
    def n_trained(self) -> int:
        return int(self.targets.numel())


def make_micro_batch(examples: list[TokenizedExample]) -> MicroBatch:
    ids: list[int] = []
    pos: list[int] = []
    bounds = [0]
    positions: list[int] = []
    targets: list[int] = []
    for ex in examples:
        offset = len(ids)
        ids.extend(ex.input_ids)
        pos.extend(range(len(ex.input_ids)))
        bounds.append(len(ids))
        # Token t predicts token t+1, inside the example only: shift labels per example.
        for t in range(len(ex.labels) - 1):
            if ex.labels[t + 1] != IGNORE_INDEX:
                positions.append(offset + t)
                targets.append(ex.labels[t + 1])
    return MicroBatch(
        input_ids=torch.tensor([ids]),
        position_ids=torch.tensor([pos]),
        bounds=bounds,
        positions=torch.tensor(positions, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
    )


def group_examples(
    examples: list[TokenizedExample], packing: bool, micro_batch_tokens: int
) -> list[list[TokenizedExample]]:
    """Packing on: fill each forward pass up to `micro_batch_tokens`, in order. Off: one each."""
    if not packing:
        return [[ex] for ex in examples]
    groups: list[list[TokenizedExample]] = []
    current: list[TokenizedExample] = []
    size = 0
    for ex in examples:
        if current and size + len(ex.input_ids) > micro_batch_tokens:
            groups.append(current)
            current, size = [], 0
        current.append(ex)
        size += len(ex.input_ids)
    if current:
        groups.append(current)
    return groups


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch: a pure function of (seed, epoch), so resume needs no state."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def step_indices(step: int, n: int, batch_size: int, steps_per_epoch: int, seed: int) -> list[int]:
    epoch, within = divmod(step, steps_per_epoch)
    order = epoch_order(n, seed, epoch)
    return order[within * batch_size : (within + 1) * batch_size]


def _token_logps(model: Any, mb: MicroBatch, device: torch.device) -> torch.Tensor:
    """log π of each trained (answer) token of a packed micro-batch, in row order."""
    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=mb.input_ids.to(device),
        position_ids=mb.position_ids.to(device),
        segment_bounds=mb.bounds,
        use_cache=False,
    ).last_hidden_state[0]
    logits = lm.get_output_embeddings()(hidden[mb.positions.to(device)]).float()
    return -F.cross_entropy(logits, mb.targets.to(device), reduction="none")


def _grader_means(grader: dict, grades: list) -> dict[str, float]:
    """TRL's `rewards/<name>/mean`: the top grader's, and each sub-grader's of a multi."""
    if not grades:
        return {}
    out = {f"rewards/{grader['name']}/mean": sum(g.reward for g in grades) / len(grades)}
    for key in grader.get("graders") or {}:
        values = [g.sub_rewards.get(key, 0.0) for g in grades]
        out[f"rewards/{key}/mean"] = sum(values) / len(values)
    return out


def _index_groups(
    items: list, indices: list[int], packing: bool, micro_batch_tokens: int
) -> list[list[int]]:
    """`group_examples`/`dpo.group_pairs` on indices: which of `items` share a forward pass."""
    from tuneforge.train.plan import TokenizedPair

    groups: list[list[int]] = []
    size = 0
    for i in indices:
        item = items[i]
        n = item.n_tokens if isinstance(item, TokenizedPair) else len(item.input_ids)
        if not groups or not packing or (groups[-1] and size + n > micro_batch_tokens):
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


# ----------------------------------------------------------------------------------------------
# Model pieces
# ----------------------------------------------------------------------------------------------


def causal_lm(model: Any) -> Any:
    """The transformers CausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_sums(model: Any, mb: MicroBatch, device: torch.device) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over trained tokens, and the count of correct argmax predictions.

    The body runs on the whole row; the LM head only on the rows of trained positions.
    """
    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=mb.input_ids.to(device),
        position_ids=mb.position_ids.to(device),
        segment_bounds=mb.bounds,
        use_cache=False,
    ).last_hidden_state[0]
    if mb.n_trained == 0:
        return hidden.sum() * 0.0, 0
    logits = lm.get_output_embeddings()(hidden[mb.positions.to(device)]).float()
    targets = mb.targets.to(device)
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    correct = int((logits.argmax(dim=-1) == targets).sum())
    return loss_sum, correct


def lora_config(config: TrainConfig) -> Any:
    """peft's LoraConfig for a config's lora_* fields (training and the time estimate)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )


ADAPTER_SOURCE = "tuneforge-adapter.json"  # where the adapter's base came from, on this machine


def portable_adapter_config(folder: Path, model: str) -> None:
    """Make a saved adapter load on another machine: peft writes the base as the local path it
    was loaded from (our cache folder); `adapter_config.json` names the public hub id instead
    (what `PeftModel.from_pretrained`, `AutoPeftModelForCausalLM` and vLLM's LoRA loader read),
    and `tuneforge-adapter.json` keeps what this machine used."""
    from tuneforge.models.registry import public_id, resolve_model

    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    local = str(resolve_model(model))
    public = public_id(model)
    if public:
        config["base_model_name_or_path"] = public
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / ADAPTER_SOURCE).write_text(
        json.dumps(
            {"base_model": model, "public_base_model": public, "local_copy": local}, indent=2
        )
        + "\n"
    )


def build_model(plan: Plan) -> Any:
    from tuneforge.models import load_model
    from tuneforge.models.attention import use_varlen_attention

    config = plan.config
    if config.method == "qlora":
        model = _load_4bit(config.model, bf16=plan.use_bf16)
    else:
        model = load_model(config.model, dtype=torch.float32)
    if config.method in ("lora", "qlora"):
        from peft import PeftModel, get_peft_model

        if config.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if plan.start_from is not None:
            # Train the finished run's adapter further (its own rank and targets).
            model = PeftModel.from_pretrained(model, plan.start_from.weights, is_trainable=True)
        else:
            model = get_peft_model(model, lora_config(config))
    use_varlen_attention(model)
    return model


def qlora_quantization(bf16: bool) -> Any:
    """QLoRA's 4-bit base (QLoRA paper's recipe: NF4, double quantization), computing in bf16 on
    GPUs that have it and fp32 elsewhere (fp16 compute without autocast overflows)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        bnb_4bit_use_double_quant=True,
    )


def _load_4bit(model_name: str, bf16: bool) -> Any:
    from transformers import AutoModelForCausalLM

    from tuneforge.models import resolve_model

    return AutoModelForCausalLM.from_pretrained(
        resolve_model(model_name), quantization_config=qlora_quantization(bf16), device_map={"": 0}
    )


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = math.ceil(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------


def _forget_other_precision(mixed_precision: str) -> None:
    """Let one process train runs of different precisions one after another.

    accelerate keeps its state process-wide and refuses a second Accelerator with another
    mixed_precision (an SFT run in bf16, then a DPO run in fp32, in one job worker or test). The
    state it keeps per run is reset; the distributed process group (PartialState) is left alone.
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


class SFTRecipe:
    """One supervised fine-tuning run of a Plan, torchtune's shape: setup, train, save.

    It owns the model (LoRA, QLoRA or full), optimizer and scheduler, and every write to the run
    directory (status.json, metrics.jsonl, checkpoints, the final model). It runs on the main
    thread of its process (its SIGINT/SIGTERM handlers finish the step and checkpoint), one per
    rank under torchrun. `train()` and `resume()` below build it; the CLI, the jobs worker and
    the quickstart call those.
    """

    def __init__(
        self,
        plan: Plan,
        on_step: StepCallback | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.config = plan.config
        self.run_dir = plan.run_dir
        self.on_step = on_step or (lambda _: None)
        self.on_event = on_event or (lambda _: None)
        self.step = 0
        self.interrupted: str | None = None
        self.started = time.time()
        self.elapsed_before = 0.0  # training seconds of earlier (interrupted) sessions
        self._grader_reasons: set[str] = set()  # grader failures already told (GRPO)
        self._timeouts_in_a_row = 0

    # -- setup -----------------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        from accelerate import Accelerator

        config = self.config
        mixed_precision = "bf16" if self.plan.use_bf16 else "no"
        _forget_other_precision(mixed_precision)
        self.accelerator = Accelerator(
            cpu=self.plan.device == "cpu",
            mixed_precision=mixed_precision,
            # Trackers get the same lines as metrics.jsonl (accelerate's tracker API).
            log_with=list(config.report_to) or None,
            project_dir=self.run_dir / "trackers" if config.report_to else None,
        )
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.model = build_model(self.plan).to(self.device)
        if self.plan.use_bf16 and config.method == "lora" and config.objective == "sft":
            # Every SFT forward runs under autocast, so each cast can be done once (train/bf16.py).
            cast_once_for_bf16(self.model)
        if config.compile:
            compiled = compile_layers(self.model)
            self.on_event(f"torch.compile: the MLP and norms of {compiled} decoder layers")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.plan.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config, self.plan.total_steps)
        )
        if config.report_to:
            self.accelerator.init_trackers(
                config.tracker_project or self.run_dir.name,
                config=_tracker_config(config.model_dump(mode="json")),
                init_kwargs=_tracker_init_kwargs(config, self.run_dir),
            )
        if resume:
            self._load_latest_checkpoint()
        elif self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rd.write_config(self.run_dir, config.model_dump(mode="json"))
            (self.run_dir / "metrics.jsonl").write_text("")
        if self.is_main:
            rd.write_status(
                self.run_dir,
                status="running",
                step=self.step,
                total_steps=self.plan.total_steps,
                pid=os.getpid(),
                world_size=self.world,
                error=None,
                reason=None,  # why an earlier session stopped; this one is running
                **({"resumed_at": self.started} if resume else {"started_at": self.started}),
                n_train_examples=len(self.plan.train),
                n_validation_examples=len(self.plan.validation),
                system_prompt=self.plan.system_prompt,
                trainable_parameters=sum(p.numel() for p in self.params),
                precision=config.precision,
                precision_reason=self.plan.precision_reason,
            )
        if config.objective == "dpo":
            self._setup_reference(resume)
        if config.objective == "grpo" and not resume:
            self._preflight()
        if not resume:
            # The base model's validation loss on the same sample: the bar training must clear.
            initial = self.evaluate(self.plan.validation[: config.eval_examples])
            if initial and self.is_main:
                rd.write_status(
                    self.run_dir, **{f"initial_valid_{k}": v for k, v in initial.items()}
                )
        self.accelerator.wait_for_everyone()

    def _setup_reference(self, resume: bool) -> None:
        """DPO: the reference model's log-probs of every pair this run uses, computed before the
        first step (see train/dpo.py) and kept in the run directory for an exact resume."""
        path = self.run_dir / dpo.REFERENCE_FILE
        if resume and self.step > 0:
            if not path.exists():
                raise TuneforgeError(
                    f"{path} is missing: a DPO run cannot resume without the reference "
                    "log-probabilities it started with",
                    hint="start the run again (a new output_dir)",
                )
            saved = torch.load(path, weights_only=True)
            self.reference, self.valid_reference = saved["train"], saved["validation"]
            return
        plan, config = self.plan, self.config
        self.on_event(
            f"computing the reference model's log-probabilities of {len(plan.train)} training "
            f"and {len(plan.validation)} validation pairs"
        )
        # The pairs of each step, grouped as train_step groups them; a pair is computed at its
        # first appearance only, by the process that will run that group first.
        seen: set[int] = set()
        mine: list[list[int]] = []
        for step in range(plan.total_steps):
            indices = step_indices(
                step, len(plan.train), config.batch_size, plan.steps_per_epoch, config.seed
            )
            groups = _index_groups(plan.train, indices, config.packing, config.micro_batch_tokens)
            for g, group in enumerate(groups):
                new = [i for i in group if i not in seen]
                seen.update(new)
                if new and g % self.world == self.rank:
                    mine.append(new)
        valid = list(range(len(plan.validation)))
        valid_groups = _index_groups(plan.validation, valid, True, config.micro_batch_tokens)
        # For LoRA from the base model the reference is the base: the adapter switched off.
        disabled = config.method != "full" and plan.start_from is None
        train_ref = dpo.compute_reference(self.model, mine, plan.train, self.device, disabled)
        valid_ref = dpo.compute_reference(
            self.model,
            valid_groups[self.rank :: self.world],
            plan.validation,
            self.device,
            disabled,
        )
        if self.world > 1:
            both = torch.cat([train_ref.nan_to_num(0.0), valid_ref.nan_to_num(0.0)])
            both = self.accelerator.reduce(both.to(self.device), reduction="sum").cpu()
            train_ref, valid_ref = both[: len(plan.train)], both[len(plan.train) :]
        self.reference, self.valid_reference = train_ref, valid_ref
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save({"train": train_ref, "validation": valid_ref}, tmp)
            os.replace(tmp, path)  # a crash leaves the old file or the new one, never half

    # -- one optimizer step ----------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        if self.config.objective == "dpo":
            return self.dpo_step(step)
        if self.config.objective == "grpo":
            return self.grpo_step(step)
        plan, config = self.plan, self.config
        indices = step_indices(
            step, len(plan.train), config.batch_size, plan.steps_per_epoch, config.seed
        )
        examples = [plan.train[i] for i in indices]
        groups = group_examples(examples, config.packing, config.micro_batch_tokens)
        # Normalise by the trained tokens of the whole step, across micro-batches and processes:
        # every process knows the data, so this needs no communication.
        step_tokens = sum(ex.n_trained for ex in examples)
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = 0
        for group in groups[self.rank :: self.world]:
            mb = make_micro_batch(group)
            with self.accelerator.autocast():
                group_loss, group_correct = forward_sums(self.model, mb, self.device)
            (group_loss / step_tokens).backward()
            loss_sum += group_loss.detach().double().cpu()
            correct += group_correct
        if self.world > 1:
            self._all_reduce_gradients()
            totals = self.accelerator.reduce(
                torch.tensor(
                    [loss_sum.item(), float(correct)], dtype=torch.float64, device=self.device
                ),
                reduction="sum",
            ).cpu()
            loss_sum, correct = totals[0], int(totals[1].item())
        lr, grad_norm = self._apply_gradients(step, float(loss_sum), "training loss")
        loss = float(loss_sum) / step_tokens
        return {
            "step": step + 1,
            "epoch": round((step + 1) / plan.steps_per_epoch, 4),
            "train_loss": loss,
            "train_mean_token_accuracy": correct / step_tokens,
            "learning_rate": lr,
            "grad_norm": grad_norm,
            "trained_tokens": step_tokens,
            "tokens": sum(len(ex.input_ids) for ex in examples),
        }

    def dpo_step(self, step: int) -> dict[str, Any]:
        """One DPO optimizer step: the mean sigmoid loss over the step's pairs, plus the weighted
        NLL of the preferred answers when `dpo_sft_weight` > 0 (train/dpo.py)."""
        plan, config = self.plan, self.config
        indices = step_indices(
            step, len(plan.train), config.batch_size, plan.steps_per_epoch, config.seed
        )
        groups = _index_groups(plan.train, indices, config.packing, config.micro_batch_tokens)
        beta = float(config.dpo_beta)
        self.model.train()
        sums = torch.zeros(len(dpo.SUM_KEYS), dtype=torch.float64)
        for group in groups[self.rank :: self.world]:
            batch = dpo.make_pair_batch([plan.train[i] for i in group])
            with self.accelerator.autocast():
                policy, chosen_correct = dpo.sequence_logps(self.model, batch, self.device)
            found = dpo.dpo_loss(
                policy, self.reference[group], beta, batch.chosen_tokens, config.dpo_sft_weight
            )
            # Every pair weighs the same in the step, whichever micro-batch holds it.
            (found.losses.sum() / len(indices)).backward()
            sums += dpo.pair_sums(found, policy, chosen_correct)
        if self.world > 1:
            self._all_reduce_gradients()
            sums = self.accelerator.reduce(sums.to(self.device), reduction="sum").cpu()
        lr, grad_norm = self._apply_gradients(step, float(sums[0]), "DPO loss")
        pairs = [plan.train[i] for i in indices]
        chosen_tokens = sum(p.chosen.n_trained for p in pairs)
        found = dpo.metrics_from_sums(sums, len(indices), chosen_tokens)
        return {
            "step": step + 1,
            "epoch": round((step + 1) / plan.steps_per_epoch, 4),
            "train_loss": found.pop("loss"),
            "train_mean_token_accuracy": found.pop("mean_token_accuracy"),
            **found,
            "learning_rate": lr,
            "grad_norm": grad_norm,
            "trained_tokens": sum(p.n_trained for p in pairs),
            "tokens": sum(p.n_tokens for p in pairs),
        }

    # -- GRPO ------------------------------------------------------------------------------
    def _sample(
        self, prompts: list[Any], n: int, seed: int, greedy: bool = False
    ) -> list[list[tuple[list[int], bool]]]:
        """n answers to each prompt from the model as it is now (so each step samples from the
        updated adapter): token ids up to and including the first end-of-turn token, and
        whether it ended there (False: cut at max_completion_tokens). The same `seed` draws the
        same answers (a resumed run samples what the uninterrupted one did).

        On a CPU through the serving engine's batching (`_sample_batched`), elsewhere through
        transformers' `generate` (`_sample_generate`; the engine is CPU-only)."""
        if self.device.type == "cpu":
            return self._sample_batched(prompts, n, seed, greedy)
        return self._sample_generate(prompts, n, seed, greedy)

    def _sample_batched(
        self, prompts: list[Any], n: int, seed: int, greedy: bool = False
    ) -> list[list[tuple[list[int], bool]]]:
        """`_sample` through `inference.engine.generate_in_place`: every prompt's group in one
        batch, each prompt prefilled once, the live adapter answering. On SmolLM2 (8 prompts ×
        4 answers of ≤ 64 tokens): 3.7× the answer tokens per second of `generate` per prompt,
        2.5× on the same greedy work (BENCHMARKS.md, "GRPO's sampling")."""
        from tuneforge.inference.engine import SamplingParams, generate_in_place
        from tuneforge.models.text import TextSide

        config, tokenizer = self.config, self.plan.tokenizer
        eos = sorted(self.plan.eos_ids) or [tokenizer.eos_token_id]
        text = TextSide(
            tokenizer, self.plan.template, self.plan.context_length or 1 << 30, frozenset(eos)
        )
        params = [
            SamplingParams(
                config.max_completion_tokens,
                temperature=0.0 if greedy else config.temperature,
                seed=seed + j * n,
                grammar=self.plan.grammar,
            )
            for j in range(len(prompts))
        ]
        groups = generate_in_place(self.model, text, [p.input_ids for p in prompts], params, n=n)
        return [[(list(f.token_ids), f.reason == "stop") for f in group] for group in groups]

    @torch.no_grad()
    def _sample_generate(
        self, prompts: list[Any], n: int, seed: int, greedy: bool = False
    ) -> list[list[tuple[list[int], bool]]]:
        """`_sample` through transformers' `generate`, one call (n rows) per prompt."""
        config, tokenizer = self.config, self.plan.tokenizer
        eos = sorted(self.plan.eos_ids) or [tokenizer.eos_token_id]
        torch.manual_seed(seed)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        was_training = self.model.training
        self.model.eval()
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": config.temperature, "top_p": 1.0, "top_k": 0}
        )
        groups = []
        for prompt in prompts:
            ids = torch.tensor([prompt.input_ids] * n, device=self.device)
            if self.plan.grammar is not None:  # a JSON response_format: each row follows it
                from tuneforge.inference.constrained import RowConstraints

                rows = RowConstraints(
                    self.plan.grammar, tokenizer, frozenset(eos), n, len(prompt.input_ids)
                )
                sampling["logits_processor"] = [rows]
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=config.max_completion_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                **sampling,
            )
            answers = []
            for row in out[:, ids.shape[1] :].tolist():
                end = next((i for i, t in enumerate(row) if t in eos), None)
                answers.append((row[: end + 1], True) if end is not None else (row, False))
            groups.append(answers)
        self.model.train(was_training)
        return groups

    def _score(self, prompt: Any, answer: list[int]) -> Any:
        from tuneforge.eval.graders import make_sample, run_grader

        text = self.plan.tokenizer.decode(answer, skip_special_tokens=True)
        return run_grader(self.config.grader, make_sample(text), prompt.item)

    def _score_groups(self, prompts: list[Any], groups: list[list[Any]], where: str) -> list:
        """Grade every answer of every group. A grader that fails on an answer scores it 0
        (OpenAI's rule); the run's events say why — each reason once — since a silent 0 looks
        like a bad model. A grader that runs past its time limit on `GRADER_TIMEOUTS_IN_A_ROW`
        answers in a row stops the run: it loops, or is too slow, and each answer would cost
        the whole limit."""
        grades = []
        for prompt, answers in zip(prompts, groups, strict=True):
            row = []
            for ids, _ in answers:
                grade = self._score(prompt, ids)
                if grade.errors.get("unresponsive_reward_error"):
                    self._timeouts_in_a_row += 1
                    if self._timeouts_in_a_row >= GRADER_TIMEOUTS_IN_A_ROW:
                        self._fail(
                            "grader_timeout",
                            f"{where}: the grader {grade.name!r} ran past its time limit on "
                            f"{self._timeouts_in_a_row} answers in a row "
                            f"({grade.details['unresponsive_reward_error']}): it loops, or is "
                            "too slow for this machine. Fix it, try it on one answer with POST "
                            "/v1/fine_tuning/alpha/graders/run, and start the run again",
                        )
                else:
                    self._timeouts_in_a_row = 0
                row.append(grade)
            grades.append(row)
        self._tell_grader_failures([g for row in grades for g in row], where)
        return grades

    def _tell_grader_failures(self, grades: list, where: str) -> None:
        reasons = Counter(
            reason
            for grade in grades
            for flag, reason in grade.details.items()
            if grade.errors.get(flag)
        )
        new = [r for r in reasons if r not in self._grader_reasons]
        if not new or len(self._grader_reasons) >= MAX_GRADER_REASONS:
            return
        new = new[: MAX_GRADER_REASONS - len(self._grader_reasons)]
        self._grader_reasons.update(new)
        failed = sum(1 for grade in grades if any(grade.errors.values()))
        self.on_event(
            f"{where}: the grader failed on {failed} of {len(grades)} answers, which score 0: "
            + "; ".join(f"{reason} ({reasons[reason]}×)" for reason in new)
            + " (each reason is told once; frac_grader_errors counts failures at every step)"
        )

    def _preflight(self) -> None:
        """Before training: sample groups from the starting model on the first prompts. If every
        group scores the same, no answer is better than its siblings and GRPO has nothing to
        learn — say so now instead of after hours of flat rewards."""
        config = self.config
        prompts = self.plan.train[: min(8, len(self.plan.train))]
        groups = self._sample(prompts, config.grpo_group_size, seed=config.seed * 1_000_003 - 1)
        grades = self._score_groups(prompts, groups, "preflight")
        rewards = [[grade.reward for grade in row] for row in grades]
        failed = [grade for row in grades for grade in row if any(grade.errors.values())]
        flat = [r for group in rewards for r in group]
        zero = sum(1 for group in rewards if max(group) == min(group)) / len(rewards)
        mean = sum(flat) / len(flat)
        if self.is_main:
            rd.write_status(
                self.run_dir, preflight_reward_mean=mean, preflight_frac_reward_zero_std=zero
            )
        self.on_event(
            f"preflight: {len(prompts)} prompts × {config.grpo_group_size} answers from the "
            f"starting model: mean reward {mean:.3f}, {zero:.0%} of groups without spread"
        )
        if zero == 1.0:
            if failed and len(failed) == len(flat):
                reason = next(r for flag, r in failed[0].details.items() if failed[0].errors[flag])
                self._fail(
                    "grader_failed",
                    f"the grader failed on every answer of the preflight ({reason}), so "
                    "every answer scores the same and GRPO has nothing to learn. Fix the "
                    "grader, try it on one answer with POST /v1/fine_tuning/alpha/graders/run, "
                    "and start the run again",
                )
            self._fail(
                "no_reward_signal",
                f"every sampled group of the starting model scored the same (all "
                f"{sorted(set(flat))}), so GRPO has nothing to learn: the task is too hard or "
                "too easy for this model, or the grader always gives the same score. Check the "
                "grader with POST /v1/fine_tuning/alpha/graders/run, give partial credit, raise "
                "grpo_group_size or temperature, or fine-tune with objective=sft first",
            )

    def grpo_step(self, step: int) -> dict[str, Any]:
        """One GRPO step: sample a group per prompt, score, normalise, one clipped update."""

        plan, config = self.plan, self.config
        indices = step_indices(
            step, len(plan.train), config.batch_size, plan.steps_per_epoch, config.seed
        )
        prompts = [plan.train[i] for i in indices]
        # The answers are drawn with a seed made of (seed, step): a resumed run samples exactly
        # what the uninterrupted one did.
        G = config.grpo_group_size
        answers = self._sample(prompts, G, seed=(config.seed * 1_000_003 + step) * 4096)
        grades = self._score_groups(prompts, answers, f"step {step + 1}")
        rewards = torch.tensor([[g.reward for g in group] for group in grades])
        advantages = grpo.group_advantages(rewards)
        flat = [
            (p, ids, done) for p, group in zip(prompts, answers, strict=True) for ids, done in group
        ]
        lengths = [len(ids) for _, ids, _ in flat]
        weights = grpo.answer_weights(lengths, config.grpo_loss_type, config.max_completion_tokens)
        flat_adv = advantages.reshape(-1).tolist()
        # Answers with A = 0 (and no KL term) have zero loss: no forward pass for them.
        active = [
            i for i, a in enumerate(flat_adv) if (a != 0.0 or config.grpo_beta > 0) and lengths[i]
        ]
        examples = [
            TokenizedExample(p.input_ids + ids, [IGNORE_INDEX] * len(p.input_ids) + ids)
            for p, ids, _ in flat
        ]
        self.model.train()
        loss_value, clipped, kl_sum, tokens = 0.0, 0, 0.0, 0
        groups = _index_groups(examples, active, config.packing, config.micro_batch_tokens)
        for group in groups[self.rank :: self.world]:
            mb = make_micro_batch([examples[i] for i in group])
            answer_of = torch.searchsorted(torch.tensor(mb.bounds[1:]), mb.positions, right=True)
            with self.accelerator.autocast():
                logps = _token_logps(self.model, mb, self.device)
            ref = None
            if config.grpo_beta > 0:
                with torch.no_grad(), self.model.disable_adapter():
                    ref = _token_logps(self.model, mb, self.device)
            adv = torch.tensor([flat_adv[group[j]] for j in answer_of.tolist()])
            w = torch.tensor([weights[group[j]] for j in answer_of.tolist()])
            losses, is_clipped, kl = grpo.token_losses(
                logps, logps.detach(), adv.to(logps), config.grpo_epsilon, config.grpo_beta, ref
            )
            (losses * w.to(losses)).sum().backward()
            loss_value += float((losses.detach() * w.to(losses)).sum())
            clipped += int(is_clipped.sum())
            tokens += int(losses.numel())
            if kl is not None:
                kl_sum += float(kl.detach().sum())
        if self.world > 1:
            self._all_reduce_gradients()
            totals = self.accelerator.reduce(
                torch.tensor(
                    [loss_value, clipped, kl_sum, tokens], dtype=torch.float64, device=self.device
                ),
                reduction="sum",
            ).cpu()
            loss_value, clipped, kl_sum, tokens = (float(x) for x in totals)
        lr, grad_norm = self._apply_gradients(step, loss_value, "GRPO loss")
        metrics: dict[str, Any] = {
            "step": step + 1,
            "epoch": round((step + 1) / plan.steps_per_epoch, 4),
            "train_loss": loss_value,
            "reward": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "frac_reward_zero_std": float((rewards.std(dim=1) == 0).float().mean()),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/clipped_ratio": sum(1 for *_, done in flat if not done) / len(flat),
            "clip_ratio/region_mean": clipped / max(1, tokens),
            "frac_grader_errors": sum(
                1 for group in grades for g in group if any(g.errors.values())
            )
            / len(flat),
        }
        metrics |= _grader_means(config.grader, [g for group in grades for g in group])
        if config.grpo_beta > 0:
            metrics["kl"] = kl_sum / max(1, tokens)
        return metrics | {
            "learning_rate": lr,
            "grad_norm": grad_norm,
            "trained_tokens": sum(lengths),
            "tokens": sum(len(e.input_ids) for e in examples),
        }

    def _evaluate_prompts(self, n: int) -> dict[str, float]:
        """Greedy answers to the first `n` validation prompts, scored: OpenAI's reward mean."""
        prompts = self.plan.validation[:n]
        mine = prompts[self.rank :: self.world]
        answers = self._sample(mine, 1, seed=0, greedy=True) if mine else []
        grades = [self._score(p, ids) for p, ((ids, _),) in zip(mine, answers, strict=True)]
        total = torch.tensor([sum(g.reward for g in grades), len(grades)], dtype=torch.float64)
        if self.world > 1:
            total = self.accelerator.reduce(total.to(self.device), reduction="sum").cpu()
        out = {"reward_mean": float(total[0] / max(1.0, float(total[1])))}
        if self.world == 1:
            out |= _grader_means(self.config.grader, grades)
        return out

    def _all_reduce_gradients(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self.accelerator.reduce(flat, reduction="sum")
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, examples: list) -> dict[str, float] | None:
        """Validation metrics without the `valid_` prefix: SFT's loss and mean token accuracy
        (per trained token), or DPO's loss, rewards and accuracies (per pair)."""
        if not examples:
            return None
        if self.config.objective == "dpo":
            return self._evaluate_pairs(len(examples))
        if self.config.objective == "grpo":
            return self._evaluate_prompts(len(examples))
        self.model.eval()
        groups = group_examples(examples, True, max(self.config.micro_batch_tokens, 1))
        loss_sum, correct = 0.0, 0
        for group in groups[self.rank :: self.world]:
            mb = make_micro_batch(group)
            with self.accelerator.autocast():
                group_loss, group_correct = forward_sums(self.model, mb, self.device)
            loss_sum += float(group_loss)
            correct += group_correct
        if self.world > 1:
            totals = self.accelerator.reduce(
                torch.tensor([loss_sum, float(correct)], dtype=torch.float64, device=self.device),
                reduction="sum",
            ).cpu()
            loss_sum, correct = float(totals[0]), int(totals[1].item())
        tokens = sum(ex.n_trained for ex in examples)
        return {"loss": loss_sum / tokens, "mean_token_accuracy": correct / tokens}

    def _evaluate_pairs(self, n: int) -> dict[str, float]:
        """The first `n` validation pairs (the periodic sample, or all of them)."""
        pairs = self.plan.validation
        groups = _index_groups(pairs, list(range(n)), True, self.config.micro_batch_tokens)
        self.model.eval()
        sums = torch.zeros(len(dpo.SUM_KEYS), dtype=torch.float64)
        for group in groups[self.rank :: self.world]:
            batch = dpo.make_pair_batch([pairs[i] for i in group])
            with self.accelerator.autocast():
                policy, chosen_correct = dpo.sequence_logps(self.model, batch, self.device)
            found = dpo.dpo_loss(
                policy,
                self.valid_reference[group],
                float(self.config.dpo_beta),
                batch.chosen_tokens,
                self.config.dpo_sft_weight,
            )
            sums += dpo.pair_sums(found, policy, chosen_correct)
        if self.world > 1:
            sums = self.accelerator.reduce(sums.to(self.device), reduction="sum").cpu()
        chosen_tokens = sum(p.chosen.n_trained for p in pairs[:n])
        return dpo.metrics_from_sums(sums, n, chosen_tokens)

    # -- the loop --------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        plan, config = self.plan, self.config
        valid_sample = plan.validation[: config.eval_examples]
        last: dict[str, Any] = {}
        session_start = time.time()
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM)
            if self._can_handle_signals()
        }
        try:
            while self.step < plan.total_steps:
                metrics = self.train_step(self.step)
                self.step += 1
                if self.step % config.eval_every == 0 or self.step == plan.total_steps:
                    result = self.evaluate(valid_sample)
                    if result:
                        metrics.update({f"valid_{k}": v for k, v in result.items()})
                metrics["elapsed_seconds"] = round(
                    self.elapsed_before + time.time() - session_start, 3
                )
                last = metrics
                if self.is_main:
                    self._log(metrics)
                self.on_step(metrics)
                at_epoch_end = self.step % plan.steps_per_epoch == 0
                if self.interrupted or (
                    self.step < plan.total_steps
                    and (self.step % config.checkpoint_every == 0 or at_epoch_end)
                ):
                    self.save_checkpoint(elapsed=metrics["elapsed_seconds"])
                if self.interrupted:
                    if self.is_main:
                        rd.write_status(
                            self.run_dir,
                            status="interrupted",
                            step=self.step,
                            reason=self.interrupted,
                        )
                    self.on_event(
                        f"stopped at step {self.step} ({self.interrupted}); "
                        f"resume with: tuneforge train --resume {self.run_dir}"
                    )
                    return last
            # The last step's evaluation already covered the whole set when the sample is all
            # of it: the same numbers, without a second pass.
            whole = len(valid_sample) == len(plan.validation) and any(
                k.startswith("valid_") for k in last
            )
            final = None
            if whole:
                final = {k[len("valid_") :]: v for k, v in last.items() if k.startswith("valid_")}
            elif config.final_validation:
                final = self.evaluate(plan.validation)
            if final:
                last.update({f"full_valid_{k}": v for k, v in final.items()})
            if self.is_main:
                self.save_final(last)
            return last
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _can_handle_signals() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.interrupted:  # a second Ctrl-C: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.interrupted = signal.Signals(signum).name
        self.on_event(
            "finishing the current step, then saving a checkpoint "
            "(press Ctrl-C again to stop at once)"
        )

    def _apply_gradients(self, step: int, loss: float, what: str) -> tuple[float, float | None]:
        """The end of every objective's step: refuse a non-finite loss before the optimizer
        applies it (the last checkpoint stays good), clip, step optimizer and schedule.
        Returns the learning rate used and the gradient norm before clipping."""
        if not math.isfinite(loss):
            self._fail(
                "nan_loss",
                f"the {what} became {loss} at step {step + 1}; start again with a lower "
                "learning rate (e.g. learning_rate_multiplier=0.5); the last good checkpoint "
                "is kept",
            )
        grad_norm = None
        has_grad = any(p.grad is not None for p in self.params)
        if self.config.max_grad_norm is not None and has_grad:
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, grad_norm

    def _fail(self, code: str, message: str) -> None:
        if self.is_main:
            rd.write_status(
                self.run_dir,
                status="failed",
                error={"code": code, "message": message},
            )
        raise TrainingFailed(message)

    def _log(self, metrics: dict[str, Any]) -> None:
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        rd.write_status(self.run_dir, step=self.step)
        if self.config.report_to:
            numbers = {
                k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "step"
            }
            self.accelerator.log(numbers, step=metrics["step"])

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, elapsed: float) -> None:
        """Write checkpoints/step-N atomically: weights, optimizer, scheduler, RNG, position."""
        tmp_holder = [None]
        if self.is_main:
            tmp_holder[0] = str(rd.new_checkpoint_dir(self.run_dir, self.step))
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(tmp_holder)
        tmp = Path(tmp_holder[0])
        torch.save(_rng_state(), tmp / f"rng-{self.rank}.pt")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            self._save_weights(tmp)
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                },
                tmp / "optimizer.pt",
            )
            (tmp / "trainer_state.json").write_text(
                json.dumps(
                    {"step": self.step, "world_size": self.world, "elapsed_seconds": elapsed}
                )
            )
            rd.publish_checkpoint(self.run_dir, tmp, self.step, self.config.keep_last)
        self.accelerator.wait_for_everyone()

    def _save_weights(self, folder: Path) -> None:
        if self.config.method == "full":
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            # Tied embeddings share storage; safetensors stores each tensor once.
            if getattr(self.model.config, "tie_word_embeddings", False):
                state.pop("lm_head.weight", None)
            save_file(state, folder / "model.safetensors")
        else:
            self.model.save_pretrained(folder)
            portable_adapter_config(folder, self.config.model)

    def _load_latest_checkpoint(self) -> None:
        found = rd.latest_checkpoint(self.run_dir)
        if found is None:
            self.on_event("no complete checkpoint yet: starting from step 0")
            if self.is_main:
                (self.run_dir / "metrics.jsonl").write_text("")
            return
        step, folder = found
        state = json.loads((folder / "trainer_state.json").read_text())
        if state.get("world_size", 1) != self.world:
            raise TuneforgeError(
                f"checkpoint step-{step} was written by {state['world_size']} process(es), "
                f"this run has {self.world}",
                hint=f"resume with --nproc {state['world_size']}",
            )
        if self.config.method == "full":
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
        else:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(folder / "adapter_model.safetensors"))
        opt = torch.load(folder / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        _set_rng_state(torch.load(folder / f"rng-{self.rank}.pt", weights_only=False))
        self.step = step
        self.elapsed_before = state.get("elapsed_seconds", 0.0)
        if self.is_main:
            rd.truncate_metrics(self.run_dir, step)
        self.on_event(f"resumed from checkpoint step-{step}")

    # -- the end ---------------------------------------------------------------------------
    def save_final(self, last: dict[str, Any]) -> None:
        from tuneforge.train.report import write_loss_plot, write_model_card

        model_dir = self.run_dir / "model"
        tmp = self.run_dir / ".model.tmp"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir()
        self._save_weights(tmp)
        if self.config.method == "full":
            self.model.config.save_pretrained(tmp)
            causal_lm(self.model).generation_config.save_pretrained(tmp)
        self.plan.tokenizer.save_pretrained(tmp)
        if model_dir.exists():
            import shutil

            shutil.rmtree(model_dir)
        os.rename(tmp, model_dir)
        final = {
            k: v
            for k, v in last.items()
            if k.endswith(("loss", "accuracy", "accuracies", "reward_mean"))
        }
        write_loss_plot(self.run_dir)
        write_model_card(self.run_dir, self.config, self.plan, final)
        rd.write_status(
            self.run_dir,
            status="succeeded",
            step=self.step,
            final_metrics=final,
            finished_at=time.time(),
            trained_seconds=last.get("elapsed_seconds"),
        )

    def cleanup(self) -> None:
        if self.config.report_to:
            self.accelerator.end_training()  # flushes the trackers' files
        if self.world > 1 and torch.distributed.is_initialized():
            self.accelerator.wait_for_everyone()


def _tracker_init_kwargs(config: TrainConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-tracker settings for accelerate's `init_trackers` (wandb's go to `wandb.init`).

    wandb runs offline, into RUN/trackers/wandb (`wandb sync` uploads it later), unless the
    environment asks for more: no network at run time is the default, a key or an explicit
    WANDB_MODE is the user saying otherwise."""
    if "wandb" not in config.report_to:
        return {}
    folder = run_dir / "trackers"
    folder.mkdir(parents=True, exist_ok=True)
    wandb: dict[str, Any] = {"dir": str(folder)}
    if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
        wandb["mode"] = "offline"
    if config.tracker_run_name:
        wandb["name"] = config.tracker_run_name
    if config.wandb_entity:
        wandb["entity"] = config.wandb_entity
    if config.tracker_tags:
        wandb["tags"] = list(config.tracker_tags)
    return {"wandb": wandb}


def _tracker_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config as trackers store hyperparameters: scalars only (lists joined)."""
    shown = {}
    for key, value in config.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        shown[key] = "-" if value is None else value
    return shown


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def train(
    plan: Plan,
    *,
    on_step: StepCallback | None = None,
    on_event: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run a new training from its plan (`make_plan(config)`). Returns (run dir, last metrics)."""
    if plan.run_dir.exists() and (plan.run_dir / "config.yaml").exists():
        raise TuneforgeError(
            f"{plan.run_dir} already holds a run",
            hint=f"resume it with `tuneforge train --resume {plan.run_dir}`, or pick another "
            "output_dir",
        )
    return _run(plan, resume=False, on_step=on_step, on_event=on_event)


def resume(
    plan: Plan,
    *,
    on_step: StepCallback | None = None,
    on_event: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Continue the run in `plan.run_dir` (planned from its `config.yaml`, `run_dir.load_config`)
    from its latest complete checkpoint, exactly."""
    status = rd.read_status(plan.run_dir) or {}
    if status.get("status") == "succeeded":
        raise UsageError(f"{plan.run_dir} already finished", hint="start a new run instead")
    return _run(plan, resume=True, on_step=on_step, on_event=on_event)


def _run(
    plan: Plan,
    *,
    resume: bool,
    on_step: StepCallback | None,
    on_event: Callable[[str], None] | None,
) -> tuple[Path, dict[str, Any]]:
    recipe = SFTRecipe(plan, on_step=on_step, on_event=on_event)
    recipe.setup(resume=resume)
    try:
        last = recipe.train()
    except KeyboardInterrupt:
        if recipe.is_main:
            rd.write_status(plan.run_dir, status="interrupted", step=recipe.step, reason="SIGINT")
        raise
    except TrainingFailed:
        raise
    except Exception as exc:
        if recipe.is_main:
            rd.write_status(
                plan.run_dir,
                status="failed",
                step=recipe.step,
                error={"code": "internal_error", "message": f"{exc.__class__.__name__}: {exc}"},
            )
        raise
    finally:
        recipe.cleanup()
    return plan.run_dir, last
