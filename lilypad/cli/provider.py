"""``lilypad resource-provider``, ``lilypad mediator`` and ``lilypad jobcreator``: the node daemons.

Each reads a network profile (chain, market, solver, IPFS), signs with the key from
``--key-file`` or ``$WEB3_PRIVATE_KEY``, keeps its state under the data dir, logs plain lines
(or JSON with ``--log-json``) and runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from lilypad.cli.module_run import UNSAFE_NO_SANDBOX_OPTION, sandbox_for
from lilypad.cli.output import note
from lilypad.config import get_settings
from lilypad.errors import ConfigError, InputError
from lilypad.units import parse_tokens
from resource_provider.executors import ExecutorKind, Weights


def parse_amount(text: str, option: str) -> int:
    """``"0.5"`` tokens -> wei, 0 allowed (:func:`lilypad.units.parse_tokens`)."""
    return parse_tokens(text, option, allow_zero=True)


def parse_listen(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0: any free port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InputError(f"{option} {text!r} is not HOST:PORT, e.g. 127.0.0.1:9100")
    return host, int(port)


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


if TYPE_CHECKING:  # web3 and eth_account take seconds to import: only the commands do
    from lilypad.network import NetworkProfile


def _require(profile: NetworkProfile, field: str, what: str) -> str:
    value = getattr(profile, field)
    if not value:
        raise ConfigError(
            f"network {profile.name!r} has no {field} ({what})",
            hint=f'add {field} = "..." to the profile (lilypad chain status -n {profile.name})',
        )
    return str(value)


def _mediators(text: str | None, profile: NetworkProfile) -> tuple[str, ...]:
    from eth_utils.address import is_address, to_checksum_address

    names = split_list(text) or (
        [profile.accounts["mediator"]] if "mediator" in profile.accounts else []
    )
    if not names:
        raise ConfigError(
            "no mediator to trust: pass --mediators 0x...,0x...",
            hint=f"or name one under [accounts] mediator = ... in the {profile.name!r} profile",
        )
    for name in names:
        if not is_address(name):
            raise InputError(f"--mediators: {name!r} is not an Ethereum address")
    return tuple(to_checksum_address(n) for n in names)


def _modules(text: str | None) -> tuple[str, ...]:
    from lilypad.modules.sources import builtin_names
    from resource_provider.runner import served_modules

    refs = split_list(text) or builtin_names()
    return tuple(sorted(served_modules(refs)))


def _executor_for(values: list[str] | None) -> dict[str, ExecutorKind]:
    """``["sdxl:v0.9-lilypad1=process"]`` -> ``{"sdxl:v0.9-lilypad1": ExecutorKind.PROCESS}``."""
    kinds = ", ".join(k.value for k in ExecutorKind)
    routes: dict[str, ExecutorKind] = {}
    for value in values or []:
        module, _, kind = value.rpartition("=")
        name, _, version = module.partition(":")
        if not name or not version:
            raise InputError(
                f"--executor-for {value!r} is not MODULE:VERSION=KIND, "
                "e.g. sdxl:v0.9-lilypad1=process"
            )
        if kind not in {k.value for k in ExecutorKind}:
            raise InputError(f"--executor-for {value!r}: executor {kind!r} is not one of {kinds}")
        routes[module] = ExecutorKind(kind)
    return routes


def _gpus(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit():
        raise InputError(f"--gpus {text!r} must be 'auto' or a number of GPUs, e.g. 1")
    return int(text)


def _emulated(hardware: Any, weights: Weights, served: tuple[str, ...]) -> Any:
    """The detected machine, raised to what every served module needs (dev networks with tiny
    weights: a small machine stands in for a GPU box)."""
    import dataclasses
    import math

    from lilypad import modules
    from resource_provider.machine import Gpu

    if weights is not Weights.TINY:
        raise InputError("--emulate-machine needs --weights tiny: real weights need a real GPU")
    needs = [modules.resolve(ref).spec.machine for ref in served]
    vram_mb = max((math.ceil(n.vram_gb * 1024) for n in needs), default=0)
    gpus = hardware.gpus
    if any(n.gpus for n in needs) and not gpus:
        gpus = (Gpu(model="emulated: tiny weights on the CPU", vram_mb=vram_mb),)
    note(
        "emulating the machine the served modules need: GPU modules run on the CPU with tiny "
        "weights (dev networks only)"
    )
    return dataclasses.replace(
        hardware,
        gpus=gpus,
        cpus=max(hardware.cpus, math.ceil(max((n.cpus for n in needs), default=0))),
        ram_mb=max(hardware.ram_mb, math.ceil(max((n.ram_gb for n in needs), default=0) * 1024)),
        disk_mb=max(hardware.disk_mb, math.ceil(max((n.disk_gb for n in needs), default=0) * 1024)),
    )


def _run_until_signal(daemon: Any) -> None:
    """Run ``daemon`` until Ctrl-C or SIGTERM, then stop it cleanly."""

    def _terminate(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    daemon.start()
    try:
        daemon.wait()
    except KeyboardInterrupt:
        note("stopping")
    finally:
        daemon.stop()
        signal.signal(signal.SIGTERM, previous)


NETWORK_OPTION = typer.Option("local", "--network", "-n", help="Network profile to serve.")
KEY_OPTION = typer.Option(
    None, "--key-file", help="File with this node's private key (else $WEB3_PRIVATE_KEY)."
)
LOG_JSON_OPTION = typer.Option(False, "--log-json", help="Log one JSON object per line.")
DATA_DIR_OPTION = typer.Option(
    None, "--data-dir", help="Where state and results live (default: <LILYPAD_DATA_DIR>/<role>)."
)
EXECUTOR_OPTION = typer.Option(
    None,
    "--executor",
    envvar="LILYPAD_EXECUTOR",
    help="docker or process; default: docker when a Docker Engine answers, else process.",
    show_default=False,
)
EXECUTOR_FOR_OPTION = typer.Option(
    None,
    "--executor-for",
    help="MODULE:VERSION=KIND: run that module with another executor than --executor, e.g. "
    "sdxl:v0.9-lilypad1=process where its image is not built (repeatable).",
    show_default=False,
)
WEIGHTS_OPTION = typer.Option(
    Weights.REAL, "--weights", envvar="LILYPAD_WEIGHTS", help="real or tiny (tests) weights."
)
METRICS_OPTION = typer.Option(
    "127.0.0.1:9100", "--metrics", help="HOST:PORT serving /metrics (port 0: any free port)."
)


def resource_provider(
    network: str = NETWORK_OPTION,
    executor: ExecutorKind | None = EXECUTOR_OPTION,
    executor_for: list[str] | None = EXECUTOR_FOR_OPTION,
    weights: Weights = WEIGHTS_OPTION,
    gpus: str = typer.Option("auto", "--gpus", help="GPUs to offer: auto (detect) or a number."),
    emulate_machine: bool = typer.Option(
        False,
        "--emulate-machine",
        help="Dev networks, with --weights tiny only: offer the machine the served modules need "
        "(GPU, VRAM, CPUs, RAM, disk) even where this one is smaller; the ML modules then run "
        "on the CPU with tiny weights.",
    ),
    max_concurrent: int = typer.Option(
        1, "--max-concurrent", min=1, max=256, help="Jobs run at once (one offer per free slot)."
    ),
    price: str = typer.Option("1", "--price", help="Price per job, in tokens."),
    collateral: str = typer.Option(
        "auto",
        "--collateral",
        help="Collateral per job, in tokens; auto: the least the market takes at --price "
        "(its minimum collateral, or its collateral multiple times the price).",
    ),
    modules: str | None = typer.Option(
        None, "--modules", help="Comma-separated modules to serve (default: every built-in)."
    ),
    mediators: str | None = typer.Option(
        None, "--mediators", help="Comma-separated mediators to trust (default: the profile's)."
    ),
    data_dir: Path | None = DATA_DIR_OPTION,
    key_file: Path | None = KEY_OPTION,
    metrics: str = METRICS_OPTION,
    offer_ttl: int = typer.Option(
        600, "--offer-ttl", min=30, help="Seconds an offer stays valid before a fresh one."
    ),
    submit_margin: int = typer.Option(
        30,
        "--submit-margin",
        min=0,
        help="Seconds kept after a module's timeout to add the result and submit it; a deal "
        "leaving less is refused.",
    ),
    deposit: bool = typer.Option(
        True,
        "--deposit/--no-deposit",
        help="At start, deposit from the wallet what the collateral of every slot needs.",
    ),
    unsafe_no_sandbox: bool = UNSAFE_NO_SANDBOX_OPTION,
    log_json: bool = LOG_JSON_OPTION,
) -> None:
    """Offer this machine to the market: run the deals it gets, submit results, get paid."""
    from lilypad.chain.client import Chain
    from lilypad.chain.market import JobMarketClient
    from lilypad.keys import load_account
    from lilypad.network import load_network
    from lilypad.storage import open_storage
    from resource_provider import logs
    from resource_provider.daemon import ProviderConfig, ResourceProvider
    from resource_provider.executors import create_executor
    from resource_provider.machine import detect
    from resource_provider.metrics import Metrics, MetricsServer
    from resource_provider.solver_client import SolverClient

    routes = _executor_for(executor_for)  # bad input stops here, before any I/O
    profile = load_network(network)
    market_address, _ = profile.require_contracts()
    solver_url = _require(profile, "solver_url", "the solver's URL")
    metrics_host, metrics_port = parse_listen(metrics, "--metrics")
    units = parse_amount(price, "--price")
    # auto is read from the market once its client exists (below); 0 stands in until then
    stake = 0 if collateral == "auto" else parse_amount(collateral, "--collateral")
    config = ProviderConfig(
        modules=_modules(modules),
        price=units,
        collateral=stake,
        mediators=_mediators(mediators, profile),
        max_concurrent=max_concurrent,
        weights=weights,
        gpus=_gpus(gpus),
        offer_ttl_s=offer_ttl,
        start_block=profile.deployed_block,
        submit_margin_s=submit_margin,
        auto_deposit=deposit,
    )
    account = load_account(key_file, role="the resource provider")
    logs.configure(json_lines=log_json, secrets=[account.key.hex()])
    state_dir = data_dir or get_settings().data_dir / "provider" / network / account.address
    hardware = detect(state_dir)
    if emulate_machine:
        hardware = _emulated(hardware, weights, config.modules)
    selection = create_executor(executor, sandbox=sandbox_for(unsafe_no_sandbox), by_module=routes)
    counters = Metrics()
    server = MetricsServer(counters, metrics_host, metrics_port)
    note(f"executor: {selection.executor.describe()}; metrics on {server.url}")
    market = JobMarketClient(Chain(profile.rpc_url), market_address)
    if collateral == "auto":
        config = replace(config, collateral=market.required_collateral(units))
    daemon = ResourceProvider(
        account=account,
        market=market,
        solver=SolverClient(solver_url),
        storage=open_storage(api=profile.ipfs_api_url),
        executor=selection.executor,
        hardware=hardware,
        state_dir=state_dir,
        config=config,
        metrics=counters,
    )
    try:
        _run_until_signal(daemon)
    finally:
        server.stop()
        selection.executor.close()


def mediator(
    network: str = NETWORK_OPTION,
    executor: ExecutorKind | None = EXECUTOR_OPTION,
    executor_for: list[str] | None = EXECUTOR_FOR_OPTION,
    weights: Weights = WEIGHTS_OPTION,
    data_dir: Path | None = DATA_DIR_OPTION,
    key_file: Path | None = KEY_OPTION,
    metrics: str = typer.Option(
        "127.0.0.1:9101", "--metrics", help="HOST:PORT serving /metrics (port 0: any free port)."
    ),
    unsafe_no_sandbox: bool = UNSAFE_NO_SANDBOX_OPTION,
    log_json: bool = LOG_JSON_OPTION,
) -> None:
    """Re-run challenged deals that name this mediator and rule on chain."""
    from lilypad.chain.client import Chain
    from lilypad.chain.market import JobMarketClient
    from lilypad.keys import load_account
    from lilypad.network import load_network
    from lilypad.storage import open_storage
    from resource_provider import logs
    from resource_provider.executors import create_executor
    from resource_provider.mediator import Mediator
    from resource_provider.metrics import Metrics, MetricsServer
    from resource_provider.solver_client import SolverClient

    routes = _executor_for(executor_for)  # bad input stops here, before any I/O
    profile = load_network(network)
    market_address, _ = profile.require_contracts()
    solver_url = _require(profile, "solver_url", "the solver's URL, where job specs are")
    metrics_host, metrics_port = parse_listen(metrics, "--metrics")
    account = load_account(key_file, role="the mediator")
    logs.configure(json_lines=log_json, secrets=[account.key.hex()])
    market = JobMarketClient(Chain(profile.rpc_url), market_address)
    active, fee = market.mediator(account.address)
    if not active:
        raise ConfigError(
            f"{account.address} is not a registered mediator of the market {market_address}",
            hint="the market owner registers mediators (lilypad chain up does it for dev accounts)",
        )
    selection = create_executor(executor, sandbox=sandbox_for(unsafe_no_sandbox), by_module=routes)
    counters = Metrics()
    server = MetricsServer(counters, metrics_host, metrics_port)
    note(f"mediator {account.address} (fee {fee}); executor: {selection.executor.describe()}")
    daemon = Mediator(
        account=account,
        market=market,
        solver=SolverClient(solver_url),
        storage=open_storage(api=profile.ipfs_api_url),
        executor=selection.executor,
        state_dir=data_dir or get_settings().data_dir / "mediator" / network / account.address,
        weights=weights,
        start_block=profile.deployed_block,
        metrics=counters,
    )
    try:
        _run_until_signal(daemon)
    finally:
        server.stop()
        selection.executor.close()


#: The policies ``lilypad jobcreator --verify`` takes (a contract job is one deal: no redundant).
BRIDGE_VERIFY = ("audit", "always", "never")


def jobcreator(
    network: str = NETWORK_OPTION,
    modules: str | None = typer.Option(
        None,
        "--modules",
        help="Comma-separated modules contract jobs may name (default: every built-in); any "
        "other module string cancels the job, unrendered.",
    ),
    verify: str = typer.Option(
        "audit",
        "--verify",
        help="audit: challenge results at random, at the odds each deal's collateral calls for; "
        "always; or never.",
    ),
    mediators: str | None = typer.Option(
        None, "--mediators", help="Comma-separated mediators job offers trust (default: profile's)."
    ),
    offer_ttl: int = typer.Option(
        600, "--offer-ttl", min=30, help="Seconds a job waits for a provider before it is refunded."
    ),
    data_dir: Path | None = DATA_DIR_OPTION,
    key_file: Path | None = KEY_OPTION,
    log_json: bool = LOG_JSON_OPTION,
) -> None:
    """Bridge the JobCreator contract: run contract-submitted jobs and call the clients back."""
    from lilypad.chain.client import Chain
    from lilypad.chain.job_creator import JobCreatorClient
    from lilypad.chain.market import JobMarketClient
    from lilypad.keys import load_account
    from lilypad.network import load_network
    from lilypad.verification import Verify
    from resource_provider import logs
    from resource_provider.bridge import BridgeConfig, JobCreatorBridge
    from resource_provider.solver_client import SolverClient

    if verify not in BRIDGE_VERIFY:
        raise InputError(f"--verify {verify!r} is not one of {', '.join(BRIDGE_VERIFY)}")
    served = _modules(modules)  # bad input stops here, before any I/O
    profile = load_network(network)
    market_address, _ = profile.require_contracts()
    job_creator_address = _require(profile, "job_creator", "the JobCreator contract")
    solver_url = _require(profile, "solver_url", "the solver's URL")
    account = load_account(key_file, role="the job-creator bridge")
    logs.configure(json_lines=log_json, secrets=[account.key.hex()])
    chain = Chain(profile.rpc_url)
    job_creator = JobCreatorClient(chain, job_creator_address)
    bridge_address = job_creator.bridge()
    if bridge_address != account.address:
        raise ConfigError(
            f"{account.address} is not the bridge of JobCreator {job_creator_address} "
            f"(that is {bridge_address})",
            hint="run with the bridge's key, or have the owner call setBridge",
        )
    daemon = JobCreatorBridge(
        account=account,
        market=JobMarketClient(chain, market_address),
        job_creator=job_creator,
        solver=SolverClient(solver_url),
        state_dir=data_dir or get_settings().data_dir / "bridge" / network / account.address,
        config=BridgeConfig(
            modules=served,
            mediators=_mediators(mediators, profile),
            verify=Verify(verify),
            offer_ttl_s=offer_ttl,
            start_block=profile.deployed_block,
        ),
    )
    note(
        f"bridge {account.address} for JobCreator {job_creator_address}: serving "
        f"{', '.join(served)}; verify {verify}"
    )
    _run_until_signal(daemon)
