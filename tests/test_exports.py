"""Downloadable exports through the jobs API (a tuneforge extension) and OpenAI's `integrations`
on jobs: a succeeded job's model comes back as a file that loads (GGUF through transformers'
GGUF loader, the Ollama tar with its Modelfile, the merged folder, the adapter), and every
request that cannot work is a 400 naming its field.

The job is real (created through the API) but its run is trained in-process on the tiny model,
then marked succeeded the way the worker's end does it (`lifecycle.succeed`).
"""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from helpers import good_examples, tiny_training
from test_api import assert_error, jsonl, upload

from tuneforge.api.app import create_app
from tuneforge.inference.load import load_for_inference

PROMPT = 'Title: Soup\n\nIngredients: ["2 c. water", "1 onion, chopped"]'


@pytest.fixture(scope="module")
def api(tmp_path_factory, default_model_dir):
    home = tmp_path_factory.mktemp("exports-home")
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_HOME", str(home))
        with TestClient(create_app()) as client:
            yield client


@pytest.fixture(scope="module")
def training_file(api) -> str:
    response = upload(api, jsonl(good_examples(12)))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def new_job(api, training_file: str, model: str, **body) -> dict:
    response = api.post(
        "/v1/fine_tuning/jobs", json={"model": model, "training_file": training_file, **body}
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def job(api, training_file, tiny_model_dir, demo_dir) -> dict:
    """A succeeded job of the tiny Llama with a real LoRA run (2 steps, a checkpoint at 1)."""
    from tuneforge.config import build_config
    from tuneforge.jobs import lifecycle
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import train

    job = new_job(api, training_file, str(tiny_model_dir))
    assert api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").status_code == 200
    store = api.app.state.store
    run = Path(store.get_job(job["id"])["run_dir"])
    settings = tiny_training(
        demo_dir, tiny_model_dir, run, max_steps=2, checkpoint_every=1, keep_last=2
    )
    train(make_plan(build_config(settings)))
    assert store.update_job(job["id"], expect=("paused",), status="running")
    assert lifecycle.succeed(store, store.get_job(job["id"]))
    return api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()


def wait_export(api, job_id: str, export_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = api.get(f"/v1/fine_tuning/jobs/{job_id}/exports/{export_id}").json()
        if export["status"] in ("succeeded", "failed"):
            return export
        time.sleep(0.2)
    raise AssertionError(f"export {export_id} still {export['status']} after {timeout} s")


def export(api, job_id: str, **body) -> dict:
    response = api.post(f"/v1/fine_tuning/jobs/{job_id}/exports", json=body)
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["object"] == "fine_tuning.job.export" and created["id"].startswith("ftexport-")
    done = wait_export(api, job_id, created["id"])
    assert done["status"] == "succeeded", done
    return done


def download(api, file_id: str, folder: Path) -> Path:
    meta = api.get(f"/v1/files/{file_id}").json()
    assert meta["purpose"] == "fine-tune-results"
    response = api.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    assert meta["filename"] in response.headers["content-disposition"]
    assert len(response.content) == meta["bytes"]
    path = folder / meta["filename"]
    path.write_bytes(response.content)
    return path


def first_logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer(PROMPT)["input_ids"]])).logits[0]


def test_gguf_export_downloads_the_fine_tuned_model(api, job, tmp_path):
    from transformers import AutoModelForCausalLM

    done = export(api, job["id"], format="gguf", quant="f32")
    assert done["fine_tuning_job_id"] == job["id"] and done["model"] == job["fine_tuned_model"]
    assert (done["format"], done["quant"], done["ollama"]) == ("gguf", "f32", False)
    path = download(api, done["file_id"], tmp_path)
    assert path.name.endswith(".f32.gguf") and path.name.startswith("ft-")
    back = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    loaded = load_for_inference(job_run(api, job))
    merged = loaded.model.merge_and_unload()
    ours = first_logits(merged, loaded.tokenizer)
    assert (first_logits(back, loaded.tokenizer) - ours).abs().max().item() <= 1e-4
    # The adapter changed the model: the export is the fine-tuned one, not the base.
    base = load_for_inference(job["model"]).model
    assert (first_logits(base, loaded.tokenizer) - ours).abs().max().item() > 1e-4
    # Listed, newest first; asking again returns the same export instead of a second file.
    listed = api.get(f"/v1/fine_tuning/jobs/{job['id']}/exports").json()
    assert listed["object"] == "list" and done["id"] in [e["id"] for e in listed["data"]]
    again = api.post(f"/v1/fine_tuning/jobs/{job['id']}/exports", json={"quant": "f32"}).json()
    assert again["id"] == done["id"]


def job_run(api, job: dict) -> Path:
    return Path(api.app.state.store.get_job(job["id"])["run_dir"])


