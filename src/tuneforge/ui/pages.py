"""The Studio's page routes: one Jinja shell per page, plus the static files.

A shell carries only what its URL says (a file, job or comparison id, as a `data-` attribute);
its module in `static/js/<page>.js` asks the API for everything else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tuneforge.api.errors import not_found

HERE = Path(__file__).parent
STUDIO = "/studio"
STATIC = f"{STUDIO}/static"
NAV = (
    ("/", "Home"),
    ("/data", "Data"),
    ("/jobs", "Jobs"),
    ("/jobs/new", "New job"),
    ("/compare", "Compare"),
    ("/evals", "Evals"),
    ("/batches", "Batches"),
    ("/logs", "Logs"),
    ("/playground", "Playground"),
    ("/models", "Models"),
)
# Only this server: scripts and styles from its files, requests to its API. Inline styles are
# allowed for the chart library's computed sizes; inline scripts are not.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
)
router = APIRouter(include_in_schema=False)


def render(page: str, title: str, active: str, **data: Any) -> HTMLResponse:
    html = env.get_template(f"{page}.html.j2").render(
        page=page,
        title=title,
        nav=NAV,
        active=active,
        root=STUDIO,
        static=STATIC,
        data=data,
    )
    return HTMLResponse(html, headers=HEADERS)


def _id(value: str, what: str) -> str:
    if not ID.match(value):
        raise not_found(what, value[:64])
    return value


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(f"{STUDIO}/", status_code=307)


@router.get("/favicon.ico")
def favicon() -> RedirectResponse:
    return RedirectResponse(f"{STATIC}/icon.svg", status_code=307)


@router.get(STUDIO)
def studio_no_slash() -> RedirectResponse:
    return RedirectResponse(f"{STUDIO}/", status_code=307)


# Pages without an id: (path under /studio, template, title, the nav entry it belongs to).
PAGES = (
    ("/", "home", "Fine-tune on your own machine", "/"),
    ("/data", "data", "Data", "/data"),
    ("/jobs", "jobs", "Fine-tuning jobs", "/jobs"),
    ("/jobs/new", "newjob", "New fine-tuning job", "/jobs/new"),
    ("/compare", "compare", "Compare", "/compare"),
    ("/evals", "evals", "Evals", "/evals"),
    ("/batches", "batches", "Batches", "/batches"),
    ("/logs", "logs", "Logs", "/logs"),
    ("/playground", "playground", "Playground", "/playground"),
    ("/models", "models", "Models", "/models"),
)


def _page_route(page: str, title: str, active: str):
    def route() -> HTMLResponse:
        return render(page, title, active)

    route.__name__ = f"page_{page}"
    return route


for _path, _page, _title, _active in PAGES:
    router.get(f"{STUDIO}{_path}")(_page_route(_page, _title, _active))


@router.get(f"{STUDIO}/data/{{file_id}}")
def data_file(file_id: str) -> HTMLResponse:
    return render("file", "Data file", "/data", file=_id(file_id, "file"))


@router.get(f"{STUDIO}/jobs/{{job_id}}")
def job(job_id: str) -> HTMLResponse:
    return render("job", "Fine-tuning job", "/jobs", job=_id(job_id, "fine-tuning job"))


@router.get(f"{STUDIO}/compare/{{comparison_id}}")
def comparison(comparison_id: str) -> HTMLResponse:
    return render(
        "comparison", "Comparison", "/compare", comparison=_id(comparison_id, "comparison")
    )


@router.get(f"{STUDIO}/evals/{{eval_id}}")
def eval_page(eval_id: str) -> HTMLResponse:
    return render("eval", "Eval", "/evals", eval=_id(eval_id, "eval"))


@router.get(f"{STUDIO}/evals/{{eval_id}}/runs/{{run_id}}")
def eval_run(eval_id: str, run_id: str) -> HTMLResponse:
    return render(
        "evalrun", "Eval run", "/evals", eval=_id(eval_id, "eval"), run=_id(run_id, "eval run")
    )


class _StaticFiles(StaticFiles):
    """Static files with the pages' security headers."""

    async def get_response(self, path: str, scope: Any) -> Any:
        response = await super().get_response(path, scope)
        response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        return response


def mount(app: FastAPI) -> None:
    app.include_router(router)
    # An eval run's `report_url` (OpenAI's link to its dashboard page) points at its page here.
    app.state.eval_run_page = f"{STUDIO}/evals/{{eval_id}}/runs/{{run_id}}"
    app.mount(STATIC, _StaticFiles(directory=HERE / "static"), name="studio-static")


def page_paths() -> list[str]:
    """Every page without an id, for tests and screenshots."""
    return [f"{STUDIO}{path}" for path, *_ in PAGES]
