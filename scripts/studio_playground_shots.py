"""The Studio's playground screenshot with token probabilities (docs/studio/playground-probs at
1280 and 390 px): SmolLM2-135M-Instruct answering a capital question greedily, each token
shaded by how unsure it was, the table of alternatives open. Run from the repository root:

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/studio_playground_shots.py
"""

from pathlib import Path

from _shots import MODEL, snapshot, studio, wait

with studio("playgroundshots") as (server, page):
    page.goto(f"{server.url}/studio/playground?model={MODEL}")
    page.wait_for_selector("#pane-0-model", state="attached")
    page.select_option("#panes", "1")
    page.check("#show-probs")
    page.fill("#system", "Answer with the city name only.")
    page.fill("#max_tokens", "12")
    page.fill("#prompt", "What is the capital of Australia?")
    page.click("#send-btn")
    wait(lambda: "tokens in" in page.inner_text("#pane-0-meta"), 120, "the answer")
    page.locator("details.probs summary").click()
    snapshot(page, Path("docs/studio"), "playground-probs")
