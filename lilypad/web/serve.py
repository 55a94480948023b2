"""``lilypad serve``: a local HTTP API and web dashboard over :class:`lilypad.Client`.

It runs on the job creator's machine, on a loopback address only: it holds the key, the browser
never does. Shaped like Replicate's predictions API where that fits:

* ``POST /v1/predictions`` creates a job from JSON (``{"version": "cowsay:v0.0.4", "input":
  {...}}``, a file input as a ``data:`` URL, ``ipfs://CID`` or a CID) or from a multipart form
  (``version``, ``input`` as JSON text, each file input as a file part named as the input);
  answers 201 once its offer is posted, 422 for a bad input (nothing is signed or paid).
* ``GET /v1/predictions/{id}`` its state, output (CID, files, gateway URLs), logs and timings;
  ``GET /v1/predictions`` every job of this machine, newest first;
  ``POST /v1/predictions/{id}/cancel`` withdraws its offer while no provider took it;
  ``GET /v1/predictions/{id}/events`` streams its steps, log lines and progress (server-sent
  events: ``step``, ``log``, ``progress``, then ``done`` with the prediction);
  ``GET /v1/predictions/{id}/files/{path}`` one of its verified result files.
* A ``webhook`` given at creation is POSTed the prediction when the job starts (with
  ``webhook_events_filter: ["start"]``) and when it has completed, signed as Standard Webhooks
  sign (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``,
  keyed by ``GET /v1/webhooks/default/secret``).
* ``GET /v1/modules``, ``GET /v1/modules/{ref}/schema`` (the inputs as JSON Schema),
  ``GET /v1/network`` (providers, GPUs, prices, open offers, recent deals, earnings).
* ``/docs`` the OpenAPI page; ``/`` the dashboard.

Every request needs the access token the server prints (``Authorization: Bearer TOKEN``; the
dashboard holds it in a ``SameSite=Strict`` cookie that opening the printed URL sets, and sends
it back with an ``X-Lilypad-Csrf`` header on every change, which no other site's page can send).
Requests naming another host than the loopback one are refused (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware

from lilypad.errors import InputError, LilypadError

if TYPE_CHECKING:
    from lilypad.client import Client, Job
    from lilypad.creator import JobRecord, Step

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "lilypad_token"
CSRF_HEADER = "x-lilypad-csrf"
#: The most jobs a server keeps in memory (their steps and log lines); older ones that have
#: ended are read from their records.
KEPT = 500
#: The most bytes one uploaded file may hold (a module's own limit is checked after).
MAX_UPLOAD = 64 * 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Replicate's statuses, by the record's state.
_STATUS = {
    "preparing": "starting",
    "created": "starting",
    "dealt": "processing",
    "result_submitted": "processing",
    "challenged": "processing",
    "accepted": "succeeded",
    "upheld": "succeeded",
    "provider_slashed": "succeeded",
    "cancelled": "canceled",
}
WEBHOOK_EVENTS = ("start", "completed")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]")


class PredictionRequest(BaseModel):
    """``POST /v1/predictions`` as JSON."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="The module version, e.g. cowsay:v0.0.4", max_length=500)
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="The module's inputs (GET /v1/modules/{version}/schema); a file input as a "
        "data: URL, ipfs://CID[/path] or a CID",
    )
    max_price: str = Field("10", description="The most you pay, in tokens", max_length=40)
    verify: str = Field("audit", description="audit, always, never or redundant", max_length=20)
    timeout: int | None = Field(None, description="Seconds a provider has for the result")
    expires_in: int = Field(300, description="Seconds the offer waits for a provider")
    retries: int = Field(0, description="New offers after a provider fails (0 to 10)")
    target: str | None = Field(None, description="Only this provider's address", max_length=42)
    webhook: str | None = Field(None, description="A URL POSTed the prediction", max_length=2000)
    webhook_events_filter: list[str] = Field(
        default_factory=lambda: ["completed"], description="start and/or completed"
    )


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request."""

    filename: str
    data: bytes

    def safe_name(self, fallback: str) -> str:
        """The file's own name, reduced to a plain one (no folder, no hidden or odd name)."""
        name = _UNSAFE.sub("_", Path(self.filename).name).lstrip(".")
        return name[:100] or fallback

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        path = folder / self.safe_name(folder.name)
        path.write_bytes(self.data)
        return path


@dataclass
class Prediction:
    """One job this server created: the SDK's job and what was asked."""

    job: Job
    version: str
    input: dict[str, Any]
    created_at: float
    webhook: str | None = None
    events: tuple[str, ...] = ("completed",)
    completed_at: float | None = None
    sent: list[str] = field(default_factory=list)


