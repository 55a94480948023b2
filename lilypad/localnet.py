"""The local network: every service of the system on one machine, as separate processes.

``lilypad network up`` starts, in order: anvil (with the contracts deployed and dev accounts
funded), the embedded IPFS node, the solver, resource providers (one by default), a mediator and
the on-chain job creator bridge; it writes the network profile (``local`` by default) that
``lilypad run`` uses and that providers on other machines can join with (:class:`Topology`).
Each service is a process of its own, started in its own session so it outlives the command with
``--detach``; its pid and log live in ``<data dir>/network/<name>/``. The dev accounts' keys are
anvil's public test keys, written to ``keys/<role>.key`` (mode 600) there, and handed to each
service through ``WEB3_PRIVATE_KEY`` — never on a command line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lilypad.chain import Chain, deploy, setup_dev_accounts
from lilypad.chain.anvil import Anvil, port_in_use
from lilypad.config import get_settings
from lilypad.errors import ConfigError, InputError, LilypadError
from lilypad.fsutil import write_atomic
from lilypad.modules import list_builtin
from lilypad.network import NetworkProfile, save_network

#: Anvil's pre-funded accounts by role (the same as ``lilypad chain up``); extra providers take
#: the accounts after them (anvil is started with enough), up to :data:`MAX_PROVIDERS`.
DEV_ROLES = {"owner": 0, "solver": 1, "mediator": 2, "provider": 3, "job_creator": 4}
MAX_PROVIDERS = 16
#: How many dev accounts anvil makes: every role, with every provider a local network may run.
DEV_ACCOUNTS = len(DEV_ROLES) + MAX_PROVIDERS - 1
#: ``network up --slots``: jobs each local provider runs at once (each free slot is offered for
#: every module it serves), by default and at most (the solver keeps 1,000 open offers per
#: signer, and a slot is an offer per module: 48 built-in module versions).
DEFAULT_SLOTS = 8
MAX_SLOTS = 16
#: The range of ``network up --block-time`` (seconds).
MIN_BLOCK_TIME_S = 0.1
MAX_BLOCK_TIME_S = 60.0
#: The default ports; ``--port-offset K`` adds K to each. Providers take ``provider`` onwards.
PORTS = {
    "chain": 8545,
    "ipfs_api": 5001,
    "gateway": 8080,
    "solver": 8090,
    "provider": 8091,
    "mediator": 8099,
}


def check_host(host: str) -> str:
    """``--host``: an IPv4 address other machines (or containers) reach this one at; it goes
    into the profiles they use, so the unspecified 0.0.0.0 is refused.

    Raises:
        InputError: not an IPv4 address, or 0.0.0.0.
    """
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise InputError(f"--host {host!r} is not an IPv4 address, e.g. 192.168.1.10") from None
    if address.is_unspecified:
        raise InputError(
            f"--host {host}: name the address other machines reach this one at, e.g. "
            "192.168.1.10 (it goes into the profile they use)"
        )
    return host


def provider_role(index: int) -> str:
    """The key role and service name of the ``index``-th provider: provider, provider-2, ..."""
    return "provider" if index == 0 else f"provider-{index + 1}"


def dev_roles() -> dict[str, int]:
    """Every role with its anvil account index, extra providers included."""
    extra = {provider_role(i): 4 + i for i in range(1, MAX_PROVIDERS)}
    return {**DEV_ROLES, **extra}


@dataclass(frozen=True)
class Topology:
    """Where the services of one local network listen and how many providers it runs.

    Attributes:
        host: The address every service listens on and the profile names. 127.0.0.1 keeps the
            network on this machine; a LAN address lets providers on other machines join.
        port_offset: Added to every default port, so several networks can run side by side.
        providers: Resource providers to start here (0: only providers elsewhere).
        block_time: Seconds between blocks, every transaction waiting for the next one, as on a
            real chain (``--block-time``). None: a block every second, and every transaction
            mined at once besides.
        slots: Jobs each provider runs at once (``--slots``); each free slot is offered for
            every module the provider serves.
    """

    host: str = "127.0.0.1"
    port_offset: int = 0
    providers: int = 1
    block_time: float | None = None
    slots: int = DEFAULT_SLOTS

    def port(self, name: str, index: int = 0) -> int:
        if name == "provider" and index >= PORTS["mediator"] - PORTS["provider"]:
            # providers 9 on: past the mediator's port (8100, 8101, ...)
            index += 1
        return PORTS[name] + self.port_offset + index

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port(name)}"

    def service_names(self) -> list[str]:
        """Every service in start order."""
        providers = [provider_role(i) for i in range(self.providers)]
        return ["chain", "ipfs", "solver", *providers, "mediator", "bridge"]


class NetworkError(LilypadError):
    """A local service did not start or stop as asked."""


@dataclass(frozen=True)
class Service:
    """One process of the local network."""

    name: str
    args: tuple[str, ...]
    key_role: str | None
    probe: Callable[[], bool]


def state_dir(network: str) -> Path:
    return get_settings().data_dir / "network" / network


def key_file(network: str, role: str) -> Path:
    return state_dir(network) / "keys" / f"{role}.key"


def check_ports(topology: Topology) -> None:
    """Refuse to start over a port something else already listens on.

    Raises:
        ConfigError: a port is taken.
    """
    ports = [topology.port(name) for name in ("chain", "ipfs_api", "gateway", "solver")]
    ports += [topology.port("provider", i) for i in range(topology.providers)]
    ports.append(topology.port("mediator"))
    busy = [port for port in ports if port_in_use(port, topology.host)]
    if busy:
        raise ConfigError(
            f"ports {', '.join(map(str, busy))} on {topology.host} are in use: is a network "
            "already up? (lilypad network status)",
            hint="bring it down, or run this one beside it with --port-offset 1000",
        )


def reset_state(network: str) -> None:
    """Forget what the services of an earlier ``network`` kept: the new chain starts from block
    0 with new contracts, so the solver's offers and deals, the providers' deals and every
    follower's chain position would be wrong on it. Downloaded results and job records stay."""
    data = get_settings().data_dir
    for folder in ("provider", "mediator", "bridge"):
        shutil.rmtree(data / folder / network, ignore_errors=True)
    for path in (data / "solver").glob(f"{network}.db*"):  # with SQLite's -wal and -shm files
        path.unlink()


