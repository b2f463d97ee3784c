"""Where do an f16 / q8_0 GGUF export's greedy answers part from the fp32 model's, and why? (#16)

`bench/llama_cpp_check.py` counts the demo test prompts on which an export answers with the fp32
run's greedy tokens (f16 19/20, q8_0 14-17/20 so far). This script measures what those misses
are made of. For each prompt it takes the fp32 run's greedy answer (`tuneforge generate`) and
runs prompt + answer once through the fp32 model and once through each export read back with
transformers' GGUF loader (weights dequantized to fp32: only the rounding of the weights
differs). At every answer position it records

- the fp32 *gap*: logit of the greedy token minus the runner-up's (how decided the choice was);
- the export's *shift* of that gap: (its logit of the fp32 token − its logit of the fp32
  runner-up) − the fp32 gap (how much the rounded weights move the decision);
- a *flip*: the export's own argmax is another token.

Greedy decoding parts at a prompt's first flip (up to there both decode the same tokens), so the
prompts without a flip are the prompts answered the same. The figures say whether the flips sit
at near-ties (an fp32 gap smaller than the shifts the rounding makes everywhere) or at decided
positions (which would point at a conversion bug).

    .venv/bin/python bench/gguf_margins.py --run RUN --data DATA -n 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from llama_cpp_check import cpu  # the machine record of the llama.cpp check


@torch.no_grad()
def answer_logits(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """Logits (len(answer), vocab) of the positions that predict each answer token."""
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)]


def quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q)) if values.numel() else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a fine-tuned run directory")
    parser.add_argument("--data", type=Path, required=True, help="folder with test.jsonl")
    parser.add_argument("-n", type=int, default=20, help="test prompts")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--quants", default="f16,q8_0")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from tuneforge.data.formats import load_conversations
    from tuneforge.inference.generate import generate
    from tuneforge.inference.gguf_export import export_gguf
    from tuneforge.inference.load import load_for_inference

    start = time.perf_counter()
    loaded = load_for_inference(args.run)
    examples = load_conversations(args.data / "test.jsonl")[: args.n]
    prompts = [list(ex.conversation.messages[:-1]) for ex in examples]  # system + user
    reference = []
    for messages in prompts:
        _, new = generate(loaded, messages, max_new_tokens=args.max_tokens)
        reference.append((loaded.text.prompt_ids(messages), list(new)))
    fp32 = [answer_logits(loaded.model, p, a) for p, a in reference]
    # The greedy tokens are fp32's argmax of one full pass too (else a KV-cache difference of the
    # decode would already part them; counted, not assumed).
    self_flips = sum(
        int((f.argmax(-1) != torch.tensor(a)).sum())
        for f, (_, a) in zip(fp32, reference, strict=True)
    )
    gaps = []
    for f in fp32:
        top2 = f.topk(2, dim=-1)
        gaps.append(top2.values[:, 0] - top2.values[:, 1])
    all_gaps = torch.cat(gaps)
    report: dict = {
        "run": str(args.run),
        "cpu": cpu(),
        "torch": torch.__version__,
        "prompts": len(prompts),
        "answer_positions": all_gaps.numel(),
        "fp32_full_pass_vs_decode_flips": self_flips,
        "fp32_gap": {
            "median": round(quantile(all_gaps, 0.5), 3),
            "p01": round(quantile(all_gaps, 0.01), 4),
            "min": round(float(all_gaps.min()), 5),
        },
        "quants": {},
    }
    with tempfile.TemporaryDirectory() as work:
        for quant in args.quants.split(","):
            path = Path(work) / f"model.{quant}.gguf"
            export_gguf(args.run, path, quant=quant, overwrite=True)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            ).eval()
            shifts, first_flips, later_flips = [], [], 0
            for i, ((p, a), f, gap) in enumerate(zip(reference, fp32, gaps, strict=True)):
                q = answer_logits(model, p, a)
                top2 = f.topk(2, dim=-1).indices
                q_gap = q.gather(1, top2[:, :1])[:, 0] - q.gather(1, top2[:, 1:])[:, 0]
                shifts.append(q_gap - gap)
                flips = (q.argmax(-1) != f.argmax(-1)).nonzero().flatten().tolist()
                if flips:
                    t = flips[0]
                    rank = float((all_gaps < gap[t]).double().mean())
                    first_flips.append(
                        {
                            "prompt": i,
                            "position": t,
                            "of": len(a),
                            "fp32_gap": round(float(gap[t]), 4),
                            "shift": round(float(q_gap[t] - gap[t]), 4),
                            "gap_percentile": round(100 * rank, 2),
                        }
                    )
                    later_flips += len(flips) - 1
            all_shifts = torch.cat(shifts).abs()
            p99 = quantile(all_shifts, 0.99)
            near_tie = [bool((gap < p99).any()) for gap in gaps]
            flipped = {ff["prompt"] for ff in first_flips}
            report["quants"][quant] = {
                "same_greedy_answers": len(prompts) - len(first_flips),
                "shift_abs": {
                    "median": round(quantile(all_shifts, 0.5), 4),
                    "p99": round(p99, 4),
                    "max": round(float(all_shifts.max()), 4),
                },
                "first_flips": first_flips,
                "flips_after_the_first_on_the_fp32_path": later_flips,
                "positions_with_gap_below_p99_shift": int((all_gaps < p99).sum()),
                "prompts_with_a_gap_below_p99_shift": sum(near_tie),
                "flipped_prompts_without_such_a_gap": sorted(i for i in flipped if not near_tie[i]),
            }
            del model
    report["seconds"] = round(time.perf_counter() - start, 1)

    print(
        f"{report['cpu'].get('model', '?')} ({report['cpu'].get('flags', '')}), "
        f"torch {torch.__version__}"
    )
    print(
        f"{len(prompts)} prompts, {report['answer_positions']} answer positions; fp32 gap median "
        f"{report['fp32_gap']['median']}, 1st percentile {report['fp32_gap']['p01']}, "
        f"min {report['fp32_gap']['min']}; fp32 full pass vs decode flips: {self_flips}"
    )
    for quant, r in report["quants"].items():
        s = r["shift_abs"]
        print(
            f"{quant}: same greedy answers {r['same_greedy_answers']}/{len(prompts)}; |shift| "
            f"median {s['median']} p99 {s['p99']} max {s['max']}; positions with an fp32 gap "
            f"below the p99 shift: {r['positions_with_gap_below_p99_shift']} "
            f"(in {r['prompts_with_a_gap_below_p99_shift']} prompts); flipped prompts without "
            f"one: {r['flipped_prompts_without_such_a_gap']}"
        )
        for ff in r["first_flips"]:
            print(
                f"   prompt {ff['prompt']}: parts at token {ff['position']} of {ff['of']}, fp32 "
                f"gap {ff['fp32_gap']} (percentile {ff['gap_percentile']} of all gaps), "
                f"shift {ff['shift']}"
            )
    print(f"{report['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
