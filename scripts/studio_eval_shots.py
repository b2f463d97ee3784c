"""The Studio's eval screenshots in docs/studio/ (evals, eval, eval-run at 1280 and 390 px), with
SmolLM2-135M-Instruct answering six capital questions zero-shot, so that the pages show real
answers (the browser test's tiny model answers noise). Run from the repository root:

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/studio_eval_shots.py
"""

import json
from pathlib import Path

from _shots import MODEL, snapshot, studio, wait

rows = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Spain", "Madrid"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
]
path = Path("/tmp/evalshots-capitals.jsonl")
path.write_text(
    "".join(
        json.dumps({"item": {"question": f"What is the capital of {c}?", "answer": a}}) + "\n"
        for c, a in rows
    )
)
with studio("evalshots") as (server, page):
    ev = (
        server.api()
        .post(
            "/v1/evals",
            json={
                "name": "Capitals",
                "data_source_config": {
                    "type": "custom",
                    "item_schema": {
                        "type": "object",
                        "properties": {
                            "question": {"type": "string"},
                            "answer": {"type": "string"},
                        },
                        "required": ["question", "answer"],
                    },
                    "include_sample_schema": True,
                },
                "testing_criteria": [
                    {
                        "type": "string_check",
                        "name": "names the capital",
                        "operation": "ilike",
                        "input": "{{ sample.output_text }}",
                        "reference": "{{ item.answer }}",
                    },
                    {
                        "type": "text_similarity",
                        "name": "close to the answer",
                        "evaluation_metric": "fuzzy_match",
                        "input": "{{ sample.output_text }}",
                        "reference": "{{ item.answer }}",
                        "pass_threshold": 0.8,
                    },
                ],
            },
        )
        .json()
    )
    page.goto(f"{server.url}/studio/evals/{ev['id']}")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#upload", str(path))
    page.select_option("#model", MODEL)
    page.fill("#system", "Answer with the city name only.")
    page.fill("#max_tokens", "16")
    page.fill("#run-name", "SmolLM2-135M-Instruct, zero-shot")
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#runs table a").click()
    wait(lambda: "completed" in page.inner_text("#run-status"), 300, "run")
    wait(lambda: page.locator("#items tbody tr").count() == len(rows), 20, "rows")
    out = Path("docs/studio")
    snapshot(page, out, "eval-run")
    page.goto(f"{server.url}/studio/evals/{ev['id']}")
    page.wait_for_selector("#runs table")
    snapshot(page, out, "eval")
    page.goto(f"{server.url}/studio/evals")
    page.wait_for_selector("#evals table")
    snapshot(page, out, "evals")
