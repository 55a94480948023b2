"""Every built-in ML module gives the same result bytes through one warm worker as in cold runs.

For each module, two jobs A and B that differ where a leak would show (seed, sampler, a second
pipeline, ControlNet or annotator, a LoRA and an embedding) run through one warm worker of the
sandboxed process executor in the order A, B, A: B runs on a worker that holds what A loaded,
and the second A after B changed the worker (a LoRA it loaded, a token it added, another
scheduler state, other cached networks). Both As, and the B with a LoRA and an embedding, must
give the result folder (outputs, stdout, stderr, exit code) of their cold runs; every B must
differ from A. The sdxl 1.0 jobs with the refiner and several samplers, the worker's isolation
and its failures are in tests/runtime/test_warm.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lilypad import modules
from lilypad.ml import predictor
from lilypad.modules.files import file_inputs
from lilypad.storage import compute_cid
from resource_provider.executors import Job, JobInput, ProcessExecutor, Weights, result_digest
from resource_provider.executors.warm import WarmConfig
from tests.ml.test_finetunes import _linear_layers, _make_lora
from tests.runtime.test_warm import _checkout_on_path, sandboxed

__all__ = ["_checkout_on_path"]  # autouse: cold and warm jobs import this checkout

FAST = ("Steps=2", "Sampler=euler")


@dataclass(frozen=True)
class Run:
    """One job: its tunables and its file tunables (name -> a key of the ``files`` fixture).

    ``cold``: compared with a cold run of its own when it is B (where B takes a path that A's
    state could change: a LoRA, an embedding). Every B must differ from A, and A after B must
    give A's cold bytes; a cold run costs seconds, so other Bs are not run cold.
    """

    inputs: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    cold: bool = False


#: Per module version: job A, then job B (the one that changes more of the worker).
CASES: dict[str, tuple[str, Run, Run]] = {
    "sdxl-0.9": (
        "sdxl:v0.9-lilypad1",
        Run(("Prompt=a red fox",)),
        Run(("Prompt=a cat", "Seed=7")),
    ),
    "sdxl-1.1-lora-embedding": (
        "sdxl:v1.1-lilypad1",
        Run(("Prompt=a photo of a fox", *FAST, "RefinerSwitch=0")),
        Run(
            (
                "Prompt=a photo of <my-style>",
                "EmbeddingToken=<my-style>",
                *FAST,
                "RefinerSwitch=0.5",
                "LoraScale=1.2",
            ),
            {"Lora": "lora", "Embedding": "embedding"},
            cold=True,
        ),
    ),
    "sdxl-img2img": (
        "sdxl-img2img:v1.1-lilypad1",
        Run(("Prompt=a tiger", *FAST, "Strength=0.6"), {"Image": "picture"}),
        Run(
            ("Prompt=a (tiger:1.3)", "Steps=3", "Sampler=dpmpp_2m", "Seed=4"), {"Image": "picture"}
        ),
    ),
    "sdxl-inpainting": (
        "sdxl-inpainting:v1.0-lilypad1",
        Run(("Prompt=a tiger", *FAST), {"Image": "picture", "Mask": "mask"}),
        Run(
            ("Prompt=a dog", *FAST, "Seed=9", "Strength=0.7"), {"Image": "picture", "Mask": "mask"}
        ),
    ),
    "sdxl-outpainting": (
        "sdxl-outpainting:v1.0-lilypad1",
        Run(
            ("Prompt=a beach", *FAST, "Left=8", "Right=0", "Top=0", "Bottom=0"),
            {"Image": "picture"},
        ),
        Run(
            ("Prompt=a hill", *FAST, "Left=0", "Right=16", "Top=8", "Bottom=0", "Seed=2"),
            {"Image": "picture"},
        ),
    ),
    "sd15": (
        "sd15:v1.0-lilypad1",
        Run(("Prompt=a lighthouse", "Sampler=euler_ancestral")),
        Run(("Prompt=a lighthouse", "Seed=3", "Sampler=dpmpp_sde")),
    ),
    "sd21": (
        "sd21:v1.0-lilypad1",
        Run(("Prompt=a lighthouse", *FAST)),
        Run(
            ("Prompt=a lighthouse", "Steps=2", "Sampler=dpmpp_sde", "Seed=3", "Strength=0.5"),
            {"Image": "picture"},
        ),
    ),
    "sdxl-turbo": (
        "sdxl-turbo:v1.1-lilypad1",
        Run(("Prompt=a lighthouse", "Steps=1")),
        Run(("Prompt=a lighthouse", "Steps=2", "Seed=3", "Strength=0.6"), {"Image": "picture"}),
    ),
    "sd-turbo": (
        "sd-turbo:v1.1-lilypad1",
        Run(("Prompt=a lighthouse", "Steps=1")),
        Run(("Prompt=a lighthouse", "Steps=2", "Seed=3", "Strength=0.6"), {"Image": "picture"}),
    ),
    "lcm": (
        "lcm:v1.1-lilypad1",
        Run(("Prompt=a lighthouse", "Steps=2")),
        Run(("Prompt=a lighthouse", "Steps=3", "Seed=3", "Strength=0.6"), {"Image": "picture"}),
    ),
    "sdv-pipeline": (
        "sdv-pipeline:v1.0-lilypad4",
        Run(("Prompt=an astronaut", "Framerate=5")),
        Run(("Prompt=an astronaut", "Framerate=8", "Seed=3", "VideoSeed=4", "VideoSampler=heun")),
    ),
    "sd15-controlnet": (
        "sd15-controlnet:v1.0-lilypad1",
        Run(("Prompt=a red fox", *FAST, "Control=canny"), {"Image": "picture"}),
        Run(("Prompt=a red fox", *FAST, "Control=depth", "Seed=5"), {"Image": "picture"}),
    ),
    "sdxl-controlnet": (
        "sdxl-controlnet:v1.0-lilypad1",
        Run(("Prompt=a red fox", *FAST, "Control=canny"), {"Image": "picture"}),
        Run(
            ("Prompt=a red fox", *FAST, "Control=scribble", "ControlScale=0.7"),
            {"Image": "picture"},
        ),
    ),
    "upscale": (
        "upscale:v1.0-lilypad1",
        Run(("Model=realesrgan", "Scale=2"), {"Image": "small"}),
        Run(("Model=sd-x4", "Scale=4", "Steps=2", "Seed=3"), {"Image": "small"}),
    ),
}


@pytest.fixture(scope="module")
def files(tiny_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pictures, a mask, a LoRA and an embedding for the tiny models."""
    folder = tmp_path_factory.mktemp("warm-inputs")
    y, x = np.mgrid[0:40, 0:56]
    picture = np.stack([x * 255 // 56, y * 255 // 40, (x * y) % 256], -1).astype(np.uint8)
    Image.fromarray(picture).save(folder / "picture.png")
    Image.fromarray(picture[:20, :24]).save(folder / "small.png")
    mask = np.zeros((40, 56), np.uint8)
    mask[8:28, 8:40] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    save_file({"clip_l": vectors, "clip_g": vectors * 2}, folder / "style.safetensors")
    return {
        "picture": folder / "picture.png",
        "small": folder / "small.png",
        "mask": folder / "mask.png",
        "lora": _make_lora(_linear_layers(tiny_weights_dir), folder, 1),
        "embedding": folder / "style.safetensors",
    }


@pytest.fixture(scope="module")
def warm() -> Iterator[ProcessExecutor]:
    """One warm worker at a time: each module's test ends the one of the module before."""
    executor = sandboxed(WarmConfig(size=1, idle_s=600))
    yield executor
    executor.close()


def _run(
    executor: ProcessExecutor, ref: str, job: Run, files: dict[str, Path], output: Path
) -> str:
    """The job's result digest; it must succeed."""
    module = modules.resolve(ref)
    paths = {name: files[key] for name, key in job.files.items()}
    cids = [f"{name}={compute_cid(path).v1()}" for name, path in paths.items()]
    spec = modules.render(module, [*job.inputs, *cids])
    mounts = tuple(JobInput(paths[f.name], f.mount) for f in file_inputs(spec, module))
    result = executor.run(Job.of(module, spec, output, Weights.TINY, inputs=mounts))
    assert result.ok, (output / "stderr").read_text()
    return result_digest(output)


@pytest.mark.parametrize("case", CASES)
def test_jobs_a_b_a_on_one_warm_worker_give_the_bytes_of_cold_runs(
    case: str, warm: ProcessExecutor, files: dict[str, Path], tmp_path: Path
) -> None:
    ref, a, b = CASES[case]
    cold = sandboxed()
    expected = {"A": _run(cold, ref, a, files, tmp_path / "cold-A")}
    if b.cold:
        expected["B"] = _run(cold, ref, b, files, tmp_path / "cold-B")
    jobs = {"A": a, "B": b}
    for step, name in enumerate("ABA"):
        got = _run(warm, ref, jobs[name], files, tmp_path / f"warm-{step}")
        if name == "B":
            assert got != expected["A"], f"{case}: B must be another job than A"
        assert got == expected.get(name, got), f"{case}: job {name} (step {step}) differs warm"
    assert warm.warm is not None
    assert warm.warm.workers() == 1  # one worker served all three


def test_a_model_loaded_alone_is_the_only_one_a_worker_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SDV loads SDXL, then SVD, each alone: a warm worker holds one, never both, as a cold
    run frees SDXL before it loads SVD."""
    monkeypatch.setattr(predictor, "_cache", None)
    predictor.enable_cache()
    predictor.load_once("controlnet", object)
    predictor.load_once("sdxl", object, alone=True)
    assert predictor.cached_keys() == ["sdxl"]
    predictor.load_once("svd", object, alone=True)
    assert predictor.cached_keys() == ["svd"]
    first = predictor.load_once("sdxl", object, alone=True)
    assert predictor.cached_keys() == ["sdxl"]
    assert predictor.load_once("sdxl", object, alone=True) is first  # kept while alone
