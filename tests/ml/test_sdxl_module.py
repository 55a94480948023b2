"""The sdxl module, run as its entrypoint on tiny weights."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.ml.conftest import ModuleRun, ModuleRunner

INPUTS = ["PromptEnv=PROMPT=beautiful view of iceland with a record player"]


def _images(files: dict[str, bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)) for data in files.values()]


@pytest.fixture(scope="module")
def first(run_module: ModuleRunner) -> ModuleRun:
    done = run_module("sdxl:v0.9-lilypad1", INPUTS)
    assert done.returncode == 0, done.stderr.decode()
    return done


def test_writes_a_plain_png_and_says_what_tiny_mode_changed(first: ModuleRun) -> None:
    assert first.stdout == b"image-0.png\n"
    (image,) = _images(first.files())
    assert (image.format, image.size, image.info) == ("PNG", (64, 64), {})
    assert b"64x64 instead of 1024x1024, 4 steps instead of 50" in first.stderr


def test_same_tunables_give_identical_bytes(run_module: ModuleRunner, first: ModuleRun) -> None:
    second = run_module("sdxl:v0.9-lilypad1", INPUTS)
    assert second.files() == first.files()
    assert (second.stdout, second.stderr) == (first.stdout, first.stderr)


def test_another_seed_gives_another_image(run_module: ModuleRunner, first: ModuleRun) -> None:
    other = run_module("sdxl:v0.9-lilypad1", [*INPUTS, "SeedEnv=RANDOM_SEED=24"])
    assert other.returncode == 0, other.stderr.decode()
    assert other.files()["image-0.png"] != first.files()["image-0.png"]


def test_v1_batch_with_refiner_and_sde_sampler(run_module: ModuleRunner) -> None:
    inputs = ["Prompt=a red fox", "Batching=2", "Sampler=dpmpp_2m_sde_gpu", "Scheduler=karras"]
    refined = run_module("sdxl:v1.0-lilypad1", [*inputs, "RefinerSwitch=0.5"])
    assert refined.returncode == 0, refined.stderr.decode()
    assert refined.stdout == b"image-0.png\nimage-1.png\n"
    assert b"stable-diffusion-xl-refiner-1.0" in refined.stderr
    images = refined.files()
    assert images["image-0.png"] != images["image-1.png"]  # a batch is not one image twice
    assert all(img.size == (64, 64) for img in _images(images))

    base_only = run_module("sdxl:v1.0-lilypad1", [*inputs, "RefinerSwitch=0"])
    assert base_only.returncode == 0, base_only.stderr.decode()
    assert b"refiner" not in base_only.stderr
    assert base_only.files()["image-0.png"] != images["image-0.png"]


def test_missing_real_weights_is_one_clear_line(run_module: ModuleRunner) -> None:
    done = run_module("sdxl:v0.9-lilypad1", weights="real")
    assert done.returncode == 1
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("error: weights of stabilityai/stable-diffusion-xl-base-0.9 not found")
    assert "--weights tiny" in last
    assert not list(done.outputs.iterdir())
