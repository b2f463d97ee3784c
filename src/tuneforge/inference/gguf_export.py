"""`tuneforge export RUN --gguf OUT.gguf`: a fine-tuned run (LoRA merged first) or a base model as
one GGUF file that llama.cpp, Ollama and LM Studio load, written with the `gguf` package.

We follow llama.cpp's own converter (`convert_hf_to_gguf.py`, the llama and qwen2 classes) rule for
rule, because a GGUF that only *looks* right fails in ways users cannot debug (garbage answers,
rambling past the answer, a second BOS token):

- tensors in llama.cpp's names (`gguf.get_tensor_name_map`); torch's `(out, in)` shapes as they
  are (the writer reverses them); 1-D tensors and norms in F32, the rest in the chosen type, and
  F16 for a tensor whose rows are not a whole number of quantization blocks; no `output.weight`
  when the embeddings are tied;
- for `llama`, the Q and K projections permuted from Hugging Face's rotate-half RoPE layout back
  to the interleaved one llama.cpp computes with (`permute` below); `qwen2` uses NEOX RoPE and is
  written as it is, with its Q/K/V biases;
- the tokenizer as llama.cpp's BPE ("gpt2") vocabulary: every token in id order with its type
  (control for special added tokens), the merges, the special ids, `add_bos_token` false when the
  chat template writes its own start token, and the chat template the run was trained with.

Quantization is pure Python (`gguf.quants`): f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1. The
k-quants (q4_k_m …) need llama.cpp's `llama-quantize`; we say so rather than write something else.
The file is written to a temp file beside OUT and renamed: a crash or a full disk leaves no
half-written GGUF.

`--ollama DIR` also writes a Modelfile whose TEMPLATE (Go `text/template`), SYSTEM and stop
parameters render what our Jinja template renders (tests/test_gguf.py checks it on conversations
with and without a system message).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import ModelError, UsageError

# --quant → (tensor type, general.file_type)
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
# Hugging Face architecture → llama.cpp's; both llama-like (RMSNorm, SwiGLU, RoPE, GQA).
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
SMOLLM2_VOCAB = 49152  # llama.cpp names SmolLM2's pre-tokenizer "smollm" (by a tokenization hash)


@dataclass(frozen=True)
class GGUFExport:
    path: Path
    quant: str
    architecture: str
    tensors: int
    bytes: int


def _types(quant: str) -> tuple[Any, Any]:
    import gguf

    T, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {
        "f32": (T.F32, F.ALL_F32),
        "f16": (T.F16, F.MOSTLY_F16),
        "bf16": (T.BF16, F.MOSTLY_BF16),
        "q8_0": (T.Q8_0, F.MOSTLY_Q8_0),
        "q4_0": (T.Q4_0, F.MOSTLY_Q4_0),
        "q4_1": (T.Q4_1, F.MOSTLY_Q4_1),
        "q5_0": (T.Q5_0, F.MOSTLY_Q5_0),
        "q5_1": (T.Q5_1, F.MOSTLY_Q5_1),
    }[quant]


def check_quant(quant: str) -> str:
    quant = quant.lower()
    if quant in K_QUANTS:
        raise UsageError(
            f"--quant {quant}: k-quants are made by llama.cpp's llama-quantize, which tuneforge "
            "does not ship",
            hint=f"export --quant f16 and run `llama-quantize OUT.gguf OUT-{quant}.gguf "
            f"{quant.upper()}`, or use one of {', '.join(QUANTS)}",
        )
    if quant not in QUANTS:
        raise UsageError(f"--quant {quant}: unknown type", hint=f"use one of {', '.join(QUANTS)}")
    return quant


def gguf_architecture(hf_arch: str) -> str:
    """llama.cpp's name for a Hugging Face architecture; ModelError when we cannot convert it."""
    arch = ARCHITECTURES.get(hf_arch)
    if arch is None:
        raise ModelError(
            f"GGUF export of {hf_arch} is not supported",
            hint=f"supported: {', '.join(ARCHITECTURES)}; `tuneforge export RUN --merged DIR` "
            "writes a folder llama.cpp's convert_hf_to_gguf.py can convert",
        )
    return arch


