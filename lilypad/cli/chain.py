"""``lilypad chain``: run a local chain, deploy the contracts, show a network's chain state."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from lilypad.cli import keyopt
from lilypad.cli.keyopt import WEB3_KEY_OPTION
from lilypad.cli.output import console, emit, note
from lilypad.errors import ConfigError, UnknownNetwork

if TYPE_CHECKING:  # the chain libraries take seconds to import: only commands that use them do
    from lilypad.chain import Deployment
    from lilypad.chain.anvil import Anvil
    from lilypad.network import NetworkProfile

app = typer.Typer(
    help="Run a local chain, deploy the contracts, inspect a network.", no_args_is_help=True
)

#: Roles of anvil's pre-funded development accounts on a local network, by account index.
DEV_ROLES = {"owner": 0, "solver": 1, "mediator": 2, "provider": 3, "job_creator": 4}


def _network_option(default: str = "local") -> Any:
    return typer.Option(default, "--network", "-n", help="The network profile to write or read.")


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print as JSON.")


@app.command()
def up(
    port: int = typer.Option(8545, "--port", "-p", min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on, and the one the profile names: e.g. the docker bridge's, "
        "for node containers, or a LAN address.",
    ),
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Leave anvil running in the background."
    ),
    network: str = _network_option(),
    json_output: bool = _json_option(),
) -> None:
    """Start a local anvil chain, deploy the contracts and write the network profile.

    Anvil's ten pre-funded test accounts get roles (owner, solver, mediator, provider,
    job_creator...) and 1,000,000 LP each; the solver and mediator are registered.
    """
    from lilypad.chain.anvil import Anvil, port_in_use
    from lilypad.localnet import check_host

    check_host(host)
    if port_in_use(port, host):
        raise ConfigError(f"port {port} on {host} is already in use; pick another with --port")
    node = Anvil(port, host=host).start(detach=detach)
    try:
        profile = _deploy_dev(node, network)
    except BaseException:
        node.stop()
        raise
    data = _summary(profile) | {"pid": node.pid}
    if detach:
        _pid_file(network).write_text(str(data["pid"]))
    emit(data, json_output, lambda: _print_summary(profile, detach))
    if detach:
        return
    try:
        while node.process is not None and node.process.poll() is None:  # until anvil or Ctrl-C
            time.sleep(0.5)
    except KeyboardInterrupt:
        note("stopping anvil")
    finally:
        node.stop()


@app.command()
def down(network: str = _network_option()) -> None:
    """Stop an anvil started with ``lilypad chain up --detach``."""
    pid_file = _pid_file(network)
    if not pid_file.is_file():
        raise ConfigError(f"no detached chain for network {network!r} ({pid_file} is missing)")
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        note(f"anvil (pid {pid}) had already stopped")
    pid_file.unlink()
    note(f"stopped the chain of network {network!r}")


@app.command("deploy")
def deploy_cmd(
    rpc_url: str = typer.Option(..., "--rpc-url", help="JSON-RPC URL of any EVM chain."),
    network: str = _network_option("default"),
    token: str = typer.Option(
        None, "--token", help="Settle in this ERC-20 instead of a new LilypadToken."
    ),
    challenge_window: int = typer.Option(
        3600, min=1, max=2**32 - 1, help="Seconds to challenge a result."
    ),
    mediation_timeout: int = typer.Option(
        86400, min=1, max=2**32 - 1, help="Seconds a mediator has to rule."
    ),
    min_collateral: str = typer.Option(
        "1", "--min-collateral", help="The least collateral of any deal, in tokens (above 0)."
    ),
    collateral_multiple: int = typer.Option(
        10,
        "--collateral-multiple",
        min=0,
        max=2**32 - 1,
        help="A deal's collateral is at least this many times its price.",
    ),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="File with the deployer's private key (else $WEB3_PRIVATE_KEY)."
    ),
    web3_key: str | None = WEB3_KEY_OPTION,
    json_output: bool = _json_option(),
) -> None:
    """Deploy the contracts to any EVM chain and write the network profile.

    The deployer's private key comes from $WEB3_PRIVATE_KEY or --key-file (or, with a warning,
    --web3-private-key).
    """
    from lilypad.chain import Chain, deploy
    from lilypad.network import save_network
    from lilypad.units import parse_tokens

    least = parse_tokens(min_collateral, "--min-collateral")
    owner = keyopt.account(key_file, web3_key, "the deployer")
    chain = Chain(rpc_url)
    deployment = deploy(
        chain,
        owner,
        token=token,
        challenge_window=challenge_window,
        mediation_timeout=mediation_timeout,
        min_collateral=least,
        collateral_multiple=collateral_multiple,
    )
    profile = _profile(network, rpc_url, deployment, {"owner": owner.address})
    save_network(profile)
    emit(_summary(profile), json_output, lambda: _print_summary(profile, detach=False))


@app.command()
def register(
    role: str = typer.Argument(..., help="solver or mediator."),
    address: str = typer.Argument(..., help="The account to register (or remove)."),
    fee: str | None = typer.Option(
        None, "--fee", help="A mediator's fee per mediation, in tokens (e.g. 0.1)."
    ),
    remove: bool = typer.Option(False, "--remove", help="Take the role away instead."),
    network: str = _network_option(),
    key_file: Path | None = typer.Option(
        None,
        "--key-file",
        help="File with the market owner's private key (else $WEB3_PRIVATE_KEY).",
    ),
    web3_key: str | None = WEB3_KEY_OPTION,
    json_output: bool = _json_option(),
) -> None:
    """Register a solver or a mediator with the market (its owner signs), and name it in the
    network profile: `lilypad run` trusts the profile's mediators by default."""
    from lilypad.chain.crypto import is_address, to_checksum_address
    from lilypad.cli.provider import parse_amount
    from lilypad.errors import InputError
    from lilypad.network import connect, save_network

    if role not in ("solver", "mediator"):
        raise InputError(f"role {role!r} is not one of solver, mediator")
    if not is_address(address):
        raise InputError(f"{address!r} is not an Ethereum address (0x and 40 hex digits)")
    address = to_checksum_address(address)
    units = 0
    if role == "mediator" and not remove:
        if fee is None:
            raise InputError(
                "a mediator needs --fee TOKENS (what a job creator pays per challenge)"
            )
        units = parse_amount(fee, "--fee")
    elif fee is not None:
        raise InputError("--fee is for registering a mediator")
    owner = keyopt.account(key_file, web3_key, "the market owner")
    conn = connect(network)
    if role == "solver":
        tx = conn.market.set_solver(owner, address, active=not remove).tx_hash
    else:
        tx = conn.market.set_mediator(owner, address, units, active=not remove).tx_hash
    accounts = _with_role(conn.profile.accounts, role, address, remove=remove)
    save_network(conn.profile.model_copy(update={"accounts": accounts}))
    data = {"role": role, "address": address, "active": not remove, "fee": units, "tx": tx}
    done = "removed" if remove else "registered"
    emit(data, json_output, lambda: note(f"{done} {role} {address} on {network!r} (tx {tx})"))


