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
from lilypad.storage.cid import CID
from lilypad.storage.node import EmbeddedNode
from tests.conftest import missing

NODE_TOKEN = "test-pinning-token"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2000  # > one 256 KiB chunk
UNKNOWN = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
JS = Path(__file__).parent / "js"


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
    # NOTE: without it, Nagle's algorithm and delayed ACKs add ~40 ms to every small response.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "outputs",
        {
            "image.png": PNG,
            "notes/readme.txt": b"hello gateway\n",
            "notes/ünï cødé.txt": b"unicode name",
            "site/index.html": b"<h1>home</h1>",
            "empty": None,
        },
    )


@pytest.fixture
def added(node: EmbeddedNode, tree: Path) -> CID:
    """``tree`` added through the node's Kubo RPC with the network profile."""
    from lilypad.storage.client import KuboClient
    from lilypad.storage.importer import NETWORK_PROFILE

    with KuboClient(node.api_url) as client:
        entries = client.add(tree, NETWORK_PROFILE)
    return CID.parse(entries[-1]["Hash"])


def run_js(script: str, *args: str, timeout: float = 120) -> str:
    """Run ``tests/storage/js/<script>`` with Node (npm packages from tests/storage/js, pinned
    by its lock file; ``make install`` puts them there); returns its stdout.

    The scripts run on Debian's Node 20: ``node20.mjs`` adds the one ES2024 built-in the pinned
    packages call (``Promise.withResolvers``) before the script loads.
    """
    exe = shutil.which("node")
    if exe is None or not (JS / "node_modules" / "kubo-rpc-client").is_dir():
        missing("Node and the npm packages of tests/storage/js", "make install")
    assert exe is not None
    done = subprocess.run(
        [exe, "--import", str(JS / "node20.mjs"), str(JS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=JS,
    )
    if done.returncode != 0:
        raise AssertionError(f"node {script} {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout
