r"""Training throughput on CPU: tuneforge's own loop against TRL's `SFTTrainer`, same everything.

Run (the full benchmark takes tens of minutes on a small CPU; `--quick` checks the script works):

    .venv/bin/python bench/train_throughput.py
    .venv/bin/python bench/train_throughput.py --quick
    .venv/bin/python bench/train_throughput.py --contenders trl,tuneforge --steps 10 --out r.json

`--quick` (8 train / 1 validation example, batch 1, 1-2 steps per contender, a small roofline)
only checks that the script works: its timings mean nothing, and its JSON goes into the work dir
unless `--out` is given, so it never overwrites real results. For real numbers run on an
otherwise idle machine: OpenMP threads slow down sharply when another process takes a core.

One run, on one machine, with one model (SmolLM2-135M-Instruct from tuneforge's local cache,
loaded as fp32 objects for every contender), the demo data (`write_demo(seed=0, n=600)`: 480
train / 60 validation examples, OpenAI chat format: system, user, assistant), the same LoRA
(r=16, alpha=32, dropout 0, all linear layers), the same global batch (8 examples per optimizer
step) and the same `torch.set_num_threads` value. In this order:

0. Hardware. The CPU's model and flags are read (`tuneforge.models.precision.cpu_info`) and the
   TRL baseline's precision is decided as tuneforge's `precision: auto` decides: bf16 autocast
   where the CPU has bf16 units (AMX-BF16, AVX512-BF16) and a timed calibration finds bf16
   clearly faster, fp32 on CPUs without them (where bf16 is emulated and slow). Both go in
   the JSON (`machine`, `baseline_precision`).
1. Roofline. `torch.mm` at the model's linear shapes, M = 2048 tokens, in fp32 and (on CPUs with
   bf16 units) in bf16: forward-like X·Wᵀ
   and backward-like dY·W (the frozen base only needs dX) for q/o (576→576), k/v (576→192),
   gate/up (576→1536), down (1536→576) and the LM head (576→49152). Each GEMM's best time is
   weighted by how often a LoRA step runs it (7 linears × 30 layers; the head only at trained
   positions, i.e. weighted by the data's trained-token fraction): roofline = Σ FLOPs / Σ time.
2. `trl`: TRL's SFTTrainer configured at its best for this CPU, the headline baseline: the
   precision of step 0 (bf16 autocast or fp32), no gradient checkpointing, lr 2e-4, cosine,
   warmup 5%, batch 8, 1 epoch, max_length 2048, no packing, `use_cpu`, no dataloader workers,
   no checkpoints, eval on the validation split at the epoch's end. Loss on the assistant reply
   only: SmolLM2's template has no `{% generation %}` markers, so the data goes in as
   conversational prompt-completion (`prompt` = system + user messages, `completion` = the
   assistant message), for which SFTTrainer masks the prompt (`completion_only_loss=None`
   resolves to True for prompt-completion data).
3. `trl-shipped`: SFTConfig's defaults, except `use_cpu`, the batch size and a 20-step cap. In
   trl 1.16 that means bf16 autocast, gradient checkpointing, lr 2e-5, linear schedule, no
   warmup, max_length 1024, fused AdamW (the exact values are recorded in the JSON).
4. `tuneforge`: `tuneforge.train.recipe.train` with the same settings, `precision: auto` (what
   it chose and why is in the JSON), packing on (its default), validation loss every ~1/8 epoch
   over the whole validation split. `tuneforge-fp32` (not run unless named in --contenders):
   the same in fp32, the A/B of tuneforge's own precision choice; `tuneforge-compile` (same):
   `compile: true` (train/compiled.py), compile time included in its train seconds.

Each contender runs in its own subprocess (this file with `--child`), so peak RSS is its own:
VmHWM from /proc/self/status, read right after training. (`ru_maxrss` can carry the parent's
peak across exec; VmHWM belongs to the new address space.)

What is measured, per contender:
- train seconds: wall time of the optimizer steps — from the trainer's first step to its last,
  after model load, tokenization and optimizer setup — minus time spent in evaluation (TRL: its
  `evaluate`, timed in a subclass; tuneforge: `SFTRecipe.evaluate`, timed by wrapping it);
- trained tokens/s: tokens that carry loss (as the contender itself counts them) ÷ train seconds;
  total tokens/s: real (unpadded) tokens ÷ train seconds; TRL's padding is reported separately;
- final validation loss: one reference evaluator for every contender — the trained model, fp32,
  one example at a time, plain transformers forward, summed cross-entropy over the assistant
  tokens as tuneforge labels them (reply + `<|im_end|>`) ÷ their count. TRL's own `eval_loss` is
  recorded too, but it is not comparable (see below);
- time to the baseline's loss: the first evaluation whose validation loss is ≤ `trl`'s final
  one, in train seconds. tuneforge evaluates every ~1/8 epoch; TRL only at its end;
- MFU: useful FLOPs ÷ train seconds ÷ the roofline of the precision the contender trained in
  (fp32 or bf16), with ONE FLOP count for everyone (that of a LoRA
  step that runs the LM head only where there is a loss, nothing for padding):
      FLOPs = (4·N_body + 6·N_lora)·Σℓ + 6·d·L·Σℓ² + 4·V·H·T
  N_body: base linear weights (attention + MLP, all layers; fwd 2N, dX 2N, frozen so no dW);
  N_lora: adapter weights (fwd 2, dX 2, dW 2); ℓ: tokens of each example; d = heads·head_dim,
  L layers: causal attention QKᵀ and AV (2·d·ℓ² forward, ×3 with backward); V·H: the tied
  LM head at the T trained positions (fwd + dX). Norms, activations, RoPE, softmax and the
  optimizer are left out. Wasted work (padding, head at prompt positions, recomputation for
  gradient checkpointing) is not counted, so it shows up as lower MFU.

Fairness notes, read from trl 1.16's source (and checked at run time where possible):
- EOS: SFTTrainer appends EOS only to non-conversational data; ours is conversational, so no
  extra EOS. The completion it trains on is everything the template renders after the prompt:
  reply + `<|im_end|>` + the "\n" the template writes after it. tuneforge trains on reply +
  `<|im_end|>`. So TRL trains one more (near-trivial) token per example; the `label_check`
  field verifies the input ids are identical and counts the difference. TRL's trained tokens/s
  uses TRL's count, which favours TRL by one token per example (~3% on the demo data).
- Both normalise the loss by the trained tokens of the whole optimizer step (transformers passes
  `num_items_in_batch` to SFTTrainer's loss), so the training objectives match.
- TRL's `eval_loss` is the mean over eval batches of each batch's mean token loss, weighted by
  examples (transformers' evaluation_loop), over labels that include that "\n" — hence the
  reference evaluator above for every contender.
- Every training step TRL computes, besides the loss, the full-vocabulary entropy and the top-1
  accuracy (`add_fused_lm_head(outputs=("log_probs", "entropy", "is_top1"))`). Off Triton
  devices (CPU) its chunked LM head scores every position, prompt and padding included, and its
  backward recomputes the head's logits. tuneforge runs the head only at trained positions.
- The trainers' warmups differ by one step: transformers' cosine warmup starts at lr 0,
  tuneforge's at lr/warmup. Data order and adapter init differ (different samplers and seeds).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# No hub access: every model and tokenizer comes from tuneforge's local cache. Set before any
# Hugging Face import, here and (inherited) in the child processes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "smollm2-135m-instruct"
CONTENDERS = ("trl", "trl-shipped", "tuneforge", "tuneforge-fp32", "tuneforge-compile")
DEFAULT_CONTENDERS = ("trl", "trl-shipped", "tuneforge")
LORA_RANK = 16
LORA_ALPHA = 32
LEARNING_RATE = 2e-4
WARMUP_RATIO = 0.05
MAX_LENGTH = 2048
EVALS_PER_EPOCH = 8
SHIPPED_STEPS = 20
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_throughput.json"


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run; `--quick` shrinks them to check the script, not to measure."""

    n_examples: int  # demo examples generated (80/10/10 split)
    batch_size: int  # examples per optimizer step, every contender
    steps: int | None  # cap on optimizer steps per contender (None: one epoch)
    shipped_steps: int  # trl-shipped's step cap
    roofline_m: int  # tokens per GEMM in the roofline
    roofline_reps: int


