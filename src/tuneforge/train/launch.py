"""`tuneforge train --nproc N`: start N data-parallel processes on this machine.

The CLI has already checked the config (`make_plan`); each process re-enters `tuneforge train`
through `torch.distributed.run` with the same config, read from a YAML file rather than
re-serialised as `key=value` overrides, on one run directory named up front. gloo on CPU, NCCL on
GPUs (accelerate chooses).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tuneforge.config import TrainConfig


def distributed_command(nproc: int, port: int, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run … -m tuneforge.cli train ARGS` on loopback."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={port}",
        "--master_addr=127.0.0.1",
        "-m",
        "tuneforge.cli",
        "train",
        *args,
    ]


def launch_distributed(nproc: int, config: TrainConfig, run_dir: Path, resume: bool) -> int:
    """Run the training in `nproc` processes; return their launcher's exit status."""
    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if resume:
        return subprocess.run(
            distributed_command(nproc, port, ["--resume", str(run_dir)]), check=False
        ).returncode
    data = config.model_dump(mode="json", exclude_defaults=True) | {"output_dir": str(run_dir)}
    with tempfile.TemporaryDirectory(prefix="tuneforge-launch-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return subprocess.run(
            distributed_command(nproc, port, ["-c", str(path)]), check=False
        ).returncode
