"""Built-in modules that Lilypad also publishes keep upstream's names, defaults and ranges.

What upstream documents (github.com/Lilypad-Tech/lilypad-module-sdxl-pipeline: its README's
tunables table, the variables its image reads) is pinned here, as a user coming from Lilypad types
it; where this project's sources disagree, they win and `lilypad module show` says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliRunner

PIPELINE_VERSIONS = ["v1.0-base-lilypad3", "v1.0-refiner-lilypad3"]
COMFYUI_SAMPLERS = [
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
]  # fmt: skip
COMFYUI_SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"]


def _render(cli: CliRunner, ref: str, *inputs: str) -> dict[str, object]:
    args = [arg for pair in inputs for arg in ("-i", pair)]
    result = cli("module", "render", ref, *args, "--json")
    assert result.exit_code == 0, result.stderr
    spec: dict[str, object] = json.loads(result.stdout)
    return spec


@pytest.mark.parametrize("version", PIPELINE_VERSIONS)
def test_sdxl_pipeline_has_upstreams_tunables_and_defaults(cli: CliRunner, version: str) -> None:
    data = json.loads(cli("module", "show", f"sdxl-pipeline:{version}", "--json").stdout)
    tunables = {t["name"]: t for t in data["tunables"]}
    assert list(tunables) == ["Prompt", "Seed", "Steps", "Scheduler", "Sampler", "Size", "Batching"]
    got = {name: (t["env"], t["default"]) for name, t in tunables.items()}
    assert got == {
        "Prompt": ("PROMPT", "question mark floating in space"),
        "Seed": ("SEED", 42),
        "Steps": ("STEPS", 50),
        "Scheduler": ("SCHEDULER", "normal"),
        "Sampler": ("SAMPLER", "euler_ancestral"),
        "Size": ("SIZE", 1024),
        "Batching": ("BATCHING", 1),
    }
    assert (tunables["Steps"]["min"], tunables["Steps"]["max"]) == (5, 200)
    assert tunables["Size"]["choices"] == [512, 768, 1024, 2048]
    assert tunables["Batching"]["choices"] == [1, 2, 4, 8]
    assert tunables["Sampler"]["choices"] == COMFYUI_SAMPLERS
    assert tunables["Scheduler"]["choices"] == COMFYUI_SCHEDULERS


def test_upstream_command_line_renders_to_upstream_variables(cli: CliRunner) -> None:
    spec = _render(
        cli,
        "sdxl-pipeline:v1.0-base-lilypad3",
        "Prompt=an astronaut floating against a white background",
        "Seed=42",
        "Steps=69",
        "Size=2048",
        "Batching=8",
        "Sampler=dpmpp_2m_sde_gpu",
        "Scheduler=karras",
    )
    env = spec["env"]
    assert isinstance(env, dict)
    assert {k: env[k] for k in ("PROMPT", "SEED", "STEPS", "SIZE", "BATCHING")} == {
        "PROMPT": "an astronaut floating against a white background",
        "SEED": "42",
        "STEPS": "69",
        "SIZE": "2048",
        "BATCHING": "8",
    }
    assert (env["SAMPLER"], env["SCHEDULER"]) == ("dpmpp_2m_sde_gpu", "karras")
    # Upstream is ComfyUI: where k-diffusion and ComfyUI differ, the job samples as ComfyUI does.
    assert env["LILYPAD_SAMPLER_REFERENCE"] == "comfyui"


def test_legacy_prompt_env_fills_prompt_and_nothing_else(cli: CliRunner) -> None:
    legacy = _render(cli, "sdxl-pipeline:v1.0-base-lilypad3", "PromptEnv=PROMPT=a red fox")
    plain = _render(cli, "sdxl-pipeline:v1.0-base-lilypad3", "Prompt=a red fox")
    assert (legacy["env"], legacy["tunables"]) == (plain["env"], plain["tunables"])
    refused = cli("module", "render", "sdxl-pipeline:v1.0-base-lilypad3", "-i", "PromptEnv=SEED=1")
    assert refused.exit_code == 2
    assert "PromptEnv can only set PROMPT" in refused.stderr


@pytest.mark.parametrize(
    ("pair", "says"),
    [
        ("Sampler=k_euler_ancestral", "one of euler, euler_ancestral, heun"),
        ("Scheduler=Karras", "Did you mean 'karras'?"),
        ("Size=1000", "one of 512, 768, 1024, 2048"),
        ("Size=1024x1024", "one of 512, 768, 1024, 2048"),
        ("Batching=3", "one of 1, 2, 4, 8"),
        ("Steps=4", "from 5 to 200"),
        ("Steps=201", "from 5 to 200"),
        ("Seed=-1", "0"),
    ],
)
def test_values_upstream_refuses_are_exit_2_naming_what_is_allowed(
    cli: CliRunner, pair: str, says: str
) -> None:
    result = cli("module", "render", "sdxl-pipeline:v1.0-base-lilypad3", "-i", pair)
    assert result.exit_code == 2
    assert pair.split("=", 1)[1] in result.stderr
    assert says in result.stderr


def test_show_says_where_the_module_differs_from_upstream(cli: CliRunner) -> None:
    refiner = cli("module", "show", "sdxl-pipeline:v1.0-refiner-lilypad3").stdout
    assert "upstream ran the refiner checkpoint alone" in " ".join(refiner.split())
    base = cli("module", "show", "sdxl-pipeline:v1.0-base-lilypad3").stdout
    assert "seed 42" in " ".join(base.split())


def test_module_list_has_the_pipeline_versions(cli: CliRunner) -> None:
    out = cli("module", "list").stdout
    assert "sdxl-pipeline" in out
    for version in PIPELINE_VERSIONS:
        assert version in out


@pytest.mark.parametrize("version", ["v0.0.1", "v0.0.2", "v0.0.3"])
def test_lilypads_cowsay_versions_say_it_on_stdout(
    cli: CliRunner, tmp_path: Path, version: str
) -> None:
    """As Lilypad's documentation runs them: ``-i Message=moo``, then ``cat .../stdout``."""
    out = tmp_path / version
    result = cli("module", "run", f"cowsay:{version}", "-i", "Message=moo", "--output", str(out),
                 "--executor", "process")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "stdout").read_text().splitlines()[:3] == [" _____", "< moo >", " -----"]
    assert list((out / "outputs").iterdir()) == []  # the cow was on stdout only
    newest = tmp_path / "v0.0.4"
    assert cli("module", "run", "cowsay:v0.0.4", "-i", "Message=moo", "--output", str(newest),
               "--executor", "process").exit_code == 0  # fmt: skip
    assert (newest / "stdout").read_bytes() == (out / "stdout").read_bytes()
    assert (newest / "outputs" / "cowsay.txt").read_bytes() == (out / "stdout").read_bytes()
