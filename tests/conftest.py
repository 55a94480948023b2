"""Fixtures shared by every test: an isolated home and data dir, an in-process CLI runner, and the
reference UnixFS importer."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from lilypad.cli import invoke as invoke_cli
from lilypad.storage.importer import ImportProfile

JS_DIR = Path(__file__).parent / "storage" / "js"

#: Root CID of a path from the reference importer, with an import profile.
Reference = Callable[[Path, ImportProfile], str]


def missing(what: str, how: str) -> None:
    """Fail loudly in CI (the component must be installed there), skip with a reason locally."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI; {how}")
    pytest.skip(f"{what} is not installed; {how}")


@pytest.fixture(scope="session")
def js_reference() -> Reference:
    """Root CID from the reference JS importer (ipfs-unixfs-importer) with kubo's layout."""
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "ipfs-unixfs-importer").is_dir():
        missing("the reference JS importer", "run `make storage-js` (needs node and npm)")
    assert node is not None

    def run(path: Path, profile: ImportProfile) -> str:
        args = [str(profile.cid_version), "1" if profile.raw_leaves else "0"]
        args += [str(profile.chunk_size), str(profile.max_links)]
        result = subprocess.run(
            [node, str(JS_DIR / "reference.mjs"), str(path), *args],
            capture_output=True,
            text=True,
            timeout=100,
            check=True,
        )
        return result.stdout.strip()

    return run


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Keep every test away from the user's files: own $HOME, data dir and cache."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LILYPAD_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("LILYPAD_CACHE_DIR", str(home / "cache"))
    monkeypatch.delenv("LILYPAD_MODULES_DIR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    # Lilypad's variables override a network profile: one set on this machine changes nothing
    for name in ("WEB3_RPC_URL", "WEB3_CHAIN_ID", "SERVICE_SOLVER", "SERVICE_MEDIATORS",
                 "IPFS_CONNECT", "DATA_DIR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return home


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """Run ``lilypad ARGS...`` in-process through the real entry point (errors and exit codes)."""

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "argv", ["lilypad", *args])
        code: int | str | None = 0
        with redirect_stdout(out), redirect_stderr(err):
            try:
                invoke_cli()
            except SystemExit as exc:
                code = exc.code
        return CliResult(int(code or 0), out.getvalue(), err.getvalue())

    return run
