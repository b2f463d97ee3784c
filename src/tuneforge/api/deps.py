"""The app's shared objects, read from `app.state` (the lifespan in `api/app.py` sets them).

One accessor per object, as vLLM's router reads its handler (`request.app.state.…`): a route
calls `get_store(request)` instead of spelling out the attribute. They are plain functions, not
FastAPI `Depends`, because the tests run the real objects and need no overrides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from tuneforge.api.catalog import Catalog
    from tuneforge.inference.engine import InferenceEngine
    from tuneforge.jobs.manager import JobManager
    from tuneforge.jobs.store import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_manager(request: Request) -> JobManager:
    return request.app.state.manager


def get_engine(request: Request) -> InferenceEngine:
    return request.app.state.engine


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog
