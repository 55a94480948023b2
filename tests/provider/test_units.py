"""The provider's small parts: amounts, machine probing, log redaction, result comparison, CLI
errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from lilypad.cli.provider import parse_amount
from lilypad.errors import InputError
from lilypad.modules.manifest import Verification, VerificationMethod
from resource_provider.logs import JsonFormatter, SecretFilter
from resource_provider.machine import Gpu, Hardware, detect, parse_nvidia_smi
from resource_provider.state import DealRecord, JsonStore, Phase, write_atomic
from resource_provider.verify import compare
from tests.conftest import CliRunner

KEY = "0x" + "ab" * 32


def test_amounts_are_tokens_with_18_decimals() -> None:
    assert parse_amount("1", "--price") == 10**18
    assert parse_amount("0.5", "--price") == 5 * 10**17
    assert parse_amount("0", "--price") == 0
    for bad in ("-1", "abc", "1e-19", "nan", "1e30"):
        with pytest.raises(InputError, match="--price"):
            parse_amount(bad, "--price")


def test_nvidia_smi_output_is_parsed_and_offered() -> None:
    text = "NVIDIA H100 80GB HBM3, 81559, 550.54.15\nNVIDIA A10, 23028, 550.54.15\ngarbage\n"
    gpus = parse_nvidia_smi(text)
    assert gpus == [
        Gpu("NVIDIA H100 80GB HBM3", 81559, "550.54.15"),
        Gpu("NVIDIA A10", 23028, "550.54.15"),
    ]
    machine = Hardware(tuple(gpus), cpus=16, ram_mb=65536, disk_mb=100_000).machine()
    assert (machine.gpus, machine.vram_mb, machine.cpu_millis) == (2, 23028, 16000)
    assert Hardware((), 2, 1024, 10).machine(gpus=1).gpus == 1


def test_detect_reports_this_machine(tmp_path: Path) -> None:
    found = detect(tmp_path / "not-yet")
    assert found.cpus >= 1
    assert found.ram_mb > 0
    assert found.disk_mb > 0
    if not found.gpus:
        assert found.notes  # says why no GPU was found


def test_the_key_never_reaches_a_log_line() -> None:
    record = logging.LogRecord(
        "lilypad", logging.INFO, __file__, 1, "key %s and %s", (KEY, KEY[2:]), None
    )
    SecretFilter([KEY]).filter(record)
    line = JsonFormatter().format(record)
    assert "ab" * 32 not in line
    assert json.loads(line)["msg"] == "key *** and ***"


def test_state_files_are_replaced_whole(tmp_path: Path) -> None:
    store = JsonStore(tmp_path)
    store.set_meta(next_block=7)
    assert JsonStore(tmp_path).meta("next_block") == 7
    write_atomic(tmp_path / "x.json", b"{}")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "deals").mkdir()
    (tmp_path / "deals" / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json"):
        list(store.all("deals", DealRecord))
    assert Phase.SETTLED.is_terminal()
    assert not Phase.RAN.is_terminal()


def _result(root: Path, shade: int, stdout: str = "ok\n") -> Path:
    (root / "outputs").mkdir(parents=True)
    Image.new("RGB", (16, 16), (shade, shade, shade)).save(root / "outputs" / "image.png")
    (root / "stdout").write_text(stdout)
    (root / "stderr").write_text(f"took {shade} ms\n")  # not compared
    (root / "exitCode").write_text("0")
    return root


def test_perceptual_comparison_uses_the_module_tolerance(tmp_path: Path) -> None:
    policy = Verification(method=VerificationMethod.PERCEPTUAL, tolerance=2.0)
    ours = _result(tmp_path / "ours", 100)
    assert compare(policy, ours, _result(tmp_path / "near", 101)).matches
    far = compare(policy, ours, _result(tmp_path / "far", 140))
    assert not far.matches
    assert "40.000 > tolerance 2.0" in far.reason
    assert not compare(policy, ours, _result(tmp_path / "said", 100, "other\n")).matches


def test_cli_refuses_bad_options_with_exit_2(cli: CliRunner) -> None:
    result = cli("resource-provider", "--network", "nowhere")
    assert result.exit_code == 2
    assert "unknown network 'nowhere'" in result.stderr
    result = cli("mediator", "--network", "nowhere")
    assert result.exit_code == 2
