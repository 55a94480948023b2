"""The whole system through the CLI, as a user runs it: ``lilypad network up``, ``lilypad run``,
``lilypad network down`` — every service its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilypad.chain.anvil import port_in_use
from lilypad.localnet import PORTS, key_file
from lilypad.storage import compute_cid

NETWORK = "e2e"


def lilypad(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lilypad", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )


@pytest.fixture
def network() -> Iterator[None]:
    busy = [port for port in (8545, *PORTS.values()) if port_in_use(port)]
    if busy:
        message = f"ports {busy} are in use; the local network needs them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    up = lilypad("network", "up", "--network", NETWORK, "--detach", "--executor", "process")
    try:
        assert up.returncode == 0, up.stderr
        yield
    finally:
        down = lilypad("network", "down", "--network", NETWORK)
        assert down.returncode == 0, down.stderr


@pytest.mark.slow
def test_network_up_runs_jobs_end_to_end(network: None) -> None:
    status = json.loads(lilypad("network", "status", "--network", NETWORK, "--json").stdout)
    assert {s["service"]: s["running"] for s in status["services"]} == {
        "chain": True,
        "ipfs": True,
        "solver": True,
        "provider": True,
        "mediator": True,
        "bridge": True,
    }
    key = str(key_file(NETWORK, "job_creator"))
    result = lilypad(
        "run",
        "cowsay:v0.0.4",
        "-i",
        "Message=hello from the network",
        "--network",
        NETWORK,
        "--key-file",
        key,
        "--yes",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    out = Path(record["output_dir"])
    assert "hello from the network" in (out / "outputs" / "cowsay.txt").read_text()
    assert (out / "exitCode").read_text() == "0"
    # the CID on chain is the CID of exactly what was saved
    assert str(compute_cid(out)) == record["result_cid"]

    # an ML module with tiny weights, through the same network
    sdxl = lilypad(
        "run",
        "sdxl:v0.9-lilypad1",
        "-i",
        "Prompt=a lighthouse",
        "--network",
        NETWORK,
        "--key-file",
        key,
        "--yes",
        "--json",
        timeout=600,
    )
    assert sdxl.returncode == 0, sdxl.stderr
    image = Path(json.loads(sdxl.stdout)["output_dir"]) / "outputs" / "image-0.png"
    assert image.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
