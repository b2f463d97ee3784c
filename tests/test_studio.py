"""The Studio without a browser: its pages and assets, the API extensions it is built on (job
event stream, file validation and preview, job form, comparisons), and its guards (Host check,
API key, CSP, nothing from outside the server). The browser tests are in test_studio_browser.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import good_examples

from tuneforge.ui import create_app, loopback_hosts
from tuneforge.ui.pages import HERE, page_paths

BASE = "http://127.0.0.1:8000"


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def home(tmp_path_factory, default_model_dir) -> Path:
    home = tmp_path_factory.mktemp("studio-home")
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    return home


@pytest.fixture(scope="module")
def client(home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_HOME", str(home))
        with TestClient(create_app(host="127.0.0.1"), base_url=BASE) as c:
            yield c


@pytest.fixture(scope="module")
def file_id(client) -> str:
    rows = good_examples(12)
    rows[3]["messages"][-1]["content"] = "x " * 400  # a long answer, cut at max_seq_len=64
    response = client.post(
        "/v1/files", files={"file": ("train.jsonl", jsonl(rows))}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def cancelled_job(client, file_id, tiny_model_dir) -> str:
    job = client.post(
        "/v1/fine_tuning/jobs", json={"model": str(tiny_model_dir), "training_file": file_id}
    ).json()
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
    return job["id"]


# -- pages and assets ---------------------------------------------------------------------------
def test_every_page_renders_with_its_security_headers(client, cancelled_job, file_id):
    paths = page_paths() + [
        f"/studio/data/{file_id}",
        f"/studio/jobs/{cancelled_job}",
        "/studio/compare/cmp-0123",
        "/studio/evals/eval_0123",
        "/studio/evals/eval_0123/runs/evalrun_0123",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "'unsafe-eval'" not in csp and "script-src 'self' 'unsafe-inline'" not in csp
        html = response.text
        assert '<main id="main"' in html and 'lang="en"' in html
        assert "<script>" not in html  # no inline scripts: the CSP would block them anyway
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/studio/"


def test_a_data_files_train_link_works_before_its_script_runs(client, file_id):
    """The link is in the HTML (the script adds the chosen model): a click while the page still
    loads its data opens the new-job form for this file instead of going nowhere ("#")."""
    html = client.get(f"/studio/data/{file_id}").text
    assert f'id="train-link" class="button" href="/studio/jobs/new?training_file={file_id}"' in html


def test_ids_from_the_url_are_escaped_or_refused(client):
    assert client.get("/studio/jobs/<script>").status_code == 404
    assert client.get('/studio/jobs/a"b').status_code == 404
    page = client.get("/studio/jobs/ftjob-x_1").text
    assert 'data-job="ftjob-x_1"' in page


def _own_files() -> list[Path]:
    files = [*HERE.glob("templates/*.j2"), *HERE.glob("static/*.*"), *HERE.glob("static/js/*.js")]
    assert len(files) > 15
    return files


def test_nothing_loads_from_outside_the_server():
    allowed = {"http://www.w3.org/2000/svg"}  # an XML namespace name, never fetched
    for path in _own_files():
        urls = set(re.findall(r"https?://[^\s\"'`)<>]+", path.read_text()))
        assert urls <= allowed, (path.name, urls - allowed)
    # The vendored library's only URL is its homepage in the licence comment.
    vendored = (HERE / "static/vendor/uPlot-1.6.32.iife.min.js").read_text()
    assert set(re.findall(r"https?://[^\s\"'`)]+", vendored)) == {
        "https://github.com/leeoniya/uPlot"
    }
    for js in HERE.glob("static/js/*.js"):
        text = js.read_text()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, js.name
        assert "eval(" not in text and "new Function" not in text, js.name


def test_vendored_assets_match_their_recorded_hashes():
    vendor = HERE / "static/vendor"
    rows = re.findall(
        r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", (vendor / "VENDOR.md").read_text(), re.M
    )
    listed = {name: digest for name, digest in rows}
    on_disk = {p.name for p in vendor.iterdir() if p.name != "VENDOR.md"}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name


def test_no_page_of_the_server_loads_from_a_cdn(client):
    # FastAPI's Swagger and ReDoc pages load scripts from a CDN; they are switched off.
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_static_files_are_served(client):
    for path in ("/studio/static/js/lib.js", "/studio/static/studio.css", "/favicon.ico"):
        response = client.get(path)
        assert response.status_code == 200, path
    assert (
        client.get("/studio/static/js/lib.js").headers["content-type"].startswith("text/javascript")
    )
    assert client.get("/studio/static/../pages.py").status_code == 404


# -- guards -------------------------------------------------------------------------------------
def test_a_foreign_host_header_is_refused(client):
    response = client.get("/v1/models", headers={"host": "rebind.example:8000"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "host_not_allowed"
    assert client.get("/studio/", headers={"host": "rebind.example"}).status_code == 403
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/health", headers={"host": host}).status_code == 200, host


def test_loopback_hosts():
    assert loopback_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "[::1]"}
    assert "10.0.0.5" in loopback_hosts("10.0.0.5")
    assert "[fe80::1]" in loopback_hosts("fe80::1")


def test_with_an_api_key_pages_open_but_the_api_needs_the_key(
    tmp_path, default_model_dir, monkeypatch
):
    (tmp_path / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    with TestClient(create_app(host="127.0.0.1", api_key="s3cret"), base_url=BASE) as c:
        assert c.get("/studio/jobs").status_code == 200
        assert c.get("/studio/static/js/lib.js").status_code == 200
        assert c.get("/").status_code == 200  # the redirect, then the page
        assert c.get("/v1/models").status_code == 401
        assert c.get("/studiox").status_code in (401, 404)  # not under the open prefix
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


# -- the job form -------------------------------------------------------------------------------
def test_the_job_form_is_the_schema_of_what_the_api_accepts(client):
    form = client.get("/v1/tuneforge/job_form").json()
    assert "supervised" in form["methods"]
    config = form["training_config"]["properties"]
    assert "lora_rank" in config and config["lora_rank"]["description"]
    for reserved in ("model", "train_file", "epochs", "method", "output_dir"):
        assert reserved not in config
    assert set(form["simple"]["job"]) <= set(form["job"]["properties"])
    assert set(form["simple"]["training_config"]) <= set(config)
    assert "/v1/tuneforge/job_form" in client.get("/openapi.json").json()["paths"]


# -- the job event stream -----------------------------------------------------------------------
def sse(text: str) -> list[dict]:
    frames = []
    for block in text.strip().split("\n\n"):
        frame: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            frame[key] = value
        if "data" in frame:
            frames.append(frame | {"data": json.loads(frame["data"])})
    return frames


def test_event_stream_replays_everything_then_ends_at_the_final_status(client, cancelled_job):
    url = f"/v1/fine_tuning/jobs/{cancelled_job}/events"
    with client.stream("GET", url, params={"stream": "true"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        frames = sse(response.read().decode())
    events = [f for f in frames if f.get("event") != "status"]
    statuses = [f for f in frames if f.get("event") == "status"]
    listed = client.get(url, params={"limit": 100}).json()["data"][::-1]  # oldest first
    assert [f["id"] for f in events] == [e["id"] for e in listed]
    assert [f["data"] for f in events] == listed
    assert statuses and statuses[-1]["data"]["status"] == "cancelled"
    assert "id" not in statuses[0]  # status frames do not move the Last-Event-ID
    # A reconnect with Last-Event-ID gets only what came after.
    first = events[0]["id"]
    with client.stream(
        "GET", url, params={"stream": "true"}, headers={"Last-Event-ID": first}
    ) as r:
        again = [f for f in sse(r.read().decode()) if f.get("event") != "status"]
    assert [f["id"] for f in again] == [e["id"] for e in listed[1:]]


def test_event_stream_of_an_unknown_job_is_a_404(client):
    response = client.get("/v1/fine_tuning/jobs/ftjob-nope/events", params={"stream": "true"})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "fine_tuning_job_id"


# -- validation and trained-token preview -------------------------------------------------------
def test_validation_report_of_an_uploaded_file(client, file_id, tiny_model_dir):
    report = client.get(
        f"/v1/files/{file_id}/validation",
        params={"model": str(tiny_model_dir), "max_seq_len": 64},
    ).json()
    assert report["ok"] and report["n_examples"] == 12 and report["n_valid_examples"] == 12
    assert report["path"] == "train.jsonl"  # the client's name, not the server's path
    hist = report["length_histogram"]
    assert sum(hist["counts"]) == 12 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert report["warnings"]["over_max_length"] == 1
    assert report["billed_tokens"] > 0 and report["training_time_estimate"] is None


def test_validation_with_a_measured_estimate(client, file_id, tiny_model_dir):
    report = client.get(
        f"/v1/files/{file_id}/validation",
        params={"model": str(tiny_model_dir), "estimate": "true"},
    ).json()
    est = report["training_time_estimate"]
    assert est["tokens_per_second"] > 0 and est["seconds"] > 0


def test_preview_marks_trained_spans_and_truncation(client, file_id, tiny_model_dir):
    url = f"/v1/files/{file_id}/preview"
    page = client.get(url, params={"model": str(tiny_model_dir), "max_seq_len": 64}).json()
    assert len(page["data"]) == 5 and page["has_more"] and page["next_offset"] == 5
    first = page["data"][0]
    assert [s for s in first["segments"] if s["trained"]]
    trained = "".join(s["text"] for s in first["segments"] if s["trained"])
    assert good_examples(12)[0]["messages"][-1]["content"] in trained
    assert sum(1 for s in first["segments"] if not s["trained"])
    cut = page["data"][3]
    assert cut["truncated"] and cut["n_tokens"] == 64 and cut["full_length"] > 64
    rest = client.get(url, params={"model": str(tiny_model_dir), "offset": 10}).json()
    assert [d["index"] for d in rest["data"]] == [10, 11] and not rest["has_more"]


def test_file_views_errors_name_the_field(client, file_id, tiny_model_dir):
    missing = client.get("/v1/files/file-nope/validation")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "file_id"
    bad_model = client.get(f"/v1/files/{file_id}/preview", params={"model": "no-such-model"})
    assert bad_model.status_code == 400 and bad_model.json()["error"]["param"] == "model"
    too_long = client.get(
        f"/v1/files/{file_id}/validation",
        params={"model": str(tiny_model_dir), "max_seq_len": 10**6},
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_seq_len"


# -- comparisons --------------------------------------------------------------------------------
def test_comparison_requests_are_checked_before_queueing(
    client, file_id, tiny_model_dir, cancelled_job
):
    url = "/v1/tuneforge/comparisons"
    bad_file = client.post(url, json={"test_file": "file-nope", "training_file": file_id})
    assert bad_file.status_code == 400 and bad_file.json()["error"]["param"] == "test_file"
    base = client.post(
        url,
        json={"test_file": file_id, "training_file": file_id, "models": [str(tiny_model_dir)]},
    )
    assert base.status_code == 400 and base.json()["error"]["param"] == "models.0"
    unknown = client.post(
        url, json={"test_file": file_id, "training_file": file_id, "models": ["ft:nope:x::y"]}
    )
    assert unknown.status_code == 404
    nothing = client.post(
        url, json={"test_file": file_id, "training_file": file_id, "baselines": False}
    )
    assert nothing.status_code == 400 and nothing.json()["error"]["param"] == "models"
    assert client.get(f"{url}/cmp-nope").status_code == 404
    assert client.get(f"{url}/../../etc").status_code == 404


def test_a_comparison_that_fails_says_why(client, file_id):
    """A comparison whose files cannot be compared (the test file is in another format than the
    training file) ends `failed` with the reason and the fix, and the server lives on."""
    import time

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(12)]
    other = client.post(
        "/v1/files", files={"file": ("test.jsonl", jsonl(rows))}, data={"purpose": "fine-tune"}
    ).json()["id"]
    created = client.post(
        "/v1/tuneforge/comparisons",
        json={"test_file": other, "training_file": file_id, "model": "/no/such/model"},
    )
    assert created.status_code == 400  # an unknown base model is refused up front
    created = client.post(
        "/v1/tuneforge/comparisons", json={"test_file": other, "training_file": file_id}
    ).json()
    assert created["status"] in ("queued", "running")
    deadline = time.time() + 120
    while time.time() < deadline:
        found = client.get(f"/v1/tuneforge/comparisons/{created['id']}").json()
        if found["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert found["status"] == "failed", found
    assert "format" in found["error"] and "tuneforge data convert" in found["error"]
    assert "Traceback" not in found["error"]
    listed = client.get("/v1/tuneforge/comparisons").json()["data"]
    assert created["id"] in [c["id"] for c in listed]
    assert client.get("/health").status_code == 200


def test_an_interrupted_comparison_is_reported_failed(client, home, monkeypatch):
    folder = home / "comparisons" / "cmp-deadbeef"
    folder.mkdir(parents=True)
    (folder / "request.json").write_text(json.dumps({"created_at": 1, "models": []}))
    (folder / "status.json").write_text(json.dumps({"status": "running"}))
    found = client.get("/v1/tuneforge/comparisons/cmp-deadbeef").json()
    assert found["status"] == "failed" and "interrupted" in found["error"]


def test_imports_point_one_way_the_api_never_imports_the_ui():
    api = Path(__file__).resolve().parents[1] / "src/tuneforge/api"
    for path in api.glob("*.py"):
        assert "tuneforge.ui" not in path.read_text(), path.name
    ui = HERE.glob("*.py")
    for path in ui:
        assert "tuneforge.cli" not in path.read_text(), path.name
