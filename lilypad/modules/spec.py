"""The fully resolved job spec: what a provider runs, and what its hash commits to.

``spec_hash`` is ``"sha256:" + hex(SHA-256(JCS(spec without spec_hash)))``, where JCS is the
JSON Canonicalization Scheme of RFC 8785: object keys sorted by their UTF-16 code units, no
whitespace, strings escaped as ``JSON.stringify`` escapes them (only ``"``, ``\\`` and control
characters), numbers written as ECMAScript writes them (``0`` for 0.0, ``1.5``, ``1e+21``), so a
JavaScript client's ``JSON.stringify`` of a key-sorted object gives the same bytes. One extension:
an integer beyond ±(2**53 - 1) (a seed up to 2**63 - 1) is written as its exact digits, where RFC
8785 has no answer (JavaScript reads such a number only as a ``BigInt``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

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
    #: The folder the command runs in, where a Lilypad-format module's template sets one
    #: (``WorkingDirectory``); None: the image's. Left out of the JSON when None, so every
    #: other spec keeps its bytes and its hash.
    workdir: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_workdir(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("workdir") is None:
            data.pop("workdir", None)
        return data

    @staticmethod
    def hash_of(fields: Mapping[str, Any]) -> str:
        """The ``spec_hash`` of a spec's fields as JSON values (``model_dump(mode="json")``):
        ``sha256:`` and the hex SHA-256 of the UTF-8 of their :func:`canonical_json`, every
        field but ``spec_hash`` itself. The one function every role computes or checks it with.

        Raises:
            ValueError: a value JSON cannot hold (NaN, infinity, a lone surrogate).
        """
        body = {k: v for k, v in fields.items() if k != "spec_hash"}
        return "sha256:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()

    @property
    def output_limit(self) -> int:
        """Most bytes the job may leave (outputs + stdout + stderr): its ``disk_gb``. Executors
        cap a run at it; job creators and mediators refuse to download more."""
        return int(self.machine.disk_gb * 2**30)

    @property
    def result_limit(self) -> int:
        """Most bytes a downloaded result of the job may hold: its output limit, and 1 MiB of
        room for ``exitCode`` and the like."""
        return self.output_limit + 2**20

    def to_json(self, *, indent: int | None = 2) -> str:
        """Stable JSON: sorted keys, so equal specs print byte-identically."""
        return json.dumps(
            self.model_dump(mode="json"), indent=indent, sort_keys=True, ensure_ascii=False
        )


def canonical_json(value: Any) -> str:
    """``value`` in the JSON Canonicalization Scheme (RFC 8785), with exact big integers.

    Args:
        value: JSON values: dicts with string keys, lists or tuples, strings, bools, ints,
            finite floats and None.

    Raises:
        ValueError: NaN or infinity, a string that is not valid Unicode (a lone surrogate), a
            key that is not a string, or a type JSON has no form for.
    """
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_TO_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _write(value: Any, parts: list[str]) -> None:
    if value is None:
        parts.append("null")
    elif isinstance(value, bool):
        parts.append("true" if value else "false")
    elif isinstance(value, int):
        parts.append(str(int(value)))
    elif isinstance(value, float):
        parts.append(_number(value))
    elif isinstance(value, str):
        parts.append(_string(value))
    elif isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"JSON object keys are strings, not {sorted(map(repr, value))}")
        parts.append("{")
        # RFC 8785 3.2.3: by UTF-16 code units (big-endian bytes compare the same way)
        for i, key in enumerate(
            sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        ):
            parts.append("," if i else "")
            parts.append(_string(key) + ":")
            _write(value[key], parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for i, item in enumerate(value):
            parts.append("," if i else "")
            _write(item, parts)
        parts.append("]")
    else:
        raise ValueError(f"{type(value).__name__} {value!r} has no JSON form")


def _string(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"string {text[:40]!r} is not valid Unicode (a lone surrogate)") from None
    escaped = _TO_ESCAPE.sub(lambda m: _ESCAPES.get(m[0]) or f"\\u{ord(m[0]):04x}", text)
    return f'"{escaped}"'


def _number(value: float) -> str:
    """ECMAScript's Number::toString (ECMA-262 7.1.12.1), which RFC 8785 prescribes, from the
    shortest digits that read back as ``value`` (Python's ``repr``)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} has no JSON form; use a finite number")
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    shortest = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, shortest.digits))
    k, n = len(digits), int(shortest.exponent) + len(digits)  # value = 0.<digits> * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if n > 0 else '-'}{abs(n - 1)}"
    return sign + text
