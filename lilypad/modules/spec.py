"""The fully resolved job spec: what a provider runs, and what its hash commits to."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from lilypad.modules.manifest import MachineSpec, Verification
from lilypad.modules.tunables import TunableValue


class SpecSource(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["builtin", "local", "git"]
    location: str
    commit: str | None = None


class JobSpec(BaseModel):
    """A module version with its tunables validated and its environment rendered.

    Every field is fixed by the module version and the inputs, so the same inputs always give the
    same spec and the same ``spec_hash`` (the SHA-256 of the canonical JSON of the other fields).
    """

    model_config = ConfigDict(frozen=True)

    module: str
    name: str
    version: str
    source: SpecSource
    image: str
    entrypoint: tuple[str, ...]
    env: dict[str, str]
    machine: MachineSpec
    network: Literal["none"]
    outputs: Literal["/outputs"]
    timeout_s: int
    tunables: dict[str, TunableValue]
    verification: Verification
    spec_hash: str

    @staticmethod
    def hash_of(fields: dict[str, Any]) -> str:
        body = {k: v for k, v in fields.items() if k != "spec_hash"}
        return "sha256:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()

    def to_json(self, *, indent: int | None = 2) -> str:
        """Stable JSON: sorted keys, so equal specs print byte-identically."""
        return json.dumps(
            self.model_dump(mode="json"), indent=indent, sort_keys=True, ensure_ascii=False
        )


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys and no escaping of non-ASCII text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
