"""The Studio in a real browser: Debian's Chromium driven by playwright, against a real
`tuneforge serve` on loopback, training the tiny model.

Every test fails on any request to another host (the UI is offline by construction), on any
console error, and on axe-core findings of serious or critical impact. Without Chromium or
playwright these tests skip on a developer machine and fail under CI=true (`.ci/run` installs
Debian's chromium; playwright 1.64.x is the release built for Chromium 156).

Screenshots of every page at 1280 and 390 px go to $TUNEFORGE_STUDIO_SHOTS when it is set, else
to the test's temporary folder. docs/studio/ is made with
`TUNEFORGE_STUDIO_SHOTS=docs/studio pytest tests/test_studio_browser.py -k newcomer`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import good_examples

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LOOPBACK = {"127.0.0.1", "localhost"}
WIDTHS = (1280, 390)


def _need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} on this CI machine: the browser tests must run in CI")
        pytest.skip(why)


def _load_check_report():
    spec = importlib.util.spec_from_file_location("check_report", REPO / "scripts/check_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_report"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(condition, timeout: float, what: str, poll: float = 0.25):
    """Poll `condition` (the pages' CSP forbids the eval that page.wait_for_function needs)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Server:
    """`tuneforge serve` in a subprocess on a free loopback port, with its own home."""

    def __init__(self, home: Path, port: int | None = None, *args: str) -> None:
        self.home = home
        self.args = list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = home / f"serve-{self.port}.log"

    def start(self) -> Server:
        env = os.environ | {"TUNEFORGE_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuneforge", "serve", "--port", str(self.port), *self.args],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait(self._healthy, 120, "the server to answer /health")
        return self

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)


def make_home(tmp_path_factory, default_model_dir, name: str) -> Path:
    home = tmp_path_factory.mktemp(name)
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    return home