def test_ollama_export_is_a_tar_with_gguf_and_modelfile(api, job, tmp_path):
    done = export(api, job["id"], quant="q8_0", ollama=True)
    path = download(api, done["file_id"], tmp_path)
    assert path.name.endswith(".q8_0.ollama.tar")
    with tarfile.open(path) as tar:
        names = sorted(tar.getnames())
        stem = names[0]
        assert names == [stem, f"{stem}/Modelfile", f"{stem}/model.q8_0.gguf"]
        modelfile = tar.extractfile(f"{stem}/Modelfile").read().decode()
    assert "FROM ./model.q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_a_checkpoint_export_and_merged_and_adapter_folders(api, job, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    [checkpoint] = [
        c["fine_tuned_model_checkpoint"]
        for c in api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        if c["step_number"] == 1
    ]
    merged_tar = download(
        api, export(api, job["id"], format="merged", model=checkpoint)["file_id"], tmp_path
    )
    with tarfile.open(merged_tar) as tar:
        tar.extractall(tmp_path / "merged", filter="data")
    [folder] = list((tmp_path / "merged").iterdir())
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    run = job_run(api, job)
    tokenizer = load_for_inference(run).tokenizer
    at_step_1 = load_for_inference(run, weights=run / "checkpoints" / "step-1").model
    assert (
        first_logits(merged, tokenizer) - first_logits(at_step_1, tokenizer)
    ).abs().max().item() <= 1e-4

    adapter_tar = download(api, export(api, job["id"], format="adapter")["file_id"], tmp_path)
    with tarfile.open(adapter_tar) as tar:
        tar.extractall(tmp_path / "adapter", filter="data")
    [adapter] = list((tmp_path / "adapter").iterdir())
    assert (adapter / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, adapter).eval()
    final = load_for_inference(run).model
    assert (
        first_logits(tuned, tokenizer) - first_logits(final, tokenizer)
    ).abs().max().item() <= 1e-5


def test_deleting_the_file_deletes_the_export(api, job):
    done = export(api, job["id"], quant="q4_0")
    assert api.delete(f"/v1/files/{done['file_id']}").json()["deleted"] is True
    missing = api.get(f"/v1/fine_tuning/jobs/{job['id']}/exports/{done['id']}")
    assert_error(missing, 404, param="export_id")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"quant": "q4_k_m"}, "quant", "unsupported_quant"),
        ({"quant": "int3"}, "quant", "unsupported_quant"),
        ({"format": "onnx"}, "format", None),
        ({"format": "merged", "quant": "f16"}, "quant", None),
        ({"format": "adapter", "ollama": True}, "ollama", None),
        ({"model": "ft:nope:local::abc"}, "model", "model_not_found"),
        ({"extra": 1}, "extra", None),
    ],
)
def test_bad_export_requests_name_the_field(api, job, body, param, code):
    response = api.post(f"/v1/fine_tuning/jobs/{job['id']}/exports", json=body)
    assert_error(response, 400, param=param, code=code)


def test_exports_need_a_succeeded_job_of_a_convertible_architecture(
    api, training_file, tiny_model_dir, tmp_path
):
    unfinished = new_job(api, training_file, str(tiny_model_dir))
    api.post(f"/v1/fine_tuning/jobs/{unfinished['id']}/cancel")
    response = api.post(f"/v1/fine_tuning/jobs/{unfinished['id']}/exports", json={})
    assert_error(response, 400, param="fine_tuning_job_id", code="invalid_job_state")
    assert_error(api.post("/v1/fine_tuning/jobs/ftjob-nope/exports", json={}), 404)
    assert_error(api.get("/v1/fine_tuning/jobs/ftjob-nope/exports"), 404)


def test_an_architecture_gguf_cannot_write_is_a_400_on_format(api, job, monkeypatch):
    from tuneforge.inference import gguf_export

    monkeypatch.setattr(gguf_export, "ARCHITECTURES", {"Qwen2ForCausalLM": "qwen2"})
    response = api.post(f"/v1/fine_tuning/jobs/{job['id']}/exports", json={"quant": "bf16"})
    error = assert_error(response, 400, param="format", code="unsupported_architecture")
    assert "LlamaForCausalLM" in error["message"] and "merged" in error["message"]


def test_a_failed_export_says_why_and_leaves_no_file(api, job, monkeypatch):
    from tuneforge.inference import gguf_export

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_export, "write_gguf", full_disk)
    before = {f["id"] for f in api.get("/v1/files").json()["data"]}
    created = api.post(f"/v1/fine_tuning/jobs/{job['id']}/exports", json={"quant": "q5_1"})
    done = wait_export(api, job["id"], created.json()["id"])
    assert done["status"] == "failed" and done["file_id"] is None
    assert "No space left on device" in done["error"]["message"]
    assert {f["id"] for f in api.get("/v1/files").json()["data"]} == before
    files = Path(api.app.state.store.path).parent / "files"
    assert not [p for p in files.iterdir() if p.name.startswith(".export-")]


