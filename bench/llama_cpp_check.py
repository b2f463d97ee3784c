"""Does llama.cpp itself run our GGUF export as tuneforge runs the model? (issue 16)

For a fine-tuned run: export it as GGUF (f16, q8_0), load each file in llama.cpp (the
llama-cpp-python 0.3.36 build that `bench/llama_cpp_build.sh` makes once per machine), and on the
demo test prompts (system + user message of `test.jsonl`) check

- the chat formatting: the prompt tokens llama.cpp's own chat path evaluates (the GGUF's
  `tokenizer.chat_template` rendered by llama-cpp-python, then tokenized) equal tuneforge's, with
  exactly one start token (`<|im_start|>`, which SmolLM2 calls BOS); and tokenizing the prompt as
  llama-server / Ollama do (`add_bos` from the file's metadata) adds no second one;
- greedy decoding from those tokens gives the same token ids as `tuneforge generate` (the same
  `generate` function, greedy), including the final end-of-turn token: llama.cpp stops there;
- `create_chat_completion` (temperature 0) answers with the same text and `finish_reason: stop`.

    bench/llama_cpp_build.sh                       # once per machine (8-20 min on 2 cores)
    .venv/bin/python bench/llama_cpp_check.py --run RUN --data DATA -n 20 --work /tmp/llama-check

Exit status 1 when f16 disagrees on any prompt, when q8_0 agrees on fewer than 18 of 20 (scaled to
-n), or when a formatting check fails; the figures go to stdout and, as JSON, to --json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
Q8_MIN_SHARE = 18 / 20  # the bar for q8_0 free-running greedy agreement


def llama_cpp_folder() -> Path:
    """The cached build's folder (built now if this machine has none)."""
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable))
    done = subprocess.run(
        ["bash", str(HERE / "llama_cpp_build.sh")], env=env, stdout=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        sys.exit(f"building llama-cpp-python failed (exit {done.returncode}); see its output above")
    return Path(done.stdout.strip().splitlines()[-1])


def cpu() -> dict[str, str]:
    info: dict[str, str] = {"machine": platform.machine(), "cores": str(os.cpu_count())}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and "model" not in info:
            info["model"] = value.strip()
        if key.strip() == "flags" and "flags" not in info:
            simd = [f for f in value.split() if f.startswith(("avx", "amx", "fma", "f16c"))]
            info["flags"] = " ".join(simd)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a fine-tuned run directory")
    parser.add_argument("--data", type=Path, required=True, help="folder with test.jsonl")
    parser.add_argument("-n", type=int, default=20, help="test prompts")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneforge-llama-check"))
    parser.add_argument("--quants", default="f16,q8_0")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--reference-cache",
        type=Path,
        help="keep tuneforge's answers here and reuse them (same run, -n, --max-tokens)",
    )
    parser.add_argument(
        "--cross-check",
        action="store_true",
        help="also answer with transformers on each exported file's own (dequantized) weights: "
        "tells rounding of the weights from what llama.cpp's kernels do",
    )
    parser.add_argument(
        "--kv-f32", action="store_true", help="llama.cpp's KV cache in f32 (default: its f16)"
    )
    args = parser.parse_args()

    folder = llama_cpp_folder()
    sys.path.append(str(folder))  # appended: the venv's own numpy/jinja2 stay first
    import llama_cpp

    from tuneforge.data.formats import load_conversations
    from tuneforge.inference.generate import generate
    from tuneforge.inference.gguf_export import export_gguf
    from tuneforge.inference.load import LoadedModel, load_for_inference

    threads = int(os.environ.get("TUNEFORGE_THREADS", os.cpu_count() or 1))
    loaded = load_for_inference(args.run)
    eos_ids = set(loaded.text.eos_ids)
    examples = load_conversations(args.data / "test.jsonl")[: args.n]
    prompts = [list(ex.conversation.messages[:-1]) for ex in examples]  # system + user

    def answers(model: LoadedModel) -> list[dict]:
        out = []
        for messages in prompts:
            ids = model.text.prompt_ids(messages)
            text, new = generate(model, messages, max_new_tokens=args.max_tokens)
            out.append({"prompt": ids, "answer": new, "text": text})
        return out

    start = time.perf_counter()
    key = {"run": str(args.run.resolve()), "n": args.n, "max_tokens": args.max_tokens}
    cache = args.reference_cache
    if cache and cache.exists() and json.loads(cache.read_text())["key"] == key:
        reference = json.loads(cache.read_text())["answers"]
    else:
        reference = answers(loaded)
        if cache:
            cache.write_text(json.dumps({"key": key, "answers": reference}))
    torch_seconds = time.perf_counter() - start

    report: dict = {
        "run": str(args.run),
        "llama_cpp_python": llama_cpp.__version__,
        "build": {
            "folder": str(folder),
            "cmake_args": (folder / "CMAKE_ARGS").read_text().strip(),
            "build_seconds": int((folder / "BUILD_SECONDS").read_text()),
        },
        "cpu": cpu(),
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "tuneforge_generate_seconds": round(torch_seconds, 1),
        "quants": {},
    }
    failed = []
    args.work.mkdir(parents=True, exist_ok=True)
    for quant in args.quants.split(","):
        path = args.work / f"model.{quant}.gguf"
        t0 = time.perf_counter()
        export_gguf(args.run, path, quant=quant, overwrite=True)
        export_seconds = time.perf_counter() - t0
        on_weights = None
        if args.cross_check and quant != "f32":
            import dataclasses

            import torch
            from transformers import AutoModelForCausalLM

            dequantized = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            ).eval()
            on_weights = answers(dataclasses.replace(loaded, model=dequantized))
            del dequantized
        kv = {"type_k": 0, "type_v": 0} if args.kv_f32 else {}  # GGML_TYPE_F32
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=2048, n_threads=threads, seed=0, verbose=False, **kv
        )
        meta = llm.metadata
        bos = llm.token_bos()
        same_prompt = same_answer = stopped = same_chat = one_bos = no_second_bos = 0
        same_as_weights = 0
        disagreements = []
        t0 = time.perf_counter()
        for i, (messages, ref) in enumerate(zip(prompts, reference, strict=True)):
            openai = [{"role": m.role, "content": m.content} for m in messages]
            # 1. llama.cpp's own chat path: template from the GGUF, its tokenization.
            chat = llm.create_chat_completion(
                openai,
                temperature=0.0,
                top_k=1,
                top_p=1.0,
                min_p=0.0,
                repeat_penalty=1.0,
                max_tokens=args.max_tokens,
            )
            n_prompt = chat["usage"]["prompt_tokens"]
            chat_prompt = [int(t) for t in llm._input_ids[:n_prompt]]
            same_prompt += chat_prompt == ref["prompt"]
            one_bos += chat_prompt[:1] == [bos] and chat_prompt[1:2] != [bos]
            same_chat += (
                chat["choices"][0]["message"]["content"].strip() == ref["text"].strip()
                and chat["choices"][0]["finish_reason"] == "stop"
            )
            # 2. As llama-server and Ollama tokenize a rendered prompt: BOS only if the file's
            #    tokenizer.ggml.add_bos_token says so (it must not: the template writes it).
            text = loaded.tokenizer.decode(ref["prompt"])
            as_server = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            no_second_bos += as_server == ref["prompt"]
            # 3. Greedy tokens from tuneforge's prompt, until an end-of-generation token.
            answer = []
            for token in llm.generate(
                ref["prompt"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0
            ):
                answer.append(int(token))
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    break
                if len(answer) >= args.max_tokens:
                    break
            same_answer += answer == ref["answer"]
            if on_weights is not None:
                same_as_weights += answer == on_weights[i]["answer"]
            stopped += bool(answer) and answer[-1] in eos_ids and answer == ref["answer"]
            if answer != ref["answer"]:
                first = next(
                    (
                        j
                        for j, (a, b) in enumerate(zip(answer, ref["answer"], strict=False))
                        if a != b
                    ),
                    min(len(answer), len(ref["answer"])),
                )
                disagreements.append({"prompt": i, "first_different_token": first})
        seconds = time.perf_counter() - t0
        n = len(prompts)
        result = {
            "file_bytes": path.stat().st_size,
            "export_seconds": round(export_seconds, 1),
            "llama_cpp_seconds": round(seconds, 1),
            "metadata": {
                k: meta.get(k)
                for k in (
                    "general.architecture",
                    "tokenizer.ggml.pre",
                    "tokenizer.ggml.add_bos_token",
                    "tokenizer.ggml.bos_token_id",
                    "tokenizer.ggml.eos_token_id",
                )
            },
            "same_prompt_tokens": same_prompt,
            "one_bos": one_bos,
            "no_second_bos_as_server": no_second_bos,
            "same_greedy_tokens": same_answer,
            "stopped_at_end_of_turn": stopped,
            "same_chat_completion_text": same_chat,
            "disagreements": disagreements,
            "kv_cache": "f32" if args.kv_f32 else "f16",
        }
        if on_weights is not None:
            result["transformers_on_this_file_same_as_tuneforge"] = sum(
                a["answer"] == r["answer"] for a, r in zip(on_weights, reference, strict=True)
            )
            result["llama_cpp_same_as_transformers_on_this_file"] = same_as_weights
        report["quants"][quant] = result
        print(
            f"{quant}: prompt tokens equal {same_prompt}/{n}, one BOS {one_bos}/{n}, no second "
            f"BOS as llama-server tokenizes {no_second_bos}/{n}; greedy tokens equal "
            f"{same_answer}/{n} (stopped at the end-of-turn token {stopped}/{n}); chat "
            f"completion text equal {same_chat}/{n}; {seconds:.1f} s",
            flush=True,
        )
        if on_weights is not None:
            print(
                f"{quant}: transformers on this file's weights = tuneforge "
                f"{result['transformers_on_this_file_same_as_tuneforge']}/{n}; llama.cpp = "
                f"transformers on this file {same_as_weights}/{n}",
                flush=True,
            )
        if min(same_prompt, one_bos, no_second_bos) < n:
            failed.append(f"{quant}: chat formatting")
        bar = n if quant in ("f32", "f16", "bf16") else math.ceil(Q8_MIN_SHARE * n - 1e-9)
        if same_answer < bar:
            failed.append(f"{quant}: {same_answer}/{n} greedy answers equal (need {bar})")
        del llm
    report["failed"] = failed
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("build", "cpu", "tuneforge_generate_seconds")}))
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