class Server:
    """What the app holds: the client, the token, the jobs it created."""

    def __init__(self, client: Client, token: str, webhook_secret: str | None = None) -> None:
        self.client = client
        self.token = token
        self.webhook_secret = webhook_secret or "whsec_" + base64.b64encode(
            secrets.token_bytes(24)
        ).decode("ascii")
        self.predictions: dict[str, Prediction] = {}
        self.lock = threading.Lock()

    # ----------------------------------------------------------------------------- predictions
    def create(self, body: PredictionRequest, files: dict[str, Upload]) -> Prediction:
        """Submit the job (its offer posted when this returns): an uploaded file is staged
        under its own name (as ``-i Image=@photo.png`` would be)."""
        _check_webhook(body.webhook, body.webhook_events_filter)
        with tempfile.TemporaryDirectory(prefix="lilypad-upload-") as scratch:
            inputs = _decoded_inputs(body.version, body.input)
            for name, upload in files.items():
                inputs[name] = upload.save(Path(scratch) / name)
            job = self.client.submit(
                body.version,
                inputs,
                max_price=body.max_price,
                verify=body.verify,
                timeout=body.timeout,
                expires_in=body.expires_in,
                retries=body.retries,
                target=body.target,
            )
        prediction = Prediction(
            job,
            body.version,
            _shown_inputs(body.input, files),
            time.time(),
            body.webhook,
            tuple(body.webhook_events_filter),
        )
        assert job.id is not None
        with self.lock:
            self.predictions[job.id] = prediction
            self._forget_old()
        threading.Thread(
            target=self._watch, args=(prediction,), name=f"watch-{job.id[:10]}", daemon=True
        ).start()
        return prediction

    def _forget_old(self) -> None:
        """Keep at most :data:`KEPT` jobs in memory: the oldest that have ended go first (their
        records stay on disk, and the API reads them from there)."""
        ended = [i for i, p in self.predictions.items() if p.job.done()]
        for prediction_id in ended[: max(0, len(self.predictions) - KEPT)]:
            del self.predictions[prediction_id]

    def _watch(self, prediction: Prediction) -> None:
        """Send the webhooks of one job: at its start, and once it has completed."""
        if "start" in prediction.events:
            self._send(prediction, "start")
        with contextlib.suppress(BaseException):  # a failed job has completed too
            prediction.job.wait()
        prediction.completed_at = time.time()
        if "completed" in prediction.events:
            self._send(prediction, "completed")

    def _send(self, prediction: Prediction, event: str) -> None:
        import httpx

        if prediction.webhook is None:
            return
        body = json.dumps(self.view(prediction.job.id or "", prediction), default=str).encode()
        message_id = f"msg_{secrets.token_hex(12)}"
        for attempt in range(4):
            stamp = str(int(time.time()))
            headers = {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": stamp,
                "webhook-signature": self.signature(message_id, stamp, body),
            }
            try:
                answer = httpx.post(prediction.webhook, content=body, headers=headers, timeout=10)
                if answer.status_code < 300:
                    prediction.sent.append(event)
                    return
                why = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                why = str(exc) or type(exc).__name__
            log.warning("webhook %s (%s) failed: %s", prediction.webhook, event, why)
            time.sleep(0.5 * 2**attempt)

    def signature(self, message_id: str, stamp: str, body: bytes) -> str:
        """Standard Webhooks: ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``, keyed
        by the secret's bytes (after ``whsec_``)."""
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        signed = f"{message_id}.{stamp}.".encode() + body
        return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()

    def find(self, prediction_id: str) -> tuple[Prediction | None, JobRecord]:
        """The job this server created (and its record), else a record of this machine."""
        from lilypad.creator import find_record

        with self.lock:
            prediction = self.predictions.get(prediction_id.lower())
        if prediction is not None and prediction.job.record is not None:
            return prediction, prediction.job.record
        try:
            return None, find_record(prediction_id)
        except InputError:
            raise HTTPException(404, f"no prediction {prediction_id} on this machine") from None

    def view(self, prediction_id: str, prediction: Prediction | None = None) -> dict[str, Any]:
        if prediction is None:
            prediction, record = self.find(prediction_id)
        else:
            record = prediction.job.record  # type: ignore[assignment]
        return prediction_json(record, prediction)

    def listing(self) -> list[dict[str, Any]]:
        records = {r.job_offer_id: r for r in self.client.jobs() if r.job_offer_id}
        with self.lock:
            ours = dict(self.predictions)
        views = [prediction_json(record, ours.get(job_id)) for job_id, record in records.items()]
        return sorted(views, key=lambda v: v["created_at"], reverse=True)


