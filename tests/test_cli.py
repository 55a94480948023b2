"""The CLI as a user drives it: help, version, module list/show/render, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lilypad import __version__
from tests.conftest import CliRunner

REQUIRED_MODULES = {
    "cowsay": ["v0.0.4"],
    "sdxl": ["v0.9-lilypad1", "v1.0-lilypad1"],
    "sdxl-pipeline": ["v1.0-base-lilypad3", "v1.0-refiner-lilypad3"],
    "sdv-pipeline": [
        "v1.0-lilypad2",
        "v1.1-lilypad2",
        "v1.0-lilypad3",
        "v1.1-lilypad3",
        "v1.0-lilypad4",
        "v1.1-lilypad4",
    ],
    "sdxl-img2img": ["v1.0-lilypad1", "v1.1-lilypad1"],
    "sdxl-inpainting": ["v1.0-lilypad1", "v1.1-lilypad1"],
    "sdxl-outpainting": ["v1.0-lilypad1", "v1.1-lilypad1"],
    "sd15": ["v1.0-lilypad1"],
    "sd21": ["v1.0-lilypad1"],
    "sdxl-turbo": ["v1.0-lilypad1", "v1.1-lilypad1"],
    "sd-turbo": ["v1.0-lilypad1", "v1.1-lilypad1"],
    "lcm": ["v1.0-lilypad1", "v1.1-lilypad1"],
}


def test_help_lists_commands(cli: CliRunner) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for word in ("version", "module", "--debug", "--json"):
        assert word in result.stdout


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand of ``lilypad``, as the words that name it."""
    import typer.main

    from lilypad.cli import app

    def walk(group: object, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path]
        for name, command in getattr(group, "commands", {}).items():
            found += walk(command, (*path, name))
        return found

    return walk(typer.main.get_command(app), ())


