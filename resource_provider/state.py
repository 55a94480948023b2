"""State on disk that survives ``kill -9``: one JSON file per record, written atomically.

Each record is written to a temporary file in the same folder, flushed to disk (``fsync``) and
renamed over the old one, so a reader (or a restarted daemon) sees either the old record or the
new one, never a torn write. The provider, mediator and bridge each keep their records in their
own folder::

    <data dir>/provider/<network>/<address>/
        meta.json               next chain block to read, next offer nonce, open offers
        deals/<deal id>.json    one DealRecord per deal naming this provider
        results/<deal id>/      the job's result folder (outputs/, stdout, stderr, exitCode)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lilypad.chain.offers import Deal
from lilypad.errors import ConfigError
from lilypad.fsutil import write_atomic
from lilypad.storage.blockstore import PinType

M = TypeVar("M", bound=BaseModel)


class JsonStore:
    """Records (pydantic models) by kind and key, plus a small ``meta`` map; thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        root.mkdir(parents=True, exist_ok=True)
        self._meta: dict[str, Any] = self._read_meta()

    # ------------------------------------------------------------------------------- records
    def put(self, kind: str, key: str, record: BaseModel) -> None:
        """Write ``record`` as ``<root>/<kind>/<key>.json``."""
        data = record.model_dump_json(indent=2).encode()
        with self._lock:
            write_atomic(self._path(kind, key), data)

    def get(self, kind: str, key: str, model: type[M]) -> M | None:
        """The record ``kind/key``, or None."""
        path = self._path(kind, key)
        with self._lock:
            if not path.is_file():
                return None
            return self._load(path, model)

    def all(self, kind: str, model: type[M]) -> Iterator[M]:
        """Every record of ``kind``, in key order."""
        folder = self.root / kind
        with self._lock:
            paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        for path in paths:
            yield self._load(path, model)

    # ---------------------------------------------------------------------------------- meta
    def meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._meta.get(key, default)

    def set_meta(self, **values: Any) -> None:
        """Update ``meta.json`` with ``values`` (one atomic write)."""
        with self._lock:
            self._meta.update(values)
            write_atomic(self.root / "meta.json", json.dumps(self._meta, indent=2).encode())

    # ------------------------------------------------------------------------------ helpers
    def _path(self, kind: str, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ConfigError(f"record key {key!r} is not a plain name")
        return self.root / kind / f"{key}.json"

    def _load(self, path: Path, model: type[M]) -> M:
        try:
            return model.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ConfigError(
                f"state file {path} is unreadable: {str(exc).splitlines()[0]}",
                hint="it was written by another version; move it away to start afresh",
            ) from None

    def _read_meta(self) -> dict[str, Any]:
        path = self.root / "meta.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"state file {path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"state file {path} does not hold a JSON object")
        return data


class Phase(StrEnum):
    """Where the provider is with one deal. Each step is written before the next starts."""

    NEW = "new"  # seen on chain or in the solver's stream; nothing done yet
    RUNNING = "running"  # the job was started (a restart runs it again)
    EXECUTED = "executed"  # the result folder is complete on disk; not yet in IPFS (an IPFS
    # outage retries the upload, never the run)
    RAN = "ran"  # the result is in IPFS (``result_cid``); not yet on chain
    SUBMITTED = "submitted"  # the CID is on chain; waiting for the challenge window
    SETTLED = "settled"  # the deal is over (``outcome`` says how)
    REFUSED = "refused"  # not run: spec mismatch, module not served, or too late to finish

    def is_terminal(self) -> bool:
        return self in (Phase.SETTLED, Phase.REFUSED)


class Outcome(StrEnum):
    """How a settled deal ended for the provider."""

    PAID = "paid"  # claimed after the window
    ACCEPTED = "accepted"  # the job creator accepted
    WON = "won"  # a mediator ruled for us
    SLASHED = "slashed"  # a mediator ruled against us
    TIMED_OUT = "timed_out"  # no result before the deadline (collateral lost)
    MEDIATION_TIMED_OUT = "mediation_timed_out"  # nobody ruled; collateral returned


class DealRecord(BaseModel):
    """The provider's state of one deal.

    Attributes:
        deal: The settlement terms (from ``DealCreated``).
        phase: Where the work is.
        module: The module reference, once the spec is known.
        result_cid: The CID of the result folder, once added to IPFS.
        runs: How many times the job was started (more than one after a crash).
        outcome: How it ended, once settled.
        error: Why it was refused or failed.
        kept: The pins this provider holds on its IPFS node for the deal's inputs (CID -> type,
            see :func:`resource_provider.inputs.keep`), until it settles.
        times: When (Unix time) each phase was first reached: for operators and for
            ``bench/e2e_overhead.py``.
    """

    model_config = ConfigDict(frozen=True)

    deal: Deal
    phase: Phase = Phase.NEW
    module: str | None = None
    result_cid: str | None = None
    runs: int = 0
    duration_ms: int | None = None
    outcome: Outcome | None = None
    error: str | None = None
    kept: dict[str, PinType] = Field(default_factory=dict)
    times: dict[str, float] = Field(default_factory=dict)

    @property
    def deal_id(self) -> str:
        return self.deal.deal_id
