"""``lilypad solver``: run the matching service of a network."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from lilypad.cli import keyopt
from lilypad.cli.keyopt import WEB3_KEY_OPTION
from lilypad.cli.output import note
from lilypad.config import get_settings
from lilypad.errors import ConfigError
from lilypad.net import parse_host_port


def solver(
    network: str = typer.Option("local", "--network", "-n", help="Network profile to serve."),
    db: str | None = typer.Option(
        None,
        "--db",
        help="SQLAlchemy URL; default sqlite:///<data dir>/solver/<network>.db. "
        "PostgreSQL: postgresql+psycopg://user:password@host/dbname",
    ),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT to serve on."),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="File with the solver's private key (else $WEB3_PRIVATE_KEY)."
    ),
    web3_key: str | None = WEB3_KEY_OPTION,
    confirmations: int = typer.Option(
        0, "--confirmations", min=0, help="Blocks to wait before acting on a chain event."
    ),
    rate: float = typer.Option(
        5.0, "--rate", min=0.001, help="Offers per second per signer, on average."
    ),
    burst: int = typer.Option(50, "--burst", min=1, help="Offers a signer may send at once."),
    poll_interval: float = typer.Option(
        0.5,
        "--poll-interval",
        min=0.05,
        max=60,
        help="Seconds between reads of the chain's new events (a result on chain is seen this "
        "late at most); lower on a local chain, about the block time on a public one.",
    ),
    any_module_source: bool = typer.Option(
        False,
        "--any-module-source",
        help="Dev networks: also take jobs for modules in local folders and local git "
        "repositories. Off by default: a job offer could then make the solver read paths on its "
        "host; only built-in modules and https git repositories are taken.",
    ),
) -> None:
    """Run the solver: take signed offers, match them, create deals on chain, stream events."""
    from lilypad.chain.client import Chain
    from lilypad.chain.market import JobMarketClient
    from lilypad.network import load_network
    from solver.app import create_app, limit_malloc_arenas, serve
    from solver.service import Solver, SolverConfig
    from solver.store import Store

    limit_malloc_arenas()  # before any thread starts

    host, port = parse_host_port(listen, "--listen", any_port=False)
    profile = load_network(network)
    market_address, _ = profile.require_contracts()
    account = keyopt.account(key_file, web3_key, "the solver")
    if db is None:
        folder = get_settings().data_dir / "solver"
        folder.mkdir(parents=True, exist_ok=True)
        db = f"sqlite:///{folder / f'{network}.db'}"
    market = JobMarketClient(Chain(profile.rpc_url), market_address)
    if not market.is_solver(account.address):
        raise ConfigError(
            f"{account.address} is not a registered solver of the market {market_address}",
            hint="the market owner registers solvers (lilypad chain up does it for dev accounts)",
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = SolverConfig(
        confirmations=confirmations,
        start_block=profile.deployed_block,
        rate=rate,
        burst=burst,
        poll_interval=poll_interval,
        any_module_source=any_module_source,
    )
    service = Solver(Store(db), market, account, config)
    service.start()
    note(f"solver {account.address} for network {network!r} on http://{listen}")
    try:
        # serve() ends the event streams at shutdown: uvicorn alone waits for each to close
        serve(create_app(service), host, port)
    finally:
        service.stop()
        service.store.close()