@pytest.mark.parametrize("words", _command_paths(), ids=lambda w: " ".join(w) or "lilypad")
def test_every_command_s_help_renders(cli: CliRunner, words: tuple[str, ...]) -> None:
    # help text is rich markup: a stray [/...] in it made `lilypad run --help` an internal error
    result = cli(*words, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage" in result.stdout


def test_version_human_and_json(cli: CliRunner) -> None:
    assert __version__ in cli("version").stdout
    data = json.loads(cli("version", "--json").stdout)
    assert data["version"] == __version__
    # --json given globally works the same
    assert json.loads(cli("--json", "version").stdout) == data
    assert cli("--version").stdout.strip() == f"lilypad {__version__}"


def test_the_shell_completes_commands_and_subcommands() -> None:
    """What bash's completion (``lilypad --install-completion``) asks the console script."""
    lilypad = Path(sys.executable).with_name("lilypad")

    def complete(*words: str) -> list[str]:
        env = os.environ | {
            "_LILYPAD_COMPLETE": "complete_bash",
            "COMP_WORDS": " ".join(["lilypad", *words]),
            "COMP_CWORD": str(len(words)),
        }
        done = subprocess.run([lilypad], env=env, capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert complete("jo") == ["jobcreator", "jobs"]
    assert {"list", "show"} <= set(complete("jobs", ""))
    script = subprocess.run(
        [lilypad, "--show-completion", "bash"], capture_output=True, text=True, check=True
    ).stdout
    assert "_LILYPAD_COMPLETE=complete_bash" in script  # what bash then runs, as above


def test_module_list_json_has_builtin_modules(cli: CliRunner) -> None:
    result = cli("module", "list", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    by_name = {item["name"]: item for item in data}
    for name, versions in REQUIRED_MODULES.items():
        assert set(versions) <= set(by_name[name]["versions"])
        assert by_name[name]["description"]
    for item in data:
        assert set(item) == {"name", "versions", "description"}


def test_module_list_human(cli: CliRunner) -> None:
    out = cli("module", "list").stdout
    for name, versions in REQUIRED_MODULES.items():
        assert name in out
        for version in versions:
            assert version in out


def test_module_show_json_describes_everything(cli: CliRunner) -> None:
    data = json.loads(cli("module", "show", "sdxl:v0.9-lilypad1", "--json").stdout)
    assert data["ref"] == "sdxl:v0.9-lilypad1"
    assert data["image"] == "lilypad/sdxl:v0.9-lilypad1"
    assert data["machine"]["gpus"] == 1
    assert {"vram_gb", "cpus", "ram_gb", "disk_gb"} <= set(data["machine"])
    assert data["timeout_s"] > 0
    assert data["network"] == "none"
    assert data["outputs"] == "/outputs"
    tunables = {t["name"]: t for t in data["tunables"]}
    assert set(tunables) == {"Prompt", "Seed"}
    seed = tunables["Seed"]
    assert {"name", "type", "default", "min", "max", "choices", "env", "description"} <= set(seed)
    assert (seed["type"], seed["default"], seed["min"], seed["env"]) == ("int", 0, 0, "RANDOM_SEED")
    assert tunables["Prompt"]["default"] == "question mark floating in space"


def test_module_show_human(cli: CliRunner) -> None:
    out = cli("module", "show", "sdxl:v1.0-lilypad1").stdout
    for word in ("RefinerSwitch", "GuidanceScale", "lilypad/sdxl:v1.0-lilypad1", "GPU"):
        assert word in out


def test_reference_without_version_picks_newest_and_says_so(cli: CliRunner) -> None:
    result = cli("module", "show", "sdv-pipeline", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["version"] == "v1.1-lilypad4"
    assert data["resolved_newest"] is True
    assert "sdv-pipeline:v1.1-lilypad4" in result.stderr
    assert "newest" in result.stderr


def test_render_json_fields(cli: CliRunner) -> None:
    result = cli(
        "module",
        "render",
        "sdxl:v0.9-lilypad1",
        "-i",
        "Prompt=beautiful view of iceland with a record player",
        "-i",
        "Seed=24",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    spec = json.loads(result.stdout)
    assert spec["module"] == "sdxl:v0.9-lilypad1"
    assert spec["version"] == "v0.9-lilypad1"
    assert spec["image"] == "lilypad/sdxl:v0.9-lilypad1"
    assert spec["entrypoint"]
    assert spec["env"]["PROMPT"] == "beautiful view of iceland with a record player"
    assert spec["env"]["RANDOM_SEED"] == "24"
    assert spec["network"] == "none"
    assert spec["outputs"] == "/outputs"
    assert spec["tunables"] == {
        "Prompt": "beautiful view of iceland with a record player",
        "Seed": 24,
    }
    assert spec["machine"]["gpus"] == 1
    assert spec["timeout_s"] > 0
    assert spec["spec_hash"].startswith("sha256:")


def test_render_is_byte_identical_and_hash_tracks_inputs(cli: CliRunner) -> None:
    args = (
        "module",
        "render",
        "sdv-pipeline:v1.1-lilypad2",
        "-i",
        "Prompt=an astronaut floating",
        "-i",
        "Steps=69",
        "-i",
        "VideoSteps=70",
    )
    first, second = cli(*args, "--json"), cli(*args, "--json")
    assert first.stdout == second.stdout
    assert cli(*args).stdout == cli(*args).stdout
    other = json.loads(cli(*args[:-1], "VideoSteps=69", "--json").stdout)
    assert other["spec_hash"] != json.loads(first.stdout)["spec_hash"]


def test_render_fills_defaults(cli: CliRunner) -> None:
    spec = json.loads(cli("module", "render", "sdv-pipeline:v1.0-lilypad2", "--json").stdout)
    assert spec["tunables"] == {
        "Prompt": "question mark floating in space",
        "Framerate": 8,
        "Seed": 42,
        "Steps": 50,
        "Scheduler": "normal",
        "Sampler": "euler_ancestral",
        "Batching": 1,
        "VideoSeed": 42,
        "VideoSteps": 50,
        "VideoScheduler": "normal",
        "VideoSampler": "euler_ancestral",
    }


def test_legacy_inputs_map_onto_tunables(cli: CliRunner) -> None:
    legacy = json.loads(
        cli(
            "module",
            "render",
            "sdxl:v0.9-lilypad1",
            "-i",
            "PromptEnv=PROMPT=beautiful view of iceland with a record player",
            "-i",
            "SeedEnv=RANDOM_SEED=24",
            "--json",
        ).stdout
    )
    typed = json.loads(
        cli(
            "module",
            "render",
            "sdxl:v0.9-lilypad1",
            "-i",
            "Prompt=beautiful view of iceland with a record player",
            "-i",
            "Seed=24",
            "--json",
        ).stdout
    )
    assert legacy == typed


def test_image_seed_is_an_alias_of_seed(cli: CliRunner) -> None:
    spec = json.loads(
        cli(
            "module",
            "render",
            "sdv-pipeline:v1.1-lilypad2",
            "-i",
            "ImageSeed=696721260153400",
            "--json",
        ).stdout
    )
    assert spec["tunables"]["Seed"] == 696721260153400
    assert spec["env"]["SEED"] == "696721260153400"


BAD_INPUTS = [
    # (args, words the one-line error must contain)
    (["module", "show", "sdxll"], ["sdxll", "sdxl"]),
    (["module", "show", "sdxl:v9"], ["v9", "v0.9-lilypad1", "v1.0-lilypad1"]),
    (["module", "render", "sdxl:v0.9-lilypad1", "-i", "Sed=1"], ["Sed", "Seed", "Prompt"]),
    (["module", "render", "sdxl:v0.9-lilypad1", "-i", "Seed=abc"], ["Seed", "abc", "integer"]),
    (["module", "render", "sdxl:v0.9-lilypad1", "-i", "Seed=-1"], ["Seed", "-1", "0"]),
    (
        ["module", "render", "sdv-pipeline:v1.1-lilypad2", "-i", "Steps=201"],
        ["Steps", "201", "5", "200"],
    ),
    (
        ["module", "render", "sdv-pipeline:v1.1-lilypad2", "-i", "VideoSteps=71"],
        ["VideoSteps", "71", "70"],
    ),
    (
        ["module", "render", "sdv-pipeline:v1.1-lilypad2", "-i", "Batching=3"],
        ["Batching", "3", "1, 2, 4, 8"],
    ),
    (["module", "render", "sdv-pipeline:v1.1-lilypad2", "-i", "Sampler=eulr"], ["eulr", "euler"]),
    (
        ["module", "render", "sdv-pipeline:v1.1-lilypad2", "-i", "Scheduler=linear"],
        ["linear", "karras"],
    ),
    (
        ["module", "render", "sdv-pipeline:v1.1-lilypad2", "-i", "VideoSteps"],
        ["VideoSteps", "KEY=VALUE"],
    ),
    (["module", "render", "sdxl:v0.9-lilypad1", "-i", "Seed=1", "-i", "Seed=2"], ["Seed", "twice"]),
    (
        ["module", "render", "sdv-pipeline:v1.1-lilypad2", "-i", "Seed=1", "-i", "ImageSeed=2"],
        ["Seed", "twice"],
    ),
    (
        ["module", "render", "sdxl:v0.9-lilypad1", "-i", "PromptEnv=PROMPT=x", "-i", "Prompt=y"],
        ["Prompt", "twice"],
    ),
    (
        ["module", "render", "sdxl:v0.9-lilypad1", "-i", "Prompt=" + "x" * 2001],
        ["Prompt", "2001", "2000"],
    ),
    (
        ["module", "render", "sdxl:v0.9-lilypad1", "-i", "Prompt=a\nb"],
        ["Prompt", "control character"],
    ),
    (
        ["module", "render", "sdxl:v0.9-lilypad1", "-i", "Prompt=a\x1bb"],
        ["Prompt", "control character"],
    ),
    (
        ["module", "render", "sdxl:v0.9-lilypad1", "-i", "PromptEnv=PATH=/evil"],
        ["PromptEnv", "PROMPT"],
    ),
    (
        ["module", "render", "sdxl:v0.9-lilypad1", "-i", "SeedEnv=LD_PRELOAD=x.so"],
        ["SeedEnv", "RANDOM_SEED"],
    ),
    (["module", "render", "sdxl:v0.9-lilypad1", "-i", "PROMPT=x"], ["PROMPT", "Prompt"]),
    (["module", "render", "sdxl:v0.9-lilypad1", "-i", "image=evil"], ["image"]),
    (
        ["module", "render", "sdxl:v1.0-lilypad1", "-i", "Width=1001"],
        ["Width", "1001", "multiple of 8"],
    ),
    (
        ["module", "render", "sdxl:v1.0-lilypad1", "-i", "GuidanceScale=nan"],
        ["GuidanceScale", "nan"],
    ),
    (
        ["module", "render", "sdxl:v1.0-lilypad1", "-i", "RefinerSwitch=1.5"],
        ["RefinerSwitch", "1.5", "1"],
    ),
    (["network", "up", "--providers", "17"], ["--providers 17", "at most 16"]),
    (["network", "up", "--host", "lab-box"], ["--host", "lab-box", "IPv4 address"]),
    (["network", "up", "--host", "0.0.0.0"], ["--host 0.0.0.0", "other machines reach"]),
    (["network", "up", "--executor", "vm"], ["--executor", "vm", "docker, process"]),
    (["network", "up", "--weights", "huge"], ["--weights", "huge", "real, tiny, auto"]),
    (["network", "up", "--module", "cowsay:v0.0.4"], ["cowsay:v0.0.4", "served already"]),
    (["network", "up", "--module", "/no/such/module:v1"], ["/no/such/module"]),
    (["network", "logs", "dashboard"], ["dashboard", "chain", "provider"]),
    (
        ["resource-provider", "--executor-for", "sdxl=process"],
        ["sdxl=process", "MODULE:VERSION=KIND"],
    ),
    (
        ["mediator", "--executor-for", "sdxl:v0.9-lilypad1=vm"],
        ["sdxl:v0.9-lilypad1=vm", "'vm'", "docker, process"],
    ),
]


@pytest.mark.parametrize(
    ("args", "words"),
    BAD_INPUTS,
    ids=lambda v: " ".join(v)[:60] if isinstance(v, list) and v and v[0] == "module" else None,
)
def test_bad_input_is_one_line_and_exit_2(
    cli: CliRunner, args: list[str], words: list[str]
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr  # the error, and at most one hint line
    assert lines[0].startswith("Error:")
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def test_debug_shows_traceback(cli: CliRunner) -> None:
    plain = cli("module", "show", "nope")
    debug = cli("--debug", "module", "show", "nope")
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr


def test_console_script_runs() -> None:
    """The installed entry point, as a user runs it, with a real exit code."""
    done = subprocess.run(
        [sys.executable, "-m", "lilypad", "module", "show", "sdxll"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "sdxl" in done.stderr


def test_spec_hash_is_the_hash_of_the_canonical_spec(cli: CliRunner) -> None:
    import hashlib

    spec = json.loads(
        cli("module", "render", "sdxl:v1.0-lilypad1", "-i", "Width=768", "--json").stdout
    )
    claimed = spec.pop("spec_hash")

    # RFC 8785 for this spec (ASCII keys, no big integers): sorted compact JSON in which a whole
    # float is written as an integer, as JavaScript's JSON.stringify writes it (16, not 16.0)
    def js(value: object) -> object:
        if isinstance(value, dict):
            return {k: js(v) for k, v in value.items()}
        return int(value) if isinstance(value, float) and value.is_integer() else value

    body = json.dumps(js(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert '"vram_gb":16}' in body
    assert claimed == "sha256:" + hashlib.sha256(body.encode()).hexdigest()
