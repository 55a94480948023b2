"""The HTTP clients skip loading CA certificates for plain http, and still verify https."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilypad.chain.light import LightChain
from lilypad.errors import ChainUnavailable, StorageError
from lilypad.storage.client import KuboClient
from lilypad.tls import verify_for
from tests.conftest import missing


def test_plain_http_loads_no_certificates_and_https_shares_one_verifying_context() -> None:
    assert verify_for("http://127.0.0.1:8545") is False
    context = verify_for("https://rpc.example")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert verify_for("HTTPS://gateway.example") is context  # loaded once per process


@pytest.fixture
def self_signed_https(tmp_path: Path) -> Iterator[str]:
    """An https server on 127.0.0.1 whose certificate no CA signed."""
    if shutil.which("openssl") is None:
        missing("openssl", "as root: make system")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*request, "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_https_still_refuses_a_certificate_no_ca_signed(self_signed_https: str) -> None:
    chain = LightChain(self_signed_https)
    with pytest.raises(ChainUnavailable) as caught:
        _ = chain.chain_id
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.__cause__)
    chain.close()
    with KuboClient(self_signed_https) as client, pytest.raises(StorageError):
        client.version()
