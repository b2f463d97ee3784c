"""What a new user hit following the README (issue 17): one test per bug, each failing on the code
before its fix. Tiny random model (real tokenizer), so the fast tier runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import good_examples, tiny_training, write_lines

from tuneforge import run_dir as rd
from tuneforge.config import build_config
from tuneforge.train.plan import make_plan
from tuneforge.train.recipe import train

REPO = Path(__file__).resolve().parents[1]


def tiny(demo_dir: Path, tiny_model_dir: Path, out: Path, **kw):
    """Two steps at a constant rate, no periodic evaluation: runs whose rates are easy to read."""
    settings = {"max_steps": 2, "warmup_ratio": 0.0, "lr_schedule": "constant", "eval_every": 100}
    return build_config(tiny_training(demo_dir, tiny_model_dir, out, **settings) | kw)


# -- 1. learning_rate_multiplier ------------------------------------------------------------


def test_learning_rate_multiplier_scales_the_rate_the_optimizer_uses(
    demo_dir, tiny_model_dir, tmp_path
):

    runs = {}
    for multiplier in (1.0, 2.0):
        config = tiny(
            demo_dir,
            tiny_model_dir,
            tmp_path / f"x{multiplier}",
            learning_rate_multiplier=multiplier,
        )
        run, _ = train(make_plan(config))
        runs[multiplier] = rd.read_metrics(run)
    assert [m["learning_rate"] for m in runs[1.0]] == [1e-3, 1e-3]
    assert [m["learning_rate"] for m in runs[2.0]] == [2e-3, 2e-3]
    # The same first batch from the same weights; the second step sees the larger update.
    assert runs[1.0][0]["train_loss"] == pytest.approx(runs[2.0][0]["train_loss"], abs=1e-6)
    assert abs(runs[1.0][1]["train_loss"] - runs[2.0][1]["train_loss"]) > 1e-4


def test_config_validate_and_jobs_use_the_multiplied_rate(
    demo_dir, tiny_model_dir, tmp_path, run_cli
):
    from tuneforge.jobs.spec import job_config

    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump(
            tiny(demo_dir, tiny_model_dir, tmp_path / "run").model_dump(mode="json")
            | {"learning_rate": "auto"}
        )
    )
    code, out, err = run_cli("config", "validate", config_file, "learning_rate_multiplier=2")
    assert code == 0, err
    assert "lr 0.0004 (0.0002 × learning_rate_multiplier 2)" in out

    job = {
        "model": str(tiny_model_dir),
        "seed": 0,
        "suffix": None,
        "training_config": {},
        "hyperparameters": {"learning_rate_multiplier": 0.5, "n_epochs": 1},
    }
    plan = make_plan(job_config(job, demo_dir / "train.jsonl", None), tmp_path / "job")
    assert plan.learning_rate == pytest.approx(1e-4)


# -- 2. Ctrl-C while chat streams -------------------------------------------------------------


def test_ctrl_c_while_chat_streams_stops_the_answer_not_the_program(tiny_model_dir):
    env = os.environ | {"TUNEFORGE_NO_KERNEL": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "chat",
            str(tiny_model_dir),
            "--max-tokens",
            "1500",
            "--temperature",
            "1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdin and proc.stdout
        proc.stdin.write(b"tell me a long story\n")
        proc.stdin.flush()
        seen = b""
        deadline = time.time() + 120
        while b"assistant> " not in seen or len(seen.split(b"assistant> ", 1)[1]) < 20:
            assert time.time() < deadline, seen
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "chat exited before answering"
            seen += chunk
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        time.sleep(0.5)
        proc.stdin.write(b"/help\n\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err_text = err.decode()
    assert proc.returncode == 0, err_text
    assert "terminate called" not in err_text
    assert "(stopped)" in err_text
    assert "/reset" in err_text  # the /help answer: the prompt came back


# -- 3 and 8. --resume from another folder; status.json after a resume ------------------------


def test_resume_from_another_folder_and_its_status(
    demo_dir, tiny_model_dir, tmp_path, monkeypatch, run_cli
):

    work = tmp_path / "work"
    work.mkdir()
    (work / "small.jsonl").write_bytes((demo_dir / "train.jsonl").read_bytes())
    monkeypatch.chdir(work)
    config = tiny(
        demo_dir,
        tiny_model_dir,
        Path("runs/a"),
        train_file="small.jsonl",
        max_steps=4,
        checkpoint_every=2,
    )

    def crash_at_step_3(metrics):
        if metrics["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make_plan(config), on_step=crash_at_step_3)
    run = work / "runs" / "a"
    saved = rd.read_config(run)
    assert saved["train_file"] == str(work / "small.jsonl")
    assert saved["output_dir"] == str(run)
    before = rd.read_status(run)
    assert before["status"] == "interrupted" and before["reason"] == "SIGINT"

    monkeypatch.chdir("/")
    code, _, err = run_cli("train", "--resume", run)
    assert code == 0, err
    after = rd.read_status(run)
    assert after["status"] == "succeeded"
    assert after["reason"] is None
    assert after["started_at"] == before["started_at"]
    assert after["resumed_at"] > before["started_at"]


# -- 4. config show --defaults is a config file -------------------------------------------------


def test_config_show_defaults_is_yaml_that_validate_accepts(
    demo_dir, tiny_model_dir, tmp_path, run_cli
):
    code, out, _ = run_cli("config", "show", "--defaults")
    assert code == 0
    loaded = yaml.safe_load(out)
    assert isinstance(loaded, dict) and loaded["lora_rank"] == 16 and loaded["train_file"] is None
    path = tmp_path / "defaults.yaml"
    path.write_text(out)
    code, _, err = run_cli("config", "validate", path)
    assert code == 2 and "`train_file`: required" in err
    code, out, err = run_cli(
        "config",
        "validate",
        path,
        f"train_file={demo_dir / 'train.jsonl'}",
        f"model={tiny_model_dir}",
    )
    assert code == 0, err
    assert out.startswith("ok")


# -- 5. a missing run folder is not a hub id ----------------------------------------------------


@pytest.mark.parametrize("name", ["runs/no-such-run", "./no-such-run", "../gone/run", "a/b/c"])
def test_a_missing_path_is_a_local_error(name, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    code, _, err = run_cli("generate", name, "hi")
    assert code == 2
    assert f"{name}: no such folder" in err
    assert "hub" not in err


def test_generate_finds_a_run_by_its_name(demo_dir, tiny_model_dir, isolated_home, run_cli):

    system = "You are a careful recipe assistant."
    rows = [
        {"messages": [{"role": "system", "content": system}] + e["messages"][1:]}
        for e in good_examples(12)
    ]
    data = write_lines(isolated_home.parent / "sys.jsonl", rows)
    config = tiny(demo_dir, tiny_model_dir, rd.runs_root() / "named-run", train_file=str(data))
    train(make_plan(config))
    code, out, err = run_cli("generate", "named-run", "What is the capital of country 3?")
    assert code == 0, err
    assert out.strip() or True  # a random model may answer with nothing printable
    assert repr(system) in err  # the training data's system prompt is used, and said so


# -- 6. CSV through the API ----------------------------------------------------------------------

CSV = (
    "title,ingredients,NER\n"
    + "".join(f'Dish {i},"[""{i} cups flour""]","[""flour""]"\n' for i in range(12))
).encode()


@pytest.fixture
def api(isolated_home, default_model_dir):
    from fastapi.testclient import TestClient

    from tuneforge.api.app import create_app

    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    with TestClient(create_app()) as client:
        yield client


def test_csv_upload_without_mapping_says_what_an_api_client_can_do(api, isolated_home):
    response = api.post(
        "/v1/files", files={"file": ("recipes.csv", CSV)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "column_map"
    assert "recipes.csv" in error["message"] and "column_map=" in error["message"]
    assert "--map" not in error["message"]
    assert str(isolated_home) not in error["message"] and ".upload-" not in error["message"]


def test_csv_upload_with_a_column_map_is_stored_as_chat_jsonl(api):
    response = api.post(
        "/v1/files",
        files={"file": ("recipes.csv", CSV)},
        data={"purpose": "fine-tune", "column_map": "prompt=title+ingredients,completion=NER"},
    )
    assert response.status_code == 200, response.text
    file = response.json()
    assert file["filename"] == "recipes.csv"
    content = api.get(f"/v1/files/{file['id']}/content").text
    rows = [json.loads(line) for line in content.splitlines()]
    assert len(rows) == 12
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": '["flour"]'}
    assert "Dish 0" in rows[0]["messages"][0]["content"]

    bad = api.post(
        "/v1/files",
        files={"file": ("recipes.csv", CSV)},
        data={"purpose": "fine-tune", "column_map": "prompt=title,completion=nope"},
    )
    assert bad.status_code == 400
    message = bad.json()["error"]["message"]
    assert "recipes.csv" in message and "'nope'" in message and ".upload-" not in message
    malformed = api.post(
        "/v1/files",
        files={"file": ("recipes.csv", CSV)},
        data={"purpose": "fine-tune", "column_map": "prompt:title"},
    )
    error = malformed.json()["error"]
    assert malformed.status_code == 400 and error["param"] == "column_map"
    assert "column_map: `prompt:title` is not KEY=COLUMN" in error["message"]
    assert "(fix: write e.g. column_map=prompt=" in error["message"]


# -- 7. broken JSON: the column where the parser stopped ----------------------------------------


def test_a_line_cut_short_names_the_column_where_it_ends(tmp_path):
    from tuneforge.data.formats import iter_parsed

    line = json.dumps(good_examples(1)[0])[:86]
    path = write_lines(tmp_path / "cut.jsonl", [good_examples(1)[0], line])
    issues = [e for _, parsed in iter_parsed(path) for e in parsed.errors]
    assert len(issues) == 1
    assert issues[0].line == 2
    assert "line ends at column 86" in issues[0].message and "cut short" in issues[0].message


# -- 9. every `tuneforge …` command the README names exists --------------------------------------


def test_every_command_in_the_readme_exists():
    import typer

    from tuneforge.cli import app

    root = typer.main.get_command(app)
    named = set()
    in_code = False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        for text in [line] if in_code else line.split("`")[1::2]:
            words = text.strip().split()
            if len(words) >= 2 and words[0] == "tuneforge" and not words[1].startswith("-"):
                named.add(tuple(words[1:3]))
    assert ("config", "validate") in named
    for words in sorted(named):
        command = root.commands.get(words[0])
        assert command is not None, f"README names `tuneforge {words[0]}`, which does not exist"
        if hasattr(command, "commands"):  # a group (typer bundles its own click)
            assert len(words) == 2 and words[1] in command.commands, (
                f"README names `tuneforge {' '.join(words)}`, which does not exist"
            )


# -- friction -------------------------------------------------------------------------------------


def test_model_card_says_what_really_ran(demo_dir, tiny_model_dir, tmp_path):

    config = tiny(demo_dir, tiny_model_dir, tmp_path / "run", epochs=3, max_steps=2)
    plan = make_plan(config)
    assert "stopped by max_steps=2" in plan.describe()
    run, _ = train(plan)
    card = (run / "README.md").read_text()
    assert f"| epochs trained | {plan.epochs_trained:g} |" in card and plan.epochs_trained < 1
    assert "None" not in card
    copy = (run / "model" / "README.md").read_text()
    assert "More Information Needed" not in copy and "Fine-tuned" in copy


def test_data_commands_refuse_to_overwrite(tmp_path, run_cli):
    out = tmp_path / "demo"
    assert run_cli("data", "demo", out, "--n", "20")[0] == 0
    before = (out / "train.jsonl").read_bytes()
    code, _, err = run_cli("data", "demo", out, "--n", "30", "--seed", "1")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (out / "train.jsonl").read_bytes() == before
    assert run_cli("data", "demo", out, "--n", "30", "--seed", "1", "--overwrite")[0] == 0
    assert (out / "train.jsonl").read_bytes() != before
    dst = tmp_path / "c.jsonl"
    assert run_cli("data", "convert", out / "test.jsonl", dst)[0] == 0
    code, _, err = run_cli("data", "convert", out / "train.jsonl", dst)
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli("data", "split", out / "train.jsonl", out)
    assert code == 2 and "already exists" in err


def test_written_files_follow_the_umask(tmp_path):
    from tuneforge.atomic import FILE_MODE, atomic_write_text

    path = tmp_path / "x.txt"
    atomic_write_text(path, "hi")
    plain = tmp_path / "plain.txt"
    plain.write_text("hi")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == FILE_MODE


def test_runs_list_names_whole_runs_and_jobs_runs(isolated_home, run_cli, monkeypatch):
    long_name = "smollm2-135m-instruct-a-rather-long-suffix-for-my-recipes-20261201-101010"
    for folder in (rd.runs_root() / long_name, isolated_home / "jobs" / "ftjob-abc123" / "run"):
        folder.mkdir(parents=True)
        rd.write_config(folder, {"model": "smollm2-135m-instruct", "method": "lora"})
        rd.write_status(folder, status="succeeded", step=2, total_steps=2)
    code, out, _ = run_cli("runs", "list", "--json")
    assert code == 0
    assert {r["run"] for r in json.loads(out)} == {long_name, "ftjob-abc123"}
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli("runs", "list")
    assert [line.split()[0] for line in out.splitlines()] == ["run", long_name, "ftjob-abc123"]
    assert rd.find_run("ftjob-abc123") == isolated_home / "jobs" / "ftjob-abc123" / "run"


def test_an_openai_field_name_gets_a_did_you_mean(run_cli, demo_dir):
    code, _, err = run_cli("train", "-t", demo_dir / "train.jsonl", "n_epochs=2")
    assert code == 2
    assert "`n_epochs`: unknown key; did you mean `epochs`?" in err
    assert err.count("config show --defaults") == 1  # the hint, once


def test_train_takes_a_column_map_for_csv(tiny_model_dir, tmp_path, run_cli):
    csv = tmp_path / "recipes.csv"
    csv.write_bytes(CSV)
    code, _, err = run_cli(
        "train",
        "-t",
        csv,
        "-m",
        tiny_model_dir,
        "-o",
        tmp_path / "run",
        "max_steps=1",
        "--map",
        "prompt=title+ingredients,completion=NER",
    )
    assert code == 0, err
    assert (
        rd.read_config(tmp_path / "run")["column_map"] == "prompt=title+ingredients,completion=NER"
    )


def test_serve_answers_for_a_run_made_by_tuneforge_train(demo_dir, tiny_model_dir, api):
    config = tiny(demo_dir, tiny_model_dir, rd.runs_root() / "my-recipes", max_steps=1)
    train(make_plan(config))
    assert "my-recipes" in [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert api.get("/v1/models/my-recipes").json()["owned_by"] == "user"
    answer = api.post(
        "/v1/chat/completions",
        json={
            "model": "my-recipes",
            "messages": [{"role": "user", "content": "Title: Soup"}],
            "max_tokens": 3,
            "temperature": 0,
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "my-recipes"
    deleted = api.delete("/v1/models/my-recipes")
    assert (
        deleted.status_code == 400 and "tuneforge runs list" in deleted.json()["error"]["message"]
    )
    for name in ("../my-recipes", "no-such-run"):
        assert api.get(f"/v1/models/{name}").status_code == 404


def test_report_to_tensorboard_logs_the_metrics_jsonl_lines(demo_dir, tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = train(
        make_plan(tiny(demo_dir, tiny_model_dir, tmp_path / "tb", report_to="tensorboard"))
    )
    events = list((run / "trackers").rglob("events.out.tfevents.*"))
    assert events
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in events:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    rows = rd.read_metrics(run)
    for key in ("train_loss", "train_mean_token_accuracy", "learning_rate", "valid_loss"):
        expected = [(r["step"], r[key]) for r in rows if key in r]
        assert [(s, pytest.approx(v, rel=1e-6)) for s, v in sorted(scalars[key])] == expected, key


def test_report_to_a_tracker_that_is_not_installed_is_a_config_error(
    demo_dir, tmp_path, run_cli, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    config = tmp_path / "run.yaml"
    config.write_text("report_to: [tensorboard, wandb]\n")
    code, _, err = run_cli("config", "validate", config, f"train_file={demo_dir / 'train.jsonl'}")
    assert code == 2
    assert "`report_to`: wandb needs the wandb package" in err and "pip install wandb" in err
