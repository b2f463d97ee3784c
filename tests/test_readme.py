"""The README's commands run as written (issue 17).

Every ```bash block of README.md is read, and its `tuneforge …` lines run in README order, in
one fresh temp working directory, as a new user would after the set-up: one test per block
(named by its README section) asserts what its lines did; a module-scoped fixture runs them all
first, because later blocks need what earlier ones made (the demo data, the run).

How a README line becomes a command:
- backslash-continued lines are joined and trailing `# comments` stripped;
- the set-up block (`bash scripts/quickstart.sh`, `bash scripts/test.sh`) is skipped: CI runs the
  test command itself, and the quickstart has its own integration test
  (tests/test_eval.py::test_quickstart_fast_end_to_end, `quickstart --fast`); lines that are not
  `tuneforge …` commands are skipped too (the run-directory listing is not a command);
- `<run>` becomes the name of the run that the README's first `tuneforge train` made, read from
  `tuneforge runs list --json`;
- the only other changes are the time caps of `TIME_CAPS` below, each with its reason; every
  change made to a line is printed next to it.

Environment: `TUNEFORGE_HOME` is a temp dir whose `models/` is a symlink to the converted default
model's folder (as tests/test_api.py's `home` fixture does: no 30 s conversion),
`HF_HUB_OFFLINE=1`, `TUNEFORGE_THREADS` as tests/conftest.py sets it (the cores this test
worker has), `TUNEFORGE_KERNEL_DIR` (the suite's one kernels folder: the kernel's measurement is
made once per suite, not once per home; it changes where a cache lives, nothing a command
does), this venv's bin/ first on PATH, the working dir on
PYTHONPATH (for `mymetrics`), `KEY` set for `--api-key "$KEY"`; each line runs with `bash -c` (so
`>` redirects work) in the working dir, timed.

Inputs the README assumes the user has: `recipes.csv` (the RecipeNLG sample of
/work/shared/data; skipped when absent, unless CI=true, where it fails), `data.jsonl` (a copy of
out/train.jsonl once the Data block's `data demo` made it), `mymetrics.py` with a
`score(answer, reference)` function, and `grader.json` with one OpenAI grader (a string_check of
the answer against `{{ item.reference_answer }}`) for `compare --grader`.

A line fails on an exit code other than the expected one (0, or the outcome that
`EXPECTED_OUTCOMES` gives, with its reason), a traceback or "internal error" in its output; the
failure names the README line and shows the command run and its output.

`tuneforge serve …` lines start in the background on a free loopback port (`--port N` replaced,
or `--port` added; every other flag kept; `--host 0.0.0.0` becomes 127.0.0.1: a test never
listens beyond loopback), must answer `GET /health` with 200, and are then terminated.
`tuneforge studio …` lines the same, with `--no-open`, and `/studio/` must answer too.

Not run here: the README's Python `openai` block; tests/test_api_openai_client.py follows the
same steps against a real `tuneforge serve`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.integration

README = REPO / "README.md"
RECIPES_CSV = SHARED_DATA / "recipes_nlg_sample.csv"
API_KEY = "readme-test-key"
COMMAND_TIMEOUT = 600  # seconds; a hung command fails instead of hanging the suite
SERVE_TIMEOUT = 120  # seconds for `GET /health` to answer 200

# The only changes made to README commands, besides `<run>` and the serve port/host (docstring):
# what is appended to each subcommand's line, and why.
TIME_CAPS: dict[str, tuple[str, str]] = {
    "train": (
        "max_steps=1 eval_examples=4 final_validation=false",
        "a new run on the demo data trains 3 epochs of 480 examples by default (15+ minutes on "
        "2 cores); 1 step runs the same loop (setup, step, evaluation, final save). The "
        "validation sample shrinks to 4 examples and the whole-set pass after the last step is "
        "left out: 60 examples cost more than the step (about 45 s of the first line's 80 on "
        "one core); tests/test_train.py covers that pass. Not added to `--resume`: it "
        "continues a run as it was configured.",
    ),
    "eval": (
        "--limit 2 --max-tokens 16",
        "60 test requests, each answered batched and again one at a time for latency, take "
        "minutes; 2 short answers go through the same scoring",
    ),
    "compare": ("--limit 2 --max-tokens 16", "as eval, for each of the four approaches"),
    "generate": (
        "--max-tokens 16",
        "a 1-step run rambles up to the 512-token default (about 70 s on 2 cores)",
    ),
    "chat": ("--max-tokens 16", "as generate"),
}
# `tuneforge chat` reads this on stdin: one turn, then the empty line that ends the chat.
CHAT_INPUT = "Title: Pancakes\n\n"

# Outcomes other than exit 0 that the README implies: (exit code, text in the output).
EXPECTED_OUTCOMES: dict[str, tuple[int, str]] = {
    # The README's first `train` made a run that finished; resuming it is refused before anything
    # loads (exit 2: the command could not run).
    "tuneforge train --resume": (2, "already finished"),
}


# -- reading the README -----------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One command of the README: where it starts and its text, joined and uncommented."""

    lineno: int
    text: str


