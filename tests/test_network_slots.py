"""``lilypad network up --slots`` and the ports of many local providers (no network started)."""

from __future__ import annotations

import pytest

from lilypad import localnet
from tests.conftest import CliRunner


@pytest.mark.parametrize("slots", ["0", "17"])
def test_network_up_refuses_slots_out_of_range(cli: CliRunner, slots: str) -> None:
    result = cli("network", "up", "--network", "slots", "--slots", slots)
    assert result.exit_code == 2
    assert f"--slots {slots} is out of range" in result.stderr
    assert f"1 to {localnet.MAX_SLOTS}" in result.stderr


def test_every_local_provider_has_an_account_and_a_port_of_its_own() -> None:
    topology = localnet.Topology(providers=localnet.MAX_PROVIDERS, slots=3)
    ports = [topology.port("provider", i) for i in range(topology.providers)]
    others = [topology.port(name) for name in ("chain", "ipfs_api", "gateway", "solver")]
    assert len(set(ports + others + [topology.port("mediator")])) == len(ports) + 5
    roles = localnet.dev_roles()
    assert len(set(roles.values())) == len(roles) <= localnet.DEV_ACCOUNTS
    assert max(roles.values()) < localnet.DEV_ACCOUNTS
    args = localnet.services(_profile(), topology, "process", "tiny", extra_modules=())[
        2
    ].args  # the first provider
    assert args[args.index("--max-concurrent") + 1] == "3"


def _profile() -> localnet.NetworkProfile:
    return localnet.NetworkProfile(
        name="slots",
        chain_id=31337,
        rpc_url="http://127.0.0.1:8545",
        solver_url="http://127.0.0.1:8090",
        ipfs_api_url="http://127.0.0.1:5001",
        gateway_url="http://127.0.0.1:8080",
    )