def upload(client: httpx.Client, path: Path, name: str | None = None) -> str:
    response = client.post(
        "/v1/files",
        files={"file": (name or path.name, path.read_bytes())},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def register_base(client: httpx.Client, model: str, file_id: str) -> None:
    """A base model is listed once a job names it (as in test_api): create one and cancel it."""
    job = client.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": file_id})
    assert job.status_code == 200, job.text
    assert client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel").status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_dir, tiny_model_dir, demo_dir):
    server = Server(make_home(tmp_path_factory, default_model_dir, "studio-browser")).start()
    with server.api() as client:
        register_base(client, str(tiny_model_dir), upload(client, demo_dir / "validation.jsonl"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def playwright_browser():
    _need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--disable-background-networking", "--disable-gpu", "--no-first-run"],
        )
        yield browser
        browser.close()


class Watch:
    """What a page did that a test must not accept: other hosts, console errors, JS errors."""

    def __init__(self) -> None:
        self.foreign: list[str] = []
        self.errors: list[str] = []

    def attach(self, context) -> None:
        def route(route):
            host = urlsplit(route.request.url).hostname
            if host not in LOOPBACK:
                self.foreign.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        context.route("**/*", route)
        context.on("page", self._page)

    def _page(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def check(self) -> None:
        assert not self.foreign, f"requests to other hosts: {self.foreign}"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture
def browse(playwright_browser):
    """A new browser context (no shared storage) with the Watch attached; checked at the end."""
    watch = Watch()
    contexts = []

    def new_page(width: int = 1280):
        context = playwright_browser.new_context(viewport={"width": width, "height": 900})
        watch.attach(context)
        contexts.append(context)
        return context.new_page()

    yield new_page, watch
    for context in contexts:
        context.close()
    watch.check()


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TUNEFORGE_STUDIO_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_accessibility(page, name: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{name}: {bad}"


def snapshot(page, folder: Path, name: str) -> None:
    """Screenshots at both widths (the page is reloaded at each), then the axe check."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        time.sleep(0.3)  # let the charts take the new width
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    check_accessibility(page, name)


def steps_shown(page) -> list[int]:
    text = page.get_attribute("#loss-chart", "data-steps") or ""
    return [int(s) for s in text.split(",") if s]


def metric_steps(client: httpx.Client, job_id: str) -> list[int]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()
    return sorted(e["data"]["step"] for e in events["data"] if e["type"] == "metrics")


def test_a_newcomers_whole_flow(server, browse, demo_dir, tiny_model_dir, tmp_path):
    """upload → validation and trained tokens → new job → live chart → reload mid-run, same
    points → succeeded → chat streams → compare, decided by a grader typed into the form, shows
    compare.json's numbers."""
    new_page, watch = browse
    folder = shots_dir(tmp_path)
    client = server.api()
    tiny = str(tiny_model_dir)
    validation_id = upload(client, demo_dir / "validation.jsonl", "validation.jsonl")
    test_id = upload(client, demo_dir / "test.jsonl", "test.jsonl")
    page = new_page()

    page.goto(f"{server.url}/studio/")
    page.wait_for_selector("#jobs table, #jobs p:not(.muted)")
    snapshot(page, folder, "home")

    # 1. Upload through the page; the file's page shows the validator's report and the tokens.
    page.goto(f"{server.url}/studio/data")
    page.wait_for_selector("#files table")
    page.set_input_files("#file-input", str(demo_dir / "train.jsonl"))
    page.click("#upload-btn")
    page.wait_for_url("**/studio/data/file-*")
    file_id = page.url.rsplit("/", 1)[1]
    page.select_option("#model", tiny)
    page.wait_for_selector("#validation-verdict")
    wait(
        lambda: "48 of 48" in page.inner_text("#validation-verdict"),
        60,
        "the report of the tiny model",
    )
    report = client.get(f"/v1/files/{file_id}/validation", params={"model": tiny}).json()
    assert page.inner_text("#billed").startswith(f"{report['billed_tokens']:,}")
    page.wait_for_selector("mark.trained")
    first = json.loads((demo_dir / "train.jsonl").read_text().splitlines()[0])
    marked = page.locator(".example").first.locator("mark.trained").first.inner_text()
    assert marked.startswith("trained:") and first["messages"][-1]["content"] in marked
    assert page.locator("#histogram svg rect").count() > 0
    snapshot(page, folder, "data-file")
    page.goto(f"{server.url}/studio/data")
    page.wait_for_selector("#files table")
    snapshot(page, folder, "data")

    # 2. The new-job form, generated from the API's schema; "show as code" matches the form.
    page.goto(f"{server.url}/studio/data/{file_id}?model={tiny}")
    page.click("#train-link")
    page.wait_for_url("**/studio/jobs/new*")
    page.wait_for_selector("#tc-lora_rank", state="attached")
    page.select_option("#job-model", tiny)
    page.select_option("#job-validation_file", validation_id)
    page.fill("#hp-n_epochs", "6")
    page.click("#advanced summary")
    page.fill("#tc-eval_every", "4")
    page.click("#code summary")
    code = page.inner_text("#code-python")
    assert '"n_epochs": 6' in code and '"eval_every": 4' in code and file_id in code
    assert "epochs: 6" in page.inner_text("#code-yaml")
    snapshot(page, folder, "new-job")
    page.click("#create-btn")
    page.wait_for_url("**/studio/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]

    # 3. The chart gains points live; a reload mid-run shows the same points, then more.
    wait(lambda: len(steps_shown(page)) >= 3, 240, "three points on the loss chart")
    before = steps_shown(page)
    page.reload()
    wait(lambda: len(steps_shown(page)) >= len(before), 60, "the chart to refill after a reload")
    after = steps_shown(page)
    assert after[: len(before)] == before
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "running", (
        "the run ended before the reload: it must be long enough to reload mid-run"
    )
    second = new_page()  # another tab shows the same job
    second.goto(f"{server.url}/studio/jobs/{job_id}")
    snapshot(page, folder, "job-running")
    wait(lambda: "succeeded" in page.inner_text("#job-status"), 600, "the job to succeed")
    wait(lambda: steps_shown(page) == metric_steps(client, job_id), 30, "every metrics point")
    wait(lambda: steps_shown(second) == steps_shown(page), 30, "the second tab to agree")
    assert "validation loss" in page.inner_text("#loss-caption")
    wait(lambda: page.locator("#checkpoints table tbody tr").count() >= 1, 30, "checkpoints")
    snapshot(page, folder, "job")
    page.goto(f"{server.url}/studio/jobs")
    page.wait_for_selector("#jobs table")
    snapshot(page, folder, "jobs")

    # 4. Chat streams from the fine-tuned model and the base, side by side.
    page.goto(f"{server.url}/studio/jobs/{job_id}")
    page.wait_for_selector("#chat-link:not([hidden])")
    page.click("#chat-link")
    page.wait_for_url("**/studio/playground*")
    page.wait_for_selector("#pane-1-model", state="attached")
    prompt = "hi"
    page.fill("#max_tokens", "12")
    page.fill("#prompt", prompt)
    page.click("#send-btn")
    wait(
        lambda: all("tokens in" in page.inner_text(f"#pane-{i}-meta") for i in (0, 1)),
        120,
        "both panes to finish",
    )
    ft_model = page.input_value("#pane-0-model")
    assert ft_model == client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["fine_tuned_model"]
    for i, model in enumerate((ft_model, tiny)):
        expected = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 12,
                "temperature": 0,
            },
        ).json()["choices"][0]["message"]["content"]
        shown = page.locator(f"#pane-{i}-turns .turn .text").nth(1).text_content()
        assert shown == expected, (model, shown, expected)
    snapshot(page, folder, "playground")

    # 5. Compare: a background comparison whose report shows compare.json's numbers.
    page.goto(f"{server.url}/studio/jobs/{job_id}")
    page.click("#compare-link")
    page.wait_for_url("**/studio/compare*")
    page.wait_for_selector("#models input", state="attached")
    page.select_option("#test_file", test_id)
    assert page.input_value("#training_file") == file_id
    assert page.is_checked(f"#models input[value='{ft_model}']")
    page.fill("#limit", "3")
    # An OpenAI grader typed into the form scores the answers and decides the comparison.
    grader = {
        "type": "text_similarity",
        "name": "similar",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference_answer }}",
        "evaluation_metric": "fuzzy_match",
    }
    page.fill("#grader", json.dumps(grader, indent=1))
    snapshot(page, folder, "compare")
    page.click("#compare-form button[type=submit]")
    page.wait_for_url("**/studio/compare/cmp-*")
    comparison_id = page.url.rsplit("/", 1)[1]
    wait(
        lambda: page.is_visible("#result-section") or page.is_visible("#cmp-error"),
        600,
        "the comparison to finish",
        poll=1,
    )
    assert not page.is_visible("#cmp-error"), page.inner_text("#cmp-error")
    result = client.get(f"/v1/tuneforge/comparisons/{comparison_id}").json()["result"]
    assert result["primary_metric"] == "grader:similar"
    assert result["use_case"]["grader"] == grader
    assert all(len(a["per_request_scores"]["grader:similar"]) == 3 for a in result["approaches"]), (
        result["approaches"]
    )
    assert "grader:similar (text_similarity)" in page.inner_text("main")
    html = page.frame_locator("#report").locator("html").evaluate("e => e.outerHTML")
    check_report = _load_check_report()
    assert check_report.check_numbers(result, html) == []
    assert len(check_report.parse_report(html).numbers) > 20
    snapshot(page, folder, "comparison")

    # 6. Models: the fine-tuned model exports (POST …/exports) and downloads: its adapter.
    page.goto(f"{server.url}/studio/models")
    page.wait_for_selector("#models table")
    snapshot(page, folder, "models")
    select = page.locator(f"select[aria-label='Export format for {ft_model}']")
    select.select_option("adapter")
    with page.expect_download(timeout=120_000) as download:
        page.click(f"button[aria-label='Export and download {ft_model}']")
    with tarfile.open(download.value.path()) as archive:
        names = archive.getnames()
    assert any(n.endswith("adapter_config.json") for n in names), names
    assert any(n.endswith("adapter_model.safetensors") for n in names), names
    second.close()
    watch.check()


def test_keyboard_only_upload_and_launch(server, browse, demo_dir, tiny_model_dir):
    """The main flow without a mouse: choose and upload a file, open the job form, create the
    job, and cancel it — Tab, Enter, arrow keys and Space only."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    new_page, _ = browse
    page = new_page()
    page.goto(f"{server.url}/studio/data")
    page.wait_for_selector("#files")

    def tab_to(selector: str, limit: int = 60) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(f"document.activeElement === document.querySelector({selector!r})"):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("#file-input")
    # Space on the focused input opens the file chooser. Once in a loaded CI run Chromium let a
    # press go by without opening it: up to three presses, each given 15 s.
    for attempt in range(3):
        try:
            with page.expect_file_chooser(timeout=15_000) as chooser:
                page.keyboard.press("Space")
            break
        except PlaywrightTimeout:
            assert attempt < 2, "Space on the focused file input never opened the file chooser"
            assert page.evaluate("document.activeElement.id") == "file-input"
    chooser.value.set_files(str(demo_dir / "train.jsonl"))
    tab_to("#upload-btn")
    page.keyboard.press("Enter")
    page.wait_for_url("**/studio/data/file-*")
    page.wait_for_selector("#validation-verdict")
    tab_to("#train-link")
    page.keyboard.press("Enter")
    page.wait_for_url("**/studio/jobs/new*")
    page.wait_for_selector("#job-model option", state="attached")
    tab_to("#job-model")
    options = page.eval_on_selector_all("#job-model option", "os => os.map(o => o.value)")
    for _ in range(
        options.index(str(tiny_model_dir)) - options.index(page.input_value("#job-model"))
    ):
        page.keyboard.press("ArrowDown")
    assert page.input_value("#job-model") == str(tiny_model_dir)
    tab_to("#create-btn")
    page.keyboard.press("Enter")
    page.wait_for_url("**/studio/jobs/ftjob-*")
    page.once("dialog", lambda dialog: dialog.accept())
    wait(lambda: page.is_enabled("#cancel-btn"), 30, "the cancel button")
    tab_to("#cancel-btn")
    page.keyboard.press("Enter")
    wait(lambda: "cancelled" in page.inner_text("#job-status"), 60, "the job to be cancelled")


def test_bad_input_is_shown_in_words(server, browse, tmp_path, tiny_model_dir):
    """A broken upload shows the validator's messages and stores nothing; a bad field in the
    job form, or a bad grader in the Compare form, is marked with the API's own message."""
    new_page, watch = browse
    page = new_page()
    client = server.api()
    files_before = client.get("/v1/files").json()["data"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n')
    page.goto(f"{server.url}/studio/data")
    page.set_input_files("#file-input", str(broken))
    page.click("#upload-btn")
    error = page.wait_for_selector("#upload-result .error")
    text = error.inner_text()
    assert "broken.jsonl was not stored" in text and "line 2" in text and "line 1" in text
    assert client.get("/v1/files").json()["data"] == files_before

    page.goto(f"{server.url}/studio/jobs/new?training_file={files_before[0]['id']}")
    page.wait_for_selector("#tc-lora_rank", state="attached")
    page.select_option("#job-model", str(tiny_model_dir))
    page.click("#advanced summary")
    page.fill("#tc-lora_rank", "0")
    page.click("#create-btn")
    wait(lambda: page.get_attribute("#tc-lora_rank", "aria-invalid") == "true", 20, "the mark")
    assert "lora_rank" in page.inner_text("#tc-lora_rank-error")
    assert page.url.endswith(f"training_file={files_before[0]['id']}")  # no job was created
    # A grader the API refuses is marked on the Compare form's Grader field, in the API's words.
    bad_grader = {
        "type": "string_check",
        "name": "exact",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference_answer }}",
        "operation": "contains",
    }
    page.goto(f"{server.url}/studio/compare")
    page.wait_for_selector("#test_file option", state="attached")
    page.fill("#grader", json.dumps(bad_grader))
    page.click("#compare-form button[type=submit]")
    wait(lambda: page.get_attribute("#grader", "aria-invalid") == "true", 20, "the mark")
    assert "grader.operation must be one of" in page.inner_text("#grader-error")
    assert page.url.endswith("/studio/compare")  # no comparison was queued
    check_accessibility(page, "compare with a bad grader")
    # A job that fails while validating its file shows the error in words, with the fix.
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps(r) + "\n" for r in good_examples(4)))
    few_id = upload(client, few)
    job = client.post(
        "/v1/fine_tuning/jobs", json={"model": str(tiny_model_dir), "training_file": few_id}
    ).json()
    page.goto(f"{server.url}/studio/jobs/{job['id']}")
    wait(lambda: "failed" in page.inner_text("#job-status"), 120, "the job to fail")
    shown = page.inner_text("#job-error")
    assert "at least 10" in shown and "(field: training_file)" in shown, shown
    # The browser logged the API's 400 answers for these three requests; nothing else.
    assert all("400" in e for e in watch.errors), watch.errors
    watch.errors.clear()


