"""A local chain leaves nothing behind: anvil's dump of its dev keys and its log go with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from lilypad.chain.anvil import Anvil, free_port
from tests.conftest import CliRunner


def reaped(pid: int, timeout: float = 15) -> bool:
    """Wait for our child ``pid`` (a detached anvil) to exit and reap it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Our own temp folder, so other tests' chains do not show up in it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_detached_chain_leaves_no_keys_or_log_behind(cli: CliRunner, temp_dir: Path) -> None:
    result = cli("chain", "up", "--port", str(free_port()), "--detach", "--json")
    assert result.exit_code == 0, result.stderr
    pid = json.loads(result.stdout)["pid"]
    try:
        assert list(temp_dir.glob("lilypad-anvil-*")) == []  # not even while it runs
        assert cli("chain", "down").exit_code == 0
        assert reaped(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert list(temp_dir.glob("lilypad-anvil-*")) == []


def test_an_attached_chain_keeps_its_keys_in_memory_only(temp_dir: Path) -> None:
    with Anvil() as node:
        assert len(node.accounts) == 10
        assert list(temp_dir.rglob("anvil.json")) == []
    assert list(temp_dir.glob("lilypad-anvil-*")) == []