def _with_role(
    accounts: dict[str, str], role: str, address: str, *, remove: bool
) -> dict[str, str]:
    """The profile's accounts with ``address`` named as ``role`` (``mediator-2``... when the role
    is taken), or without it."""
    named = [name for name, a in accounts.items() if name.startswith(role) and a == address]
    if remove:
        return {name: a for name, a in accounts.items() if name not in named}
    if named:
        return dict(accounts)
    name, n = role, 1
    while name in accounts:
        n += 1
        name = f"{role}-{n}"
    return accounts | {name: address}


@app.command()
def status(network: str = _network_option(), json_output: bool = _json_option()) -> None:
    """Show the chain of a network: its head, the contracts, and the balances of its accounts."""
    from lilypad.network import connect

    conn = connect(network, request_timeout=10)
    profile, chain, market, token = conn.profile, conn.chain, conn.market, conn.token
    market_address, token_address = market.address, token.address
    head = chain.block_number()
    contracts = {
        "token": token_address,
        "market": market_address,
        "job_creator": profile.job_creator,
    }
    accounts = [
        {
            "role": role,
            "address": address,
            "eth": chain.balance(address),
            "token": token.balance_of(address),
            "market": market.balance_of(address),
        }
        for role, address in profile.accounts.items()
    ]
    data = {
        "network": profile.name,
        "rpc_url": profile.rpc_url,
        "chain_id": chain.chain_id,
        "block": head,
        "contracts": {
            k: {"address": v, "deployed": v is not None and chain.has_code(v)}
            for k, v in contracts.items()
        },
        "escrow_and_deposits": token.balance_of(market_address),
        "rules": _rules(market),
        "accounts": accounts,
    }
    emit(data, json_output, lambda: _print_status(data))