def prediction_json(record: JobRecord, prediction: Prediction | None = None) -> dict[str, Any]:
    """One job as the API gives it."""
    from lilypad.client import Result, verdict

    state = record.state.value
    done = record.state.is_terminal()
    output = None
    if record.state.is_success() and record.output_dir and Path(record.output_dir).is_dir():
        result = Result.from_record(record)
        output = {
            "cid": result.cid,
            "gateway_url": result.gateway_url,
            "files": list(result.outputs),
            "urls": result.urls,
            "local_urls": {
                f: f"/v1/predictions/{record.job_offer_id}/files/{f}" for f in result.outputs
            },
        }
    job_id = record.job_offer_id
    logs = prediction.job.logs() if prediction is not None else _record_logs(record)
    steps = prediction.job.steps if prediction is not None else []
    return {
        "id": job_id,
        "version": record.module,
        "input": prediction.input if prediction is not None else dict(record.tunables),
        "status": _STATUS.get(state, "failed"),
        "state": state,
        "created_at": record.started_at,
        "completed_at": (prediction.completed_at if prediction is not None else None)
        if done
        else None,
        "output": output,
        "error": None if record.state.is_success() else record.error,
        "logs": "\n".join(logs),
        "verified": verdict(record) if record.state.is_success() else None,
        "deal_id": record.deal_id,
        "provider": record.provider,
        "result_cid": record.mediator_cid or record.result_cid,
        "txs": dict(record.txs),
        "metrics": {phase: ms / 1000 for phase, ms in record.timings_ms.items()},
        "steps": [s.text for s in steps if s.name not in ("log", "progress")],
        "urls": {
            "get": f"/v1/predictions/{job_id}",
            "cancel": f"/v1/predictions/{job_id}/cancel",
            "stream": f"/v1/predictions/{job_id}/events",
            "web": f"/jobs/{job_id}",
        },
    }


# ------------------------------------------------------------------------------------ the app
def create_app(client: Client, *, token: str, webhook_secret: str | None = None) -> FastAPI:
    """The ``lilypad serve`` app for ``client``, answering only requests with ``token``."""
    from lilypad.web import pages

    server = Server(client, token, webhook_secret)
    app = FastAPI(
        title="Lilypad (local)",
        summary="Run jobs on a Lilypad network from this machine: the job creator's API.",
        version=_version(),
    )
    app.state.server = server
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))
    pages.mount_static(app)

    @app.exception_handler(LilypadError)
    async def lilypad_error(_: Request, exc: LilypadError) -> JSONResponse:
        status = 422 if isinstance(exc, InputError) else 502
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=status)

    auth = Depends(_authorizer(server))
    _api_routes(app, server, auth)
    pages.dashboard_routes(app, server)
    return app