def check_slots(slots: int) -> int:
    """``--slots``: from 1 to :data:`MAX_SLOTS`.

    Raises:
        InputError: out of that range.
    """
    if not 1 <= slots <= MAX_SLOTS:
        raise InputError(
            f"--slots {slots} is out of range: give the jobs each provider runs at once, from 1 "
            f"to {MAX_SLOTS} (each slot is offered for every module: 48 built-in versions, and "
            "the solver keeps at most 1,000 open offers per provider)"
        )
    return slots


def check_block_time(seconds: float | None) -> float | None:
    """``--block-time``: seconds between blocks, from :data:`MIN_BLOCK_TIME_S` to
    :data:`MAX_BLOCK_TIME_S`.

    Raises:
        InputError: out of that range.
    """
    if seconds is not None and not MIN_BLOCK_TIME_S <= seconds <= MAX_BLOCK_TIME_S:
        raise InputError(
            f"--block-time {seconds:g} is out of range: give seconds between blocks from "
            f"{MIN_BLOCK_TIME_S:g} to {MAX_BLOCK_TIME_S:g} (2 is a typical L2's cadence)"
        )
    return seconds


def start_chain(network: str, topology: Topology) -> NetworkProfile:
    """Start anvil, deploy the contracts, fund and register the dev accounts, and write their
    keys. anvil mines a block every second (so deadlines pass on a quiet chain) and every
    transaction at once besides; with ``topology.block_time`` only a block every that many
    seconds, and transactions wait for it."""
    folder = state_dir(network)
    folder.mkdir(parents=True, exist_ok=True)
    node = Anvil(
        topology.port("chain"),
        block_time=topology.block_time or 1,
        mixed_mining=topology.block_time is None,
        host=topology.host,
        accounts=DEV_ACCOUNTS,
    ).start(detach=True)
    assert node.pid is not None
    (folder / "chain.pid").write_text(str(node.pid))
    chain = Chain(node.rpc_url)
    accounts = node.accounts
    owner = accounts[DEV_ROLES["owner"]]
    deployment = deploy(chain, owner)
    roles = {role: accounts[i] for role, i in dev_roles().items()}
    setup_dev_accounts(
        chain,
        deployment,
        owner,
        solvers=[roles["solver"].address],
        mediators=[roles["mediator"].address],
        funded=[a.address for a in accounts],
    )
    (folder / "keys").mkdir(exist_ok=True)
    for role, account in roles.items():
        write_atomic(key_file(network, role), account.key.hex() + "\n", mode=0o600)
    return NetworkProfile(
        name=network,
        chain_id=deployment.chain_id,
        rpc_url=node.rpc_url,
        token=deployment.token,
        market=deployment.market,
        job_creator=deployment.job_creator,
        deployed_block=deployment.block,
        accounts={role: account.address for role, account in roles.items()},
        solver_url=topology.url("solver"),
        ipfs_api_url=topology.url("ipfs_api"),
        gateway_url=topology.url("gateway"),
    )


