"""Fixtures for the storage tests: the reference importers and a running embedded node."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from lilypad.storage.blockstore import Blockstore
from lilypad.storage.node import EmbeddedNode
from tests.conftest import missing

NODE_TOKEN = "test-pinning-token"


@pytest.fixture(scope="session")
def ipfs_cid() -> Callable[[Path], dict[str, str]]:
    """Debian's `ipfs_cid` (package ipfs-cid): kubo-default CIDv0 of a file."""
    exe = shutil.which("ipfs_cid")
    if exe is None:
        missing("Debian's ipfs-cid", "as root: make system")
    assert exe is not None

    def run(path: Path) -> dict[str, str]:
        import json

        out = subprocess.run(
            [exe, str(path)], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        line = next(line for line in out.splitlines() if line.startswith("{"))
        result: dict[str, str] = json.loads(line)
        return result

    return run


@pytest.fixture
def store(tmp_path: Path) -> Blockstore:
    """An empty blockstore."""
    return Blockstore(tmp_path / "repo")


@pytest.fixture
def node(store: Blockstore) -> Iterator[EmbeddedNode]:
    """The embedded node on free ports of 127.0.0.1, serving ``store``."""
    with EmbeddedNode(
        store, api="127.0.0.1:0", gateway="127.0.0.1:0", pinning_token=NODE_TOKEN
    ) as running:
        yield running


def write_tree(root: Path, files: dict[str, bytes | None]) -> Path:
    """Create files (``None``: an empty directory) under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = root / rel
        if content is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return root


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free port of 127.0.0.1; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