@dataclass(frozen=True)
class Block:
    section: str
    lineno: int
    lines: tuple[Line, ...]

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-") + f"-L{self.lineno}"


def strip_comment(text: str) -> str:
    """`text` without a trailing `# comment` (a `#` outside quotes after whitespace)."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def read_blocks(readme: str) -> list[Block]:
    """The ```bash blocks of a README, each with its section and its commands."""
    blocks: list[Block] = []
    section = "top"
    rows = readme.splitlines()
    i = 0
    while i < len(rows):
        row = rows[i]
        if row.startswith("## "):
            section = row[3:].split(":")[0].strip()
        if row.strip() != "```bash":
            i += 1
            continue
        start, i = i + 1, i + 1
        lines: list[Line] = []
        pending: list[str] = []
        pending_at = 0
        while rows[i].strip() != "```":
            part = rows[i]
            if not pending:
                pending_at = i + 1  # 1-based line number in README.md
            if part.rstrip().endswith("\\"):
                pending.append(part.rstrip()[:-1].strip())
            else:
                pending.append(strip_comment(part).strip())
                text = " ".join(p for p in pending if p)
                if text:
                    lines.append(Line(pending_at, text))
                pending = []
            i += 1
        blocks.append(Block(section, start, tuple(lines)))
        i += 1
    return blocks


def is_setup(block: Block) -> bool:
    return any(line.text.startswith("bash scripts/") for line in block.lines)


def tuneforge_lines(block: Block) -> list[Line]:
    return [line for line in block.lines if line.text.split()[0] == "tuneforge"]


BLOCKS = [b for b in read_blocks(README.read_text()) if not is_setup(b) and tuneforge_lines(b)]


# -- running them -----------------------------------------------------------------------------


@dataclass
class Result:
    line: Line
    command: str  # as run
    changes: list[str]
    returncode: int | None
    seconds: float
    output: str
    problem: str | None = None
    expected: tuple[int, str] = (0, "")

    def report(self) -> str:
        changes = f"  (changed: {'; '.join(self.changes)})" if self.changes else ""
        head = f"README.md:{self.line.lineno}: {self.line.text}"
        return (
            f"{head}\n  ran: {self.command}{changes}\n"
            f"  exit {self.returncode}, {self.seconds:.1f} s: {self.problem}\n"
            f"--- output (last 4000 characters) ---\n{self.output[-4000:]}"
        )


