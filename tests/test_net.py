"""``HOST:PORT`` as every listening option takes it (lilypad.net)."""

from __future__ import annotations

import pytest

from lilypad.errors import InputError
from lilypad.net import parse_host_port
from tests.conftest import CliRunner


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("node-1.example.org:65535", ("node-1.example.org", 65535)),
        ("[::1]:80", ("::1", 80)),
        ("[::]:9100", ("::", 9100)),
    ],
)
def test_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, "--listen") == expected


@pytest.mark.parametrize(
    "text",
    [
        "nonsense",
        "127.0.0.1",
        ":8080",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "::1:80",  # an IPv6 host without brackets is ambiguous
        "[::1]80",
        "[not-ipv6]:80",
        "host name:80",
        "/ip4/127.0.0.1/tcp/5001",  # a multiaddr only where the caller takes one
    ],
)
def test_bad_addresses_name_the_value_and_the_forms(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_host_port(text, "--listen")
    assert str(caught.value).startswith(f"--listen {text!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    assert "0..65535" in str(caught.value)


def test_multiaddr_where_the_caller_takes_one() -> None:
    assert parse_host_port("/ip4/127.0.0.1/tcp/5001", "--api", multiaddr=True) == (
        "127.0.0.1",
        5001,
    )
    with pytest.raises(InputError, match="is not HOST:PORT or /ip4/HOST/tcp/PORT"):
        parse_host_port("/ip4/127.0.0.1/tcp/99999", "--api", multiaddr=True)


def test_port_zero_only_where_any_free_port_will_do() -> None:
    with pytest.raises(InputError) as caught:
        parse_host_port("127.0.0.1:0", "--listen", any_port=False)
    assert "1..65535" in str(caught.value)


def test_the_cli_refuses_a_bad_address_before_anything_starts(cli: CliRunner) -> None:
    result = cli("solver", "--listen", "127.0.0.1:0")
    assert result.exit_code == 2
    assert "--listen '127.0.0.1:0' is not HOST:PORT" in result.stderr
    result = cli("ipfs", "serve", "--api", "[::1]:99999")
    assert result.exit_code == 2
    assert "the API address '[::1]:99999' is not HOST:PORT" in result.stderr