def test_server_restart_mid_job_shows_the_resumed_job(
    tmp_path_factory, default_model_dir, tiny_model_dir, demo_dir, browse
):
    """The server stops mid-job: the page says the connection is lost; the server starts
    again on the same port: the page reconnects, keeps its points and shows the job resume."""
    new_page, watch = browse
    server = Server(make_home(tmp_path_factory, default_model_dir, "studio-restart")).start()
    try:
        client = server.api()
        train = upload(client, demo_dir / "train.jsonl")
        job = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": str(tiny_model_dir),
                "training_file": train,
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 8}},
                },
                "training_config": {"checkpoint_every": 5},
            },
        ).json()
        page = new_page()
        page.goto(f"{server.url}/studio/jobs/{job['id']}")
        wait(lambda: len(steps_shown(page)) >= 6, 240, "six points")
        server.stop()
        wait(lambda: "lost" in page.inner_text("#connection"), 30, "the lost-connection notice")
        shown = steps_shown(page)
        server.start()
        wait(lambda: "Reconnected" in page.inner_text("#connection"), 60, "the reconnection")
        wait(lambda: len(steps_shown(page)) > len(shown), 240, "new points after the restart")
        assert steps_shown(page)[: len(shown)] == shown
        wait(lambda: page.is_visible("#resume-note"), 60, "the resume note")
        assert "resum" in page.inner_text("#resume-note")
        page.close()  # before the server stops again, so that no stream is cut
    finally:
        server.stop()
    # Fetches that died with the server are logged as network errors; nothing else may be.
    watch.errors[:] = [e for e in watch.errors if "ERR_" not in e and "Failed to fetch" not in e]


