"""/v1/uploads, OpenAI's Uploads API (a file sent in parts), driven by the official `openai`
package as its users drive it: `client.uploads.upload_file_chunked`, and create / parts /
complete / cancel one by one."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from helpers import good_examples

from tuneforge.api import uploads
from tuneforge.api.app import create_app
from tuneforge.jobs.store import Store, files_dir, upload_parts_dir


def jsonl(rows: list) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def api(isolated_home):
    with TestClient(create_app()) as test_client:
        yield test_client


def sdk(api: TestClient) -> openai.OpenAI:
    """The official client, talking to the app in-process."""
    return openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=api)


@pytest.fixture
def client(api) -> openai.OpenAI:
    return sdk(api)


def pending_upload(client: openai.OpenAI, content: bytes) -> tuple[Any, Any]:
    """An upload of `content` (fine-tuning JSONL) with all of it in one part: (upload, part)."""
    upload = client.uploads.create(
        bytes=len(content), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    return upload, client.uploads.parts.create(upload_id=upload.id, data=content)


def test_upload_file_chunked_makes_the_file_the_parts_came_from(client, tmp_path):
    content = jsonl(good_examples(40))
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    upload = client.uploads.upload_file_chunked(
        file=path,
        mime_type="text/jsonl",
        purpose="fine-tune",
        part_size=1000,  # several parts, the last one short
        md5=hashlib.md5(content).hexdigest(),
    )
    assert upload.status == "completed" and upload.object == "upload"
    assert upload.bytes == len(content) and upload.filename == "train.jsonl"
    assert upload.expires_at == upload.created_at + 3600
    assert upload.file is not None and upload.file.purpose == "fine-tune"
    assert client.files.content(upload.file.id).read() == content
    assert upload.file.id in [f.id for f in client.files.list()]
    # The parts are gone once joined.
    assert not upload_parts_dir(upload.id).exists()
    # The file is a File like any other: a fine-tuning job takes it.
    assert client.files.retrieve(upload.file.id).bytes == len(content)


def test_parts_are_joined_in_the_order_listed_not_the_order_sent(client):
    rows = jsonl(good_examples(3)).splitlines(keepends=True)
    content = b"".join(rows)
    upload = client.uploads.create(
        bytes=len(content), filename="data.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    assert upload.status == "pending" and upload.file is None
    sent = {i: client.uploads.parts.create(upload_id=upload.id, data=rows[i]) for i in (2, 0, 1)}
    assert sent[0].object == "upload.part" and sent[0].upload_id == upload.id
    done = client.uploads.complete(upload_id=upload.id, part_ids=[sent[i].id for i in (0, 1, 2)])
    assert client.files.content(done.file.id).read() == content
    # Completed: no more parts, no second completion.
    with pytest.raises(openai.BadRequestError, match="completed already"):
        client.uploads.parts.create(upload_id=upload.id, data=b"more")
    with pytest.raises(openai.BadRequestError, match="completed already"):
        client.uploads.complete(upload_id=upload.id, part_ids=[sent[0].id])


def test_a_completion_that_does_not_add_up_says_why_and_can_be_sent_again(client):
    content = jsonl(good_examples(4))
    half = len(content) // 2
    upload = client.uploads.create(
        bytes=len(content), filename="data.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    first = client.uploads.parts.create(upload_id=upload.id, data=content[:half])
    second = client.uploads.parts.create(upload_id=upload.id, data=content[half:])
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id])
    assert exc.value.body["param"] == "part_ids"
    assert f"hold {half:,} bytes, but upload {upload.id} was created for" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, "part-nope"])
    assert exc.value.body["param"] == "part_ids[1]" and "not a part of upload" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, first.id])
    assert "a second time" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:  # the right size, the wrong order
        client.uploads.complete(
            upload_id=upload.id,
            part_ids=[second.id, first.id],
            md5=hashlib.md5(content).hexdigest(),
        )
    assert exc.value.body["param"] == "md5" and "out of order" in exc.value.message
    done = client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id])
    assert client.files.content(done.file.id).read() == content


def test_the_joined_file_is_checked_as_an_upload_of_its_purpose(client):
    bad = jsonl(good_examples(2)) + b'{"messages": [{"role": "user"}]}\n'
    upload = client.uploads.create(
        bytes=len(bad), filename="bad.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    part = client.uploads.parts.create(upload_id=upload.id, data=bad)
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert exc.value.code == "invalid_file_format" and "line 3" in exc.value.message
    assert not client.files.list().data  # nothing published
    # The upload is still pending: cancelling it deletes its parts.
    cancelled = client.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled" and not upload_parts_dir(upload.id).exists()
    with pytest.raises(openai.BadRequestError, match="it was cancelled"):
        client.uploads.parts.create(upload_id=upload.id, data=b"x")
    # Leftover temp files of the failed completion: none.
    assert not [p for p in files_dir().iterdir() if p.name.startswith(".upload-")]


def test_bad_upload_requests_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.create(bytes=10, filename="x.jsonl", mime_type="text/jsonl", purpose="x")
    assert exc.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.create(bytes=10, filename="x.pdf", mime_type="pdf", purpose="fine-tune")
    assert exc.value.code == "invalid_file_format" and ".pdf" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.create(
            bytes=9 * 1024**3, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
        )
    assert exc.value.body["param"] == "bytes"
    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create(upload_id="upload-nope", data=b"x")
    upload = client.uploads.create(
        bytes=10, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.uploads.parts.create(upload_id=upload.id, data=b"")


def test_a_part_over_the_limit_is_refused_and_not_kept(client, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_PART_BYTES", 100)
    upload = client.uploads.create(
        bytes=300, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    with pytest.raises(openai.APIStatusError) as exc:
        client.uploads.parts.create(upload_id=upload.id, data=b"x" * 101)
    assert exc.value.status_code == 413 and exc.value.code == "file_too_large"
    assert not list(upload_parts_dir(upload.id).iterdir())


def test_an_upload_expires_after_its_hour_and_its_parts_go(client, isolated_home):
    upload = client.uploads.create(
        bytes=10, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    client.uploads.parts.create(upload_id=upload.id, data=b"0123456789")
    assert len(list(upload_parts_dir(upload.id).iterdir())) == 1
    store = Store()
    assert store.expire_uploads(now=time.time() + 3599) == []
    assert store.expire_uploads(now=time.time() + 3601) == [upload.id]
    assert not upload_parts_dir(upload.id).exists()
    with pytest.raises(openai.BadRequestError, match="expired 60 minutes after"):
        client.uploads.parts.create(upload_id=upload.id, data=b"x")


def test_parts_survive_a_restart_and_the_upload_completes_after_it(isolated_home):
    content = jsonl(good_examples(5))
    with TestClient(create_app()) as api:
        upload, part = pending_upload(sdk(api), content)
    with TestClient(create_app()) as api:  # a new server on the same home
        client = sdk(api)
        done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
        assert client.files.content(done.file.id).read() == content


def test_a_part_larger_than_a_json_body_gets_through(client):
    """The server caps JSON bodies at 16 MiB; a part may hold up to 64 MB (the SDK's default
    part size), so its route has its own cap."""
    size = 17 * 1024 * 1024
    upload = client.uploads.create(
        bytes=size, filename="big.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    part = client.uploads.parts.create(upload_id=upload.id, data=b"x" * size)
    assert (upload_parts_dir(upload.id) / part.id).stat().st_size == size
    client.uploads.cancel(upload.id)


def test_parts_beyond_twice_the_upload_are_refused(client):
    upload = client.uploads.create(
        bytes=10, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    for _ in range(2):  # a part sent twice (a retried request) still fits
        client.uploads.parts.create(upload_id=upload.id, data=b"0123456789")
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.parts.create(upload_id=upload.id, data=b"0")
    assert exc.value.body["param"] == "data" and "more than 20 bytes" in exc.value.message
    assert len(list(upload_parts_dir(upload.id).iterdir())) == 2  # the refused one not kept


def test_an_upload_too_large_to_check_line_by_line_is_refused_at_creation(isolated_home):
    with TestClient(create_app(max_upload_bytes=1000)) as api:
        client = sdk(api)
        with pytest.raises(openai.BadRequestError) as exc:
            client.uploads.create(
                bytes=1001, filename="b.jsonl", mime_type="text/jsonl", purpose="batch"
            )
        assert exc.value.body["param"] == "bytes" and "read whole" in exc.value.message
        # Fine-tuning JSONL is checked line by line: it may go past the single-file limit.
        assert (
            client.uploads.create(
                bytes=5000, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
            ).status
            == "pending"
        )


def test_neither_cancel_nor_expiry_touches_an_upload_being_completed(client, monkeypatch):
    from tuneforge.api import files

    content = jsonl(good_examples(3))
    upload, part = pending_upload(client, content)
    real = files.check_content
    during = {}

    def check_meanwhile(*args):
        store = Store()  # what a cancel request and the manager's tick do, mid-completion
        during["cancelled"] = store.end_upload(upload.id, "cancelled")
        during["expired"] = store.expire_uploads(now=time.time() + 7200)
        during["parts"] = sorted(p.name for p in upload_parts_dir(upload.id).iterdir())
        return real(*args)

    monkeypatch.setattr(files, "check_content", check_meanwhile)
    done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert during == {"cancelled": False, "expired": [], "parts": [part.id]}
    assert done.status == "completed" and client.files.content(done.file.id).read() == content
    assert not upload_parts_dir(upload.id).exists()


def test_a_completion_cut_off_by_a_crash_can_be_sent_again_after_a_restart(isolated_home):
    content = jsonl(good_examples(2))
    with TestClient(create_app()) as api:
        client = sdk(api)
        upload, part = pending_upload(client, content)
        assert Store().begin_upload_completion(upload.id)  # ... and the server dies here
        with pytest.raises(openai.ConflictError, match="being completed by another request"):
            client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    with TestClient(create_app()) as api:
        client = sdk(api)
        done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
        assert client.files.content(done.file.id).read() == content


def test_part_folders_no_pending_upload_owns_are_swept(client):
    leftover = upload_parts_dir("upload-gone")
    leftover.mkdir(parents=True)
    (leftover / "part-x").write_bytes(b"old")
    upload = client.uploads.create(
        bytes=3, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    client.uploads.parts.create(upload_id=upload.id, data=b"new")
    Store().expire_uploads()
    assert not leftover.exists() and upload_parts_dir(upload.id).exists()


def test_a_full_disk_while_a_part_is_written_keeps_the_parts_already_added(client, monkeypatch):
    import errno

    content = jsonl(good_examples(2))
    upload = client.uploads.create(
        bytes=len(content), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    first = client.uploads.parts.create(upload_id=upload.id, data=content[:10])
    real_fsync = uploads.os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads.os, "fsync", full)
    with pytest.raises(openai.APIStatusError) as exc:
        client.uploads.parts.create(upload_id=upload.id, data=content[10:])
    assert exc.value.status_code == 507 and exc.value.code == "insufficient_storage"
    assert "disk is full: the part was not kept" in exc.value.message
    assert [p.name for p in upload_parts_dir(upload.id).iterdir()] == [first.id]
    monkeypatch.setattr(uploads.os, "fsync", real_fsync)  # space again: the part is sent again
    second = client.uploads.parts.create(upload_id=upload.id, data=content[10:])
    done = client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id])
    assert client.files.content(done.file.id).read() == content
