"""A built-in ML module served warm by the docker executor gives the bytes of cold containers.

tests/ml/test_warm.py runs every built-in ML module warm through the process executor, and
tests/runtime/test_warm_docker.py the docker executor's warm workers with a probe module of
plain Python. This runs the real sdxl module (tiny weights) in the docker executor: the module's
image cannot be built here (its CUDA base needs a registry), so an image of the same code is
built offline from this interpreter, the checkout's lilypad and the installed torch, diffusers
and transformers (tests/runtime/python_image.py). Cold containers run jobs A and B; one warm
container then runs A, B, A, each result folder equal to its cold one; a sandboxed process gives
the cold container's bytes too (the same code on the same CPU, whichever executor runs it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from lilypad import modules
from resource_provider.executors import DockerExecutor, Job, Weights, result_digest
from resource_provider.executors.base import Executor
from resource_provider.executors.warm import WarmConfig
from resource_provider.metrics import Metrics
from tests.runtime.conftest import docker_images
from tests.runtime.python_image import python_image
from tests.runtime.test_warm import sandboxed

__all__ = ["docker_images"]  # the session's Docker Engine, with the offline images built

#: Building the 1.3 GB image takes minutes once (vfs storage: every layer a full copy).
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REF = "sdxl:v0.9-lilypad1"
#: Not the module's own tag (lilypad/sdxl:...): a provider's real image is never replaced.
TAG = "lilypad-test/sdxl-tiny:v0.9-lilypad1"
MODULE_DIR = Path(__file__).parent.parent.parent / "module" / "sdxl"
#: What sdxl.py and the tiny-weight generator import, with what those require.
DISTRIBUTIONS = ("torch", "torchsde", "diffusers", "transformers", "safetensors", "Pillow", "numpy")
JOBS = {"a": ("Prompt=a red fox",), "b": ("Prompt=a cat", "Seed=7")}


@pytest.fixture(scope="module")
def sdxl_image(docker_images: docker.DockerClient) -> str:
    return python_image(docker_images, TAG, MODULE_DIR, distributions=DISTRIBUTIONS)


def run(executor: Executor, output: Path, name: str) -> Path:
    module = modules.resolve(REF)
    spec = modules.render(module, JOBS[name]).model_copy(update={"image": TAG})
    result = executor.run(Job.of(module, spec, output, Weights.TINY))
    assert result.ok, (output / "stderr").read_text()
    return output


@pytest.fixture(scope="module")
def cold(sdxl_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The result digest of each job in a cold container of its own."""
    root = tmp_path_factory.mktemp("cold")
    with DockerExecutor() as executor:
        return {name: result_digest(run(executor, root / name, name)) for name in JOBS}


@pytest.fixture
def warm(sdxl_image: str) -> Iterator[DockerExecutor]:
    executor = DockerExecutor(warm=WarmConfig(size=1, idle_s=600))  # built-in modules only
    executor.use_metrics(Metrics())
    yield executor
    executor.close()


def test_sdxl_jobs_a_b_a_in_one_warm_container_give_the_bytes_of_cold_ones(
    warm: DockerExecutor, cold: dict[str, str], tmp_path: Path
) -> None:
    assert cold["a"] != cold["b"]
    for step, name in enumerate("aba"):
        got = result_digest(run(warm, tmp_path / f"warm-{step}", name))
        assert got == cold[name], f"job {name} (step {step}) differs warm"
    assert warm.warm is not None
    assert warm.warm.metrics is not None
    samples = warm.warm.metrics.registry
    assert samples.get_sample_value("lilypad_warm_loads_total") == 1  # one container served all
    assert samples.get_sample_value("lilypad_warm_hits_total") == 2


def test_a_sandboxed_process_gives_the_cold_containers_bytes(
    cold: dict[str, str], tmp_path: Path
) -> None:
    assert result_digest(run(sandboxed(), tmp_path / "a", "a")) == cold["a"]
