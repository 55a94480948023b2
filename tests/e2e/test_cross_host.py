"""Across machines, as the README's two-machine set-up runs it: the network on one "machine"
(``lilypad network up --host ADDRESS --providers 0``), and a resource provider on another, here a
network namespace of its own joined by a veth pair. The provider has the copied profile file and
its key, and reaches the chain, the solver and IPFS over that link only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilypad.localnet import key_file
from lilypad.network import network_path
from tests.conftest import missing
from tests.e2e.conftest import Up, run_job

NETWORK = "xhost"
SUBNET = "10.231.{}.{}"  # a private /30 of the test's own; nothing else is routed there


class Link:
    """A network namespace (the other machine) and the veth pair that joins it to this one."""

    def __init__(self, tag: int) -> None:
        self.namespace = f"lilypad-e2e-{tag}"
        self.outer, self.inner = f"lpe{tag}h", f"lpe{tag}p"
        self.host = SUBNET.format(tag % 250, 1)
        self.guest = SUBNET.format(tag % 250, 2)

    def up(self) -> None:
        ip = ["ip"]
        inside = ["ip", "netns", "exec", self.namespace, "ip"]
        for command in (
            [*ip, "netns", "add", self.namespace],
            [*ip, "link", "add", self.outer, "type", "veth", "peer", "name", self.inner],
            [*ip, "link", "set", self.inner, "netns", self.namespace],
            [*ip, "addr", "add", f"{self.host}/30", "dev", self.outer],
            [*ip, "link", "set", self.outer, "up"],
            [*inside, "addr", "add", f"{self.guest}/30", "dev", self.inner],
            [*inside, "link", "set", self.inner, "up"],
            [*inside, "link", "set", "lo", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True, timeout=30)

    def down(self) -> None:
        # deleting the namespace deletes its end of the pair, and with it the other end
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)

    def spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Start a process on the other machine."""
        with log.open("wb") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def reaches(self, host: str, port: int) -> bool:
        """Whether a TCP connection from the other machine to ``host:port`` opens."""
        probe = (
            "import socket,sys; s=socket.socket(); s.settimeout(2); "
            f"sys.exit(s.connect_ex(({host!r}, {port})))"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", probe],
            capture_output=True,
            timeout=30,
        )
        return result.returncode == 0


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing("root and iproute2 (ip netns)", "run as root on Linux (CI does)")
    link = Link(os.getpid() % 10_000)
    link.down()  # leftovers of a killed run
    try:
        link.up()
    except subprocess.CalledProcessError as exc:
        link.down()
        missing("network namespaces", f"{exc.cmd}: {exc.stderr.decode(errors='replace')}")
    yield link
    link.down()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_provider_on_another_machine_serves_jobs_over_the_link(
    network_up: Up, link: Link, tmp_path: Path
) -> None:
    profile = network_up(
        NETWORK, "--host", link.host, "--providers", "0", "--executor", "process",
        "--port-offset", "3200",
    )  # fmt: skip
    urls = [profile.rpc_url, profile.solver_url, profile.ipfs_api_url, profile.gateway_url]
    assert all(f"//{link.host}:" in str(url) for url in urls), urls

    # the other machine: the copied profile, its own data dir, its key in the environment
    other = tmp_path / "other"
    (other / "config" / "networks").mkdir(parents=True)
    shutil.copy(network_path(NETWORK), other / "config" / "networks" / f"{NETWORK}.toml")
    env = {
        **os.environ,
        "HOME": str(other),
        "LILYPAD_CONFIG_DIR": str(other / "config"),
        "LILYPAD_DATA_DIR": str(other / "data"),
        "WEB3_PRIVATE_KEY": key_file(NETWORK, "provider").read_text().strip(),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "provider.log"
    command = [
        sys.executable, "-m", "lilypad", "resource-provider", "--network", NETWORK,
        "--executor", "process", "--modules", "cowsay:v0.0.4", "--max-concurrent", "2",
        "--metrics", "127.0.0.1:9100",
    ]  # fmt: skip
    provider = link.spawn(command, env, log)
    try:
        # the other machine sees this one only through the link
        solver_port = int(str(profile.solver_url).rsplit(":", 1)[1])
        assert link.reaches(link.host, solver_port)
        assert not link.reaches("127.0.0.1", solver_port)

        record = run_job(NETWORK, "cowsay:v0.0.4", "Message=over the wire")
        assert record["provider"] == profile.accounts["provider"], log.read_text()
        out = Path(record["output_dir"])
        assert "over the wire" in (out / "outputs" / "cowsay.txt").read_text()
        # the provider logs its submission once the receipt is back, which may be a moment
        # after the job creator saw the result on chain
        deadline = time.monotonic() + 10
        while "result submitted" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "result submitted" in log.read_text()
    finally:
        os.killpg(provider.pid, signal.SIGTERM)
        try:
            provider.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(provider.pid, signal.SIGKILL)
            provider.wait()