def test_the_api_key_is_asked_once_and_kept_out_of_urls(
    tmp_path_factory, default_model_dir, browse, tmp_path
):
    new_page, watch = browse
    key = "studio-test-key"
    server = Server(
        make_home(tmp_path_factory, default_model_dir, "studio-key"), None, "--api-key", key
    ).start()
    try:
        page = new_page()
        urls: list[str] = []
        authorized: list[bool] = []

        def seen(request) -> None:
            urls.append(request.url)
            if "/v1/" in request.url:
                authorized.append(request.headers.get("authorization") == f"Bearer {key}")

        page.on("request", seen)
        page.goto(f"{server.url}/studio/data")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#files table, #no-files")
        assert "No files yet" in page.text_content("#files")
        page.goto(f"{server.url}/studio/models")  # another page: not asked again
        page.wait_for_selector("#models table")
        assert not page.is_visible("#key-dialog")
        assert all(key not in url for url in urls), urls
        assert authorized and authorized[-1], authorized
        page.close()
    finally:
        server.stop()
    # The first page's API calls answered 401 before the key was given.
    watch.errors[:] = [e for e in watch.errors if "401" not in e]


def test_a_csv_gets_a_column_mapping_step(server, browse, tmp_path):
    new_page, _ = browse
    rows = ["title,ingredients,NER"] + [
        f'Dish {i},"[""{i} eggs"", ""salt""]","[""eggs"", ""salt""]"' for i in range(12)
    ]
    csv_file = tmp_path / "recipes.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    page = new_page()
    page.goto(f"{server.url}/studio/data")
    page.set_input_files("#file-input", str(csv_file))
    page.wait_for_selector("#mapping:not([hidden])")
    page.select_option("#map-prompt", ["title", "ingredients"])
    page.select_option("#map-completion", "NER")
    page.click("#upload-btn")
    page.wait_for_url("**/studio/data/file-*")
    page.wait_for_selector("#validation-verdict")
    assert "12 of 12" in page.inner_text("#validation-verdict")
    page.wait_for_selector(".example mark.trained")
    assert '["eggs", "salt"]' in page.locator(".example mark.trained").first.inner_text()


