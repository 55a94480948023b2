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
from typing import TYPE_CHECKING

import typer

from lilypad.cli import keyopt
from lilypad.cli.keyopt import WEB3_KEY_OPTION
from lilypad.cli.module_run import UNSAFE_NO_SANDBOX_OPTION, sandbox_for
from lilypad.cli.output import note
from lilypad.config import get_settings
from lilypad.errors import ConfigError, InputError
from lilypad.net import parse_host_port
from lilypad.units import parse_tokens
from resource_provider.executors import ExecutorKind, WarmConfig, Weights


def parse_amount(text: str, option: str) -> int:
    """``"0.5"`` tokens -> wei, 0 allowed (:func:`lilypad.units.parse_tokens`)."""
    return parse_tokens(text, option, allow_zero=True)


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


if TYPE_CHECKING:  # web3 and eth_account take seconds to import: only the commands do
    from lilypad.network import NetworkProfile
    from resource_provider.assemble import Node


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


#: ``--warm-idle`` units, in seconds.
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
#: ``--warm-memory`` units, in bytes (binary: 24G is 24 GiB).
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _warm(workers: int | str | None, idle: str, memory: str = "auto") -> WarmConfig | None:
    """``--warm 2 --warm-idle 10m --warm-memory 24G`` -> ``WarmConfig(2, 600.0, 24 << 30)``;
    ``--warm auto`` (the default, also without ``--warm``): as many as the machine's RAM holds
    (:func:`~resource_provider.executors.warm.default_workers`). None for ``--warm 0``.
    """
    from resource_provider.executors.warm import default_workers

    if workers is None or workers == "auto":
        workers = default_workers()
    try:
        count = int(workers)
    except ValueError:
        count = -1
    if count < 0:
        raise InputError(
            f"--warm {workers}: give how many warm workers to keep (0 or more), or auto"
        )
    workers = count
    text = idle.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InputError(
            f"--warm-idle {idle!r} is not a duration; allowed: a positive number of seconds, or "
            "with s, m or h (90s, 10m, 1h)"
        )
    budget = _memory(memory)
    return WarmConfig(workers, seconds, budget) if workers else None