def check_architecture(model_or_run: str | Path) -> str | None:
    """The GGUF architecture of a model or a run's base, from its config.json alone (no weights
    loaded); None when the model is a hub id not on this machine (checked when it loads)."""
    import json

    from tuneforge import run_dir as rd
    from tuneforge.inference.load import is_run_dir
    from tuneforge.models.registry import resolve_model

    base = rd.read_config(Path(model_or_run))["model"] if is_run_dir(model_or_run) else model_or_run
    where = resolve_model(str(base))
    if not isinstance(where, Path):
        return None
    config = json.loads((where / "config.json").read_text())
    return gguf_architecture((config.get("architectures") or ["unknown"])[0])


def permute(weight: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's `LlamaModel.permute`: Hugging Face's rotate-half Q/K rows → interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(
    model: Any,
    tokenizer: Any,
    chat_template: str,
    out: Path,
    *,
    quant: str = "f16",
    name: str = "model",
    overwrite: bool = False,
    permute_qk: bool = True,
) -> GGUFExport:
    """Write a loaded (merged) causal LM and its tokenizer as one GGUF file at `out`.

    `permute_qk=False` exists for the test that proves a missing permutation is caught.
    """
    import gguf
    import numpy as np
    import torch

    quant = check_quant(quant)
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists", hint="pass --overwrite, or name another file")
    config = model.config
    hf_arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    arch = gguf_architecture(hf_arch)
    tensor_type, file_type = _types(quant)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    n_blocks = config.num_hidden_layers
    arch_enum = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch]
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch=arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_block_count(n_blocks)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or _rope_theta(config)))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
        _add_tokenizer(writer, tokenizer, chat_template, config.vocab_size, arch)

        state = {k: v.detach().to(torch.float32).cpu() for k, v in model.state_dict().items()}
        tied = bool(getattr(config, "tie_word_embeddings", False))
        count = 0
        for key, value in state.items():
            if key == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd
            gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                if key.endswith("rotary_emb.inv_freq"):
                    continue
                raise ModelError(f"GGUF export: no llama.cpp name for tensor {key} ({hf_arch})")
            if arch == "llama" and permute_qk:
                if ".self_attn.q_proj." in key:
                    value = permute(value, n_head, n_head)
                elif ".self_attn.k_proj." in key:
                    value = permute(value, n_head, n_kv)
            data = value.numpy()
            array, options = _encode(data, gguf_name, tensor_type, np, gguf)
            writer.add_tensor(gguf_name, array, **options)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GGUFExport(out, quant, arch, count, out.stat().st_size)


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", 10000.0))


def _encode(data: Any, name: str, tensor_type: Any, np: Any, gguf: Any) -> tuple[Any, dict]:
    """(array, add_tensor kwargs) for one tensor in llama.cpp's type plan."""
    T = gguf.GGMLQuantizationType
    if data.ndim == 1 or name.endswith("_norm.weight"):
        return data.astype(np.float32), {}
    if tensor_type == T.F32:
        return data.astype(np.float32), {}
    if tensor_type == T.F16:
        return data.astype(np.float16), {}
    block = gguf.GGML_QUANT_SIZES[tensor_type][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), {}  # as llama.cpp does for rows of a partial block
    return gguf.quants.quantize(data.astype(np.float32), tensor_type), {"raw_dtype": tensor_type}


def _add_tokenizer(
    writer: Any, tokenizer: Any, chat_template: str, n_vocab: int, arch: str
) -> None:
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id → AddedToken
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer, arch, n_vocab))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
        special.chat_template = chat_template  # the template the run was trained with
        # The template writes its own start token (`<|im_start|>…`): a loader that also added
        # BOS would start every prompt with two (llama.cpp warns, answers degrade).
        special.add_special_token["bos"] = False
        special.add_to_gguf(writer)
    writer.add_add_space_prefix(False)


def _pre_tokenizer(tokenizer: Any, arch: str, n_vocab: int) -> str:
    """llama.cpp picks its pre-tokenizer regex by name; it recognises SmolLM2's as "smollm" and
    Qwen2's as "qwen2" (by hashing a probe tokenization, which we do not repeat here)."""
    if arch == "qwen2":
        return "qwen2"
    if n_vocab == SMOLLM2_VOCAB and tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>":
        return "smollm"
    return "default"


# ---------------------------------------------------------------------------------------------
# Ollama
# ---------------------------------------------------------------------------------------------

# Go text/template for ChatML (SmolLM2, Qwen2): with Ollama's rules (SYSTEM is prepended as a
# system message when the first message is not one) this renders what the Jinja template renders
# with add_generation_prompt=True.
CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def default_system(template: Any) -> str | None:
    """The system prompt the chat template adds when a conversation has none (SmolLM2's)."""
    from tuneforge.data.conversation import Conversation, Message

    with_default = template.render_conversation(
        Conversation((Message("user", "x"),)), add_generation_prompt=False
    )
    start = "<|im_start|>system\n"
    if not with_default.startswith(start):
        return None
    return with_default[len(start) : with_default.index("<|im_end|>")]


def modelfile(
    gguf_path: Path,
    folder: Path,
    template: Any,
    stop_tokens: list[str],
    context: int,
    trained_system: str | None = None,
) -> str:
    """The Modelfile text for a ChatML model: FROM (relative when the GGUF is in `folder`),
    TEMPLATE, SYSTEM (the template's default), one `PARAMETER stop` per end-of-turn token, and
    greedy decoding as tuneforge's eval used."""
    if "<|im_start|>" not in template.source:
        raise UsageError(
            "--ollama: only ChatML chat templates (SmolLM2, Qwen2) have a Modelfile template yet",
            hint="export --gguf alone, and write the Modelfile TEMPLATE by hand",
        )
    try:
        source = "./" + str(Path(gguf_path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        source = str(Path(gguf_path).resolve())
    lines = [
        "# Written by `tuneforge export`; create the model with:",
        f"#   ollama create NAME -f {Path(folder) / 'Modelfile'}",
    ]
    if trained_system:
        lines.append(f"# Trained with the system prompt: {trained_system!r}; send it as the")
        lines.append("# first (system) message to get the answers tuneforge measured.")
    lines.append("# Ollama joins consecutive messages of one role into one turn (a blank line")
    lines.append("# between them); tuneforge renders each as its own turn.")
    lines += [f"FROM {source}", f'TEMPLATE """{CHATML_TEMPLATE}"""']
    system = default_system(template)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += [f"PARAMETER num_ctx {context}", "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"


def chatml_stop_tokens(tokenizer: Any, eos_ids: frozenset[int]) -> list[str]:
    """Every end-of-turn token as text, `<|im_start|>` too (a model that opens a new turn has
    finished its answer)."""
    stops = [tokenizer.convert_ids_to_tokens(i) for i in sorted(eos_ids)]
    if "<|im_start|>" in tokenizer.get_vocab() and "<|im_start|>" not in stops:
        stops.append("<|im_start|>")
    return stops


def export_gguf(
    model_or_run: str | Path,
    out: Path | None,
    *,
    quant: str = "f16",
    ollama: Path | None = None,
    overwrite: bool = False,
    weights: Path | None = None,
) -> tuple[GGUFExport, Path | None]:
    """A run (its adapter merged into the base), a checkpoint (`weights`) or a base model → GGUF,
    and with `ollama` a Modelfile beside it. Returns the export and the Modelfile's path."""
    from tuneforge import run_dir as rd
    from tuneforge.inference.load import load_for_inference

    quant = check_quant(quant)
    if out is None:
        if ollama is None:
            raise UsageError("name the output", hint="pass --gguf OUT.gguf (and/or --ollama DIR)")
        out = Path(ollama) / f"model.{quant}.gguf"
    if ollama is not None and (Path(ollama) / "Modelfile").exists() and not overwrite:
        raise UsageError(
            f"{Path(ollama) / 'Modelfile'} already exists",
            hint="pass --overwrite, or another --ollama DIR",
        )
    loaded = load_for_inference(model_or_run, weights=weights)
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    name = loaded.name
    result = write_gguf(
        model,
        loaded.tokenizer,
        loaded.template.source,
        Path(out),
        quant=quant,
        name=name,
        overwrite=overwrite,
    )
    if ollama is None:
        return result, None
    trained_system = None
    if loaded.run_dir is not None:
        trained_system = (rd.read_status(loaded.run_dir) or {}).get("system_prompt")
    text = modelfile(
        result.path,
        Path(ollama),
        loaded.template,
        chatml_stop_tokens(loaded.tokenizer, loaded.text.eos_ids),
        loaded.text.context_length,
        trained_system,
    )
    from tuneforge.atomic import atomic_write_text

    path = Path(ollama) / "Modelfile"
    atomic_write_text(path, text)
    return result, path