def test_an_eval_made_run_and_read_in_the_studio(server, browse, tmp_path, tiny_model_dir):
    """OpenAI's dashboard habit: make an eval with the form, upload rows, have a model answer
    them, and read each row's answer and scores; the run's report_url is that page."""
    new_page, _ = browse
    client = server.api()
    questions = ["Capital of France?", "What is 2 + 2?", "Name a colour."]
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": str(tiny_model_dir),
            "messages": [{"role": "user", "content": questions[0]}],
            "temperature": 0,
            "max_completion_tokens": 64,
            "seed": 42,
        },
    )
    first = chat.json()["choices"][0]["message"]["content"]
    rows = tmp_path / "capitals.jsonl"
    answers = [first, "not this", "nor this"]
    rows.write_text(
        "".join(
            json.dumps({"item": {"question": q, "answer": a}}) + "\n"
            for q, a in zip(questions, answers, strict=True)
        )
    )
    page = new_page()
    page.goto(f"{server.url}/studio/evals")
    page.wait_for_selector("#evals p, #evals table")
    page.fill("#name", "Capitals")
    page.click("#eval-form button[type=submit]")
    page.wait_for_url("**/studio/evals/eval_*")
    eval_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#upload", str(rows))
    page.select_option("#model", str(tiny_model_dir))
    page.click("#run-form button[type=submit]")
    link = page.wait_for_selector("#runs table a")
    link.click()
    page.wait_for_url(f"**/studio/evals/{eval_id}/runs/evalrun_*")
    run_id = page.url.rsplit("/", 1)[1]
    wait(lambda: "completed" in page.inner_text("#run-status"), 120, "the run to complete")
    wait(lambda: page.locator("#items tbody tr").count() == 3, 20, "three rows")
    # exact: only the first row's answer is the model's own; close (fuzzy >= 0.8) the same
    assert page.inner_text("#run-counts") == "3: 1 passed, 2 failed, 0 errored"
    cells = page.locator("#items tbody tr").first.locator("td")
    assert cells.nth(3).inner_text() == first  # the answer, as the chat route gives it
    assert cells.nth(4).inner_text().startswith("✓ pass")
    run = client.get(f"/v1/evals/{eval_id}/runs/{run_id}").json()
    assert run["report_url"] == page.url
    folder = shots_dir(tmp_path)
    snapshot(page, folder, "eval-run")
    page.check("#filter input[value=fail]")
    wait(lambda: page.locator("#items tbody tr").count() == 2, 20, "the two failed rows")
    page.goto(f"{server.url}/studio/evals/{eval_id}")
    page.wait_for_selector("#runs table")
    assert "33 %" in page.inner_text("#runs table")
    snapshot(page, folder, "eval")