@dataclass
class Session:
    workdir: Path
    env: dict[str, str]
    run: str | None = None
    results: dict[str, list[Result]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def problem_in(output: str) -> str | None:
    if "Traceback (most recent call last)" in output:
        return "a traceback"
    if "internal error" in output.lower():
        return '"internal error"'
    return None


def adapt(text: str, session: Session) -> tuple[str, list[str], str]:
    """The command to run for a README line, the changes made, and stdin."""
    changes: list[str] = []
    if "<run>" in text:
        assert session.run is not None  # run_block checks first
        text = text.replace("<run>", session.run)
        changes.append(f"<run> = {session.run}")
    words = text.split()
    sub = words[1] if len(words) > 1 else ""
    if sub in TIME_CAPS and "--resume" not in words:
        cap = TIME_CAPS[sub][0]
        text += f" {cap}"
        changes.append(f"+ {cap}")
    stdin = ""
    if sub == "chat":
        stdin = CHAT_INPUT
        changes.append(f"stdin {CHAT_INPUT!r}")
    return text, changes, stdin


def expected_outcome(text: str) -> tuple[int, str]:
    for prefix, outcome in EXPECTED_OUTCOMES.items():
        if text.startswith(prefix):
            return outcome
    return (0, "")


def run_line(line: Line, session: Session) -> Result:
    command, changes, stdin = adapt(line.text, session)
    expected = expected_outcome(line.text)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=session.workdir,
            env=session.env,
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        returncode, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout or ""  # bytes even with text=True on some Pythons
        returncode = None
        output = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    seconds = time.monotonic() - start
    result = Result(line, command, changes, returncode, seconds, output, expected=expected)
    code, text = expected
    if returncode is None:
        result.problem = f"still running after {COMMAND_TIMEOUT} s"
    elif returncode != code:
        result.problem = f"exit {returncode}, expected {code}"
    elif text and text not in output:
        result.problem = f"{text!r} not in the output"
    else:
        result.problem = problem_in(output)
    return result


def serve_command(text: str, port: int) -> tuple[str, list[str]]:
    """`tuneforge serve|studio …` on loopback at `port`, every other flag kept (studio: no
    browser opened)."""
    words = shlex.split(text, posix=False)  # keeps "$KEY" quoted for bash
    changes = []
    if "--port" in words:
        at = words.index("--port")
        changes.append(f"--port {words[at + 1]} -> {port}")
        words[at + 1] = str(port)
    else:
        words += ["--port", str(port)]
        changes.append(f"+ --port {port}")
    if words[1] == "studio" and "--no-open" not in words:
        words.append("--no-open")
        changes.append("+ --no-open (no browser to open in a test)")
    if "--host" in words:
        at = words.index("--host")
        if words[at + 1] != "127.0.0.1":
            changes.append(f"--host {words[at + 1]} -> 127.0.0.1 (a test listens on loopback)")
            words[at + 1] = "127.0.0.1"
    return " ".join(words), changes


def run_serve(line: Line, session: Session) -> Result:
    port = free_port()
    command, changes = serve_command(line.text, port)
    log = session.workdir / f"serve-{port}.log"
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=session.workdir,
            env=session.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    problem: str | None = f"GET /health did not answer 200 within {SERVE_TIMEOUT} s"
    status = None
    try:
        deadline = start + SERVE_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                problem = None
                if " studio" in command:  # the Studio answers at /studio/
                    page = httpx.get(f"http://127.0.0.1:{port}/studio/", timeout=10)
                    if page.status_code != 200 or "tuneforge" not in page.text:
                        problem = f"/studio/ answered {page.status_code}"
                if "--api-key" in command:  # the key is required on the other routes
                    denied = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
                    if denied.status_code != 401:
                        problem = f"/v1/models without the key answered {denied.status_code}"
                break
            time.sleep(0.3)
        if proc.poll() is not None:
            problem = f"the server exited ({proc.returncode}) before answering /health"
    finally:
        seconds = time.monotonic() - start
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text(errors="replace")
    result = Result(line, command, changes, status, seconds, output, problem, expected=(200, ""))
    result.problem = result.problem or problem_in(output)
    return result


def run_block(block: Block, session: Session) -> list[Result]:
    results = []
    for line in tuneforge_lines(block):
        if "<run>" in line.text and session.run is None:
            problem = "no run to name: the README's first `tuneforge train` made none"
            result = Result(line, line.text, [], None, 0.0, "", problem)
        elif line.text.startswith(("tuneforge serve", "tuneforge studio")):
            result = run_serve(line, session)
        else:
            result = run_line(line, session)
        results.append(result)
        if line.text.startswith("tuneforge data demo") and result.problem is None:
            shutil.copy(session.workdir / "out" / "train.jsonl", session.workdir / "data.jsonl")
        if line.text.startswith("tuneforge train") and session.run is None:
            session.run = first_run(session)
    return results


def first_run(session: Session) -> str | None:
    proc = subprocess.run(
        ["bash", "-c", "tuneforge runs list --json"],
        cwd=session.workdir,
        env=session.env,
        capture_output=True,
        text=True,
    )
    runs = json.loads(proc.stdout) if proc.returncode == 0 else []
    return runs[0]["run"] if runs else None


MYMETRICS = '''"""The README's `--metric mymetrics:score`: 1.0 for the reference, else 0.0."""


def score(answer: str, reference: str) -> float:
    return float(answer.strip() == reference.strip())
'''


# The README's `--grader grader.json`: exact match of the answer and the test row's reference.
GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference_answer }}",
    "operation": "eq",
}


