"""Schemathesis over the server's own OpenAPI schema, against a real server with an API key:
generated valid and invalid requests to every operation must never get a 5xx."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

API_KEY = "schemathesis-key"


def test_no_server_errors_for_generated_requests(tmp_path):
    from test_api_openai_client import Server

    server = Server(tmp_path / "home", "--api-key", API_KEY).start()
    st = Path(sys.executable).with_name("st")
    try:
        done = subprocess.run(
            [
                str(st),
                "run",
                f"{server.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {API_KEY}",
                "--checks",
                "not_a_server_error",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                os.environ.get("TUNEFORGE_SCHEMATHESIS_EXAMPLES", "30"),
                "--seed",
                "0",
                "--workers",
                "1",
                "--request-timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=1500,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated and int(generated.group(1)) > 500, done.stdout[-3000:]  # it really ran
    assert generated.group(1) == generated.group(2)
    # every operation (3 exports, 2 graders, 7 Studio, 4 responses, 4 batches, 4 uploads, ...)
    tested = re.search(r"Tested: \d+", done.stdout)
    assert tested and tested.group() == "Tested: 60", done.stdout[-3000:]
