"""The local network: every service of the system on one machine, as separate processes.

``lilypad network up`` starts, in order: anvil (with the contracts deployed and dev accounts
funded), the embedded IPFS node, the solver, a resource provider, a mediator and the on-chain job
creator bridge; it writes the network profile (``local`` by default) that ``lilypad run`` uses.
Each service is a process of its own, started in its own session so it outlives the command with
``--detach``; its pid and log live in ``<data dir>/network/<name>/``. The dev accounts' keys are
anvil's public test keys, written to ``keys/<role>.key`` (mode 600) there, and handed to each
service through ``WEB3_PRIVATE_KEY`` — never on a command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lilypad.chain import Chain, deploy, setup_dev_accounts
from lilypad.chain.anvil import Anvil, port_in_use
from lilypad.config import get_settings
from lilypad.errors import ConfigError, LilypadError
from lilypad.modules import list_builtin
from lilypad.network import NetworkProfile, save_network

#: Anvil's pre-funded accounts by role (the same as ``lilypad chain up``).
DEV_ROLES = {"owner": 0, "solver": 1, "mediator": 2, "provider": 3, "job_creator": 4}
PORTS = {"chain": 8545, "ipfs_api": 5001, "gateway": 8080, "solver": 8090, "provider": 8091}


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


def start_chain(network: str, port: int) -> NetworkProfile:
    """Start anvil (a block every second, so deadlines pass on a quiet chain), deploy the
    contracts, fund and register the dev accounts, and write their keys."""
    if port_in_use(port):
        raise ConfigError(
            f"port {port} is in use: is a network already up? (lilypad network "
            "status) — or pick another with --chain-port"
        )
    folder = state_dir(network)
    folder.mkdir(parents=True, exist_ok=True)
    node = Anvil(port, block_time=1).start(detach=True)
    assert node.pid is not None
    (folder / "chain.pid").write_text(str(node.pid))
    chain = Chain(node.rpc_url)
    accounts = node.accounts
    owner = accounts[DEV_ROLES["owner"]]
    deployment = deploy(chain, owner)
    roles = {role: accounts[i] for role, i in DEV_ROLES.items()}
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
        path = key_file(network, role)
        path.touch(mode=0o600)
        path.write_text(account.key.hex() + "\n")
    return NetworkProfile(
        name=network,
        chain_id=deployment.chain_id,
        rpc_url=node.rpc_url,
        token=deployment.token,
        market=deployment.market,
        job_creator=deployment.job_creator,
        deployed_block=deployment.block,
        accounts={role: account.address for role, account in roles.items()},
    )


def services(profile: NetworkProfile, executor: str | None, weights: str) -> list[Service]:
    """The services after the chain, in start order."""
    network = profile.name
    assert profile.solver_url
    assert profile.ipfs_api_url
    # One resource offer names one module, so the provider keeps a slot per module version: every
    # built-in module stays on offer. TODO: slot groups (offers for several modules sharing one
    # slot) would let a provider offer many modules without committing a slot to each.
    served = [
        f"{manifest.name}:{version}"
        for manifest, _ in list_builtin()
        for version in manifest.versions
    ]
    provider = [
        "resource-provider", "--network", network, "--weights", weights,
        "--metrics", f"127.0.0.1:{PORTS['provider']}",
        "--modules", ",".join(served), "--max-concurrent", str(len(served)),
    ]  # fmt: skip
    if weights == "tiny":
        provider.append("--emulate-machine")  # the GPU modules' needs, met on the CPU
    if executor:
        provider += ["--executor", executor]
    return [
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
            ("solver", "--network", network, "--listen", _hostport(profile.solver_url)),
            "solver",
            lambda: _http_ok("GET", f"{profile.solver_url}/healthz"),
        ),
        Service(
            "provider",
            tuple(provider),
            "provider",
            lambda: _http_ok("GET", f"http://127.0.0.1:{PORTS['provider']}/metrics"),
        ),
        Service("mediator", ("mediator", "--network", network), "mediator", lambda: True),
        Service("bridge", ("jobcreator", "--network", network), "owner", lambda: True),
    ]


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


def stop_all(network: str) -> list[str]:
    """Stop every service of ``network`` (newest first); returns the names stopped."""
    folder = state_dir(network)
    stopped = []
    order = ["bridge", "mediator", "provider", "solver", "ipfs", "chain"]
    for name in order:
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
    urls = {}
    if profile is not None:
        urls = {
            "chain": profile.rpc_url,
            "ipfs": profile.ipfs_api_url,
            "solver": profile.solver_url,
            "provider": profile.accounts.get("provider"),
            "mediator": profile.accounts.get("mediator"),
            "bridge": profile.job_creator,
        }
    rows = []
    for name in ("chain", "ipfs", "solver", "provider", "mediator", "bridge"):
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
    # a zombie child of ours counts as gone
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