def services(
    profile: NetworkProfile,
    topology: Topology,
    executor: str | None,
    weights: str,
    executor_for: dict[str, str] | None = None,
    *,
    unsafe_no_sandbox: bool = False,
    extra_modules: Sequence[str] = (),
    warm: str | None = None,
) -> list[Service]:
    """The services after the chain, in start order.

    ``executor_for`` maps modules to another executor than ``executor`` (see
    :func:`modules_without_image`); the mediator, which re-runs challenged jobs, gets the same,
    and ``--unsafe-no-sandbox`` with ``unsafe_no_sandbox`` (else their process executor
    refuses to run without bubblewrap). ``extra_modules`` (exact references) are served beside
    the built-in ones; where one lives on this machine only (a folder, a local git repository),
    the solver takes jobs for it (``--any-module-source``). ``warm`` is the providers'
    ``--warm`` (None: their default).
    """
    network = profile.name
    assert profile.solver_url
    assert profile.ipfs_api_url
    # Each of a provider's free slots is offered for every module version it serves (an offer
    # per module, all with the slot's nonce): every built-in module stays on offer, and any
    # of them can take all the slots.
    served = [*builtin_images(), *extra_modules]
    executors: list[str] = ["--executor", executor] if executor else []
    for module, kind in sorted((executor_for or {}).items()):
        executors += ["--executor-for", f"{module}={kind}"]
    if unsafe_no_sandbox:
        executors.append("--unsafe-no-sandbox")
    common = ["--network", network, "--weights", weights, *executors]
    found = [
        Service(
            "ipfs",
            (
                "ipfs",
                "serve",
                "--api",
                _hostport(profile.ipfs_api_url),
                "--gateway",
                _hostport(profile.gateway_url or ""),
            ),
            None,
            lambda: _http_ok("POST", f"{profile.ipfs_api_url}/api/v0/version"),
        ),
        Service(
            "solver",
            (
                "solver",
                "--network",
                network,
                "--listen",
                _hostport(profile.solver_url),
                "--poll-interval",
                "0.1",  # a local chain answers at once: see results sooner
                *(["--any-module-source"] if not all(map(_everywhere, extra_modules)) else []),
            ),
            "solver",
            lambda: _http_ok("GET", f"{profile.solver_url}/healthz"),
        ),
    ]
    for index in range(topology.providers):
        metrics = f"127.0.0.1:{topology.port('provider', index)}"
        args = [
            "resource-provider", *common, "--metrics", metrics,
            "--modules", ",".join(served), "--max-concurrent", str(topology.slots),
            *(["--warm", warm] if warm is not None else []),
        ]  # fmt: skip
        if weights == "tiny":
            args.append("--emulate-machine")  # the GPU modules' needs, met on the CPU
        role = provider_role(index)
        found.append(Service(role, tuple(args), role, _probe(f"http://{metrics}/metrics")))
    mediator_metrics = f"127.0.0.1:{topology.port('mediator')}"
    found += [
        Service(
            "mediator",
            ("mediator", *common, "--metrics", mediator_metrics),
            "mediator",
            _probe(f"http://{mediator_metrics}/metrics"),
        ),
        Service("bridge", ("jobcreator", "--network", network), "owner", lambda: True),
    ]
    return found


