"""How long the CLI's quick commands take, start to exit, each in a fresh process (best of 3),
and a LoRA run's first `generate` in a fresh kernels folder and again.

Run from the repository root, on an idle machine (the converted default model must be in the
tuneforge home already; a temp home links to it, so the runs made here leave nothing behind):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cli_startup.py

`--rev REV` times the same commands on another commit too (checked out into a temp worktree that
uses this .venv's packages), so the two sets come from one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICK = [
    ["--version"],
    ["models", "list"],
    ["runs", "list"],
    ["config", "show", "--defaults"],
    ["data", "demo", "demo-{n}/"],  # a new folder each time: it refuses to overwrite one
    ["data", "validate", "demo/train.jsonl"],
    ["data", "preview", "demo/train.jsonl", "-n", "2"],
    ["config", "validate", "run.yaml", "train_file=demo/train.jsonl"],
]


def cpu() -> str:
    from tuneforge.models.precision import cpu_info

    return cpu_info().describe()


def run(src: Path, args: list[str], env: dict[str, str], cwd: Path) -> float:
    env = env | {"PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def time_tree(label: str, src: Path, home_models: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "home").mkdir()
        (tmp / "home" / "models").symlink_to(home_models)
        env = os.environ | {
            "TUNEFORGE_HOME": str(tmp / "home"),
            "TUNEFORGE_KERNEL_DIR": str(tmp / "kernels"),
            "HF_HUB_OFFLINE": "1",
        }
        run(src, ["data", "demo", "demo/"], env, tmp)
        (tmp / "run.yaml").write_text(
            subprocess.run(
                [sys.executable, "-m", "tuneforge.cli", "config", "show", "--defaults"],
                env=env | {"PYTHONPATH": str(src)},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        print(f"\n{label} ({src})")
        for args in QUICK:
            best = min(run(src, [a.format(n=n) for a in args], env, tmp) for n in range(3))
            print(f"  {best:6.2f} s  tuneforge {' '.join(args).format(n='N')}")
        train = ["train", "-t", "demo/train.jsonl", "output_dir=run", "max_steps=1"]
        run(src, [*train, "eval_examples=4"], env, tmp)
        prompt = ["generate", "./run", "Title: Pancakes", "--max-tokens", "16"]
        first = run(src, prompt, env, tmp)
        second = run(src, prompt, env, tmp)
        base = run(
            src,
            ["generate", "smollm2-135m-instruct", "Title: Pancakes", "--max-tokens", "16"],
            env,
            tmp,
        )
        print(f"  {first:6.2f} s  a LoRA run's first generate (fresh kernels folder)")
        print(f"  {second:6.2f} s  the same again")
        print(f"  {base:6.2f} s  then the base model's first generate")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rev", help="also time this commit (e.g. a commit before a change)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from tuneforge.models import resolve_model

    models = Path(resolve_model("smollm2-135m-instruct")).parent
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"cpu: {cpu()}; {os.cpu_count()} cores; {when}")
    if args.rev:
        with tempfile.TemporaryDirectory() as tree:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", tree, args.rev],
                check=True,
            )
            try:
                time_tree(f"at {args.rev}", Path(tree) / "src", models)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", tree])
    time_tree("this checkout", REPO / "src", models)


if __name__ == "__main__":
    main()
