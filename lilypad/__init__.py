"""Lilypad: a decentralized compute network for deterministic, containerized AI jobs.

The Python SDK is :class:`lilypad.Client` (and :class:`lilypad.AsyncClient`): see
:mod:`lilypad.client`. They are imported on first use, so that ``import lilypad`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lilypad.client import AsyncClient, Client, Job, Result

__all__ = ["AsyncClient", "Client", "Job", "Result", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("AsyncClient", "Client", "Job", "Result"):
        from lilypad import client

        return getattr(client, name)
    raise AttributeError(f"module 'lilypad' has no attribute {name!r}")