def _everywhere(ref: str) -> bool:
    from lilypad.modules.sources import parse_reference

    return parse_reference(ref).everywhere


def builtin_images() -> dict[str, str]:
    """Every version of every built-in module (what a local provider serves), with its image."""
    return {
        f"{manifest.name}:{version}": spec.image_ref
        for manifest, _ in list_builtin()
        for version, spec in manifest.versions.items()
    }


def modules_without_image() -> list[str]:
    """The built-in modules whose image the local Docker Engine lacks (all, if none answers).

    On a dev network these run with the process executor: the ML modules' images start from a
    CUDA base that only a registry has, while their tiny-weights runs work as local processes.
    """
    import docker  # the network command only: the rest of the CLI must not wait for it

    images = builtin_images()
    try:
        client = docker.from_env(timeout=5)
    except docker.errors.DockerException:
        return list(images)
    missing = []
    try:
        for module, image in images.items():
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(module)
    except docker.errors.DockerException:
        return list(images)
    finally:
        client.close()
    return missing


def _probe(url: str) -> Callable[[], bool]:
    return lambda: _http_ok("GET", url)


def start_service(network: str, service: Service, timeout: float = 60) -> int:
    """Start one service detached; return its pid once its probe answers."""
    folder = state_dir(network)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WEB3_PRIVATE_KEY", None)
    if service.key_role:
        env["WEB3_PRIVATE_KEY"] = key_file(network, service.key_role).read_text().strip()
    log = folder / f"{service.name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lilypad", *service.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    (folder / f"{service.name}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while not service.probe():
        if process.poll() is not None:
            raise NetworkError(
                f"{service.name} exited with {process.returncode}: {_tail(log)}",
                hint=f"full log: {log}",
            )
        if time.monotonic() > deadline:
            raise NetworkError(
                f"{service.name} did not answer within {timeout:g}s", hint=f"log: {log}"
            )
        time.sleep(0.2)
    return process.pid


def record_services(network: str, names: list[str]) -> None:
    """Remember which services this network runs (``status`` and ``down`` read it)."""
    state_dir(network).mkdir(parents=True, exist_ok=True)
    (state_dir(network) / "services").write_text("\n".join(names) + "\n")


def service_names(network: str) -> list[str]:
    """The services of ``network`` in start order (the default set if it never came up)."""
    path = state_dir(network) / "services"
    if path.is_file():
        return path.read_text().split()
    return Topology().service_names()


def stop_all(network: str) -> list[str]:
    """Stop every service of ``network`` (newest first); returns the names stopped."""
    folder = state_dir(network)
    names = service_names(network)
    # any pid file left by another layout of this network too
    names += sorted(p.stem for p in folder.glob("*.pid") if p.stem not in names)
    stopped = []
    for name in reversed(names):
        pid_file = folder / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        pid_file.unlink()
    return stopped


def status(network: str, profile: NetworkProfile | None) -> list[dict[str, Any]]:
    """Each service's pid, whether it runs and answers, and its address."""
    folder = state_dir(network)
    urls: dict[str, str | None] = {}
    if profile is not None:
        urls = {
            **profile.accounts,  # providers and the mediator: their account
            "chain": profile.rpc_url,
            "ipfs": profile.ipfs_api_url,
            "solver": profile.solver_url,
            "bridge": profile.job_creator,
        }
    rows = []
    for name in service_names(network):
        pid_file = folder / f"{name}.pid"
        pid = int(pid_file.read_text()) if pid_file.is_file() else None
        rows.append(
            {
                "service": name,
                "pid": pid,
                "running": bool(pid and _alive(pid)),
                "address": urls.get(name),
                "log": str(folder / f"{name}.log"),
            }
        )
    return rows


def write_profile(profile: NetworkProfile) -> NetworkProfile:
    save_network(profile)
    return profile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a process that exited but is not reaped yet (a zombie) is gone: here, or where a slow
    # init reaps the orphans of a detached network
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _http_ok(method: str, url: str) -> bool:
    try:
        return httpx.request(method, url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
