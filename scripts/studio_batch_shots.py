"""The Studio's batch screenshots in docs/studio/ (batches at 1280 and 390 px), with
SmolLM2-135M-Instruct answering six capital questions, one line asking for a temperature the
API refuses, and a second batch naming a model the server does not have. Run from the
repository root:

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/studio_batch_shots.py
"""

import json
from pathlib import Path

from _shots import MODEL, snapshot, studio, wait


def line(custom_id: str, model: str, question: str, **extra) -> str:
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer with the city name only."},
            {"role": "user", "content": question},
        ],
        "temperature": 0,
        "max_tokens": 16,
    } | extra
    request = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
    return json.dumps(request | {"body": body}) + "\n"


countries = ["France", "Italy", "Japan", "Spain", "Canada", "Australia"]
good = Path("/tmp/batchshots-capitals.jsonl")
good.write_text(
    "".join(line(f"capital-{c.lower()}", MODEL, f"What is the capital of {c}?") for c in countries)
    + line("too-hot", MODEL, "What is the capital of Peru?", temperature=5)
)
unknown = Path("/tmp/batchshots-unknown-model.jsonl")
unknown.write_text(line("q1", "gpt-4o-mini", "What is the capital of Chile?"))

with studio("batchshots") as (server, page):
    page.goto(f"{server.url}/studio/batches")
    page.wait_for_selector("#batches p, #batches table")
    for path in (unknown, good):
        page.set_input_files("#batch-file", str(path))
        page.click("#batch-form button[type=submit]")
        page.wait_for_selector("#batches table")
    row = page.locator("#batches tbody tr").first
    wait(lambda: "completed" in row.inner_text(), 300, "the batch")
    page.reload()
    page.wait_for_selector("#batches table")
    snapshot(page, Path("docs/studio"), "batches")
