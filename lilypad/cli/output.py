"""Console output shared by the CLI commands: rich for people, plain JSON for programs."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape


@dataclass
class _State:
    debug: bool = False
    json: bool = False


state = _State()
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def dumps(data: Any) -> str:
    """JSON as the CLI prints it: indented, keys sorted, so equal data prints byte-identically."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)


def emit(data: Any, json_output: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON when ``--json`` was given (here or at the root), else ``human()``."""
    if json_output or state.json:
        print(dumps(data))
    else:
        human()


def note(message: str) -> None:
    """A remark for people, on stderr so it never mixes with data on stdout."""
    err_console.print(message, highlight=False, soft_wrap=True)


class _Warnings(logging.Handler):
    def __init__(self, color: str) -> None:
        super().__init__(logging.WARNING)
        self.color = color
        self.shown: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.shown.append(message)
        note(f"[bold {self.color}]warning:[/] {escape(message)}")


@contextlib.contextmanager
def show_warnings(logger_name: str, color: str = "yellow") -> Iterator[list[str]]:
    """Show what ``logger_name`` (and its children) warn about as the CLI's own warnings, on
    stderr, while the block runs; yields the messages shown."""
    logger = logging.getLogger(logger_name)
    handler = _Warnings(color)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler.shown
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
