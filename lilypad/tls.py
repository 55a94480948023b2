"""TLS settings for the HTTP clients: the CA bundle is loaded once per process, and only for https.

httpx loads certifi's CA bundle (about 35 ms) for every ``Client`` it makes, whatever the URL.
``lilypad run`` makes three (solver, chain, IPFS), all plain http on a local network, so it
passes :func:`verify_for` instead.
"""

from __future__ import annotations

import functools
import ssl

import httpx


def verify_for(url: str) -> ssl.SSLContext | bool:
    """httpx's ``verify=`` for a client of ``url``: the process's shared, verifying context for
    https (honouring ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as httpx does); for plain http there is no
    certificate to verify, and so no bundle to load."""
    if url.lower().startswith("https://"):
        return _verifying_context()
    return False


@functools.cache
def _verifying_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
