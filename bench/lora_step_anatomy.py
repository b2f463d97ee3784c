"""Why is a plain peft LoRA step barely faster than full fine-tuning on this CPU?

Times one optimizer step of SmolLM2-135M on the same 8×256-token batch (demo data, 25% of
tokens trained) in the configurations between "plain transformers + peft" and our loop, so each
difference is one change:

  full            full fine-tuning, HF forward with labels (logits for every position)
  lora_d05        peft LoRA r=16, dropout 0.05 (a common default), HF forward with labels
  lora_d0         same, dropout 0
  lora_d0_head    same, LM head + loss only at trained positions
  tuneforge       our loop's forward (packed rows, per-example attention, head at trained positions)
  tuneforge_bf16  same, under bf16 autocast (fp32 master weights)
  tuneforge_bf16_once  same, each cast done once (train/bf16.py), as `precision: bf16` trains
  tuneforge_bf16_compiled  same, each layer's MLP and norms through `torch.compile` (inductor
                  fuses RMSNorm, SiLU·mul and LoRA's scaling); the warm-up shows compile time

Run:  .venv/bin/python bench/lora_step_anatomy.py [--steps 3]
Prints seconds per step (median of --steps after one warm-up) and a FLOP estimate per variant.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SEQ, BATCH = 256, 8


def batch_from_demo() -> tuple[torch.Tensor, torch.Tensor]:
    """8 demo examples, each padded/truncated to 256 tokens; labels -100 except assistant."""
    from tuneforge.data.chat_template import ChatTemplate
    from tuneforge.data.demo import write_demo
    from tuneforge.data.formats import load_conversations
    from tuneforge.data.tokenize import encode
    from tuneforge.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    template = ChatTemplate.from_tokenizer(tokenizer)
    folder = Path(tempfile.mkdtemp())
    write_demo(folder, seed=0, n=100)
    examples = load_conversations(folder / "train.jsonl")[:BATCH]
    ids, labels = [], []
    for ex in examples:
        enc = encode(ex.conversation, tokenizer, template, SEQ)
        pad = SEQ - enc.n_tokens
        ids.append(enc.input_ids + [tokenizer.pad_token_id] * pad)
        labels.append(enc.labels + [-100] * pad)
    return torch.tensor(ids), torch.tensor(labels)


def make_model(kind: str):
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import load_model

    torch.manual_seed(0)
    model = load_model("smollm2-135m-instruct")
    if kind.startswith("lora") or kind.startswith("tuneforge"):
        dropout = 0.05 if kind == "lora_d05" else 0.0
        config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    model.train()
    return model


def step_fn(kind: str, model, ids: torch.Tensor, labels: torch.Tensor):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    if kind.startswith("tuneforge"):
        from tuneforge.models.attention import use_varlen_attention
        from tuneforge.train.plan import TokenizedExample
        from tuneforge.train.recipe import forward_sums, make_micro_batch

        use_varlen_attention(model)
        examples = []
        for row_ids, row_labels in zip(ids.tolist(), labels.tolist(), strict=True):
            examples.append(TokenizedExample(row_ids, row_labels))
        mb = make_micro_batch(examples)
        n = mb.n_trained

        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in kind)
        if kind in ("tuneforge_bf16_once", "tuneforge_bf16_compiled"):
            from tuneforge.train.bf16 import cast_once_for_bf16

            cast_once_for_bf16(model)
        if kind == "tuneforge_bf16_compiled":
            # Not the whole layer: attention takes the packed rows' example bounds as a Python
            # list, which would recompile at every new packing. The MLP and the norms see only
            # tensors whose length varies (dynamic=True: one compile for all lengths).
            for layer in model.get_base_model().get_decoder().layers:
                for part in ("mlp", "input_layernorm", "post_attention_layernorm"):
                    getattr(layer, part).compile(dynamic=True)

        def step() -> None:
            with autocast:
                loss, _ = forward_sums(model, mb, torch.device("cpu"))
            (loss / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def step() -> None:
        if kind == "lora_d0_head":
            lm = model.get_base_model()
            hidden = lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != -100
            logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
            loss = F.cross_entropy(logits, targets[keep])
        else:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default="full,lora_d05,lora_d0,lora_d0_head,tuneforge")
    args = parser.parse_args()
    ids, labels = batch_from_demo()
    trained = int((labels[:, 1:] != -100).sum())
    print(f"batch {BATCH}×{SEQ} tokens, {trained} trained; torch threads {torch.get_num_threads()}")
    for kind in args.variants.split(","):
        model = make_model(kind)
        step = step_fn(kind, model, ids, labels)
        start = time.perf_counter()
        step()  # warm-up
        warm = time.perf_counter() - start
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(
            f"{kind:>14}: {median:6.2f} s/step  {BATCH * SEQ / median:6.1f} tokens/s  "
            f"(warm-up {warm:.1f} s)",
            flush=True,
        )
        del model


if __name__ == "__main__":
    main()