FULL = Settings(
    n_examples=600,
    batch_size=8,
    steps=None,
    shipped_steps=SHIPPED_STEPS,
    roofline_m=2048,
    roofline_reps=3,
)
# A 135M-parameter step costs ~0.5 GFLOP per token, and bf16 autocast (trl-shipped) is emulated
# on CPUs without native bf16: keep the smoke test tiny (8 train / 1 validation example).
QUICK = Settings(
    n_examples=10, batch_size=1, steps=2, shipped_steps=1, roofline_m=128, roofline_reps=2
)


# ----------------------------------------------------------------------------------------------
# Model shapes and FLOPs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def load(cls, model: str) -> ModelDims:
        from transformers import AutoConfig

        from tuneforge.models import resolve_model

        cfg = AutoConfig.from_pretrained(resolve_model(model))
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            hidden=cfg.hidden_size,
            intermediate=cfg.intermediate_size,
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            n_kv_heads=cfg.num_key_value_heads,
            head_dim=head_dim,
            vocab=cfg.vocab_size,
        )

    def layer_linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of the linear layers in one decoder layer (Llama layout)."""
        h, i = self.hidden, self.intermediate
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return [
            ("q", h, q),
            ("k", h, kv),
            ("v", h, kv),
            ("o", q, h),
            ("gate", h, i),
            ("up", h, i),
            ("down", i, h),
        ]

    @property
    def n_body(self) -> int:
        return self.n_layers * sum(a * b for _, a, b in self.layer_linears())

    def n_lora(self, rank: int) -> int:
        return self.n_layers * sum(rank * (a + b) for _, a, b in self.layer_linears())


FLOP_FORMULA = (
    "useful_flops = (4*N_body + 6*N_lora)*sum(len) + 6*d_attn*n_layers*sum(len^2) "
    "+ 4*vocab*hidden*trained_tokens  (frozen base: forward + dX only; LoRA: forward, dX, dW; "
    "causal attention QK^T and AV, backward = 2x forward; tied LM head only at trained "
    "positions; no FLOPs for padding, recomputation, norms, activations or the optimizer)"
)

# The fairness caveats of the docstring, kept with the numbers.
NOTES = [
    "TRL gets conversational prompt-completion data: loss on the completion only; no extra EOS "
    "(conversational data), but the '\\n' after <|im_end|> is trained (label_check).",
    "trained tokens are counted by each contender: TRL's count has that extra token per example.",
    "final_valid_loss: one reference evaluator (fp32, per example, tuneforge's labels) for all; "
    "TRL's own eval_loss is a mean of batch means over its labels.",
    "TRL computes full-vocab entropy and top-1 accuracy every step; on CPU its chunked LM head "
    "runs at every position (prompt and padding too) and recomputes logits in backward.",
    "train seconds exclude model load, tokenization and evaluation.",
    "MFU uses one useful-FLOP count for all (LM head at trained positions only) against the "
    "roofline of the precision each contender trained in (bf16 runs: the bf16 torch.mm roofline).",
    "The TRL baseline gets its best precision on the machine: bf16 autocast where the CPU has "
    "bf16 units and tuneforge's calibration finds bf16 faster, fp32 otherwise; never gradient "
    "checkpointing.",
]


def useful_flops(dims: ModelDims, sum_len: int, sum_len_sq: int, trained: int) -> float:
    """The FLOPs a LoRA step needs for this work, the same formula for every contender."""
    d_attn = dims.n_heads * dims.head_dim
    return (
        (4 * dims.n_body + 6 * dims.n_lora(LORA_RANK)) * sum_len
        + 6 * d_attn * dims.n_layers * sum_len_sq
        + 4 * dims.vocab * dims.hidden * trained
    )


# ----------------------------------------------------------------------------------------------
# Roofline
# ----------------------------------------------------------------------------------------------


def _best_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Fastest of `reps` timed calls: noise (other processes, page faults) only slows a GEMM."""
    fn()  # warm-up: first calls pay for allocation and BLAS kernel selection
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_roofline(
    dims: ModelDims, m: int, reps: int, trained_fraction: float, dtype: str = "fp32"
) -> dict[str, Any]:
    """GEMM throughput in `dtype` (fp32 or bf16) at the model's shapes, weighted by each GEMM's
    share of a step."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]

    # Per-layer multiplicity of each (in, out) shape: q and o share 576×576, k and v 576×192...
    shapes: dict[tuple[int, int], tuple[list[str], float]] = {}
    for name, a, b in dims.layer_linears():
        names, count = shapes.get((a, b), ([], 0.0))
        shapes[(a, b)] = ([*names, name], count + dims.n_layers)
    # The head runs once per model, only at trained positions.
    shapes[(dims.hidden, dims.vocab)] = (["lm_head"], trained_fraction)

    rows = []
    total_flops = total_seconds = 0.0
    for (d_in, d_out), (names, weight) in shapes.items():
        w = torch.randn(d_out, d_in, dtype=torch_dtype)
        x = torch.randn(m, d_in, dtype=torch_dtype)
        dy = torch.randn(m, d_out, dtype=torch_dtype)
        flops = 2.0 * m * d_in * d_out
        for kind, shape, fn in (
            # F.linear's layout: W is (out, in), the forward multiplies by its transpose.
            (
                "forward X·Wᵀ",
                f"({m}x{d_in})·({d_out}x{d_in})ᵀ",
                lambda x=x, w=w: torch.mm(x, w.t()),
            ),
            (
                "backward dY·W",
                f"({m}x{d_out})·({d_out}x{d_in})",
                lambda dy=dy, w=w: torch.mm(dy, w),
            ),
        ):
            seconds = _best_seconds(fn, reps)
            rows.append(
                {
                    "layers": "/".join(names),
                    "kind": kind,
                    "shape": shape,
                    "weight": weight,
                    "seconds": seconds,
                    "gflops_per_s": flops / seconds / 1e9,
                }
            )
            total_flops += weight * flops
            total_seconds += weight * seconds
        del w, x, dy
    return {
        "dtype": dtype,
        "m_tokens": m,
        "reps": reps,
        "head_weight_trained_fraction": trained_fraction,
        "gflops_per_s": total_flops / total_seconds / 1e9,
        "gemms": rows,
    }


# ----------------------------------------------------------------------------------------------
# Shared helpers (parent and children)
# ----------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process's address space (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def package_versions() -> dict[str, str]:
    names = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    from tuneforge.models.precision import cpu_info

    cpu = cpu_info()
    return {
        "cpu": cpu.model,
        "cpu_flags": sorted(f for f in cpu.flags if f.startswith(("avx", "amx", "fma"))),
        "bf16_units": cpu.bf16_units,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **package_versions(),
    }


def make_tuneforge_config(spec: dict[str, Any], output_dir: str) -> Any:
    from tuneforge.config import build_config

    return build_config(
        {
            "model": MODEL,
            "train_file": spec["train_file"],
            "validation_file": spec["validation_file"],
            "output_dir": output_dir,
            "method": "lora",
            "lora_rank": LORA_RANK,
            "lora_alpha": LORA_ALPHA,
            "lora_dropout": 0.0,
            "batch_size": spec["batch_size"],
            "learning_rate": LEARNING_RATE,
            "epochs": 1,
            "lr_schedule": "cosine",
            "warmup_ratio": WARMUP_RATIO,
            "max_seq_len": MAX_LENGTH,
            "max_steps": spec["steps"],
            "eval_every": spec["eval_every"],
            "eval_examples": spec["n_validation"],
            "checkpoint_every": 1_000_000,  # no mid-run checkpoints: TRL saves none either
            "device": "cpu",
            "precision": spec.get("precision", "fp32"),
            "compile": spec.get("name") == "tuneforge-compile",
        }
    )


# ----------------------------------------------------------------------------------------------
# Children: one contender per process
# ----------------------------------------------------------------------------------------------


def reference_valid_loss(model: Any, examples: list[Any]) -> float:
    """Mean cross-entropy per trained token over `examples`: the one evaluator for everyone.

    fp32, one example at a time (no padding, no packing), the plain transformers decoder, the
    LM head at the trained positions only. `examples` carry tuneforge's labels.
    """
    import torch
    import torch.nn.functional as F

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    model.eval()
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            targets = torch.tensor(ex.labels[1:])
            positions = (targets != -100).nonzero().squeeze(1)
            hidden = lm.get_decoder()(
                input_ids=torch.tensor([ex.input_ids]), use_cache=False
            ).last_hidden_state[0]
            logits = lm.get_output_embeddings()(hidden[positions]).float()
            loss_sum += float(F.cross_entropy(logits, targets[positions], reduction="sum"))
            count += int(positions.numel())
    return loss_sum / count


def prompt_completion_rows(path: str) -> list[dict[str, Any]]:
    """OpenAI chat lines → TRL's conversational prompt-completion format."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        if messages[-1]["role"] != "assistant" or any(
            m["role"] == "assistant" for m in messages[:-1]
        ):
            raise ValueError(f"{path}: expected exactly one assistant message, at the end")
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def label_check(trl_dataset: Any, ours: list[Any], tokenizer: Any) -> dict[str, Any]:
    """Compare TRL's tokenization and loss mask with tuneforge's on the same examples."""
    same_ids = subset = 0
    extra = 0
    extra_tokens: dict[str, int] = {}
    for row, ex in zip(trl_dataset, ours, strict=False):
        same_ids += row["input_ids"] == ex.input_ids
        trl_mask = [label != -100 for label in row["labels"]]
        our_mask = [label != -100 for label in ex.labels]
        subset += all(t or not o for t, o in zip(trl_mask, our_mask, strict=False))
        extra += sum(trl_mask) - sum(our_mask)
        for token, t, o in zip(row["input_ids"], trl_mask, our_mask, strict=False):
            if t and not o:
                text = tokenizer.decode([token])
                extra_tokens[text] = extra_tokens.get(text, 0) + 1
    n = min(len(trl_dataset), len(ours))
    return {
        "examples_compared": n,
        "trl_examples": len(trl_dataset),
        "tuneforge_examples": len(ours),
        "identical_input_ids": same_ids,
        "tuneforge_trained_tokens_subset_of_trl": subset,
        "trl_extra_trained_tokens_per_example": extra / max(1, n),
        "trl_only_trained_tokens": extra_tokens,
    }


