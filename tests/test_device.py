"""How many CPU threads the CLI gives torch: the cores idle right now, or TUNEFORGE_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tuneforge.errors import UsageError
from tuneforge.models import device


def test_free_cores_sees_a_busy_process():
    usable = os.cpu_count() or 1
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        free = device.free_cores(sample_seconds=0.5)
    finally:
        busy.kill()
        busy.wait()
    assert free is not None
    assert free <= usable - 0.5  # one core is taken by the loop


def test_threads_follow_the_idle_cores(monkeypatch):
    monkeypatch.delenv("TUNEFORGE_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.setattr(device, "free_cores", lambda: 0.9)
    assert device.choose_threads() == (1, "1 of 2 cores busy with other work")
    monkeypatch.setattr(device, "free_cores", lambda: 0.1)
    assert device.choose_threads()[0] == 1  # never 0
    monkeypatch.setattr(device, "free_cores", lambda: 1.8)
    assert device.choose_threads() == (2, "all cores")
    monkeypatch.setattr(device, "free_cores", lambda: None)  # no /proc/stat
    assert device.choose_threads() == (2, "all cores")


def test_tuneforge_threads_wins_and_is_checked(monkeypatch):
    monkeypatch.setattr(device, "free_cores", lambda: pytest.fail("must not sample"))
    monkeypatch.setenv("TUNEFORGE_THREADS", "3")
    assert device.choose_threads() == (3, "TUNEFORGE_THREADS")
    monkeypatch.setenv("TUNEFORGE_THREADS", "many")
    with pytest.raises(UsageError, match="TUNEFORGE_THREADS='many'"):
        device.choose_threads()


def test_each_test_worker_gets_its_share_of_the_cores():
    """tests/conftest.py: under pytest-xdist a worker gives the CLI it runs (TUNEFORGE_THREADS)
    and torch in its own process cores / workers threads; more would oversubscribe the cores."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get("TUNEFORGE_TEST_THREADS") != "1":
        pytest.skip("TUNEFORGE_THREADS was set by the caller, not by tests/conftest.py")
    share = max(1, (os.cpu_count() or 1) // workers)
    assert os.environ["TUNEFORGE_THREADS"] == str(share)
    if "PYTEST_XDIST_WORKER" in os.environ:
        assert torch.get_num_threads() == share


def test_no_gpu_driver_means_no_cuda_without_importing_torch(monkeypatch, tmp_path):
    import torch

    # No driver file: no, and torch is not asked (a CLI command that plans on the CPU does not
    # import it just for that).
    monkeypatch.setattr(device, "GPU_DRIVER_FILES", (str(tmp_path / "nvidiactl"),))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.cuda_available() is (sys.platform != "linux")
    # A driver file: torch decides.
    (tmp_path / "nvidiactl").touch()
    assert device.cuda_available() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.cuda_available() is False


def test_a_cpu_plan_imports_no_torch():
    if any(os.path.exists(p) for p in device.GPU_DRIVER_FILES):
        pytest.skip("this machine has a GPU driver: torch is asked")
    code = (
        "import sys; from tuneforge.models.device import cuda_available; "
        "print(cuda_available(), 'torch' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.stdout.split() == ["False", "False"], found.stderr[-2000:]
