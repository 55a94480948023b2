"""The embedded IPFS node: an HTTP gateway and the Kubo RPC subset over one on-disk blockstore.

* :func:`~lilypad.storage.gateway.create_gateway_app` (:mod:`.gateway`) serves
  ``GET/HEAD /ipfs/<cid>[/path]``: the path gateway and the trustless gateway (``?format=raw``,
  ``?format=car`` with ``dag-scope``/``entity-bytes``, ``?format=tar``).
* :func:`~lilypad.storage.rpc.create_api_app` (:mod:`.rpc`) serves the Kubo RPC API (POST only,
  as kubo) and, when a token is configured, the IPFS Pinning Service API (``/pins``).
* :class:`EmbeddedNode` runs both with uvicorn (in a background thread, or in the foreground for
  ``lilypad ipfs serve``).

This node has no peers: it serves what was added to its store. Unknown CIDs answer 404 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from lilypad.errors import CorruptBlock, StorageError
from lilypad.net import parse_host_port
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.gateway import create_gateway_app
from lilypad.storage.rpc import create_api_app


class EmbeddedNode:
    """The API and gateway servers over one blockstore, on already-bound sockets.

    Args:
        store: The blockstore to serve.
        api: ``HOST:PORT`` for the Kubo RPC API (port 0 picks a free one).
        gateway: ``HOST:PORT`` for the gateway.
        pinning_token: Enables the Pinning Service API on the API server.
    """

    def __init__(
        self,
        store: Blockstore,
        api: str = "127.0.0.1:5001",
        gateway: str = "127.0.0.1:8080",
        pinning_token: str | None = None,
    ) -> None:
        self.store = store
        addresses = [_address(api, "API"), _address(gateway, "gateway")]  # both, before binding
        self._sockets: list[socket.socket] = []
        try:
            for (host, port), what in zip(addresses, ("API", "gateway"), strict=True):
                self._sockets.append(_bind(host, port, what))
        except StorageError:
            for sock in self._sockets:
                sock.close()
            raise
        apps = [create_api_app(store, pinning_token), create_gateway_app(store)]
        self._servers = [
            _Server(uvicorn.Config(a, log_level="warning", lifespan="off")) for a in apps
        ]
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        """``http://host:port`` of the Kubo RPC API."""
        return _url(self._sockets[0])

    @property
    def gateway_url(self) -> str:
        """``http://host:port`` of the gateway."""
        return _url(self._sockets[1])

    async def _serve(self) -> None:
        await asyncio.gather(
            *(s.serve(sockets=[sock]) for s, sock in zip(self._servers, self._sockets, strict=True))
        )

    def run(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM, then stop both servers."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._request_stop)
            await self._serve()

        asyncio.run(main())

    def _request_stop(self) -> None:
        for server in self._servers:
            server.should_exit = True

    def start(self) -> EmbeddedNode:
        """Serve in a daemon thread; returns once both servers accept connections."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="ipfs-node", daemon=True
        )
        self._thread.start()
        while not all(s.started for s in self._servers):
            if not self._thread.is_alive():
                raise StorageError("the embedded IPFS node failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        """Stop both servers and wait for the thread."""
        self._request_stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> EmbeddedNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handlers: two servers share one process, and
    :meth:`EmbeddedNode.run` stops both on one signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _address(addr: str, what: str) -> tuple[str, int]:
    return parse_host_port(addr, f"the {what} address", example="127.0.0.1:5001", multiaddr=True)


def _bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # NOTE: accepted connections inherit this; without it, Nagle's algorithm and delayed ACKs
    # add ~40 ms to every keep-alive request (a block-by-block download is many requests).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StorageError(f"cannot listen for the {what} on {shown}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


__all__ = ["CorruptBlock", "EmbeddedNode", "create_api_app", "create_gateway_app"]
