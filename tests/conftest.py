"""Shared fixtures.

The converted default model (SmolLM2-135M-Instruct, ~30 s to convert from its GGUF the first
time) is cached in `.tuneforge-test-home/` at the repository root and reused across runs; tests
that need a clean home point TUNEFORGE_HOME at a temp dir themselves. Unit tests train and
generate with a tiny random 2-layer model that shares the real tokenizer and chat template.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_HOME = Path(os.environ.get("TUNEFORGE_TEST_HOME", REPO / ".tuneforge-test-home"))
os.environ["TUNEFORGE_HOME"] = str(TEST_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# One kernels folder for every test home (and the servers and CLIs the tests start): the
# kernel's per-machine measurement takes ~20 s per model shape, once instead of once per home.
os.environ.setdefault("TUNEFORGE_KERNEL_DIR", str(TEST_HOME / "kernels"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CLI commands pick torch threads from the cores idle right now; tests fix the count instead, so
# the suite runs alike on a busy or an idle machine (tests/test_device.py covers the choice).
# Under pytest-xdist (scripts/test.sh runs 2 workers) each worker gets its share of the cores,
# for the CLI it runs (TUNEFORGE_THREADS) and for torch in its own process: 2 workers × 2 threads
# on 2 cores slow torch down several times over. A TUNEFORGE_THREADS of the user's own is kept;
# the one the xdist controller's conftest set (workers inherit its environment) is not.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if "TUNEFORGE_THREADS" not in os.environ or os.environ.get("TUNEFORGE_TEST_THREADS") == "1":
    os.environ["TUNEFORGE_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))
    os.environ["TUNEFORGE_TEST_THREADS"] = "1"  # set here, so a worker may set it again
if "PYTEST_XDIST_WORKER" in os.environ:
    import torch

    torch.set_num_threads(int(os.environ["TUNEFORGE_THREADS"]))

DEFAULT = "smollm2-135m-instruct"


# The longest test files, longest first: under pytest-xdist's `--dist loadfile` a file starts
# where a worker is free, so the README's (every README command, ~6 minutes) goes first instead
# of running alone at the end while the other worker idles.
LONG_FILES = ("test_readme.py", "test_studio_browser.py", "test_eval.py", "test_jobs.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable otherwise


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from tuneforge.models import resolve_model

    return Path(resolve_model(DEFAULT))


@pytest.fixture(scope="session")
def tokenizer(default_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def template(tokenizer):
    from tuneforge.data.chat_template import ChatTemplate

    return ChatTemplate.from_tokenizer(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(default_model_dir: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template (~3.5M params)."""
    from tuneforge.locks import file_lock

    target = TEST_HOME / "tiny-llama"
    with file_lock(TEST_HOME / ".tiny-llama.lock"):  # test workers make it once, one at a time
        if not (target / "model.safetensors").exists():
            _write_tiny_model(target, default_model_dir)
    return target


def _write_tiny_model(target: Path, default_model_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    from helpers import TINY_SHAPE

    config = LlamaConfig(**TINY_SHAPE, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    LlamaForCausalLM(config).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """60 demo examples (seed 1) split three ways, shared by the training tests."""
    from tuneforge.data.demo import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out, seed=1, n=60)
    return out


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TUNEFORGE_HOME", str(home))
    return home


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from tuneforge.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return exc.value.code, captured.out, captured.err

    return run
