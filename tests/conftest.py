"""Fixtures shared by every test: an isolated home and data dir, and an in-process CLI runner."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from lilypad.cli import main


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
                main()
            except SystemExit as exc:
                code = exc.code
        return CliResult(int(code or 0), out.getvalue(), err.getvalue())

    return run