def _memory(text: str) -> int | None:
    """``--warm-memory``: ``24G`` -> bytes; ``auto`` -> None (half the machine's RAM)."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    if value == "auto":
        return None
    number, unit = (value[:-1], value[-1]) if value[-1:] in _SIZE_UNITS else (value, "")
    try:
        size = int(float(number) * _SIZE_UNITS.get(unit, 1))
    except ValueError:
        size = 0
    if size <= 0:
        raise InputError(
            f"--warm-memory {text!r} is not a size; allowed: auto (half the machine's RAM) or "
            "a positive number of bytes, or with K, M, G or T (512M, 24G)"
        )
    return size


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


def _run(node: Node) -> None:
    """Tell the operator about ``node``, run it until Ctrl-C or SIGTERM, then stop it cleanly."""

    def _terminate(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for line in node.notes:
        note(line)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        node.daemon.start()
        try:
            node.daemon.wait()
        except KeyboardInterrupt:
            note("stopping")
        finally:
            node.daemon.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        node.close()


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
WARM_OPTION = typer.Option(
    None,
    "--warm",
    help="Warm workers to keep: each loads a built-in module version once and serves its jobs "
    "(a sandboxed process or a container); 0: every job cold. Default: auto, 2 with 32 GiB of "
    "RAM or more, 1 with 8 GiB, none below.",
    show_default=False,
)
WARM_IDLE_OPTION = typer.Option(
    "10m", "--warm-idle", help="End a warm worker idle this long (90s, 10m, 1h)."
)
WARM_MEMORY_OPTION = typer.Option(
    "auto",
    "--warm-memory",
    help="Memory the warm workers may hold together (512M, 24G); over it, the least recently "
    "used idle one ends. auto: half the machine's RAM.",
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
        1, "--max-concurrent", min=1, max=256, help="Jobs run at once (slots offer every module)."
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
    web3_key: str | None = WEB3_KEY_OPTION,
    metrics: str = METRICS_OPTION,
    offer_ttl: int = typer.Option(
        600, "--offer-ttl", min=30, help="Seconds an offer stays valid before a fresh one."
    ),
    submit_margin: int | None = typer.Option(
        None,
        "--submit-margin",
        min=0,
        help="Seconds kept after a module's timeout to add the result and submit it; a deal "
        "leaving less is refused. Default: 30 (lilypad.chain.offers.DEFAULT_SUBMIT_MARGIN_S).",
        show_default=False,
    ),
    deposit: bool = typer.Option(
        True,
        "--deposit/--no-deposit",
        help="At start, deposit from the wallet what the collateral of every slot needs.",
    ),
    unsafe_no_sandbox: bool = UNSAFE_NO_SANDBOX_OPTION,
    warm: str | None = WARM_OPTION,
    warm_idle: str = WARM_IDLE_OPTION,
    warm_memory: str = WARM_MEMORY_OPTION,
    log_json: bool = LOG_JSON_OPTION,
) -> None:
    """Offer this machine to the market: run the deals it gets, submit results, get paid."""
    from lilypad.network import load_network
    from resource_provider import assemble, logs
    from resource_provider.daemon import ProviderConfig

    routes = _executor_for(executor_for)  # bad input stops here, before any I/O
    warm_config = _warm(warm, warm_idle, warm_memory)
    profile = load_network(network)
    metrics_address = parse_host_port(metrics, "--metrics", example="127.0.0.1:9100")
    units = parse_amount(price, "--price")
    # auto is read from the market once its client exists; 0 stands in until then
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
        auto_deposit=deposit,
    )
    if submit_margin is not None:
        config = replace(config, submit_margin_s=submit_margin)
    account = keyopt.account(key_file, web3_key, "the resource provider")
    logs.configure(json_lines=log_json, secrets=[account.key.hex()])
    node = assemble.provider(
        profile,
        account,
        config,
        state_dir=data_dir or get_settings().data_dir / "provider" / network / account.address,
        executors=assemble.Executors(executor, routes, sandbox_for(unsafe_no_sandbox), warm_config),
        metrics=metrics_address,
        auto_collateral=collateral == "auto",
        emulate_machine=emulate_machine,
    )
    _run(node)


def mediator(
    network: str = NETWORK_OPTION,
    executor: ExecutorKind | None = EXECUTOR_OPTION,
    executor_for: list[str] | None = EXECUTOR_FOR_OPTION,
    weights: Weights = WEIGHTS_OPTION,
    data_dir: Path | None = DATA_DIR_OPTION,
    key_file: Path | None = KEY_OPTION,
    web3_key: str | None = WEB3_KEY_OPTION,
    metrics: str = typer.Option(
        "127.0.0.1:9101", "--metrics", help="HOST:PORT serving /metrics (port 0: any free port)."
    ),
    unsafe_no_sandbox: bool = UNSAFE_NO_SANDBOX_OPTION,
    log_json: bool = LOG_JSON_OPTION,
) -> None:
    """Re-run challenged deals that name this mediator and rule on chain."""
    from lilypad.network import load_network
    from resource_provider import assemble, logs

    routes = _executor_for(executor_for)  # bad input stops here, before any I/O
    profile = load_network(network)
    metrics_address = parse_host_port(metrics, "--metrics", example="127.0.0.1:9101")
    account = keyopt.account(key_file, web3_key, "the mediator")
    logs.configure(json_lines=log_json, secrets=[account.key.hex()])
    node = assemble.mediator(
        profile,
        account,
        state_dir=data_dir or get_settings().data_dir / "mediator" / network / account.address,
        executors=assemble.Executors(executor, routes, sandbox_for(unsafe_no_sandbox)),
        weights=weights,
        metrics=metrics_address,
    )
    _run(node)


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
    web3_key: str | None = WEB3_KEY_OPTION,
    log_json: bool = LOG_JSON_OPTION,
) -> None:
    """Bridge the JobCreator contract: run contract-submitted jobs and call the clients back."""
    from lilypad.network import load_network
    from lilypad.verification import Verify
    from resource_provider import assemble, logs
    from resource_provider.bridge import BridgeConfig

    if verify not in BRIDGE_VERIFY:
        raise InputError(f"--verify {verify!r} is not one of {', '.join(BRIDGE_VERIFY)}")
    served = _modules(modules)  # bad input stops here, before any I/O
    profile = load_network(network)
    config = BridgeConfig(
        modules=served,
        mediators=_mediators(mediators, profile),
        verify=Verify(verify),
        offer_ttl_s=offer_ttl,
        start_block=profile.deployed_block,
    )
    account = keyopt.account(key_file, web3_key, "the job-creator bridge")
    logs.configure(json_lines=log_json, secrets=[account.key.hex()])
    node = assemble.bridge(
        profile,
        account,
        config,
        state_dir=data_dir or get_settings().data_dir / "bridge" / network / account.address,
    )
    _run(node)