def test_exports_left_unfinished_by_a_stopped_server_fail_at_the_next_start(api, job):
    from tuneforge.jobs.exports import ExportRunner

    store = api.app.state.store
    row = store.add_export(
        {
            "id": "ftexport-stale",
            "job_id": job["id"],
            "created_at": 0,
            "model": job["fine_tuned_model"],
            "format": "gguf",
            "quant": "f16",
            "ollama": 0,
            "status": "running",
        }
    )
    ExportRunner(store).start()
    stale = store.get_export(row["id"])
    assert stale["status"] == "failed" and "request it again" in stale["error"]["message"]


# ---------------------------------------------------------------------------------------------
# integrations (OpenAI's wandb field) → report_to
# ---------------------------------------------------------------------------------------------

WANDB = {"type": "wandb", "wandb": {"project": "recipes", "name": "r1", "tags": ["a", "b"]}}


def pretend_installed(monkeypatch, package: str, installed: bool) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name == package:
            return real("json") if installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_wandb_integration_is_echoed_and_becomes_report_to(
    api, training_file, tiny_model_dir, monkeypatch
):
    from tuneforge.jobs.spec import job_config

    pretend_installed(monkeypatch, "wandb", True)
    job = new_job(api, training_file, str(tiny_model_dir), integrations=[WANDB])
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert job["integrations"] == [
        {
            "type": "wandb",
            "wandb": {"project": "recipes", "name": "r1", "entity": None, "tags": ["a", "b"]},
        }
    ]
    assert (
        api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["integrations"] == job["integrations"]
    )
    row = api.app.state.store.get_job(job["id"])
    row["training_config"] = {"report_to": "tensorboard"}  # both trackers then
    config = job_config(row, Path("train.jsonl"), None)
    assert config.report_to == ["tensorboard", "wandb"]
    assert (config.tracker_project, config.tracker_run_name) == ("recipes", "r1")
    assert config.tracker_tags == ["a", "b"] and config.wandb_entity is None
    plain = new_job(api, training_file, str(tiny_model_dir))
    api.post(f"/v1/fine_tuning/jobs/{plain['id']}/cancel")
    assert plain["integrations"] == []


def test_wandb_integration_without_the_package_names_it(
    api, training_file, tiny_model_dir, monkeypatch
):
    pretend_installed(monkeypatch, "wandb", False)
    body = {"model": str(tiny_model_dir), "training_file": training_file, "integrations": [WANDB]}
    error = assert_error(
        api.post("/v1/fine_tuning/jobs", json=body),
        400,
        param="integrations[0].type",
        code="integration_not_available",
    )
    assert "pip install wandb" in error["message"]


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ([{"type": "mlflow", "mlflow": {}}], "integrations[0].type"),
        ([{"type": "wandb"}], "integrations[0].wandb"),
        ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project"),
        (
            [{"type": "wandb", "wandb": {"project": "p", "colour": 1}}],
            "integrations[0].wandb.colour",
        ),
        ([WANDB, WANDB], "integrations"),
    ],
)
def test_bad_integrations_name_the_field(api, training_file, tiny_model_dir, integrations, param):
    body = {
        "model": str(tiny_model_dir),
        "training_file": training_file,
        "integrations": integrations,
    }
    assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400, param=param)


def test_wandb_runs_offline_into_the_run_unless_told_otherwise(tmp_path, monkeypatch):
    from tuneforge.config import build_config
    from tuneforge.train.recipe import _tracker_init_kwargs

    config = build_config(
        {
            "train_file": "x.jsonl",
            "report_to": "wandb",
            "tracker_run_name": "r",
            "tracker_tags": "a,b",
        }
    )
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    kwargs = _tracker_init_kwargs(config, tmp_path / "run")
    assert kwargs == {
        "wandb": {
            "dir": str(tmp_path / "run" / "trackers"),
            "mode": "offline",
            "name": "r",
            "tags": ["a", "b"],
        }
    }
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert "mode" not in _tracker_init_kwargs(config, tmp_path / "run")["wandb"]
    tensorboard = build_config({"train_file": "x.jsonl", "report_to": "tensorboard"})
    assert _tracker_init_kwargs(tensorboard, tmp_path / "run") == {}


def test_wandb_offline_run_gets_the_metrics_without_a_network(
    demo_dir, tiny_model_dir, tmp_path, monkeypatch
):
    """With the real wandb package (not a dependency: skipped where it is not installed)."""
    pytest.importorskip("wandb")
    from tuneforge.config import build_config
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import train

    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = tiny_training(
        demo_dir,
        tiny_model_dir,
        tmp_path / "run",
        max_steps=2,
        report_to="wandb",
        tracker_project="recipes",
        tracker_run_name="r1",
    )
    run, _ = train(make_plan(build_config(settings)))
    [log] = (run / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()
    for key in ("train_loss", "valid_loss", "learning_rate", "recipes", "r1"):
        assert key.encode() in data, key
