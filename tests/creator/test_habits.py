"""A Lilypad user's habits: its variables over the network profile (``WEB3_RPC_URL``,
``WEB3_CHAIN_ID``, ``SERVICE_SOLVER``, ``SERVICE_MEDIATORS``, ``IPFS_CONNECT``, ``DATA_DIR``), its
flags (``--web3-private-key``, ``run --target``, ``run -o/--output-dir``, ``-n``), through the real
``lilypad`` entry point and, for jobs, the real chain, solver, IPFS node and providers of
``tests/creator/conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer

from lilypad.cli import app
from lilypad.config import get_settings
from lilypad.creator import NoMatch, load_records
from lilypad.errors import ConfigError
from lilypad.network import (
    ENV_FIELDS,
    NetworkProfile,
    apply_environment,
    load_network,
    multiaddr_to_url,
    network_path,
    save_network,
)
from tests.conftest import CliResult, CliRunner
from tests.creator.conftest import Creator, cowsay
from tests.provider.conftest import World, wait_for

ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
RUN = ("run", "cowsay:v0.0.4", "-i", "Message=habits", "-n", "test", "--yes", "--verify", "never")


@pytest.fixture(autouse=True)
def no_lilypad_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own Lilypad variables must not leak into a test."""
    for name in (*ENV_FIELDS, "DATA_DIR", "WEB3_PRIVATE_KEY"):
        monkeypatch.delenv(name, raising=False)


def _said(result: CliResult) -> str:
    return " ".join(result.stderr.split())


def _plain_profile() -> NetworkProfile:
    profile = NetworkProfile(
        name="test",
        chain_id=31337,
        rpc_url="http://127.0.0.1:1",
        market="0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
        token="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        solver_url="http://127.0.0.1:1",
        ipfs_api_url="http://127.0.0.1:1",
        accounts={"mediator": OTHER, "mediator-b": OTHER},
    )
    save_network(profile)
    return profile


# ------------------------------------------------------------------------ the variables
@pytest.mark.parametrize(
    ("multiaddr", "url"),
    [
        ("/ip4/127.0.0.1/tcp/5001", "http://127.0.0.1:5001"),
        ("/ip4/10.0.0.2/tcp/5001/http", "http://10.0.0.2:5001"),
        ("/dns4/ipfs.example.org/tcp/443/https", "https://ipfs.example.org:443"),
        ("/dns/node-1.local/tcp/5001", "http://node-1.local:5001"),
        ("/ip6/::1/tcp/5001", "http://[::1]:5001"),
    ],
)
def test_an_ipfs_multiaddr_maps_to_the_kubo_rpc_url(multiaddr: str, url: str) -> None:
    assert multiaddr_to_url(multiaddr) == url