def test_a_batch_started_and_downloaded_in_the_studio(server, browse, tmp_path, tiny_model_dir):
    """OpenAI's dashboard habit for batches: upload a requests file, watch it run, download
    the answers; a file with a bad line is refused with the line named."""
    new_page, watch = browse
    client = server.api()

    def line(custom_id: str, question: str) -> str:
        body = {
            "model": str(tiny_model_dir),
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 8,
        }
        request = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        return json.dumps(request | {"body": body}) + "\n"

    bad = tmp_path / "twice.jsonl"
    bad.write_text(line("a", "Hi") + line("a", "Hello"))
    page = new_page()
    page.goto(f"{server.url}/studio/batches")
    page.wait_for_selector("#batches p, #batches table")
    page.set_input_files("#batch-file", str(bad))
    page.click("#batch-form button[type=submit]")
    error = page.wait_for_selector("#form-error:not([hidden])")
    assert "twice.jsonl line 2: custom_id 'a' is on line 1 too" in error.inner_text()
    assert watch.errors and all("400" in e for e in watch.errors), watch.errors  # the refusal
    watch.errors.clear()

    good = tmp_path / "questions.jsonl"
    questions = {"capital": "Capital of France?", "sum": "What is 2 + 2?", "colour": "A colour?"}
    good.write_text("".join(line(k, q) for k, q in questions.items()))
    page.set_input_files("#batch-file", str(good))
    page.click("#batch-form button[type=submit]")
    wait(lambda: page.locator("#form-error").is_hidden(), 10, "the error to clear")
    row = page.locator("#batches tbody tr").first
    wait(lambda: "completed" in row.inner_text(), 120, "the batch to complete")
    assert "3 answered, 0 failed, of 3" in row.inner_text()
    with page.expect_download() as info:
        row.get_by_role("button", name="Answers").click()
    answers = [json.loads(x) for x in Path(info.value.path()).read_text().splitlines()]
    assert [a["custom_id"] for a in answers] == list(questions)
    batch = client.get("/v1/batches", params={"limit": 1}).json()["data"][0]
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    served = client.get(f"/v1/files/{batch['output_file_id']}/content").text
    assert Path(info.value.path()).read_text() == served
    snapshot(page, shots_dir(tmp_path), "batches")


