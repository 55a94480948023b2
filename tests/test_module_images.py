"""The GPU images of the ML modules: one base (``module/ml-base.Dockerfile``) holds CUDA, the pinned
packages and lilypad's inference code; each module's Dockerfile adds only its weights and code.
No registry can be reached here, so these images are checked as text, against what they must
agree with: the ``ml`` extra's pins, the models lilypad can download, the manifests' entrypoints
and what the inference code imports."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from lilypad.ml.download import MODELS
from lilypad.modules import list_builtin

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "module" / "ml-base.Dockerfile"
ML_MODULES = [
    (manifest, folder)
    for manifest, folder in list_builtin()
    if any(version.tiny_models for version in manifest.versions.values())
]


def instructions(path: Path) -> list[tuple[str, str]]:
    # NOTE: read-only use: DockerfileParser writes to `path` if its content is ever assigned.
    parsed = DockerfileParser(path=str(path))
    return [
        (item["instruction"], item["value"])
        for item in parsed.structure
        if item["instruction"] != "COMMENT"
    ]


def test_the_base_pins_exactly_the_ml_extra() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {req.split("==")[0].lower(): req for req in extra["ml"]}
    assert all("==" in req for req in pins.values()), "the ml extra pins every package exactly"
    installs = [v for i, v in instructions(BASE) if i == "RUN" and "pip install" in v]
    assert len(installs) == 1
    installed = {req.split("==")[0].lower(): req for req in installs[0].split() if "==" in req}
    assert {name: installed.get(name) for name in pins} == pins


def test_ml_modules_build_on_the_base_and_add_only_weights_and_code() -> None:
    assert {m.name for m, _ in ML_MODULES} >= {"sdxl", "sdv-pipeline", "sdxl-img2img"}
    for manifest, folder in ML_MODULES:
        steps = instructions(folder / "Dockerfile")
        assert steps[0] == ("ARG", "BASE=lilypad/ml-base:local"), manifest.name
        assert steps[1] == ("FROM", "${BASE}"), manifest.name
        assert not [v for i, v in steps if i == "RUN" and "pip" in v], manifest.name
        assert sum(1 for i, _ in steps if i == "FROM") == 1, manifest.name
        downloads = " ".join(v for i, v in steps if i == "RUN" and "lilypad.ml.download" in v)
        named = set(re.findall(r"\b(?:sd|sdxl|svd|lcm)[a-z0-9.-]*-\d+(?:\.\d+)?\b", downloads))
        for run in downloads.split("lilypad.ml.download")[1:]:  # every folder named literally
            named |= {w for w in run.split("&&")[0].split() if w != "\\" and w[0] != "$"}
        assert named, f"{manifest.name} bakes no weights"
        assert named <= set(MODELS), f"{manifest.name} downloads models lilypad does not know"
        # `docker run IMAGE` by hand runs what a job of the newest version runs
        cmd = json.loads(next(v for i, v in steps if i == "CMD"))
        assert tuple(cmd) in {v.entrypoint for v in manifest.versions.values()}, manifest.name


@pytest.mark.parametrize(
    "path",
    sorted([*(ROOT / "lilypad" / "ml").glob("*.py"), *(ROOT / "module").glob("*/*.py")]),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_inference_code_needs_only_what_the_base_copies(path: Path) -> None:
    # the base copies lilypad/__init__.py, lilypad/errors.py and lilypad/ml/
    allowed = ("lilypad", "lilypad.errors", "lilypad.ml")
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name == "lilypad" or name.startswith("lilypad."):
                assert name in allowed or name.startswith("lilypad.ml."), (
                    f"{path.name} imports {name}, which the module images do not carry"
                )
