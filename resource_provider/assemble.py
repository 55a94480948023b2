"""Building the node daemons — provider, mediator, job-creator bridge — from a network profile.

The CLI parses its options into the values below and prints; everything a daemon needs beyond
them (the chain and its contracts, the solver client, storage, the executor, the metrics server,
the checks that the account may play its role) is built here, in one place per role. Each
function returns a :class:`Node`: the daemon, what to tell the operator, and what to close once
it has stopped. On a failure, whatever was already built is closed before the error goes on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lilypad.errors import ConfigError, InputError
from resource_provider.executors import ExecutorKind, Sandbox, Selection, WarmConfig, Weights
from resource_provider.machine import Hardware
from resource_provider.metrics import Metrics, MetricsServer

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from lilypad.network import NetworkProfile
    from resource_provider.bridge import BridgeConfig
    from resource_provider.daemon import ProviderConfig


class Daemon(Protocol):
    """What every node daemon offers its runner."""

    def start(self) -> None: ...

    def wait(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Executors:
    """How jobs are run: ``--executor``, ``--executor-for`` and ``--unsafe-no-sandbox``."""

    kind: ExecutorKind | None = None
    by_module: Mapping[str, ExecutorKind] = field(default_factory=dict)
    sandbox: Sandbox = Sandbox.BWRAP
    warm: WarmConfig | None = None  # --warm, --warm-idle (the process executor's workers)


@dataclass
class Node:
    """A daemon ready to start, the lines to tell the operator, and what to close after it."""

    daemon: Daemon
    notes: list[str]
    _cleanup: ExitStack

    def close(self) -> None:
        """Close what was built around the daemon (metrics server, executor); call after stop."""
        self._cleanup.close()


def require(profile: NetworkProfile, name: str, what: str) -> str:
    """The profile's ``name`` setting, which this role cannot do without.

    Raises:
        ConfigError: The profile has none; the hint says how to add it.
    """
    value = getattr(profile, name)
    if not value:
        raise ConfigError(
            f"network {profile.name!r} has no {name} ({what})",
            hint=f'add {name} = "..." to the profile (lilypad chain status -n {profile.name})',
        )
    return str(value)


def provider(
    profile: NetworkProfile,
    account: LocalAccount,
    config: ProviderConfig,
    *,
    state_dir: Path,
    executors: Executors,
    metrics: tuple[str, int],
    auto_collateral: bool = False,
    emulate_machine: bool = False,
) -> Node:
    """The resource-provider daemon of ``account`` on ``profile``'s network.

    Args:
        config: The offers and timing; its ``collateral`` is replaced by the market's minimum at
            its price when ``auto_collateral``.
        state_dir: Where the provider's state and results live.
        executors: How jobs are run.
        metrics: Host and port serving ``/metrics`` (port 0: any free port).
        emulate_machine: Offer the machine the served modules need (tiny weights only).

    Raises:
        ConfigError: The profile lacks the contracts or the solver's URL.
        InputError: ``emulate_machine`` without tiny weights.
    """
    from lilypad.chain.client import Chain
    from lilypad.chain.market import JobMarketClient
    from lilypad.solver_api import SolverClient
    from lilypad.storage import open_storage
    from resource_provider.daemon import ResourceProvider
    from resource_provider.machine import detect

    market_address, _ = profile.require_contracts()
    solver_url = require(profile, "solver_url", "the solver's URL")
    notes: list[str] = []
    hardware = detect(state_dir)
    if emulate_machine:
        hardware = emulated(hardware, config.weights, config.modules)
        notes.append(
            "emulating the machine the served modules need: GPU modules run on the CPU with "
            "tiny weights (dev networks only)"
        )
    with _building() as cleanup:
        selection = _executor(executors, cleanup)
        counters, server = _metrics(metrics, cleanup)
        selection.executor.use_metrics(counters)  # warm hits, loads and evictions
        notes.append(f"executor: {selection.executor.describe()}; metrics on {server.url}")
        market = JobMarketClient(Chain(profile.rpc_url), market_address)
        if auto_collateral:
            config = replace(config, collateral=market.required_collateral(config.price))
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
    return Node(daemon, notes, cleanup)


def mediator(
    profile: NetworkProfile,
    account: LocalAccount,
    *,
    state_dir: Path,
    executors: Executors,
    weights: Weights,
    metrics: tuple[str, int],
) -> Node:
    """The mediator daemon of ``account``, which must be a registered mediator of the market.

    Raises:
        ConfigError: The profile lacks the contracts or the solver's URL, or ``account`` is not
            a registered mediator.
    """
    from lilypad.chain.client import Chain
    from lilypad.chain.market import JobMarketClient
    from lilypad.solver_api import SolverClient
    from lilypad.storage import open_storage
    from resource_provider.mediator import Mediator

    market_address, _ = profile.require_contracts()
    solver_url = require(profile, "solver_url", "the solver's URL, where job specs are")
    market = JobMarketClient(Chain(profile.rpc_url), market_address)
    active, fee = market.mediator(account.address)
    if not active:
        raise ConfigError(
            f"{account.address} is not a registered mediator of the market {market_address}",
            hint="the market owner registers mediators (lilypad chain up does it for dev accounts)",
        )
    with _building() as cleanup:
        selection = _executor(executors, cleanup)
        counters, _server = _metrics(metrics, cleanup)
        daemon = Mediator(
            account=account,
            market=market,
            solver=SolverClient(solver_url),
            storage=open_storage(api=profile.ipfs_api_url),
            executor=selection.executor,
            state_dir=state_dir,
            weights=weights,
            start_block=profile.deployed_block,
            metrics=counters,
        )
    note = f"mediator {account.address} (fee {fee}); executor: {selection.executor.describe()}"
    return Node(daemon, [note], cleanup)


def bridge(
    profile: NetworkProfile,
    account: LocalAccount,
    config: BridgeConfig,
    *,
    state_dir: Path,
) -> Node:
    """The job-creator bridge of ``account``, which must be the JobCreator contract's bridge.

    Raises:
        ConfigError: The profile lacks the contracts, the JobCreator or the solver's URL, or
            ``account`` is not the contract's bridge.
    """
    from lilypad.chain.client import Chain
    from lilypad.chain.job_creator import JobCreatorClient
    from lilypad.chain.market import JobMarketClient
    from lilypad.solver_api import SolverClient
    from lilypad.storage import open_storage
    from resource_provider.bridge import JobCreatorBridge

    market_address, _ = profile.require_contracts()
    job_creator_address = require(profile, "job_creator", "the JobCreator contract")
    solver_url = require(profile, "solver_url", "the solver's URL")
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
        # where contract jobs' file inputs are checked before an offer is signed
        storage=open_storage(
            api=profile.ipfs_api_url,
            gateway=None if profile.ipfs_api_url else profile.gateway_url,
        ),
        state_dir=state_dir,
        config=config,
    )
    note = (
        f"bridge {account.address} for JobCreator {job_creator_address}: serving "
        f"{', '.join(config.modules)}; verify {config.verify.value}"
    )
    return Node(daemon, [note], ExitStack())


def emulated(hardware: Hardware, weights: Weights, served: tuple[str, ...]) -> Hardware:
    """The detected machine, raised to what every served module needs (dev networks with tiny
    weights: a small machine stands in for a GPU box).

    Raises:
        InputError: ``weights`` are not tiny (real weights need a real GPU).
    """
    from lilypad import modules
    from resource_provider.machine import Gpu

    if weights is not Weights.TINY:
        raise InputError("--emulate-machine needs --weights tiny: real weights need a real GPU")
    needs = [modules.resolve(ref).spec.machine for ref in served]
    vram_mb = max((math.ceil(n.vram_gb * 1024) for n in needs), default=0)
    gpus = hardware.gpus
    if any(n.gpus for n in needs) and not gpus:
        gpus = (Gpu(model="emulated: tiny weights on the CPU", vram_mb=vram_mb),)
    return dataclasses.replace(
        hardware,
        gpus=gpus,
        cpus=max(hardware.cpus, math.ceil(max((n.cpus for n in needs), default=0))),
        ram_mb=max(hardware.ram_mb, math.ceil(max((n.ram_gb for n in needs), default=0) * 1024)),
        disk_mb=max(hardware.disk_mb, math.ceil(max((n.disk_gb for n in needs), default=0) * 1024)),
    )


@contextmanager
def _building() -> Iterator[ExitStack]:
    """An exit stack that is closed only if building fails (else the :class:`Node` owns it)."""
    stack = ExitStack()
    try:
        yield stack
    except BaseException:
        stack.close()
        raise


def _executor(executors: Executors, cleanup: ExitStack) -> Selection:
    from resource_provider.executors import create_executor

    selection = create_executor(
        executors.kind,
        sandbox=executors.sandbox,
        by_module=executors.by_module,
        warm=executors.warm,
    )
    cleanup.callback(selection.executor.close)
    return selection


def _metrics(address: tuple[str, int], cleanup: ExitStack) -> tuple[Metrics, MetricsServer]:
    counters = Metrics()
    server = MetricsServer(counters, *address)
    # NOTE: pushed after the executor, so the server stops first and the executor closes last.
    cleanup.callback(server.stop)
    return counters, server