_TRL_FIELDS = (
    "bf16",
    "fp16",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_length",
    "packing",
    "padding_free",
    "completion_only_loss",
    "assistant_only_loss",
    "loss_type",
    "optim",
    "max_grad_norm",
    "weight_decay",
    "seed",
    "logging_steps",
    "eval_strategy",
    "save_strategy",
    "dataloader_num_workers",
    "use_cpu",
    "torch_compile",
    "use_liger_kernel",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(getattr(value, "value", value))


def run_trl(spec: dict[str, Any], shipped: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.train.plan import make_plan

    workdir = Path(spec["workdir"])
    # tuneforge's tokenization of the same files: for the label check and the reference eval.
    plan = make_plan(make_tuneforge_config(spec, str(workdir / "unused-run-dir")))
    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.float32)
    train_ds = Dataset.from_list(prompt_completion_rows(spec["train_file"]))
    valid_ds = Dataset.from_list(prompt_completion_rows(spec["validation_file"]))
    lora = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    output_dir = str(workdir / spec["name"])
    if shipped:
        # SFTConfig's defaults, except: run on the CPU, keep the batch, stop after a few steps.
        args = SFTConfig(
            output_dir=output_dir,
            use_cpu=True,
            per_device_train_batch_size=spec["batch_size"],
            max_steps=spec["steps"],
        )
        eval_dataset = None
    else:
        args = SFTConfig(
            output_dir=output_dir,
            use_cpu=True,
            # TRL at its best on this machine: bf16 autocast where the CPU has bf16 units and
            # it is faster (the parent decides, with tuneforge's own calibration), else fp32;
            # never gradient checkpointing (a 135M model fits; recomputation only costs time).
            bf16=spec["precision"] == "bf16",
            fp16=False,
            gradient_checkpointing=False,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="cosine",
            # A float < 1 is a ratio of the steps (transformers 5 dropped `warmup_ratio`).
            warmup_steps=WARMUP_RATIO,
            per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=spec["batch_size"],
            gradient_accumulation_steps=1,
            num_train_epochs=1,
            max_steps=spec["steps"] or -1,
            max_length=MAX_LENGTH,
            packing=False,
            report_to=[],
            dataloader_num_workers=0,
            eval_strategy="epoch",
            save_strategy="no",
            logging_steps=1,
            seed=0,
            disable_tqdm=True,
        )
        eval_dataset = valid_ds

    clock: dict[str, Any] = {"eval_seconds": 0.0, "steps": [], "losses": {}, "reported": None}
    work = {"examples": 0, "tokens": 0, "padded_tokens": 0, "trained": 0, "sum_len_sq": 0}

    class Timer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock["start"] = time.perf_counter()
            clock["threads"] = torch.get_num_threads()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock["steps"].append(
                {
                    "step": state.global_step,
                    "train_seconds": time.perf_counter() - clock["start"] - clock["eval_seconds"],
                }
            )

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            logs = logs or {}
            if "loss" in logs:
                clock["losses"][state.global_step] = logs["loss"]
            if "eval_loss" in logs:
                clock["reported"] = logs["eval_loss"]

    class CountingSFTTrainer(SFTTrainer):
        """Counts the work of each training micro-batch and times evaluation; nothing else."""

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any
        ) -> Any:
            if model.training:
                lengths = inputs["attention_mask"].sum(dim=1)
                work["examples"] += int(lengths.numel())
                work["tokens"] += int(lengths.sum())
                work["sum_len_sq"] += int((lengths * lengths).sum())
                work["padded_tokens"] += int(inputs["input_ids"].numel())
                # Same count as the loss's denominator: positions whose next token is labelled.
                work["trained"] += int((inputs["labels"][:, 1:] != -100).sum())
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                clock["eval_seconds"] += time.perf_counter() - start

    trainer = CountingSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Timer()],
    )
    check = label_check(trainer.train_dataset, plan.train, tokenizer)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    rss = peak_rss_mb()
    steps = clock["steps"]
    train_seconds = steps[-1]["train_seconds"]
    final = reference_valid_loss(trainer.model, plan.validation)
    return {
        "train_seconds": train_seconds,
        "steps": len(steps),
        **work,
        "peak_rss_mb": rss,
        "threads_during_training": clock["threads"],
        "trainable_parameters": trainable,
        "final_valid_loss": final,
        "reported_valid_loss": clock["reported"],
        "curve": [{"step": len(steps), "train_seconds": train_seconds, "valid_loss": final}],
        "step_log": [{**row, "train_loss": clock["losses"].get(row["step"])} for row in steps],
        "completion_only_loss_resolved": trainer.completion_only_loss,
        "label_check": check,
        "config": {name: _jsonable(getattr(args, name, None)) for name in _TRL_FIELDS},
        "param_dtype": str(next(trainer.model.parameters()).dtype),
        "precision": "bf16" if args.bf16 else "fp32",
        "gradient_checkpointing": bool(args.gradient_checkpointing),
    }


