"""What the benches that drive a local network through the CLI share: a private environment
(the user's own state is never read or touched) and one way to run a command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LILYPAD = [sys.executable, "-m", "lilypad"]


def private_env(root: Path) -> dict[str, str]:
    """The environment for every command: home, data, config and cache under ``root``, and none
    of the user's key or executor and IPFS choices."""
    env = dict(os.environ)
    env.update(
        HOME=str(root / "home"),
        LILYPAD_DATA_DIR=str(root / "data"),
        LILYPAD_CONFIG_DIR=str(root / "config"),
        LILYPAD_CACHE_DIR=str(root / "cache"),
        PYTHONUNBUFFERED="1",
    )
    for name in ("WEB3_PRIVATE_KEY", "LILYPAD_EXECUTOR", "LILYPAD_IPFS_API"):
        env.pop(name, None)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``lilypad ARGS`` in ``env``, its output captured; never raises for its exit code."""
    return subprocess.run(
        [*LILYPAD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
