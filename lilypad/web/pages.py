"""The dashboard's pages: server-rendered Jinja templates (``templates/``), updated live by
``static/app.js`` from the API and its event stream.

* ``/``: the network (providers, GPUs, prices, open offers, recent deals, earnings), the
  module catalogue and this machine's latest jobs;
* ``/modules/{ref}``: a form per module version, built from its input schema (a file input by
  upload); running it posts the job and opens its page;
* ``/jobs/{id}``: the job as it goes (steps, progress, log), then its outputs inline from the
  gateway (images, the SDV APNG/WebP/MP4), its CID, deal, transactions and verification.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from lilypad.errors import LilypadError

if TYPE_CHECKING:
    from lilypad.web.serve import Server

_ENV: Environment | None = None
#: How each output file is shown, by its extension.
MEDIA = {
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".webp": "image",
    ".gif": "image",
    ".apng": "image",
    ".mp4": "video",
    ".webm": "video",
    ".txt": "text",
    ".json": "text",
}


def environment() -> Environment:
    """The templates, autoescaped (every value a page shows is escaped)."""
    global _ENV
    if _ENV is None:
        from lilypad.web.serve import HERE

        _ENV = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _ENV.filters["media"] = media_kind
    return _ENV


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(environment().get_template(name).render(**context), status_code=status)


def media_kind(path: str) -> str:
    dot = path.rfind(".")
    return MEDIA.get(path[dot:].lower(), "file") if dot >= 0 else "file"


def form_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema's properties as form fields, in the manifest's order."""
    fields = []
    required = set(schema.get("required", []))
    for name, prop in sorted(schema["properties"].items(), key=lambda kv: kv[1].get("x-order", 0)):
        file = prop.get("x-lilypad-file")
        if file is not None:
            widget = "file"
        elif "enum" in prop:
            widget = "select"
        elif prop["type"] == "boolean":
            widget = "checkbox"
        elif prop["type"] in ("integer", "number"):
            widget = "number"
        elif prop.get("maxLength", 0) > 200 and name.lower().endswith("prompt"):
            widget = "textarea"
        else:
            widget = "text"
        fields.append(
            {
                "name": name,
                "widget": widget,
                "type": prop["type"],
                "description": prop.get("description", ""),
                "default": prop.get("default"),
                "enum": prop.get("enum", []),
                "minimum": prop.get("minimum"),
                "maximum": prop.get("maximum"),
                "step": "1" if prop["type"] == "integer" else "any",
                "required": name in required,
                "accept": ",".join(file.get("media_types", [])) if file else "",
            }
        )
    return fields


def dashboard_routes(app: FastAPI, server: Server) -> None:
    from lilypad.web.serve import COOKIE, module_catalogue, read_network, redirect_with_cookie

    def allowed(request: Request) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie, server.token)

    def locked() -> HTMLResponse:
        return render("locked.html", status=401)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request, token: str | None = None) -> Response:
        if token is not None:
            if not hmac.compare_digest(token, server.token):
                return locked()
            return redirect_with_cookie(token)  # the token leaves the address bar
        if not allowed(request):
            return locked()
        network: dict[str, Any] | None = None
        problem = None
        try:
            network = read_network(server.client)
        except LilypadError as exc:
            problem = str(exc)
        return render(
            "home.html",
            network=network,
            problem=problem,
            modules=module_catalogue(),
            jobs=server.listing()[:10],
            profile=server.client.profile,
        )

    @app.get("/modules/{ref}", response_class=HTMLResponse, include_in_schema=False)
    def module_page(request: Request, ref: str) -> Response:
        from lilypad import modules
        from lilypad.modules.schema import input_schema

        if not allowed(request):
            return locked()
        try:
            module = modules.resolve(ref)
        except LilypadError as exc:
            return render("error.html", status=404, message=str(exc))
        schema = input_schema(module)
        return render(
            "module.html",
            ref=f"{module.name}:{module.version}",
            schema=schema,
            fields=form_fields(schema),
        )

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request) -> Response:
        if not allowed(request):
            return locked()
        return render("jobs.html", jobs=server.listing())

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: str) -> Response:
        from fastapi import HTTPException

        if not allowed(request):
            return locked()
        try:
            view = server.view(job_id)
        except HTTPException as exc:
            return render("error.html", status=404, message=str(exc.detail))
        return render("job.html", job=view)


def mount_static(app: FastAPI) -> None:
    """The dashboards' stylesheet and script, under ``/static``."""
    from fastapi.staticfiles import StaticFiles

    from lilypad.web.serve import HERE

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


def solver_dashboard(network: dict[str, Any]) -> HTMLResponse:
    """The solver's read-only dashboard: the network view alone (no key, no forms)."""
    return render("solver.html", network=network, solver=True)
