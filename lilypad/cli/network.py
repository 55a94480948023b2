"""``lilypad network``: the whole system on this machine (chain, IPFS, solver, provider,
mediator, bridge)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from lilypad.cli.output import console, emit, note
from lilypad.errors import InputError, UnknownNetwork

if TYPE_CHECKING:
    from lilypad.modules import ResolvedModule

app = typer.Typer(help="Run a complete local network.", no_args_is_help=True)


def _network_option() -> Any:
    return typer.Option("local", "--network", "-n", help="Name of the network profile.")


@app.command()
def up(
    network: str = _network_option(),
    detach: bool = typer.Option(False, "--detach", "-d", help="Leave it running and return."),
    executor: str | None = typer.Option(
        None,
        "--executor",
        help="docker or process (default: docker when an engine answers). With docker, modules "
        "whose image is not built here run with the process executor.",
    ),
    weights: str = typer.Option(
        "auto", "--weights", help="real, tiny, or auto (real where MODEL_DIR holds weights)."
    ),
    providers: int = typer.Option(
        1, "--providers", min=0, help="Resource providers to run here (0: only other machines')."
    ),
    slots: int = typer.Option(
        8,
        "--slots",
        help="Jobs each provider runs at once (1 to 16); each free slot is offered for every "
        "module it serves, so any module can take all of them.",
    ),
    warm: str | None = typer.Option(
        None,
        "--warm",
        help="Warm workers each provider keeps (0: every job cold; default auto, as the "
        "providers' own default).",
        show_default=False,
    ),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address every service listens on; a LAN address lets providers on other machines "
        "join (see the README: running across machines).",
    ),
    port_offset: int = typer.Option(
        0,
        "--port-offset",
        min=0,
        max=50000,
        help="Added to every port, to run networks side by side.",
    ),
    block_time: float | None = typer.Option(
        None,
        "--block-time",
        metavar="SECONDS",
        help="Mine a block every SECONDS, each transaction waiting for the next one, as on a "
        "real chain (e.g. 2, an L2's cadence). Default: a block a second, and every "
        "transaction mined at once.",
    ),
    unsafe_no_sandbox: bool = typer.Option(
        False,
        "--unsafe-no-sandbox",
        help="UNSAFE: where bubblewrap is missing, let the providers and the mediator run "
        "process-executor jobs unsandboxed, as this user (a module can then read the dev keys "
        "and your files). Only with modules you trust.",
    ),
    module: list[str] | None = typer.Option(
        None,
        "--module",
        help="Serve this module too, beside the built-in ones (a folder or a git repository, in "
        "either format: e.g. a Lilypad module's repository at a tag); repeat for more. Built with "
        "lilypad module build first where it has a Dockerfile.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Start anvil with the contracts, IPFS, solver, providers, mediator and bridge."""
    from lilypad import localnet

    if executor not in (None, "docker", "process"):
        raise InputError(f"--executor {executor!r} is not one of docker, process")
    if weights not in ("auto", "real", "tiny"):
        raise InputError(f"--weights {weights!r} is not one of real, tiny, auto")
    if providers > localnet.MAX_PROVIDERS:
        raise InputError(
            f"--providers {providers}: a local network has dev accounts for at most "
            f"{localnet.MAX_PROVIDERS} providers"
        )
    localnet.check_host(host)
    localnet.check_block_time(block_time)
    localnet.check_slots(slots)
    if warm is not None:
        from lilypad.cli.provider import _warm

        _warm(warm, "10m")  # a bad count stops here, before anything starts
    extra = _resolve_modules(module or [])  # bad references stop here, before anything starts
    topology = localnet.Topology(
        host=host, port_offset=port_offset, providers=providers, block_time=block_time, slots=slots
    )
    if weights == "auto":
        weights = "real" if _real_weights() else "tiny"
        if weights == "tiny":
            note(
                "No real model weights here (MODEL_DIR): the provider runs the ML modules with "
                "tiny random weights of the real architectures. Outputs are noise, but every "
                "step of the real pipelines runs."
            )
    executor, executor_for = _executors(executor)
    executor_for.update(_extra_executors(extra, executor))
    if not unsafe_no_sandbox and executor == "process":
        _check_sandbox("the providers run jobs with the process executor")
    elif not unsafe_no_sandbox and executor_for:
        _check_sandbox(f"{', '.join(executor_for)} run with the process executor")
    localnet.stop_all(network)  # leftovers of a network that was not brought down
    localnet.check_ports(topology)
    localnet.reset_state(network)
    localnet.record_services(network, topology.service_names())
    note(f"starting the chain on {host}:{topology.port('chain')} and deploying the contracts")
    profile = localnet.write_profile(localnet.start_chain(network, topology))
    try:
        for service in localnet.services(
            profile,
            topology,
            executor,
            weights,
            executor_for,
            unsafe_no_sandbox=unsafe_no_sandbox,
            extra_modules=[m.ref for m in extra],
            warm=warm,
        ):
            note(f"starting {service.name}")
            localnet.start_service(network, service)
    except BaseException:
        localnet.stop_all(network)
        raise
    _show(network, json_output)
    if detach:
        note(
            f"Run a job: lilypad run cowsay:v0.0.4 --network {network} "
            f"--key-file {localnet.key_file(network, 'job_creator')}\n"
            f"Stop it: lilypad network down --network {network}"
        )
        return
    note("Press Ctrl-C to stop the network.")
    try:
        while all(row["running"] for row in localnet.status(network, profile)):
            time.sleep(1)
        note("a service stopped: bringing the network down (lilypad network logs)")
    except KeyboardInterrupt:
        pass
    finally:
        localnet.stop_all(network)