def _api_routes(app: FastAPI, server: Server, auth: Any) -> None:
    @app.post(
        "/v1/predictions",
        status_code=201,
        dependencies=[auth],
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/PredictionRequest"}
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["version"],
                            "properties": {
                                "version": {"type": "string"},
                                "input": {"type": "string", "description": "JSON object"},
                                "options": {"type": "string", "description": "JSON object"},
                            },
                            "additionalProperties": {"type": "string", "format": "binary"},
                        }
                    },
                },
                "required": True,
            }
        },
        responses={401: {}, 422: {}, 502: {}},
    )
    async def create_prediction(request: Request) -> JSONResponse:
        """Create a job: its offer is posted when this answers."""
        body, files = await _read_request(request)
        prediction = await run_in_threadpool(server.create, body, files)
        view = server.view(prediction.job.id or "", prediction)
        return JSONResponse(view, status_code=201, headers={"Location": view["urls"]["get"]})

    @app.get("/v1/predictions", dependencies=[auth])
    def list_predictions() -> dict[str, Any]:
        """Every job of this machine, newest first."""
        return {"results": server.listing(), "next": None}

    @app.get("/v1/predictions/{prediction_id}", dependencies=[auth], responses={404: {}})
    def get_prediction(prediction_id: str) -> dict[str, Any]:
        return server.view(prediction_id)

    @app.post("/v1/predictions/{prediction_id}/cancel", dependencies=[auth], responses={404: {}})
    def cancel_prediction(prediction_id: str) -> dict[str, Any]:
        """Withdraw the job's offer while no provider has taken it (no funds move); a job with
        a deal goes on (the deal binds)."""
        prediction, record = server.find(prediction_id)
        if prediction is not None:
            prediction.job.cancel()
            prediction.job.wait_ended(10)
            return server.view(prediction_id, prediction)
        if not record.state.is_terminal() and record.deal_id is None:
            job = server.client.job(record.job_offer_id or prediction_id)
            try:
                job.cancel()
            finally:
                job.close()
        return server.view(prediction_id)

    @app.get("/v1/predictions/{prediction_id}/events", dependencies=[auth], responses={404: {}})
    async def prediction_events(prediction_id: str) -> StreamingResponse:
        """The job's steps, log lines and progress as server-sent events, then ``done``."""
        prediction, _ = server.find(prediction_id)
        return StreamingResponse(
            _events(server, prediction_id, prediction),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/predictions/{prediction_id}/files/{path:path}",
        dependencies=[auth],
        responses={404: {}},
    )
    def prediction_file(prediction_id: str, path: str) -> FileResponse:
        """One file of the job's verified result."""
        _, record = server.find(prediction_id)
        if not record.output_dir:
            raise HTTPException(404, f"job {prediction_id} has no result on this machine yet")
        root = Path(record.output_dir).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, f"no file {path!r} in the result of job {prediction_id}")
        return FileResponse(target)

    @app.get("/v1/modules", dependencies=[auth])
    def list_modules() -> list[dict[str, Any]]:
        """The built-in modules and their versions."""
        return module_catalogue()

    @app.get("/v1/modules/{ref}/schema", dependencies=[auth], responses={422: {}})
    def module_schema(ref: str) -> dict[str, Any]:
        """The module version's inputs as JSON Schema (Draft 2020-12)."""
        from lilypad import modules
        from lilypad.modules.schema import input_schema

        return input_schema(modules.resolve(ref))

    @app.get("/v1/network", dependencies=[auth], responses={502: {}})
    def network() -> dict[str, Any]:
        """Providers, GPUs, prices, open offers and recent deals, from the network's solver."""
        return read_network(server.client)

    @app.get("/v1/webhooks/default/secret", dependencies=[auth])
    def webhook_secret() -> dict[str, str]:
        """The key webhooks are signed with (Standard Webhooks)."""
        return {"key": server.webhook_secret}


def module_catalogue() -> list[dict[str, Any]]:
    from lilypad import modules

    return [
        {
            "name": manifest.name,
            "versions": sorted(manifest.versions, key=modules.version_key, reverse=True),
            "description": manifest.description,
        }
        for manifest, _ in modules.list_builtin()
    ]


def read_network(client: Client, *, most: int = 2000, deals: int = 50) -> dict[str, Any]:
    """The network view of ``client``'s network, read from its solver."""
    from lilypad.errors import ConfigError
    from lilypad.solver_api import SolverClient
    from lilypad.web.network import network_view

    profile = client.profile
    if not profile.solver_url:
        raise ConfigError(f"network {profile.name!r} names no solver_url")
    with SolverClient(profile.solver_url) as solver:
        offers = list(solver.all_resource_offers(most=most))
        recent = solver.deals(limit=deals)
    return network_view(offers, recent)


# ------------------------------------------------------------------------------------ inside
def _authorizer(server: Server) -> Any:
    def authorized(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:], server.token):
            return
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie, server.token):
            if request.method in ("GET", "HEAD") or request.headers.get(CSRF_HEADER) == "1":
                return
            raise HTTPException(403, f"a change from the dashboard needs the {CSRF_HEADER} header")
        raise HTTPException(
            401,
            "no access token: send Authorization: Bearer TOKEN (lilypad serve prints it), or "
            "open the URL it printed",
        )

    return authorized


async def _read_request(request: Request) -> tuple[PredictionRequest, dict[str, Upload]]:
    """The request's body as JSON or a multipart form; file parts by the input they fill."""
    from pydantic import ValidationError

    kind = request.headers.get("content-type", "")
    try:
        if kind.startswith("multipart/form-data"):
            fields: dict[str, Any] = {}
            files: dict[str, Upload] = {}
            async with request.form(max_files=32, max_fields=64) as form:
                for name, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        data = await value.read(MAX_UPLOAD + 1)
                        if len(data) > MAX_UPLOAD:
                            raise InputError(f"{name}: the file is over {MAX_UPLOAD:,} bytes")
                        files[name] = Upload(value.filename or name, data)
                    elif name in ("input", "options"):
                        fields[name] = _json_object(name, value)
                    else:
                        fields[name] = value
            options = fields.pop("options", {})
            return PredictionRequest.model_validate({**options, **fields}), files
        try:
            raw = await request.json()
        except ValueError:
            raise InputError("the body is not JSON (or a multipart form)") from None
        return PredictionRequest.model_validate(raw), {}
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError(f"{where}: {first['msg']}") from None