def run_tuneforge(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import PeftModel

    from tuneforge import run_dir as rd
    from tuneforge.models import load_model
    from tuneforge.train import recipe
    from tuneforge.train.plan import make_plan

    run_dir = tempfile.mkdtemp(prefix="tuneforge-run-", dir=spec["workdir"])
    cfg = make_tuneforge_config(spec, run_dir)
    plan = make_plan(cfg)
    resolved = plan.config

    # Evaluation time is not training time (TRL's is excluded too): time the recipe's evaluate.
    eval_seconds = [0.0]
    original_evaluate = recipe.SFTRecipe.evaluate

    def timed_evaluate(self: Any, examples: list[Any]) -> Any:
        start = time.perf_counter()
        try:
            return original_evaluate(self, examples)
        finally:
            eval_seconds[0] += time.perf_counter() - start

    original_train = recipe.SFTRecipe.train

    def timed_train(self: Any) -> Any:
        # Evaluations before the loop (the recipe scores the base model in setup) are not inside
        # `elapsed_seconds`, so they must not be subtracted from it either.
        eval_seconds[0] = 0.0
        return original_train(self)

    recipe.SFTRecipe.evaluate = timed_evaluate  # type: ignore[method-assign]
    recipe.SFTRecipe.train = timed_train  # type: ignore[method-assign]

    rows: list[dict[str, Any]] = []
    work = {"examples": 0, "tokens": 0, "trained": 0, "sum_len_sq": 0}
    threads = [torch.get_num_threads()]

    def on_step(metrics: dict[str, Any]) -> None:
        # The recipe's data order is a pure function of (seed, step): recover each step's
        # examples for Σℓ² (attention FLOPs).
        indices = recipe.step_indices(
            metrics["step"] - 1,
            len(plan.train),
            resolved.batch_size,
            plan.steps_per_epoch,
            resolved.seed,
        )
        lengths = [len(plan.train[i].input_ids) for i in indices]
        work["examples"] += len(lengths)
        work["tokens"] += metrics["tokens"]
        work["trained"] += metrics["trained_tokens"]
        work["sum_len_sq"] += sum(n * n for n in lengths)
        threads[0] = torch.get_num_threads()
        rows.append(
            {
                "step": metrics["step"],
                "train_seconds": metrics["elapsed_seconds"] - eval_seconds[0],
                "elapsed_seconds": metrics["elapsed_seconds"],
                "train_loss": metrics["train_loss"],
                "valid_loss": metrics.get("valid_loss"),
            }
        )

    run_path, last = recipe.train(plan, on_step=on_step)
    rss = peak_rss_mb()
    status = rd.read_status(run_path) or {}
    if status.get("status") != "succeeded":
        # e.g. SIGTERM: the recipe checkpoints and returns early instead of raising.
        raise RuntimeError(f"the tuneforge run did not finish: {status.get('status')} {status}")
    # Cross-check: the saved adapter on a fresh base, through the reference evaluator.
    base = load_model(MODEL, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(run_path / "model"))
    reference = reference_valid_loss(reloaded, plan.validation)
    return {
        "train_seconds": rows[-1]["train_seconds"],
        "steps": len(rows),
        **work,
        "padded_tokens": work["tokens"],  # packed: no padding
        "peak_rss_mb": rss,
        "threads_during_training": threads[0],
        "trainable_parameters": status.get("trainable_parameters"),
        "final_valid_loss": reference,
        "reported_valid_loss": last.get("full_valid_loss"),
        "curve": [
            {"step": r["step"], "train_seconds": r["train_seconds"], "valid_loss": r["valid_loss"]}
            for r in rows
            if r["valid_loss"] is not None
        ],
        "step_log": rows,
        "config": {
            k: v
            for k, v in resolved.model_dump(mode="json").items()
            if k not in ("train_file", "validation_file", "output_dir")
        },
        "run_dir": str(run_path),
        "precision": resolved.precision,
        "precision_reason": plan.precision_reason,
        "gradient_checkpointing": False,
    }


def child_main(spec_path: str) -> int:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    start = time.perf_counter()
    name = spec["name"]
    if name.startswith("tuneforge"):
        result = run_tuneforge(spec)
    else:
        result = run_trl(spec, shipped=name == "trl-shipped")
    result["process_seconds"] = time.perf_counter() - start
    Path(spec["result"]).write_text(json.dumps(result, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------
# Parent: data, roofline, children, report
# ----------------------------------------------------------------------------------------------


def data_stats(train: list[Any], validation: list[Any]) -> dict[str, Any]:
    tokens = sum(len(ex.input_ids) for ex in train)
    trained = sum(ex.n_trained for ex in train)
    return {
        "train_examples": len(train),
        "validation_examples": len(validation),
        "train_tokens": tokens,
        "train_trained_tokens": trained,
        "trained_fraction": trained / tokens,
        "mean_tokens_per_example": tokens / len(train),
        "max_tokens_per_example": max(len(ex.input_ids) for ex in train),
        "validation_trained_tokens": sum(ex.n_trained for ex in validation),
    }


def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    name = spec["name"]
    spec_path = workdir / f"{name}.spec.json"
    result_path = workdir / f"{name}.result.json"
    log_path = workdir / f"{name}.log"
    spec = {**spec, "result": str(result_path)}
    spec_path.write_text(json.dumps(spec, indent=2))
    print(f"  {name}: running (log: {log_path})", flush=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        print(f"  {name}: FAILED (exit {proc.returncode}); last lines of the log:\n{tail}")
        return {"error": f"exit code {proc.returncode}", "log": str(log_path)}
    print(f"  {name}: done in {seconds:.0f} s", flush=True)
    result = json.loads(result_path.read_text())
    result["log"] = str(log_path)
    return result


def derive(
    result: dict[str, Any], dims: ModelDims, rooflines: dict[str, float], target: float | None
) -> None:
    """Add rates, MFU (against the roofline of the precision the contender trained in) and
    time-to-target to a contender's result, in place."""
    roofline = rooflines.get(result.get("precision", "fp32"), rooflines["fp32"])
    result["roofline_gflops_per_s"] = roofline
    seconds = result["train_seconds"]
    result["trained_tokens_per_s"] = result["trained"] / seconds
    result["tokens_per_s"] = result["tokens"] / seconds
    result["examples_per_s"] = result["examples"] / seconds
    flops = useful_flops(dims, result["tokens"], result["sum_len_sq"], result["trained"])
    result["useful_flops"] = flops
    result["useful_gflops_per_s"] = flops / seconds / 1e9
    result["mfu"] = flops / seconds / (roofline * 1e9)
    result["padding_fraction"] = 1 - result["tokens"] / result["padded_tokens"]
    reached = None
    if target is not None:
        for point in result["curve"]:
            if point["valid_loss"] is not None and point["valid_loss"] <= target:
                reached = point
                break
    result["target_valid_loss"] = target
    result["seconds_to_target"] = reached["train_seconds"] if reached else None
    result["step_at_target"] = reached["step"] if reached else None


def _fmt(value: float | None, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def print_table(results: dict[str, dict[str, Any]], epoch_steps: int) -> None:
    header = (
        "| contender | steps | trained tok | train s | trained tok/s | total tok/s | examples/s "
        "| padding | time to baseline loss | final valid loss | self-reported valid loss "
        "| peak RSS | precision | MFU |"
    )
    print(header)
    columns = header.count("|") - 1
    print("|" + "---|" * columns)
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} |" + " |" * (columns - 2))
            continue
        if r["target_valid_loss"] is None:
            reach = "n/a (no baseline)"
        elif r["seconds_to_target"] is None:
            reach = "not reached"
        else:
            reach = f"{r['seconds_to_target']:.1f} s (step {r['step_at_target']})"
        print(
            f"| {name} | {r['steps']}/{epoch_steps} | {r['trained']} | {r['train_seconds']:.1f} "
            f"| {r['trained_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} "
            f"| {r['examples_per_s']:.3f} | {r['padding_fraction']:.1%} | {reach} "
            f"| {r['final_valid_loss']:.4f} | {_fmt(r['reported_valid_loss'], '.4f', '—')} "
            f"| {r['peak_rss_mb']:.0f} MiB | {r.get('precision', 'fp32')} | {r['mfu']:.1%} |"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CPU training throughput: tuneforge vs TRL's SFTTrainer (see the docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script")
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON results (default {DEFAULT_OUT}; with --quick, inside the work dir)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--steps", type=int, default=None, help="cap on steps per contender")
    parser.add_argument(
        "--shipped-steps",
        type=int,
        default=None,
        help=f"trl-shipped's step cap (default {SHIPPED_STEPS}; its emulated bf16 is slow here)",
    )
    parser.add_argument(
        "--evals-per-epoch",
        type=int,
        default=EVALS_PER_EPOCH,
        help="tuneforge's validation passes per epoch (for the time-to-baseline-loss column)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        parser.error(f"--contenders: unknown {unknown}; choose from {','.join(CONTENDERS)}")
    # Always run in the documented order: the baseline's loss is the others' target.
    args.contenders = [n for n in CONTENDERS if n in names]
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)

    import torch

    from tuneforge.data.demo import write_demo
    from tuneforge.models.precision import choose_precision
    from tuneforge.train.plan import make_plan

    settings = QUICK if args.quick else FULL
    # One thread count for everyone: torch's default on this machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or (workdir / "train_throughput.json" if args.quick else DEFAULT_OUT)

    machine = machine_info(threads)
    print("# Training throughput: tuneforge vs TRL SFTTrainer (CPU)")
    print(
        f"cpu: {machine['cpu']} ({machine['usable_cpus']} usable of {machine['logical_cpus']}"
        f" logical, torch capability {machine['torch_cpu_capability']}, bf16 units: "
        f"{', '.join(machine['bf16_units']) or 'none'})"
    )
    print(f"cpu flags: {' '.join(machine['cpu_flags'])}")
    print(
        "versions: "
        + ", ".join(f"{k} {machine[k]}" for k in ("torch", "transformers", "trl", "peft"))
        + f"; python {machine['python']}; torch threads {threads}"
    )
    print(f"mode: {'quick (timings meaningless)' if args.quick else 'full'}; workdir {workdir}")

    paths = write_demo(workdir / "data", seed=0, n=settings.n_examples)
    spec_base: dict[str, Any] = {
        "train_file": str(paths["train"]),
        "validation_file": str(paths["validation"]),
        "workdir": str(workdir),
        "threads": threads,
        "batch_size": settings.batch_size,
    }
    plan = make_plan(
        make_tuneforge_config(
            {**spec_base, "steps": None, "eval_every": None, "n_validation": 1},
            str(workdir / "unused-run-dir"),
        )
    )
    data = data_stats(plan.train, plan.validation)
    epoch_steps = plan.steps_per_epoch
    eval_every = max(1, epoch_steps // args.evals_per_epoch)
    steps = args.steps if args.steps is not None else settings.steps
    # At most one epoch: transformers' max_steps would run on into a second one, tuneforge's not.
    if steps is not None and steps >= epoch_steps:
        steps = None
    shipped_steps = min(args.shipped_steps or settings.shipped_steps, steps or epoch_steps)
    print(
        f"data: {data['train_examples']} train / {data['validation_examples']} validation "
        f"examples, {data['mean_tokens_per_example']:.0f} tokens/example, "
        f"{data['trained_fraction']:.1%} of tokens trained; batch {settings.batch_size}, "
        f"{epoch_steps} steps/epoch"
    )

    # TRL's best precision here, decided the way tuneforge's `precision: auto` decides (CPU
    # flags, then a timed calibration): bf16 autocast where the CPU has bf16 units and it is
    # clearly faster, fp32 on an AVX2-only CPU (bf16 would be emulated there).
    best = choose_precision("auto", "cpu")
    print(f"precision for the TRL baseline: {best.name} ({best.reason})")
    dims = ModelDims.load(MODEL)
    roofs: dict[str, dict[str, Any]] = {}
    for dtype in ("fp32", "bf16") if machine["bf16_units"] else ("fp32",):
        print(f"\n## Roofline ({dtype} torch.mm, M={settings.roofline_m})")
        roofs[dtype] = roof = measure_roofline(
            dims, settings.roofline_m, settings.roofline_reps, data["trained_fraction"], dtype
        )
        for row in roof["gemms"]:
            print(f"  {row['layers']:>12} {row['kind']:<14} {row['gflops_per_s']:8.1f} GFLOP/s")
        print(f"{dtype} roofline (weighted by FLOP share): {roof['gflops_per_s']:.1f} GFLOP/s")
    contender_precision = {
        "trl": best.name,
        "trl-shipped": "bf16",  # SFTConfig's default; recorded from its args by the child
        "tuneforge": "auto",
        "tuneforge-fp32": "fp32",
        "tuneforge-compile": "auto",
    }

    print(f"\n## Contenders ({', '.join(args.contenders)})")
    results: dict[str, dict[str, Any]] = {}
    for name in args.contenders:
        spec = {
            **spec_base,
            "name": name,
            "steps": shipped_steps if name == "trl-shipped" else steps,
            "eval_every": eval_every,
            "n_validation": data["validation_examples"],
            "precision": contender_precision[name],
        }
        results[name] = run_child(spec, workdir)

    baseline = results.get("trl", {})
    target = baseline.get("final_valid_loss")
    for r in results.values():
        if "error" not in r:
            derive(r, dims, {k: v["gflops_per_s"] for k, v in roofs.items()}, target)

    print("\n## Results\n")
    print_table(results, epoch_steps)
    print(
        "\ntrained tok/s: loss-carrying tokens as each contender counts them ÷ train seconds "
        "(evaluation excluded). final valid loss: one reference evaluator for all (fp32, "
        "tuneforge's labels); self-reported: TRL's eval_loss (mean of batch means, labels incl. "
        "the '\\n' after <|im_end|>) or tuneforge's full_valid_loss. MFU: useful FLOPs (same "
        "formula for all) ÷ train seconds ÷ the roofline of the contender's precision."
    )
    check = baseline.get("label_check")
    if check:
        print(
            f"TRL label check: {check['identical_input_ids']}/{check['examples_compared']} "
            f"identical input ids; TRL trains {check['trl_extra_trained_tokens_per_example']:.2f}"
            f" extra tokens/example ({check['trl_only_trained_tokens']})."
        )
    n_lora = dims.n_lora(LORA_RANK)
    for name, r in results.items():
        if "error" not in r and r.get("trainable_parameters") != n_lora:
            # The FLOP formula's N_lora assumes peft's all-linear = the 7 linears of each layer.
            print(
                f"WARNING: {name} trains {r.get('trainable_parameters')} parameters, the FLOP "
                f"formula assumes {n_lora}"
            )
    tf = results.get("tuneforge", {})
    if "error" not in tf and tf.get("reported_valid_loss") is not None:
        print(
            f"tuneforge cross-check: its own full_valid_loss {tf['reported_valid_loss']:.5f} vs "
            f"reference evaluator on the saved adapter {tf['final_valid_loss']:.5f}."
        )

    speedup = None
    if baseline and "error" not in baseline and tf and "error" not in tf:
        speedup = tf["trained_tokens_per_s"] / baseline["trained_tokens_per_s"]
    compiled = results.get("tuneforge-compile", {})
    speedup_compiled = None
    if baseline and "error" not in baseline and compiled and "error" not in compiled:
        speedup_compiled = compiled["trained_tokens_per_s"] / baseline["trained_tokens_per_s"]
        print(f"speedup_vs_trl (tuneforge-compile)={speedup_compiled:.2f}")
    report = {
        "speedup_vs_trl_compile": speedup_compiled,
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "settings": asdict(settings) | {"steps": steps, "shipped_steps": shipped_steps},
        "model": MODEL,
        "model_dims": asdict(dims) | {"n_body_linear": dims.n_body, "n_lora": n_lora},
        "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "dropout": 0.0, "targets": "all-linear"},
        "data": data,
        "tuneforge_eval_every": eval_every,
        "roofline": roofs["fp32"],
        "rooflines": roofs,
        "baseline_precision": {"precision": best.name, "reason": best.reason},
        "flop_formula": FLOP_FORMULA,
        "notes": NOTES,
        "contenders": results,
        "speedup_vs_trl": speedup,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out}")
    failed = any("error" in r for r in results.values())
    print(f"speedup_vs_trl={_fmt(speedup, '.2f', 'nan')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