def _executors(executor: str | None) -> tuple[str, dict[str, str]]:
    """The providers' default executor, and the modules that run with the process executor
    because their image is not on the local Docker Engine."""
    from lilypad import localnet
    from resource_provider.executors import engine_problem

    if executor is None:
        problem = engine_problem()
        executor = "process" if problem else "docker"
        note(
            f"executor: {executor}" + (f" ({problem})" if problem else " (a Docker Engine answers)")
        )
    if executor == "process":
        return executor, {}
    missing = localnet.modules_without_image()
    if missing:
        note(
            f"no image built here for {', '.join(missing)}: those run with the process executor "
            "(build one with lilypad module build)"
        )
    return executor, dict.fromkeys(missing, "process")


def _resolve_modules(refs: list[str]) -> list[ResolvedModule]:
    """``--module`` references, resolved (fetched and checked) as the providers will."""
    from lilypad import modules
    from lilypad.modules.sources import SourceKind

    found = [modules.resolve(ref) for ref in refs]
    builtin = [m.ref for m in found if m.source.kind is SourceKind.BUILTIN]
    if builtin:
        raise InputError(f"--module {builtin[0]}: built-in modules are served already")
    return found


def _extra_executors(extra: list[ResolvedModule], executor: str) -> dict[str, str]:
    """The executor of each ``--module``: docker where its image is built here (a module in
    Lilypad's format has only its image: without one it cannot run), else the process one.

    Raises:
        InputError: a Lilypad-format module with the process executor, or without its image.
    """
    from lilypad.modules.template import is_template_module

    routes: dict[str, str] = {}
    for module in extra:
        template = is_template_module(module.directory)
        has_image = executor == "docker" and _image_built(module.spec.image_ref)
        if template and not has_image:
            why = (
                "the providers run the process executor (--executor process, or no Docker "
                "Engine answers)"
                if executor != "docker"
                else f"its image {module.spec.image_ref} is not on this Docker Engine"
            )
            raise InputError(
                f"--module {module.ref} is a module in Lilypad's format: it runs only in its "
                f"Docker image, and {why}",
                hint=f"lilypad module build {module.ref}" if executor == "docker" else None,
            )
        routes[module.ref] = "docker" if has_image else "process"
    return routes


def _image_built(image: str) -> bool:
    import docker  # the network command only

    client = docker.from_env(timeout=5)
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def _check_sandbox(why: str) -> None:
    """Refuse before starting anything where the providers' process executor would refuse.

    Raises:
        ExecutorUnavailable: bubblewrap cannot sandbox jobs here.
    """
    from lilypad.errors import ExecutorUnavailable
    from resource_provider.executors.process import FIX, bwrap_problem

    problem = bwrap_problem()
    if problem is not None:
        raise ExecutorUnavailable(
            f"{why}, and bubblewrap cannot sandbox jobs here: {problem}", hint=FIX
        )


@app.command()
def down(network: str = _network_option()) -> None:
    """Stop every service of the local network."""
    from lilypad import localnet

    stopped = localnet.stop_all(network)
    note(f"stopped {', '.join(stopped)}" if stopped else f"network {network!r} was not running")


@app.command()
def status(
    network: str = _network_option(),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Each service: running or not, its pid, address and log."""
    _show(network, json_output)


@app.command()
def logs(
    service: str | None = typer.Argument(
        None,
        help="chain, ipfs, solver, provider (provider-2...), mediator or bridge (default: all).",
    ),
    network: str = _network_option(),
    lines: int = typer.Option(40, "--lines", "-l", min=1, help="Lines from the end of each log."),
) -> None:
    """Show the end of a service's log."""
    from lilypad import localnet
    from lilypad.errors import InputError

    names = localnet.service_names(network)
    if service is not None and service not in names:
        raise InputError(f"unknown service {service!r}; choose one of {', '.join(names)}")
    for name in [service] if service else names:
        path = localnet.state_dir(network) / f"{name}.log"
        if not path.is_file():
            continue
        console.rule(name)
        text = path.read_text(errors="replace").splitlines()[-lines:]
        console.print("\n".join(text), markup=False, highlight=False, soft_wrap=True)


def _show(network: str, json_output: bool) -> None:
    from lilypad import localnet
    from lilypad.network import load_network, overrides_note

    try:
        profile = load_network(network)
    except UnknownNetwork:
        profile = None
    said = overrides_note(profile) if profile is not None else None
    if said is not None:
        note(said)
    rows = localnet.status(network, profile)
    data = {
        "network": network,
        "services": rows,
        "profile": profile.model_dump(mode="json") if profile else None,
    }

    def human() -> None:
        table = Table("service", "state", "pid", "address", box=None)
        for row in rows:
            state = "[green]running[/]" if row["running"] else "[red]stopped[/]"
            table.add_row(row["service"], state, str(row["pid"] or "-"), row["address"] or "")
        console.print(table)
        if profile is not None:
            console.print(f"gateway {profile.gateway_url}   solver {profile.solver_url}")

    emit(data, json_output, human)


def _real_weights() -> bool:
    import os
    from pathlib import Path

    model_dir = os.environ.get("MODEL_DIR")
    return (
        bool(model_dir) and Path(model_dir or "").is_dir() and any(Path(model_dir or "").iterdir())
    )