@pytest.fixture(scope="module")
def session(tmp_path_factory, default_model_dir: Path) -> Session:
    if not RECIPES_CSV.exists():
        message = f"the README's recipes.csv needs {RECIPES_CSV}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("readme")
    home = tmp_path_factory.mktemp("readme-home")
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    shutil.copy(RECIPES_CSV, workdir / "recipes.csv")
    (workdir / "mymetrics.py").write_text(MYMETRICS)
    (workdir / "grader.json").write_text(json.dumps(GRADER))
    env = os.environ | {
        "TUNEFORGE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TUNEFORGE_THREADS": os.environ["TUNEFORGE_THREADS"],  # conftest's: this worker's share
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(workdir),
        "KEY": API_KEY,
    }
    env.pop("TUNEFORGE_API_KEY", None)
    session = Session(workdir, env)
    for block in BLOCKS:
        session.results[block.id] = run_block(block, session)
    return session


def summary(results: list[Result]) -> str:
    return "\n".join(
        f"  README.md:{r.line.lineno:<4} exit {r.returncode!s:<4} {r.seconds:6.1f} s  "
        f"{'ok ' if r.problem is None else 'BAD'}  {r.line.text}"
        + (f"   [{'; '.join(r.changes)}]" if r.changes else "")
        for r in results
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, session: Session) -> None:
    results = session.results[block.id]
    print(f"\n{block.section} (README.md:{block.lineno}):\n{summary(results)}")
    failed = [r for r in results if r.problem is not None]
    if failed:
        pytest.fail("\n\n".join(r.report() for r in failed), pytrace=False)


def test_readme_is_read_as_documented() -> None:
    """The parser: continuations joined, comments stripped, the set-up block and non-commands
    skipped, every section with commands present."""
    blocks = read_blocks(README.read_text())
    assert any(is_setup(b) for b in blocks)
    texts = [line.text for b in BLOCKS for line in tuneforge_lines(b)]
    assert all("#" not in t and "\\" not in t for t in texts), texts
    convert = [t for t in texts if t.startswith("tuneforge data convert recipes.csv")]
    assert len(convert) == 1 and convert[0].endswith('"Extract the generic ingredients."')
    assert {b.section for b in BLOCKS} >= {"Data", "Models", "Training", "Serve"}
    assert texts.index("tuneforge train --resume <run>") > next(
        i for i, t in enumerate(texts) if t.startswith("tuneforge train -t out/train.jsonl")
    )
