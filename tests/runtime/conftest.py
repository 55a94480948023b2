"""Fixtures for the executor tests: fixture modules, a real Docker Engine and its images."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from lilypad import modules
from lilypad.modules import ResolvedModule
from resource_provider.executors import (
    DockerExecutor,
    ExecutionResult,
    Executor,
    Job,
    ProcessExecutor,
    Sandbox,
    Weights,
    engine_problem,
)
from resource_provider.executors.images import build_image
from resource_provider.executors.process import bwrap_problem
from tests.conftest import missing

FIXTURES = Path(__file__).parent.parent / "fixtures" / "modules"
IN_CI = os.environ.get("CI") == "true"


def fixture_module(name: str) -> ResolvedModule:
    """A fixture module from tests/fixtures/modules/, resolved as a local-folder reference."""
    return modules.resolve(str(FIXTURES / name))


def run_job(
    executor: Executor,
    module: ResolvedModule | str,
    output: Path,
    *inputs: str,
    weights: Weights = Weights.REAL,
) -> ExecutionResult:
    resolved = modules.resolve(module) if isinstance(module, str) else module
    spec = modules.render(resolved, inputs)
    return executor.run(Job.of(resolved, spec, output, weights))


def offline_image_dirs() -> list[Path]:
    root = Path(__file__).parent.parent.parent
    return [root / "module" / "cowsay", *(p.parent for p in FIXTURES.glob("*/Dockerfile"))]


@pytest.fixture(scope="session")
def docker_images() -> Iterator[docker.DockerClient]:
    """A client of the real Docker Engine with the offline images (re)built, as `make images` does.

    In CI (CI=true) a missing engine fails the docker tests; elsewhere they are skipped.
    """
    problem = engine_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"the docker tests need a Docker Engine in CI: {problem}")
        pytest.skip(f"needs a Docker Engine: {problem}")
    client = docker.from_env()
    for folder in offline_image_dirs():  # the build cache makes an unchanged image cost ~nothing
        build_image(client, folder, modules.resolve(str(folder)).spec.image)
    yield client
    client.close()


def process_executor() -> ProcessExecutor:
    """The sandboxed process executor. Where bubblewrap cannot sandbox jobs its tests fail in
    CI and are skipped elsewhere: they never run unsandboxed."""
    problem = bwrap_problem()
    if problem is not None:
        missing(f"a working bubblewrap ({problem})", "apt-get install bubblewrap")
    return ProcessExecutor(sandbox=Sandbox.BWRAP)


@pytest.fixture(
    params=[
        pytest.param("process", id="process"),
        pytest.param("docker", id="docker", marks=pytest.mark.docker),
    ]
)
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each executor in turn: every behaviour test runs against both."""
    if request.param == "docker":
        request.getfixturevalue("docker_images")
        with DockerExecutor() as docker_executor:
            yield docker_executor
    else:
        yield process_executor()
