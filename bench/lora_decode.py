"""Decoding speed of a LoRA fine-tune the way the server runs it: the base model's linear layers
packed (as the engine packs them), the adapter loaded on top with peft and every forward naming
its rows' adapter (`adapter_names`), greedy, one request. One process, one run: the base model
alone; peft's own LoRA forward; `inference/lora_rows.py`'s lean forward (the engine's LoRA
layers under transformers' forward); and, where it applies, the engine's decode step
(`inference/decode_step.py`) for the base model and the fine-tune, in a plain greedy loop (the
prompt prefilled by transformers' forward into the engine's `BatchCache`, then one `DecodeStep`
per token). Also checks that every LoRA way answers the same tokens, and both base ways too.

The adapter is random (peft's `init_lora_weights=False`, rank 16 on every linear layer, as
tuneforge's default LoRA targets), so no training run is needed:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/lora_decode.py [--tokens 48] [--rows 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def cpu() -> str:
    from tuneforge.models.precision import cpu_info

    return cpu_info().describe()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rows", type=int, default=1, help="requests decoded together")
    args = parser.parse_args()

    from peft import LoraConfig, PeftModel, get_peft_model

    from tuneforge.inference.decode_step import DecodeStep
    from tuneforge.inference.kv_cache import BatchCache
    from tuneforge.inference.lora_rows import use_lora_rows
    from tuneforge.inference.prepack import prepack_linears
    from tuneforge.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    prompt = "<|im_start|>user\nWrite a recipe for pancakes.<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]] * args.rows)

    def timed(model, **extra) -> tuple[float, list[int]]:
        def run(n: int):
            with torch.no_grad():
                return model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                    **extra,
                )

        run(4)
        best, out = float("inf"), None
        for _ in range(3):
            start = time.perf_counter()
            out = run(args.tokens)
            best = min(best, time.perf_counter() - start)
        return best / args.tokens * 1000, out[0, ids.shape[1] :].tolist()

    def stepped(model, step, names) -> tuple[float, list[int]]:
        """ms per token of a greedy loop of `DecodeStep`s (as the engine runs them)."""

        def run(n: int) -> list[int]:
            with torch.no_grad():
                cache = BatchCache()
                extra = {} if names is None else {"adapter_names": names}
                logits = model(input_ids=ids, cache=cache, use_cache=True, **extra).logits
                token = logits[:, -1].argmax(-1)
                out, length = [token], ids.shape[1]
                mask = torch.ones(args.rows, length, dtype=torch.long)
                for _ in range(n - 1):
                    mask = torch.cat([mask, mask.new_ones(args.rows, 1)], dim=1)
                    positions = torch.full((args.rows,), length)
                    logits = step(token, positions, mask, cache, names)
                    assert logits is not None, "DecodeStep declined"
                    token, length = logits.argmax(-1), length + 1
                    out.append(token)
            return [int(t[0]) for t in out]

        run(4)
        best, tokens = float("inf"), []
        for _ in range(3):
            start = time.perf_counter()
            tokens = run(args.tokens)
            best = min(best, time.perf_counter() - start)
        return best / args.tokens * 1000, tokens

    base = load_model(args.model, dtype=torch.float32).eval()
    prepack_linears(base)
    base_ms, base_tokens = timed(base)
    step = DecodeStep.for_model(base)
    if step is not None:
        step_base_ms, step_base_tokens = stepped(base, step, None)

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False
        )
        get_peft_model(load_model(args.model, dtype=torch.float32), config).save_pretrained(folder)
        model = PeftModel.from_pretrained(base, folder, adapter_name="ft").eval()
    names = {"adapter_names": ["ft"] * args.rows}
    peft_ms, peft_tokens = timed(model, **names)
    layers = use_lora_rows(model)
    lean_ms, lean_tokens = timed(model, **names)
    if step is not None:
        step_ms, step_tokens = stepped(model, step, names["adapter_names"])

    print(f"cpu: {cpu()}; torch threads {torch.get_num_threads()} of {os.cpu_count()} cores")
    print(f"{args.model}, {args.rows} row(s), {args.tokens} greedy tokens, best of 3")
    print(f"  base model (packed)              {base_ms:6.1f} ms/token")
    print(f"  + LoRA, peft's forward           {peft_ms:6.1f} ms/token")
    print(f"  + LoRA, lora_rows ({layers} layers) {lean_ms:6.1f} ms/token")
    if step is not None:
        print(f"  base model, DecodeStep           {step_base_ms:6.1f} ms/token")
        print(f"  + LoRA, DecodeStep               {step_ms:6.1f} ms/token")
        same_base = step_base_tokens == base_tokens
        same = peft_tokens == lean_tokens == step_tokens
        print(f"  same tokens: LoRA ways {same}, base ways {same_base}")
    else:
        print("  DecodeStep does not apply here (no kernel, or not a Llama-family model)")
        print(f"  same tokens: {peft_tokens == lean_tokens}")


if __name__ == "__main__":
    main()
