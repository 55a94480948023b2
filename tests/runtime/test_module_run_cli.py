"""``lilypad module run`` and ``lilypad module build`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliRunner
from tests.runtime.conftest import FIXTURES


def test_run_json_gives_the_result_summary(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "result"
    result = cli("module", "run", "cowsay", "-i", "Message=hi", "--output", str(out),
                 "--executor", "process", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"output_dir", "exit_code", "duration_ms", "spec_hash"}
    assert data["output_dir"] == str(out)
    assert data["exit_code"] == 0
    assert data["spec_hash"].startswith("sha256:")
    assert "< hi >" in (out / "outputs" / "cowsay.txt").read_text()
    assert "executor: process" in result.stderr


def test_run_shows_the_outputs_for_people(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("module", "run", "cowsay", "--output", str(tmp_path), "--executor", "process")
    assert result.exit_code == 0, result.stderr
    assert "cowsay:v0.0.4 finished" in result.stdout
    assert "outputs/cowsay.txt" in result.stdout


def test_a_failing_module_exits_non_zero_with_its_stderr_tail(
    cli: CliRunner, tmp_path: Path
) -> None:
    result = cli("module", "run", str(FIXTURES / "crash"), "--output", str(tmp_path),
                 "--executor", "process")  # fmt: skip
    assert result.exit_code == 1
    assert "fatal: the fixture crashed on purpose" in result.stderr
    assert "exited with code 3" in result.stderr
    assert (tmp_path / "exitCode").read_text() == "3"


def test_a_timeout_is_reported_as_such(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("module", "run", str(FIXTURES / "hang"), "--output", str(tmp_path),
                 "--executor", "process", "--json")  # fmt: skip
    assert result.exit_code == 1
    assert json.loads(result.stdout)["exit_code"] == 124
    assert "killed after running into its 2 s timeout" in result.stderr


def test_a_non_empty_output_folder_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("module", "run", "cowsay", "--output", str(tmp_path), "--executor", "process")
    assert result.exit_code == 2
    assert f"--output {tmp_path} is not empty and not a previous job result" in result.stderr
    assert "notes.txt" in result.stderr


def test_bad_inputs_are_refused_before_anything_runs(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = cli("module", "run", "cowsay", "-i", "Mesage=hi", "--output", str(out),
                 "--executor", "process")  # fmt: skip
    assert result.exit_code == 2
    assert "Message" in result.stderr  # the close match is suggested
    assert not out.exists()


def test_an_unknown_executor_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("module", "run", "cowsay", "--output", str(tmp_path), "--executor", "podman")
    assert result.exit_code == 2
    assert "podman" in result.stderr


def test_without_an_engine_process_is_chosen_and_the_cli_says_why(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    result = cli("module", "run", "cowsay", "--output", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert "executor: process" in result.stderr
    assert "chosen automatically: no Docker Engine answers" in result.stderr


def test_asking_for_docker_without_an_engine_is_a_clear_error(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    result = cli("module", "run", "cowsay", "--output", str(tmp_path / "o"), "--executor", "docker")
    assert result.exit_code == 1
    assert "no Docker Engine answers" in result.stderr
    assert "--executor process" in result.stderr


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
def test_with_an_engine_docker_is_chosen(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("module", "run", "cowsay", "--output", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert "executor: docker" in result.stderr
    assert "chosen automatically: a Docker Engine answers" in result.stderr


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
def test_build_builds_an_offline_image(cli: CliRunner) -> None:
    result = cli("module", "build", str(FIXTURES / "silent"), str(FIXTURES / "crash"), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [item["image"] for item in data] == [
        "lilypad-test/silent:local",
        "lilypad-test/crash:local",
    ]
    assert all(item["id"].startswith("sha256:") for item in data)


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
def test_build_without_a_dockerfile_says_so(cli: CliRunner) -> None:
    result = cli("module", "build", str(FIXTURES / "missing-image"))
    assert result.exit_code == 1
    assert "has no Dockerfile to build lilypad-test/never-built:local from" in result.stderr
