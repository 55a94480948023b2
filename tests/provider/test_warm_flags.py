"""``lilypad resource-provider --warm N --warm-idle DURATION --warm-memory SIZE``: parsed
before any I/O; ``--warm auto``, the default: as many workers as the machine's RAM holds."""

from __future__ import annotations

import pytest

from lilypad.cli.provider import _warm
from lilypad.errors import InputError
from resource_provider.executors import WarmConfig
from resource_provider.executors import warm as warm_pool


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


@pytest.mark.parametrize(
    ("memory", "expected"),
    [("24G", 24 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("1000", 1000), ("auto", None)],
)
def test_warm_memory_is_a_size_or_auto(memory: str, expected: int | None) -> None:
    assert _warm(1, "10m", memory) == WarmConfig(1, 600.0, expected)


@pytest.mark.parametrize("memory", ["lots", "0G", "-1M", "24X", ""])
def test_a_bad_warm_memory_is_an_input_error_naming_it(memory: str) -> None:
    with pytest.raises(InputError, match=f"--warm-memory '{memory}' is not a size"):
        _warm(1, "10m", memory)


@pytest.mark.parametrize(("ram_gib", "workers"), [(128, 2), (32, 2), (24, 1), (8, 1), (4, 0)])
def test_warm_auto_keeps_the_workers_the_ram_holds_and_is_the_default(
    monkeypatch: pytest.MonkeyPatch, ram_gib: int, workers: int
) -> None:
    monkeypatch.setattr(warm_pool, "machine_memory", lambda: ram_gib << 30)
    expected = WarmConfig(workers, 600.0) if workers else None
    assert _warm("auto", "10m") == expected
    assert _warm("2", "10m") == WarmConfig(2, 600.0)
    assert _warm(None, "10m") == expected  # without --warm: auto
    assert _warm("0", "10m") is None  # every job cold
    if expected is not None:
        assert expected.memory_budget == ram_gib << 29  # half of it
