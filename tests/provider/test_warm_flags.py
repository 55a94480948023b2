"""``lilypad resource-provider --warm N --warm-idle DURATION``: parsed before any I/O."""

from __future__ import annotations

import pytest

from lilypad.cli.provider import _warm
from lilypad.errors import InputError
from resource_provider.executors import WarmConfig


@pytest.mark.parametrize(
    ("workers", "idle", "expected"),
    [
        (2, "10m", WarmConfig(2, 600.0)),
        (1, "90", WarmConfig(1, 90.0)),
        (3, "1h", WarmConfig(3, 3600.0)),
        (0, "10m", None),
    ],
)
def test_warm_flags_become_the_pool_config(
    workers: int, idle: str, expected: WarmConfig | None
) -> None:
    assert _warm(workers, idle) == expected


@pytest.mark.parametrize(("workers", "idle"), [(-1, "10m"), (2, "10x"), (2, "0s"), (2, "")])
def test_bad_warm_flags_are_input_errors_naming_the_value(workers: int, idle: str) -> None:
    with pytest.raises(InputError, match="--warm"):
        _warm(workers, idle)
