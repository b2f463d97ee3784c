"""Downloadable exports of a job's model: the work behind `POST /v1/fine_tuning/jobs/{id}/exports`
(a tuneforge extension of OpenAI's jobs API).

One export is one stored file (purpose `fine-tune-results`, downloaded with
`GET /v1/files/{id}/content`), made by the same functions as `tuneforge export`:

- `gguf`: `<name>.<quant>.gguf`, the adapter merged in (llama.cpp, LM Studio);
- `gguf` with `ollama`: `<name>.<quant>.ollama.tar` holding `<name>/model.<quant>.gguf` and
  `<name>/Modelfile` (`tar xf` it, then `ollama create NAME -f <name>/Modelfile`);
- `merged`: `<name>.merged.tar`, a Hugging Face model folder (`from_pretrained`);
- `adapter`: `<name>.adapter.tar`, the LoRA adapter folder (`PeftModel.from_pretrained` on the
  public base model named in its adapter_config.json).

Everything is written in a temp folder under the files folder and renamed into place, so a
failure (a full disk) leaves no partial file behind.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.jobs.store import Store, files_dir

FORMATS = ("gguf", "merged", "adapter")
PURPOSE = "fine-tune-results"
UNFINISHED = ("queued", "running")


def file_stem(model_id: str) -> str:
    """A file name from a model id: `ft:base:org:suffix:id` → `ft-base-org-suffix-id`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-") or "model"


def _tar(folder: Path, out: Path, arcname: str) -> None:
    with tarfile.open(out, "w") as tar:  # uncompressed: weights do not compress
        tar.add(folder, arcname=arcname)


def _adapter_folder(run_dir: Path, weights: Path | None) -> Path:
    from tuneforge.errors import UsageError
    from tuneforge.inference.load import run_model_dir

    folder = weights or run_model_dir(run_dir)
    if not (folder / "adapter_config.json").is_file():
        raise UsageError(
            "this job's model is not a LoRA adapter (full fine-tuning)",
            hint="export format `merged` or `gguf` instead",
        )
    return folder


def make_export(export: dict[str, Any], run_dir: Path, weights: Path | None, work: Path) -> Path:
    """Write the export's file in `work` and return its path."""
    stem = file_stem(export["model"])
    fmt, quant = export["format"], export["quant"]
    if fmt == "gguf":
        from tuneforge.inference.gguf_export import export_gguf

        if not export["ollama"]:
            out = work / f"{stem}.{quant}.gguf"
            export_gguf(run_dir, out, quant=quant, weights=weights)
            return out
        folder = work / stem
        export_gguf(
            run_dir, folder / f"model.{quant}.gguf", quant=quant, ollama=folder, weights=weights
        )
        out = work / f"{stem}.{quant}.ollama.tar"
        _tar(folder, out, stem)
        return out
    if fmt == "merged":
        from tuneforge.inference.export import export_merged

        folder = export_merged(run_dir, work / stem, weights=weights)
        out = work / f"{stem}.merged.tar"
        _tar(folder, out, stem)
        return out
    folder = _adapter_folder(run_dir, weights)
    out = work / f"{stem}.adapter.tar"
    _tar(folder, out, stem)
    return out


def run_export(store: Store, export_id: str) -> None:
    """Make one queued export (in a worker thread of the server) and record how it ended."""
    from tuneforge.jobs.model_ids import resolve_model_id
    from tuneforge.jobs.store import new_id

    if not store.update_export(export_id, expect=("queued",), status="running"):
        return
    export = store.get_export(export_id)
    assert export is not None
    files_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=files_dir()))
    try:
        run_dir, weights = resolve_model_id(export["model"], store)
        path = make_export(export, run_dir, weights, work)
        file_id = new_id("file")
        store.add_file(file_id, path, filename=path.name, purpose=PURPOSE)
        store.update_export(
            export_id, status="succeeded", file_id=file_id, finished_at=int(time.time())
        )
    except TuneforgeError as exc:
        _failed(store, export_id, exc.code or "export_failed", exc.inline())
    except OSError as exc:  # a full disk, a permission: say which, keep nothing
        _failed(store, export_id, "export_failed", f"writing the export failed: {exc}")
    except Exception as exc:  # noqa: BLE001 - recorded on the export, not lost in a thread
        _failed(store, export_id, "export_failed", f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _failed(store: Store, export_id: str, code: str, message: str) -> None:
    store.update_export(
        export_id,
        status="failed",
        error={"code": code, "message": message},
        finished_at=int(time.time()),
    )


class ExportRunner:
    """One background thread that makes queued exports in order, off the server's event loop.

    One at a time: an export loads the model (and merges it) in the server process, and the CPU
    cores are better spent finishing one download than slowing several. A daemon thread: a
    stopping server does not wait for an export; its row is marked failed at the next start.
    """

    def __init__(self, store: Store) -> None:
        import queue
        import threading

        self.store = store
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-exports", daemon=True)

    def start(self) -> None:
        self.store.fail_unfinished_exports(
            "the server stopped before this export finished; request it again"
        )
        self._thread.start()

    def submit(self, export_id: str) -> None:
        self._queue.put(export_id)

    def stop(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while (export_id := self._queue.get()) is not None:
            run_export(self.store, export_id)