def test_logs_become_a_training_file_and_an_eval_in_the_studio(
    server, browse, tmp_path, tiny_model_dir
):
    """OpenAI's dashboard habit for stored completions: filter the logs by metadata, tick the
    good ones and save them as a training file (distillation), delete one, and grade the
    rest with an eval of type stored completions made and run from the forms."""
    new_page, _ = browse
    client = server.api()
    tag = f"support-{time.time_ns()}"
    cut = {  # an answer cut at its token limit: shown, never saved as an example
        "model": str(tiny_model_dir),
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_completion_tokens": 1,
        "temperature": 0,
        "store": True,
        "metadata": {"usecase": tag, "prompt": "cut"},
    }
    cut = client.post("/v1/chat/completions", json=cut).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    logged = []
    # SmolLM2 (the default model), whose short answers end: answers the page can save
    for i, question in enumerate(["Where is my parcel?", "Reset my password", "Hi"]):
        body = {
            "model": "smollm2-135m-instruct",
            "messages": [
                {"role": "developer", "content": "You are a support agent. Answer in a few words."},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
            "max_completion_tokens": 64,
            "store": True,
            "metadata": {"usecase": tag, "prompt": f"v{i}"},
        }
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] == "stop", response.json()
        logged.append(response.json())
    other = body | {"metadata": {"usecase": "other"}}
    assert client.post("/v1/chat/completions", json=other).status_code == 200

    page = new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{server.url}/studio/logs")
    page.wait_for_selector("#logs table")
    assert "usecase=other" in page.inner_text("#logs table")  # unfiltered: every log
    page.fill("#metadata", f"usecase={tag}")
    page.click("#filter-form button[type=submit]")
    wait(lambda: page.locator("#logs tbody tr").count() == 4, 20, "the four support logs")
    assert "cut at the token limit" in page.locator("#logs tbody tr").last.inner_text()
    newest = page.locator("#logs tbody tr").first.inner_text()
    assert "Hi" in newest and "prompt=v2" in newest  # newest first, prompt and metadata shown
    page.check(f"input[aria-label='Select {logged[2]['id']}']")
    page.check(f"input[aria-label='Select {logged[1]['id']}']")
    page.check(f"input[aria-label='Select {cut['id']}']")
    assert page.inner_text("#chosen") == "3 selected."
    page.fill("#filename", "support.jsonl")
    page.click("#save-btn")
    page.wait_for_selector("#saved a, #form-error:not([hidden])")
    assert page.locator("#form-error").is_hidden(), page.inner_text("#form-error")
    saved = page.locator("#saved a").first
    assert "Saved 2 examples (1 left out" in page.inner_text("#saved")
    file_id = saved.get_attribute("href").rsplit("/", 1)[1]
    new_job = page.locator("#saved a").nth(1).get_attribute("href")
    assert new_job.endswith(f"/studio/jobs/new?training_file={file_id}")
    lines = [json.loads(x) for x in client.get(f"/v1/files/{file_id}/content").text.splitlines()]
    questions = ["Hi", "Reset my password"]
    for line, completion, question in zip(lines, logged[:0:-1], questions, strict=True):
        assert line["messages"] == [
            {"role": "system", "content": "You are a support agent. Answer in a few words."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": completion["choices"][0]["message"]["content"]},
        ]
    assert client.get(f"/v1/files/{file_id}").json()["purpose"] == "fine-tune"
    snapshot(page, shots_dir(tmp_path), "logs")

    page.uncheck(f"input[aria-label='Select {logged[2]['id']}']")
    page.uncheck(f"input[aria-label='Select {logged[1]['id']}']")
    page.click("#save-btn")  # the cut answer alone makes no example
    error = page.wait_for_selector("#form-error:not([hidden])")
    assert "None of the selected logs makes a training example" in error.inner_text()
    page.uncheck(f"input[aria-label='Select {cut['id']}']")
    page.check(f"input[aria-label='Select {logged[0]['id']}']")
    page.click("#delete-btn")
    wait(lambda: page.locator("#logs tbody tr").count() == 3, 20, "the deleted log to go")
    page.click("#select-all")
    assert page.inner_text("#chosen") == "3 selected."
    assert client.get(f"/v1/chat/completions/{logged[0]['id']}").status_code == 404

    page.click("#grade")  # the Evals form, filled with the Logs page's filter
    page.wait_for_url("**/studio/evals?**")
    page.wait_for_selector("#evals p, #evals table")
    page.fill("#name", "Support logs")
    assert page.input_value("#kind") == "stored_completions"
    assert "item.answer" not in page.input_value("#criteria")  # criteria that fit the logs
    assert page.input_value("#filter") == f"usecase={tag}"
    page.click("#eval-form button[type=submit]")
    page.wait_for_url("**/studio/evals/eval_*")
    page.wait_for_selector("#model option", state="attached")
    assert page.locator("#upload").is_hidden()
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#runs table a").click()
    wait(lambda: "completed" in page.inner_text("#run-status"), 120, "the run to complete")
    wait(lambda: page.locator("#items tbody tr").count() == 3, 20, "the three stored answers")
    eval_id = page.url.split("/evals/")[1].split("/")[0]
    (run,) = client.get(f"/v1/evals/{eval_id}/runs").json()["data"]
    assert run["data_source"]["source"] == {"type": "stored_completions"}
    assert run["result_counts"]["total"] == 3


def test_the_playground_shows_probabilities_and_holds_answers_to_a_schema(
    server, browse, tmp_path, tiny_model_dir
):
    """Show probabilities: the answer as its tokens, each with its probability and the
    likeliest alternatives, the numbers the API's logprobs give. Answer format JSON schema:
    the next answer (from the tiny model's noise) is JSON that follows the schema typed in."""
    new_page, _ = browse
    model = str(tiny_model_dir)
    page = new_page()
    page.goto(f"{server.url}/studio/playground?model={model}")
    page.wait_for_selector("#pane-0-model", state="attached")
    page.select_option("#panes", "1")
    page.check("#show-probs")
    page.fill("#max_tokens", "5")
    page.fill("#prompt", "Hello there")
    page.click("#send-btn")
    wait(lambda: "tokens in" in page.inner_text("#pane-0-meta"), 60, "the answer")
    expected = (
        server.api()
        .post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Hello there"}],
                "max_tokens": 5,
                "temperature": 0,
                "top_p": 1,
                "logprobs": True,
                "top_logprobs": 5,
            },
        )
        .json()["choices"][0]
    )
    answer = page.locator("#pane-0-turns .turn").nth(1)
    assert answer.locator(".text").text_content() == expected["message"]["content"]
    entries = expected["logprobs"]["content"]
    assert answer.locator(".text .tok").count() == len(entries) == 5
    answer.locator("details.probs summary").click()
    rows = answer.locator("details.probs tbody tr")
    assert rows.count() == len(entries)
    first = rows.first.locator("td")
    shown = 100 * math.exp(entries[0]["logprob"])
    assert first.nth(2).inner_text() == (f"{shown:.1f} %" if shown >= 1 else f"{shown:.2g} %")
    assert len(first.nth(3).inner_text().split(", ")) == 5
    snapshot(page, shots_dir(tmp_path), "playground-probs")

    page.uncheck("#show-probs")
    page.select_option("#format", "json_schema")
    schema = {
        "type": "object",
        "properties": {"mood": {"enum": ["calm", "busy"]}},
        "required": ["mood"],
        "additionalProperties": False,
    }
    page.fill("#schema", json.dumps(schema))
    page.fill("#max_tokens", "20")
    page.fill("#prompt", "How is your day?")
    before = page.inner_text("#pane-0-meta")
    page.click("#send-btn")
    wait(lambda: page.inner_text("#pane-0-meta") not in ("", before), 60, "the second answer")
    assert "stopped: stop" in page.inner_text("#pane-0-meta")  # the JSON was complete
    shown = page.locator("#pane-0-turns .turn .text").nth(3).text_content()
    assert json.loads(shown)["mood"] in ("calm", "busy"), shown

    # "Keep in Logs": the next answer is stored, with the conversation it continues.
    page.select_option("#format", "text")
    page.check("#keep")
    page.fill("#max_tokens", "5")
    page.fill("#prompt", "Thanks")
    before = page.inner_text("#pane-0-meta")
    page.click("#send-btn")
    wait(lambda: page.inner_text("#pane-0-meta") not in ("", before), 60, "the third answer")
    kept = server.api().get("/v1/chat/completions", params={"metadata[source]": "playground"})
    (log,) = kept.json()["data"]
    answer = page.locator("#pane-0-turns .turn .text").nth(5).text_content()
    assert log["choices"][0]["message"]["content"] == answer
    said = server.api().get(f"/v1/chat/completions/{log['id']}/messages").json()["data"]
    assert [m["content"] for m in said] == [
        "Hello there",
        expected["message"]["content"],
        "How is your day?",
        shown,
        "Thanks",
    ]