@pytest.mark.parametrize(
    ("multiaddr", "says"),
    [
        ("/ip4/127.0.0.1/udp/5001", "not a multiaddr of an HTTP API"),
        ("/ip4/127.0.0.1/tcp/5001/p2p/QmNode", "not a multiaddr of an HTTP API"),
        ("/ip4/127.0.0.1/tcp/5001/ws", "only /http or /https"),
        ("/ip4/127.0.0.1/tcp/70000", "use 1 to 65535"),
        ("/ip4/127.0.1/tcp/5001", "is not an ip4 address"),
        ("/ip6/127.0.0.1/tcp/5001", "is not an ip6 address"),
        ("/dns4/bad_host/tcp/5001", "is not a host name"),
        ("/unix/ipfs/tcp/1", "starts with /unix"),
        ("127.0.0.1:5001", "not a multiaddr of an HTTP API"),
    ],
)
def test_a_multiaddr_that_cannot_map_to_a_url_is_refused(multiaddr: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        multiaddr_to_url(multiaddr)
    assert "IPFS_CONNECT" in str(info.value)
    assert repr(multiaddr) in str(info.value)
    assert says in str(info.value)


def test_the_variables_override_the_profile_and_are_never_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _plain_profile()
    saved = network_path("test").read_text()
    env = {
        "WEB3_RPC_URL": "http://10.0.0.5:8545",
        "WEB3_CHAIN_ID": "1337",
        "SERVICE_SOLVER": ADDRESS.lower(),
        "SERVICE_MEDIATORS": f"{ADDRESS}, {OTHER}",
        "IPFS_CONNECT": "/ip4/10.0.0.6/tcp/5001",
    }
    profile = apply_environment(load_network("test", environ=False), env)
    assert profile.rpc_url == "http://10.0.0.5:8545"
    assert profile.chain_id == 1337
    assert profile.ipfs_api_url == "http://10.0.0.6:5001"
    # the profile's own mediators are replaced, not added to
    assert profile.accounts == {"solver": ADDRESS, "mediator": ADDRESS, "mediator-2": OTHER}
    assert profile.overrides == tuple(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_network("test").overrides == tuple(env)
    assert network_path("test").read_text() == saved  # reading applies them, never writes
    assert load_network("test", environ=False).rpc_url == "http://127.0.0.1:1"
    assert "overrides" not in profile.model_dump()  # what save_network writes


def test_an_empty_variable_leaves_the_profile_alone() -> None:
    profile = _plain_profile()
    assert apply_environment(profile, {"WEB3_RPC_URL": "", "WEB3_CHAIN_ID": " "}) == profile


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("WEB3_CHAIN_ID", "0x7a69", "positive whole number in decimal"),
        ("WEB3_CHAIN_ID", "0", "positive whole number"),
        ("WEB3_RPC_URL", "127.0.0.1:8545", "http(s):// or ws(s)://"),
        ("SERVICE_SOLVER", "0x1234", "not an Ethereum address"),
        ("SERVICE_MEDIATORS", f"{ADDRESS},,{OTHER}", "empty entry"),
        ("SERVICE_MEDIATORS", f"{ADDRESS},nope", "not an Ethereum address"),
        ("IPFS_CONNECT", "/ip4/127.0.0.1/udp/1", "multiaddr"),
    ],
)
def test_a_malformed_variable_is_exit_2_naming_it_and_what_it_takes(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    _plain_profile()
    monkeypatch.setenv(variable, value)
    result = cli(*RUN)
    assert result.exit_code == 2, result.stderr
    assert variable in _said(result)
    assert says in _said(result)


def test_lilypad_data_dir_wins_over_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", "/srv/lilypad")
    monkeypatch.delenv("LILYPAD_DATA_DIR")
    assert get_settings().data_dir == Path("/srv/lilypad")
    monkeypatch.setenv("LILYPAD_DATA_DIR", "/srv/mine")
    assert get_settings().data_dir == Path("/srv/mine")


def _commands(group: Any, path: str = "lilypad") -> list[tuple[str, Any]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{path} {name}", command))
        if hasattr(command, "commands"):
            found.extend(_commands(command, f"{path} {name}"))
    return found


def test_every_command_that_takes_network_takes_n() -> None:
    commands = _commands(typer.main.get_command(app))
    assert len(commands) > 20
    missing = [
        name
        for name, command in commands
        for param in command.params
        if "--network" in param.opts and "-n" not in param.opts
    ]
    assert missing == []


# ------------------------------------------------------------------------ the flags
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--target", "0x1234"), "--target '0x1234' is not an Ethereum address"),
        (("--target", ADDRESS, "--verify", "redundant"), "exclude each other"),
        (("--detach", "-o", "somewhere"), "--detach does not wait"),
        (("--sweep", "Message=a,b", "--target", ADDRESS), "for one job, not a sweep"),
    ],
)
def test_bad_flags_are_exit_2(cli: CliRunner, args: tuple[str, ...], says: str) -> None:
    _plain_profile()
    result = cli(*RUN, *args, "--web3-private-key", "11" * 32)
    assert result.exit_code == 2, result.stderr
    assert says in _said(result)


