"""Network profiles and the ``lilypad chain`` commands."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from lilypad.chain.anvil import free_port, port_in_use
from lilypad.chain.market import JobMarketClient
from lilypad.errors import ConfigError, UnknownNetwork
from lilypad.network import (
    NetworkProfile,
    list_networks,
    load_network,
    network_path,
    save_network,
)
from tests.chain.conftest import Env
from tests.conftest import CliRunner

MARKET = "0x" + "12" * 20


def profile(name: str = "local", **changes: object) -> NetworkProfile:
    fields: dict[str, object] = {
        "name": name,
        "chain_id": 31337,
        "rpc_url": "http://127.0.0.1:8545",
        "market": MARKET,
        "token": "0x" + "34" * 20,
    }
    return NetworkProfile.model_validate(fields | changes)


def test_profiles_round_trip_through_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LILYPAD_CONFIG_DIR", str(tmp_path))
    saved = profile(solver_url="http://127.0.0.1:8080", accounts={"solver": MARKET})
    path = save_network(saved)
    assert path == tmp_path / "networks" / "local.toml"
    assert load_network("local") == saved
    save_network(profile("testnet", chain_id=84532))
    assert list_networks() == ["local", "testnet"]
    assert "solver_url" in path.read_text()
    assert "ipfs_api_url" not in path.read_text()


def test_an_unknown_network_names_the_close_one() -> None:
    save_network(profile("local"))
    with pytest.raises(UnknownNetwork) as info:
        load_network("locl")
    assert "unknown network 'locl'" in str(info.value)
    assert "did you mean 'local'" in str(info.value)


def test_no_profiles_says_how_to_make_one() -> None:
    with pytest.raises(UnknownNetwork, match="lilypad chain up"):
        load_network("local")


def test_bad_names_and_files_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        network_path("../etc")
    path = network_path("broken")
    path.parent.mkdir(parents=True)
    path.write_text('name = "broken"\nchain_id = "one"\nrpc_url = "x"\n')
    with pytest.raises(ConfigError, match="is invalid"):
        load_network("broken")
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="is invalid"):
        load_network("broken")


def test_a_profile_without_contracts_says_how_to_deploy() -> None:
    bare = profile(market=None, token=None)
    with pytest.raises(ConfigError, match="lilypad chain deploy"):
        bare.require_contracts()


def test_deploy_then_status(env: Env, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("chain", "deploy", "--rpc-url", env.chain.rpc_url, "--network", "dev")
    assert result.exit_code == 2
    assert "WEB3_PRIVATE_KEY" in result.stderr
    monkeypatch.setenv("WEB3_PRIVATE_KEY", "0x" + env.stranger.key.hex().removeprefix("0x"))
    result = cli("chain", "deploy", "--rpc-url", env.chain.rpc_url, "--network", "dev", "--json")
    assert result.exit_code == 0, result.stderr
    deployed = json.loads(result.stdout)
    assert deployed["chain_id"] == env.chain.chain_id
    assert env.chain.has_code(deployed["market"])
    assert load_network("dev").accounts == {"owner": env.stranger.address}

    result = cli("chain", "status", "--network", "dev", "--json")
    assert result.exit_code == 0, result.stderr
    status = json.loads(result.stdout)
    assert all(c["deployed"] for c in status["contracts"].values())
    assert status["accounts"][0]["address"] == env.stranger.address
    human = cli("chain", "status", "--network", "dev")
    assert "market" in human.stdout
    assert deployed["market"] in human.stdout


def test_the_owner_registers_solvers_and_mediators_and_the_profile_names_them(
    env: Env, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB3_PRIVATE_KEY", env.stranger.key.hex())  # the deployer owns the market
    deployed = cli("chain", "deploy", "--rpc-url", env.chain.rpc_url, "--network", "dev", "--json")
    assert deployed.exit_code == 0, deployed.stderr
    market = JobMarketClient(env.chain, json.loads(deployed.stdout)["market"])
    solver, first, second = env.solver.address, env.mediator.address, env.mediator2.address

    def register(*args: str) -> dict[str, object]:
        result = cli("chain", "register", *args, "--network", "dev", "--json")
        assert result.exit_code == 0, result.stderr
        return dict(json.loads(result.stdout))

    assert not market.is_solver(solver)
    register("solver", solver.lower())
    assert market.is_solver(solver)
    register("mediator", first, "--fee", "0.25")
    register("mediator", second, "--fee", "0")
    assert market.mediator(first) == (True, 25 * 10**16)
    assert market.mediator(second) == (True, 0)
    accounts = load_network("dev").accounts
    assert accounts == {
        "owner": env.stranger.address,
        "solver": solver,
        "mediator": first,
        "mediator-2": second,
    }
    register("mediator", first, "--remove")
    assert market.mediator(first)[0] is False
    assert "mediator" not in load_network("dev").accounts

    monkeypatch.setenv("WEB3_PRIVATE_KEY", env.jc.key.hex())  # not the owner
    refused = cli("chain", "register", "solver", env.jc.address, "--network", "dev")
    assert refused.exit_code == 1
    assert "OwnableUnauthorizedAccount" in refused.stderr
    assert not market.is_solver(env.jc.address)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["provider", "0x" + "ab" * 20], "not one of solver, mediator"),
        (["solver", "0x1234"], "not an Ethereum address"),
        (["mediator", "0x" + "ab" * 20], "needs --fee"),
        (["mediator", "0x" + "ab" * 20, "--fee", "-1"], "not a number of tokens"),
        (["mediator", "0x" + "ab" * 20, "--fee", "lots"], "not a number of tokens"),
        (["mediator", "0x" + "ab" * 20, "--fee", "0.0000000000000000001"], "more than 18 decimals"),
        (["solver", "0x" + "ab" * 20, "--fee", "1"], "--fee is for registering a mediator"),
    ],
)
def test_register_refuses_bad_input_before_signing(
    cli: CliRunner, args: list[str], message: str
) -> None:
    result = cli("chain", "register", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_status_of_an_unknown_network_is_an_input_error(cli: CliRunner) -> None:
    save_network(profile("local"))
    result = cli("chain", "status", "--network", "locla")
    assert result.exit_code == 2
    assert "did you mean 'local'" in result.stderr


def test_status_of_an_unreachable_chain_fails_clearly(cli: CliRunner) -> None:
    save_network(profile("local", rpc_url=f"http://127.0.0.1:{free_port()}"))
    result = cli("chain", "status")
    assert result.exit_code == 1
    assert "cannot reach the chain" in result.stderr


def test_up_detached_deploys_and_down_stops_it(cli: CliRunner) -> None:
    port = free_port()
    result = cli("chain", "up", "--port", str(port), "--detach", "--json")
    assert result.exit_code == 0, result.stderr
    up = json.loads(result.stdout)
    try:
        assert up["rpc_url"] == f"http://127.0.0.1:{port}"
        assert set(up["accounts"]) >= {"owner", "solver", "mediator", "provider", "job_creator"}
        result = cli("chain", "status", "--json")
        assert result.exit_code == 0, result.stderr
        status = json.loads(result.stdout)
        solver = next(a for a in status["accounts"] if a["role"] == "solver")
        assert solver["token"] == 1_000_000 * 10**18
        assert cli("chain", "down").exit_code == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(up["pid"], signal.SIGKILL)
    assert cli("chain", "down").exit_code == 2


def test_up_on_another_address_listens_there_only(cli: CliRunner) -> None:
    """`--host` (e.g. the docker bridge's address, for node containers): anvil listens there,
    and the profile the services read names it."""
    port = free_port()
    result = cli("chain", "up", "--host", "127.0.0.2", "--port", str(port), "--detach", "--json")
    assert result.exit_code == 0, result.stderr
    up = json.loads(result.stdout)
    try:
        assert up["rpc_url"] == f"http://127.0.0.2:{port}"
        assert port_in_use(port, "127.0.0.2")
        assert not port_in_use(port, "127.0.0.1")
        status = cli("chain", "status", "--json")
        assert status.exit_code == 0, status.stderr
        assert json.loads(status.stdout)["rpc_url"] == f"http://127.0.0.2:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(up["pid"], signal.SIGKILL)


@pytest.mark.parametrize(
    ("host", "message"), [("0.0.0.0", "name the address"), ("example", "not an IPv4 address")]
)
def test_up_refuses_a_host_others_cannot_use(cli: CliRunner, host: str, message: str) -> None:
    result = cli("chain", "up", "--host", host, "--port", str(free_port()))
    assert result.exit_code == 2
    assert message in result.stderr


def test_up_on_a_busy_port_is_an_input_error(env: Env, cli: CliRunner) -> None:
    port = int(env.chain.rpc_url.rsplit(":", 1)[1])
    result = cli("chain", "up", "--port", str(port))
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr


def test_connect_refuses_a_node_on_another_chain(env: Env) -> None:
    from lilypad.errors import ChainError
    from lilypad.network import connect

    right = profile(rpc_url=env.chain.rpc_url, market=env.market.address, token=env.token.address)
    conn = connect(right)
    assert conn.market.balance_of(env.jc.address) > 0
    assert conn.job_creator is None
    with pytest.raises(ChainError, match="is chain 31337, but network 'local' is chain 1"):
        connect(right.model_copy(update={"chain_id": 1}))


def test_network_up_with_a_block_time_makes_transactions_wait_for_the_next_block() -> None:
    """``network up --block-time 2``: anvil mines a block every 2 s and a transaction waits for
    the next one, as on a real chain (without it every transaction is mined at once)."""
    import subprocess
    import sys
    import time

    from lilypad.chain.crypto import Signer
    from lilypad.chain.light import LightChain
    from lilypad.localnet import key_file

    def lilypad(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lilypad", *args],
            capture_output=True, text=True, timeout=300, check=False, env=os.environ.copy(),
        )  # fmt: skip

    up = lilypad(
        "network", "up", "--network", "blocks", "--detach", "--providers", "0",
        "--executor", "process", "--port-offset", "3500", "--block-time", "2",
    )  # fmt: skip
    chain: LightChain | None = None
    try:
        assert up.returncode == 0, up.stderr
        chain = LightChain(load_network("blocks").rpc_url)
        sender = Signer.from_key(key_file("blocks", "job_creator").read_text().strip())
        latest = chain.block_number()
        while chain.block_number() == latest:  # just after a block: the next is ~2 s away
            time.sleep(0.02)
        nonce = chain.request("nonce", "eth_getTransactionCount", [sender.address, "pending"])
        tx = {
            "chainId": chain.chain_id, "nonce": int(nonce, 16), "to": sender.address,
            "value": 1, "data": b"", "gas": 21_000,
            "maxPriorityFeePerGas": 10**9, "maxFeePerGas": 100 * 10**9,
        }  # fmt: skip
        raw = "0x" + bytes(sender.sign_transaction(tx).raw_transaction).hex()
        tx_hash = chain.request("send", "eth_sendRawTransaction", [raw])
        assert chain.request("receipt", "eth_getTransactionReceipt", [tx_hash]) is None
        mined = chain.wait_for_receipt("receipt", tx_hash)
        assert int(mined["blockNumber"], 16) == latest + 2  # the block after the one seen
    finally:
        if chain is not None:
            chain.close()
        assert lilypad("network", "down", "--network", "blocks").returncode == 0


@pytest.mark.parametrize("seconds", ["0", "-1", "61"])
def test_network_up_refuses_a_block_time_out_of_range(cli: CliRunner, seconds: str) -> None:
    result = cli("network", "up", "--network", "blocks", "--block-time", seconds)
    assert result.exit_code == 2
    assert f"--block-time {float(seconds):g} is out of range" in result.stderr
    assert "0.1 to 60" in result.stderr
