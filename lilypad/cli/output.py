"""Console output shared by the CLI commands: rich for people, plain JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console


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