def _json_object(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        raise InputError(f"{name} is not JSON: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise InputError(f"{name} is not a JSON object: {text[:80]!r}")
    return value


def _decoded_inputs(version: str, given: dict[str, Any]) -> dict[str, Any]:
    """The inputs, a ``data:`` URL of a file input as its bytes."""
    from lilypad import modules

    module = modules.resolve(version)
    tunables = module.template.tunables if module.template is not None else module.spec.tunables
    files = {t.name for t in tunables if t.is_file}
    decoded: dict[str, Any] = {}
    for name, value in given.items():
        if name in files and isinstance(value, str) and value.startswith("data:"):
            decoded[name] = _data_url(name, value)
        else:
            decoded[name] = value
    return decoded


def _data_url(name: str, value: str) -> bytes:
    head, _, data = value.partition(",")
    if not head.endswith(";base64"):
        raise InputError(f"{name}: a data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name}: the data: URL is not valid base64") from None


def _shown_inputs(given: dict[str, Any], files: dict[str, Upload]) -> dict[str, Any]:
    """The inputs as the API shows them back: files and data URLs by their size only."""
    shown: dict[str, Any] = {}
    for name, value in given.items():
        is_data = isinstance(value, str) and value.startswith("data:")
        shown[name] = f"<data: URL, {len(value)} characters>" if is_data else value
    for name, upload in files.items():
        shown[name] = f"<upload {upload.safe_name(name)}, {len(upload.data)} bytes>"
    return shown


def _check_webhook(url: str | None, events: list[str]) -> None:
    import httpx

    for event in events:
        if event not in WEBHOOK_EVENTS:
            raise InputError(
                f"webhook_events_filter: {event!r} is not an event; allowed: "
                + ", ".join(WEBHOOK_EVENTS)
            )
    if url is None:
        return
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise InputError(f"webhook {url!r} is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(f"webhook {url!r} is not an http:// or https:// URL")


def _record_logs(record: JobRecord) -> list[str]:
    if record.output_dir:
        stderr = Path(record.output_dir) / "stderr"
        if stderr.is_file():
            return stderr.read_text(errors="replace").splitlines()
    return []


async def _events(
    server: Server, prediction_id: str, prediction: Prediction | None
) -> AsyncIterator[bytes]:
    """The SSE stream of one job: what happened so far, then each step as it comes."""
    if prediction is None:  # a job another process follows: its record, as it moves on
        async for event in _record_events(server, prediction_id):
            yield event
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Step] = asyncio.Queue()

    def listener(step: Step) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, step)

    job = prediction.job
    backlog = job.subscribe(listener)
    try:
        for step in backlog:
            yield _step_event(step)
        quiet = 0.0
        while True:
            try:
                step = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                if job.done() and queue.empty():
                    break
                quiet += 1.0
                if quiet >= 15:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                continue
            yield _step_event(step)
        yield _sse("done", server.view(prediction_id, prediction))
    finally:
        job.unsubscribe(listener)


async def _record_events(server: Server, prediction_id: str) -> AsyncIterator[bytes]:
    """The events of a job another process follows (``lilypad run``, ``jobs wait``): a ``step``
    each time its record (rewritten at every step) shows another state, then ``done``."""
    last = None
    quiet = 0.0
    while True:
        view = await run_in_threadpool(server.view, prediction_id)
        if view["state"] != last:
            last = view["state"]
            yield _sse("step", {"name": last, "text": f"state: {last}", "detail": {}})
        if view["status"] in ("succeeded", "failed", "canceled"):
            yield _sse("done", view)
            return
        await asyncio.sleep(1.0)
        quiet += 1.0
        if quiet >= 15:
            quiet = 0.0
            yield b": keep-alive\n\n"


def _step_event(step: Step) -> bytes:
    kind = step.name if step.name in ("log", "progress") else "step"
    return _sse(kind, {"name": step.name, "text": step.text, "detail": step.detail})


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def _version() -> str:
    from lilypad import __version__

    return __version__


def redirect_with_cookie(token: str) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
    return response
