"""The shipped contracts' artifacts, and revert data decoded into the error a contract raised.

Free of web3, so the light client (:mod:`lilypad.chain.light`) and the web3 one
(:mod:`lilypad.chain.client`) name a revert the same way: ``NonceUsed(signer=0x…, nonce=7)``,
with a hint where one helps.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lilypad.chain.crypto import keccak, to_checksum_address
from lilypad.errors import ChainError, ContractReverted

#: The contracts whose artifacts ship in ``lilypad/chain/artifacts/``.
CONTRACT_NAMES = ("LilypadToken", "JobMarket", "JobCreator", "ExampleClient", "ILilypadJobClient")

_HINTS = {
    "InsufficientBalance": "deposit more into the JobMarket first (JobMarketClient.deposit)",
    "NotSolver": "the market owner must register this address with setSolver",
    "NoMutualMediator": "both offers must name a registered mediator in common",
    "NonceUsed": "sign a fresh offer with an unused nonce",
    "OfferExpired": "sign a fresh offer with a later expiry",
    "DeadlineNotReached": "wait until the deadline has passed",
}


@dataclass(frozen=True)
class Artifact:
    """A compiled contract as ``make contracts`` writes it."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@functools.cache
def load_artifact(name: str) -> Artifact:
    """The ABI and creation bytecode of contract ``name`` shipped with the package."""
    if name not in CONTRACT_NAMES:
        raise ChainError(f"no contract artifact {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    text = resources.files("lilypad.chain").joinpath("artifacts", f"{name}.json").read_text()
    data = json.loads(text)
    return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"])


@dataclass(frozen=True)
class _ErrorAbi:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]


@functools.cache
def _error_registry() -> dict[bytes, _ErrorAbi]:
    """Custom errors of every shipped contract, keyed by their 4-byte selector."""
    registry = {
        bytes.fromhex("08c379a0"): _ErrorAbi("Error", ("reason",), ("string",)),
        bytes.fromhex("4e487b71"): _ErrorAbi("Panic", ("code",), ("uint256",)),
    }
    for name in CONTRACT_NAMES:
        for entry in load_artifact(name).abi:
            if entry["type"] != "error":
                continue
            types = tuple(_abi_type(i) for i in entry["inputs"])
            signature = f"{entry['name']}({','.join(types)})"
            registry[keccak(text=signature)[:4]] = _ErrorAbi(
                entry["name"], tuple(i["name"] for i in entry["inputs"]), types
            )
    return registry


def _abi_type(param: dict[str, Any]) -> str:
    kind: str = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){kind[5:]}"
    return kind


def decode_revert(data: str | bytes | None) -> tuple[str, dict[str, object]]:
    """Name and arguments of the error in revert ``data`` (``("unknown", {...})`` if unknown)."""
    raw = (
        bytes.fromhex(data[2:] if data.startswith("0x") else data)
        if isinstance(data, str)
        else data
    )
    if not raw or len(raw) < 4:
        return "unknown", {}
    abi = _error_registry().get(raw[:4])
    if abi is None:
        return "unknown", {"data": "0x" + raw.hex()}
    from eth_abi.abi import decode  # only when something reverted: eth-abi is slow to import

    try:
        values = decode(list(abi.types), raw[4:])
    except Exception:  # malformed revert data: say so rather than guess
        return abi.name, {"data": "0x" + raw.hex()}
    return abi.name, {n: _plain(v) for n, v in zip(abi.names, values, strict=True)}


def _plain(value: Any) -> object:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value


def reverted(action: str, data: str | bytes | None, message: str | None) -> ContractReverted:
    error, details = decode_revert(data)
    if error == "unknown" and message:
        text = f"{action} reverted: {message}"
    else:
        args = ", ".join(f"{k}={v}" for k, v in details.items())
        text = f"{action} reverted with {error}({args})"
    return ContractReverted(text, error=error, details=details, hint=_HINTS.get(error))