def _rules(market: Any) -> dict[str, int]:
    """The market's settlement rules: windows, and what collateral a deal must carry."""
    window, mediation = market.windows()
    least, multiple = market.collateral_rule()
    return {
        "challenge_window_s": window,
        "mediation_timeout_s": mediation,
        "min_collateral": least,
        "collateral_multiple": multiple,
    }


def _deploy_dev(node: Anvil, network: str) -> NetworkProfile:
    from lilypad.chain import Chain, deploy, setup_dev_accounts
    from lilypad.network import save_network

    chain = Chain(node.rpc_url)
    accounts = node.accounts
    owner = accounts[DEV_ROLES["owner"]]
    deployment = deploy(chain, owner)
    roles: dict[str, str] = {role: accounts[i].address for role, i in DEV_ROLES.items()}
    setup_dev_accounts(
        chain,
        deployment,
        owner,
        solvers=[roles["solver"]],
        mediators=[roles["mediator"]],
        funded=[a.address for a in accounts],
    )
    profile = _profile(network, node.rpc_url, deployment, roles)
    save_network(profile)
    return profile


def _profile(
    name: str, rpc_url: str, deployment: Deployment, accounts: dict[str, str]
) -> NetworkProfile:
    """A new profile, keeping the service URLs of an existing one of the same name."""
    from lilypad.network import NetworkProfile, load_network

    try:
        # the file as it is: a variable such as IPFS_CONNECT must not be written into it
        old: dict[str, Any] = load_network(name, environ=False).model_dump()
    except UnknownNetwork:
        old = {}
    keep = {k: old.get(k) for k in ("solver_url", "ipfs_api_url", "gateway_url")}
    return NetworkProfile(
        name=name,
        chain_id=deployment.chain_id,
        rpc_url=rpc_url,
        token=deployment.token,
        market=deployment.market,
        job_creator=deployment.job_creator,
        deployed_block=deployment.block,
        accounts=accounts,
        **keep,
    )


def _summary(profile: NetworkProfile) -> dict[str, Any]:
    return profile.model_dump(mode="json")


def _print_summary(profile: NetworkProfile, detach: bool) -> None:
    console.print(f"network [bold]{profile.name}[/]: chain {profile.chain_id} at {profile.rpc_url}")
    console.print("contracts:")
    for label in ("token", "market", "job_creator"):
        console.print(f"  {label:<12} {getattr(profile, label)}")
    if profile.accounts:
        console.print("accounts:")
    for role, address in profile.accounts.items():
        console.print(f"  {role:<12} {address}")
    if detach:
        console.print(f"Stop it with: lilypad chain down --network {profile.name}")
    elif profile.accounts.get("solver"):
        console.print("Press Ctrl-C to stop the chain.")


def _print_status(data: dict[str, Any]) -> None:
    console.print(
        f"network [bold]{data['network']}[/]: chain {data['chain_id']} at {data['rpc_url']}, "
        f"block {data['block']}"
    )
    for name, info in data["contracts"].items():
        mark = "" if info["deployed"] else "  [red](no code)[/]"
        console.print(f"  {name:<12} {info['address']}{mark}")
    console.print(f"  held by the market (deposits + escrow): {_lp(data['escrow_and_deposits'])}")
    rules = data["rules"]
    console.print(
        f"  rules: challenge window {rules['challenge_window_s']} s, mediation "
        f"{rules['mediation_timeout_s']} s, collateral at least {_lp(rules['min_collateral'])} "
        f"LP and {rules['collateral_multiple']}x the price"
    )
    if data["accounts"]:
        table = Table("role", "address", "ETH", "LP wallet", "LP in market", box=None)
        for a in data["accounts"]:
            table.add_row(a["role"], a["address"], _lp(a["eth"]), _lp(a["token"]), _lp(a["market"]))
        console.print(table)


def _lp(wei: int) -> str:
    """An amount in tokens (or ether), exact: a float would round large balances."""
    from lilypad.units import format_tokens

    return format_tokens(wei)


def _pid_file(network: str) -> Path:
    from lilypad.network import config_dir

    return config_dir() / f"anvil-{network}.pid"
