"""Which models the server answers for, and their text side (tokenizer, template, context).

Served: the registry's models, every base model a job has named, every fine-tuned model of a
succeeded job, and each of its checkpoints (`…:ckpt-step-N`, not listed, like OpenAI), and every
finished LoRA run that `tuneforge train` wrote to `$TUNEFORGE_HOME/runs`, by its run name (what
`tuneforge runs list` shows and `tuneforge generate` takes). Arbitrary folders on the server's
disk are not: a chat request cannot make the server load a path it names.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuneforge import run_dir as rd
from tuneforge.api.errors import APIError, model_not_found
from tuneforge.errors import TuneforgeError
from tuneforge.inference.engine import Target
from tuneforge.jobs.model_ids import ORGANIZATION, parse_model_id, resolve_model_id
from tuneforge.jobs.store import Store
from tuneforge.models import REGISTRY
from tuneforge.models.text import TextSide, load_text_side


@dataclass(frozen=True)
class ServedModel:
    id: str
    created: int
    owned_by: str
    target: Target
    fine_tuned: bool
    run: bool = False  # a run of `tuneforge train`, served by its name (not a job's model)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
        }


class Catalog:
    """The served models of the module docstring, read from the store on every call.

    It owns the cache of base models' text sides (each loaded once, under a lock, since requests
    arrive on FastAPI's threadpool). The lifespan (`api/app.py`) builds it on the store; the chat
    and models routes call `get`, `list` and `text_side`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._text: dict[str, TextSide] = {}
        self._lock = threading.Lock()
        self._started = int(time.time())

    def _base_models(self) -> dict[str, int]:
        """Base model name → when it was first seen (registry models: server start)."""
        bases = {name: self._started for name in REGISTRY}
        rows = self.store.conn.execute(
            "SELECT model, MIN(created_at) FROM jobs GROUP BY model ORDER BY MIN(rowid)"
        )
        for model, created in rows:
            bases.setdefault(model, created)
        return bases

    def list(self) -> list[ServedModel]:
        models = [
            ServedModel(name, created, "tuneforge", Target(name, name), False)
            for name, created in self._base_models().items()
        ]
        rows = self.store.conn.execute(
            "SELECT fine_tuned_model FROM jobs WHERE status = 'succeeded' "
            "AND model_deleted = 0 ORDER BY rowid"
        )
        for (model_id,) in rows.fetchall():
            try:
                models.append(self.get(model_id))
            except APIError:
                continue  # its run directory was removed by hand
        for path in rd.list_runs(rd.runs_root()):
            served = self._run(path.name)
            if served is not None:
                models.append(served)
        return models

    def _run(self, name: str) -> ServedModel | None:
        """A finished LoRA run of `tuneforge train`, by its name under the runs folder only."""
        if not name or "/" in name or "\0" in name or name.startswith("."):
            return None  # a NUL is no file name: the OS would refuse it (ValueError)
        path = rd.runs_root() / name
        adapter = path / "model"
        status = rd.read_status(path) or {}
        if status.get("status") != "succeeded" or not (adapter / "adapter_config.json").is_file():
            return None
        base = rd.read_config(path)["model"]
        created = int(status.get("finished_at") or adapter.stat().st_mtime)
        return ServedModel(name, created, "user", Target(name, base, adapter), True, run=True)

    def get(self, model_id: str) -> ServedModel:
        """A served model by id, or a 404 in OpenAI's shape."""
        if not model_id.startswith("ft:"):
            created = self._base_models().get(model_id)
            if created is None:
                served = self._run(model_id)
                if served is None:
                    raise model_not_found(model_id)
                return served
            return ServedModel(model_id, created, "tuneforge", Target(model_id, model_id), False)
        try:
            job, _ = parse_model_id(self.store, model_id)
            run_dir, weights = resolve_model_id(model_id, self.store)
        except TuneforgeError:
            raise model_not_found(model_id) from None
        adapter = weights or Path(run_dir) / "model"
        created = job["finished_at"] or int(adapter.stat().st_mtime)
        return ServedModel(
            model_id, created, ORGANIZATION, Target(model_id, job["model"], adapter), True
        )

    def text_side(self, base: str) -> TextSide:
        """Tokenizer, chat template and limits of a base model (loaded once; no weights)."""
        with self._lock:
            if base not in self._text:
                self._text[base] = load_text_side(base, require_fast=False)
            return self._text[base]
