"""The whole system as a user runs it: ``lilypad network up``, ``lilypad run``, ``lilypad network
down`` through the real CLI, every service a process of its own.

Each test's network runs on ports of its own (``--port-offset``), so a network a developer has up
on the default ports does not get in the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lilypad.chain import Chain
from lilypad.chain.events import ChainEvent, EventFollower
from lilypad.chain.market import JobMarketClient
from lilypad.config import get_settings
from lilypad.localnet import key_file, state_dir
from lilypad.network import NetworkProfile, load_network

Up = Callable[..., NetworkProfile]


def lilypad(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does, in this test's isolated home and data dir."""
    return subprocess.run(
        [sys.executable, "-m", "lilypad", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )


def run_job(
    network: str, module: str, *inputs: str, timeout: float = 300, verify: str = "audit"
) -> dict[str, Any]:
    """``lilypad run MODULE -i ... --verify VERIFY --json`` as the network's job creator; its
    record."""
    args = ["run", module, "--network", network, "--yes", "--json", "--verify", verify]
    args += ["--key-file", str(key_file(network, "job_creator"))]
    for value in inputs:
        args += ["-i", value]
    result = lilypad(*args, timeout=timeout)
    assert result.returncode == 0, result.stderr + logs(network)
    record: dict[str, Any] = json.loads(result.stdout)
    return record


def logs(network: str, lines: int = 15) -> str:
    """The end of every service's log, for a failure message."""
    out = []
    for log in sorted(state_dir(network).glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"\n--- {log.name}\n" + "\n".join(tail))
    return "".join(out)


@pytest.fixture
def network_up() -> Iterator[Up]:
    """``up(name, *options)`` brings a network up with ``lilypad network up --detach``; every
    network is brought down after the test."""
    started: list[str] = []

    def up(name: str, *options: str) -> NetworkProfile:
        started.append(name)
        result = lilypad("network", "up", "--network", name, "--detach", *options)
        assert result.returncode == 0, result.stderr + logs(name)
        return load_network(name)

    yield up
    for name in started:
        down = lilypad("network", "down", "--network", name)
        assert down.returncode == 0, down.stderr


def chain_events(profile: NetworkProfile, *names: str) -> list[ChainEvent]:
    """Every event of the market named ``names`` since the network was deployed."""
    assert profile.market is not None
    chain = Chain(profile.rpc_url)
    market = JobMarketClient(chain, profile.market)
    follower = EventFollower(
        chain, [market.contract], from_block=profile.deployed_block or 0, events=names
    )
    return follower.poll()


def holdings(profile: NetworkProfile) -> dict[str, int]:
    """Tokens each dev account holds: in its wallet plus its balance in the market."""
    assert profile.market is not None
    market = JobMarketClient(Chain(profile.rpc_url), profile.market)
    return {
        role: market.token.balance_of(address) + market.balance_of(address)
        for role, address in profile.accounts.items()
    }


def escrow(profile: NetworkProfile) -> int:
    """Tokens the market holds beyond every account's deposit: what open deals lock."""
    assert profile.market is not None
    market = JobMarketClient(Chain(profile.rpc_url), profile.market)
    owners = [*profile.accounts.values(), profile.job_creator]
    deposits = sum(market.balance_of(address) for address in owners if address)
    return market.token.balance_of(profile.market) - deposits


def provider_deals(network: str, address: str) -> list[dict[str, object]]:
    """The provider's own records of its deals (its state folder, as it wrote them)."""
    folder = get_settings().data_dir / "provider" / network / address / "deals"
    return [json.loads(path.read_text()) for path in folder.glob("*.json")]