def test_output_dir_must_be_new_or_empty(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("mine")
    result = cli(*RUN, "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "is not an empty folder" in _said(result)
    assert (tmp_path / "old.txt").read_text() == "mine"


def test_a_key_on_the_command_line_is_never_echoed(cli: CliRunner, tmp_path: Path) -> None:
    bad = "zz" + "ab" * 31  # not hex: the error says so without the key
    _plain_profile()
    result = cli("--debug", *RUN, "--web3-private-key", bad)
    assert result.exit_code == 2, result.stderr
    assert "--web3-private-key does not hold a valid private key" in _said(result)
    assert "visible to other users" in _said(result)
    assert bad not in result.stderr + result.stdout
    key_file = tmp_path / "key"
    key_file.write_text("11" * 32)
    key_file.chmod(0o600)
    both = cli(*RUN, "--web3-private-key", "11" * 32, "--key-file", str(key_file))
    assert both.exit_code == 2
    assert "not both" in _said(both)
    assert "11" * 32 not in both.stderr + both.stdout


# ------------------------------------------------------------------------ on the network
def _world_profile(world: World, **changes: object) -> NetworkProfile:
    profile = world.profile().model_copy(update=changes)
    save_network(profile)
    return profile


def test_a_job_runs_with_lilypads_variables_key_flag_target_and_output_dir(
    creator: Creator, cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    world = creator.world
    first, target = world.net.providers[:2]
    world.provider(first)  # older, same price: the solver's choice without --target
    world.provider(target)
    # the file points nowhere; the variables point at the real chain and IPFS node
    _world_profile(world, rpc_url="http://127.0.0.1:1", ipfs_api_url="http://127.0.0.1:1")
    port = world.ipfs.api_url.rsplit(":", 1)[1].rstrip("/")
    monkeypatch.setenv("WEB3_RPC_URL", world.net.anvil.rpc_url)
    monkeypatch.setenv("WEB3_CHAIN_ID", str(world.net.chain.chain_id))
    monkeypatch.setenv("IPFS_CONNECT", f"/ip4/127.0.0.1/tcp/{port}")
    key = creator.account.key.hex()
    out = tmp_path / "result"

    result = cli(
        *RUN,
        "--web3-private-key",
        key,
        "--target",
        target.address.lower(),
        "-o",
        str(out),
        "--json",
    )

    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["state"] == "accepted"
    assert record["provider"] == target.address
    assert record["target"] == target.address  # kept: `jobs wait` checks it too
    assert "< habits >" in (out / "outputs" / "cowsay.txt").read_text()
    assert (out / "outputs" / "cowsay.txt").read_bytes() == (
        Path(record["output_dir"]) / "outputs" / "cowsay.txt"
    ).read_bytes()
    assert record["copied_to"] == str(out)
    said = _said(result)
    assert said.count("from the environment") == 1
    assert "WEB3_RPC_URL (rpc_url), WEB3_CHAIN_ID (chain_id), IPFS_CONNECT (ipfs_api_url)" in said
    assert "visible to other users" in said
    # the key is in no output, no record, and nowhere in what the providers kept or ran
    bare = key.removeprefix("0x")
    assert bare not in result.stdout + result.stderr
    stores = [Path(load_records()[0].output_dir or ""), world.tmp, out]
    for folder in stores:
        for path in folder.rglob("*"):
            if path.is_file():
                assert bare.encode() not in path.read_bytes(), path
    for path in (Path.home() / "data").rglob("*"):
        if path.is_file():
            assert bare.encode() not in path.read_bytes(), path


def test_a_chain_id_variable_that_disagrees_with_the_chain_is_refused_before_signing(
    creator: Creator, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = creator.world
    world.provider(world.net.providers[0])
    _world_profile(world)
    monkeypatch.setenv("WEB3_PRIVATE_KEY", creator.account.key.hex())
    monkeypatch.setenv("WEB3_CHAIN_ID", "1")
    result = cli(*RUN)
    assert result.exit_code == 2, result.stderr
    assert f"WEB3_CHAIN_ID 1 disagrees with the node at {world.net.anvil.rpc_url}" in _said(result)
    assert f"chain {world.net.chain.chain_id}" in _said(result)
    assert load_records() == []  # no offer was signed, let alone posted


def test_a_target_with_no_open_offer_expires_naming_the_target(creator: Creator) -> None:
    world = creator.world
    world.provider(world.net.providers[0])  # serves the module, but is not the target
    absent = world.net.providers[2].address
    job = creator.start(cowsay("only you"), target=absent, expires_in_s=60)

    wait_for(lambda: creator.saw("posted") or None, 30)
    world.advance(120)  # past the offer's expiry on chain
    with pytest.raises(NoMatch) as info:
        job.result()
    assert f"provider {absent} (--target)" in str(info.value)
    assert not creator.saw("deal")


@pytest.mark.parametrize(
    "command",
    [
        ("solver", "--network", "test"),
        ("resource-provider", "--network", "test"),
        ("mediator", "--network", "test"),
        ("jobcreator", "--network", "test"),
        ("chain", "deploy", "--rpc-url", "http://127.0.0.1:9"),
        ("chain", "register", "solver", "0x" + "11" * 20, "--network", "test"),
    ],
    ids=lambda words: " ".join(words[:2]),
)
def test_every_signing_command_takes_the_key_flag_and_never_echoes_it(
    cli: CliRunner, command: tuple[str, ...]
) -> None:
    bad = "zz" + "cd" * 31  # not hex: refused before anything connects or signs
    _plain_profile()
    result = cli(*command, "--web3-private-key", bad)
    assert result.exit_code == 2, result.stderr
    said = _said(result)
    assert "--web3-private-key does not hold a valid private key" in said
    assert "visible to other users" in said
    assert bad not in result.stderr + result.stdout