def test_the_playground_turns_side_by_side_answers_into_dpo_preference_pairs(
    server, browse, tmp_path, tiny_model_dir
):
    """Two models answer the same message; "Prefer this answer" on one makes an OpenAI DPO
    row (the messages, the preferred and the other answer), saved as a training file that the
    server reads as preference data."""
    new_page, _ = browse
    client = server.api()
    page = new_page()
    page.goto(f"{server.url}/studio/playground?model={tiny_model_dir}&model2=smollm2-135m-instruct")
    page.wait_for_selector("#pane-1-model", state="attached")
    # answers that end by themselves (an answer cut at max_tokens makes no pair): a short JSON
    # object, which the tiny model's noise closes too
    page.select_option("#format", "json_schema")
    name = {"type": "string", "maxLength": 12}
    schema = {"type": "object", "properties": {"name": name}, "required": ["name"]}
    page.fill("#schema", json.dumps(schema | {"additionalProperties": False}))
    page.fill("#max_tokens", "40")
    page.fill("#prompt", "Hello there")
    page.click("#send-btn")
    wait(lambda: page.locator("button.prefer").count() == 2, 90, "the two answers to compare")
    answers = [page.locator(f"#pane-{i}-turns .turn .text").nth(1).text_content() for i in (0, 1)]
    page.click("button[aria-label='Prefer this answer (pane 2)']")
    assert page.locator("button.prefer").count() == 0  # one judgement per turn
    assert page.inner_text("#pref-count") == "1 preference pair not saved yet."
    page.reload()  # an unsaved pair survives a reload
    page.wait_for_selector("#prefs:not([hidden])")
    assert page.inner_text("#pref-count") == "1 preference pair not saved yet."
    page.click("#pref-save")
    saved = page.wait_for_selector("#pref-saved a")
    file_id = saved.get_attribute("href").rsplit("/", 1)[1]
    (row,) = [json.loads(x) for x in client.get(f"/v1/files/{file_id}/content").text.splitlines()]
    assert row == {
        "input": {"messages": [{"role": "user", "content": "Hello there"}]},
        "preferred_output": [{"role": "assistant", "content": answers[1]}],
        "non_preferred_output": [{"role": "assistant", "content": answers[0]}],
    }
    report = client.get(f"/v1/files/{file_id}/validation").json()
    assert report["format"] == "openai-dpo", report
    assert page.locator("#prefs").is_hidden()  # saved: the list starts again
    page.click("#pref-saved a >> nth=1")  # the job form, with the file and the method chosen
    page.wait_for_selector("#job-method")
    assert page.input_value("#job-method") == "dpo"
    assert page.input_value("#job-training_file") == file_id
    snapshot(page, shots_dir(tmp_path), "playground-preferences")
