"""The IPFS Pinning Service API (https://ipfs.github.io/pinning-services-api-spec/) on the
embedded node's API server, with a bearer token.

Pin requests are kept in ``pin-requests.db`` in the repository folder. This node has no peers, so
a request for content that is not complete in its store fails at once (``failed``, with the
missing block named in ``info.status_details``). Errors have the spec's shape,
``{"error": {"reason", "details"}}``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from lilypad.errors import InputError, StorageError
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.cid import CID


def psa_error(reason: str, details: str, status: int) -> JSONResponse:
    """An error as the Pinning Service API spec shapes it."""
    return JSONResponse({"error": {"reason": reason, "details": details}}, status_code=status)


def is_pinning_service(request: Request) -> bool:
    """Whether a request is for the Pinning Service API (its errors have their own shape)."""
    return request.url.path == "/pins" or request.url.path.startswith("/pins/")


# --- the service ------------------------------------------------------------------------

_STATUSES = ("queued", "pinning", "pinned", "failed")
_MATCHES = ("exact", "iexact", "partial", "ipartial")


class _PinRequests:
    """Pin requests, kept in SQLite beside the blockstore (one connection, serialized)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (requestid TEXT PRIMARY KEY, cid TEXT NOT NULL, "
            "name TEXT, origins TEXT NOT NULL, meta TEXT NOT NULL, status TEXT NOT NULL, "
            "info TEXT NOT NULL, created TEXT NOT NULL)"
        )

    def add(self, pin: dict[str, Any], status: str, info: dict[str, str]) -> dict[str, Any]:
        row = {
            "requestid": secrets.token_hex(16),
            "cid": pin["cid"],
            "name": pin.get("name"),
            "origins": json.dumps(pin.get("origins", [])),
            "meta": json.dumps(pin.get("meta", {})),
            "status": status,
            "info": json.dumps(info),
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        with self._lock:
            self._db.execute(
                "INSERT INTO requests VALUES (:requestid, :cid, :name, :origins, :meta, :status, "
                ":info, :created)",
                row,
            )
        return row

    def get(self, requestid: str) -> dict[str, Any] | None:
        rows = self._select("WHERE requestid = ?", (requestid,))
        return rows[0] if rows else None

    def all(self) -> list[dict[str, Any]]:
        return self._select("ORDER BY created DESC, rowid DESC", ())

    def remove(self, requestid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM requests WHERE requestid = ?", (requestid,))

    def _select(self, where: str, args: tuple[str, ...]) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(f"SELECT * FROM requests {where}", args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def add_pinning_service(app: FastAPI, store: Blockstore, token: str, peer_id: str) -> None:
    """``/pins``: the local node as a pinning service for content already in its store."""
    requests = _PinRequests(store.root / "pin-requests.db")
    delegates = [f"/p2p/{peer_id}"]

    def authorize(request: Request) -> None:
        sent = request.headers.get("authorization", "")
        if not secrets.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise _Unauthorized()

    def shown(row: dict[str, Any]) -> dict[str, Any]:
        status, info = row["status"], json.loads(row["info"])
        if status == "pinned" and CID.parse(row["cid"]) not in store.pins():
            status = "failed"
            info = {"status_details": "the pin was removed from the node since (pin rm)"}
        pin: dict[str, Any] = {"cid": row["cid"]}
        if row["name"] is not None:
            pin["name"] = row["name"]
        if origins := json.loads(row["origins"]):
            pin["origins"] = origins
        if meta := json.loads(row["meta"]):
            pin["meta"] = meta
        body = {
            "requestid": row["requestid"],
            "status": status,
            "created": row["created"],
            "pin": pin,
            "delegates": delegates,
        }
        if info:
            body["info"] = info
        return body

    def request_pin(pin: dict[str, Any]) -> dict[str, Any]:
        cid = CID.parse(pin["cid"])
        try:
            store.pin(cid)
        except StorageError as exc:
            details = (
                f"{exc}; this node has no peers and pins only content already complete in its "
                "store: add it to the node first, then pin again"
            )
            return shown(requests.add(pin, "failed", {"status_details": details}))
        return shown(requests.add(pin, "pinned", {}))

    def withdraw(row: dict[str, Any]) -> None:
        """Forget a request; unpin its CID unless another live request still holds it."""
        requests.remove(row["requestid"])
        others = [r for r in requests.all() if r["cid"] == row["cid"] and r["status"] == "pinned"]
        if row["status"] == "pinned" and not others:
            with suppress(StorageError):
                store.unpin(CID.parse(row["cid"]))

    def found(requestid: str) -> dict[str, Any]:
        row = requests.get(requestid)
        if row is None:
            raise _NotFound(f"no pin request {requestid!r}")
        return row

    @app.exception_handler(_Unauthorized)
    def _unauthorized(request: Request, exc: _Unauthorized) -> Response:
        return psa_error("UNAUTHORIZED", "missing or wrong access token", 401)

    @app.exception_handler(_NotFound)
    def _not_found(request: Request, exc: _NotFound) -> Response:
        return psa_error("NOT_FOUND", str(exc), 404)

    @app.post("/pins", status_code=202)
    async def add_pin(request: Request) -> dict[str, Any]:
        authorize(request)
        pin = _pin_body(await request.body())
        return await run_in_threadpool(request_pin, pin)

    @app.get("/pins")
    def list_pins(request: Request) -> dict[str, Any]:
        authorize(request)
        keep = _pin_filter(request.query_params)
        matching = [body for body in map(shown, requests.all()) if keep(body)]
        limit = _int_param(request.query_params, "limit", 10, 1, 1000)
        return {"count": len(matching), "results": matching[:limit]}

    @app.get("/pins/{requestid}")
    def get_pin(requestid: str, request: Request) -> dict[str, Any]:
        authorize(request)
        return shown(found(requestid))

    @app.post("/pins/{requestid}", status_code=202)
    async def replace_pin(requestid: str, request: Request) -> dict[str, Any]:
        authorize(request)
        old = found(requestid)
        pin = _pin_body(await request.body())
        new = await run_in_threadpool(request_pin, pin)
        await run_in_threadpool(withdraw, old)
        return new

    @app.delete("/pins/{requestid}", status_code=202)
    def remove_pin(requestid: str, request: Request) -> Response:
        authorize(request)
        withdraw(found(requestid))
        return Response(status_code=202)


def _pin_body(raw: bytes) -> dict[str, Any]:
    """A ``Pin`` object from a request body, checked against the spec."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("cid"), str):
        raise InputError('the body must be a Pin object: {"cid": "<cid>", "name": ..., ...}')
    CID.parse(body["cid"])
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 255):
        raise InputError("pin name must be a string of at most 255 characters")
    origins = body.get("origins", [])
    if (
        not isinstance(origins, list)
        or len(origins) > 20
        or not all(isinstance(o, str) for o in origins)
    ):
        raise InputError("pin origins must be a list of at most 20 multiaddr strings")
    meta = body.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InputError("pin meta must be an object of string values")
    return {"cid": body["cid"], "name": name, "origins": origins, "meta": meta}


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise InputError(f"{name}={value!r} is out of range; use an integer from {low} to {high}")
    return int(value)


def _timestamp(query: Mapping[str, str], name: str) -> datetime | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{name}={value!r} is not an RFC 3339 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _pin_filter(query: Mapping[str, str]) -> Callable[[dict[str, Any]], bool]:
    """The ``GET /pins`` filters: cid, name + match, status, before, after, meta."""
    cids = {str(CID.parse(c)) for c in query["cid"].split(",")} if query.get("cid") else None
    if cids is not None and len(cids) > 10:
        raise InputError("cid: at most 10 CIDs at once")
    statuses = set(query.get("status", "pinned").split(","))
    if not statuses <= set(_STATUSES):
        raise InputError(
            f"status={query['status']!r}: use a comma-separated list of {', '.join(_STATUSES)}"
        )
    match = query.get("match", "exact")
    if match not in _MATCHES:
        raise InputError(f"match={match!r}: use one of {', '.join(_MATCHES)}")
    name = query.get("name")
    if name is not None and len(name) > 255:
        raise InputError("name: at most 255 characters")
    before, after = _timestamp(query, "before"), _timestamp(query, "after")
    try:
        meta = json.loads(query["meta"]) if query.get("meta") else {}
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise InputError(f"meta={query['meta']!r} is not a JSON object")

    def name_matches(have: str | None) -> bool:
        if name is None:
            return True
        if have is None:
            return False
        if match.startswith("i"):
            have, wanted = have.lower(), name.lower()
        else:
            wanted = name
        return have == wanted if match.endswith("exact") else wanted in have

    def keep(body: dict[str, Any]) -> bool:
        created = datetime.fromisoformat(body["created"].replace("Z", "+00:00"))
        pin = body["pin"]
        return (
            body["status"] in statuses
            and (cids is None or str(CID.parse(pin["cid"])) in cids)
            and name_matches(pin.get("name"))
            and (before is None or created < before)
            and (after is None or created > after)
            and all(pin.get("meta", {}).get(k) == v for k, v in meta.items())
        )

    return keep


class _Unauthorized(Exception):
    pass


class _NotFound(Exception):
    pass
