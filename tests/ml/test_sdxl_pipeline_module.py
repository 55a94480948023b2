"""The sdxl-pipeline module (Lilypad's SDXL Pipeline, on this project's SDXL code), tiny weights."""

from __future__ import annotations

import io

from PIL import Image

from tests.ml.conftest import ModuleRunner

BASE, REFINER = "sdxl-pipeline:v1.0-base-lilypad3", "sdxl-pipeline:v1.0-refiner-lilypad3"


def test_base_batch_with_upstream_tunables(run_module: ModuleRunner) -> None:
    inputs = ["Prompt=a red fox", "Batching=2", "Size=512", "Sampler=dpmpp_2m", "Scheduler=karras"]
    done = run_module(BASE, inputs)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"image-0.png\nimage-1.png\n"
    assert b"64x64 instead of 512x512, 4 steps instead of 50" in done.stderr
    assert b"refiner" not in done.stderr
    files = done.files()
    assert files["image-0.png"] != files["image-1.png"]  # a batch is not one image twice
    assert all(Image.open(io.BytesIO(data)).size == (64, 64) for data in files.values())

    again = run_module(BASE, inputs)
    assert again.files() == files
    other_seed = run_module(BASE, [*inputs, "Seed=7"])
    assert other_seed.files()["image-0.png"] != files["image-0.png"]


def test_refiner_version_hands_over_to_the_refiner(run_module: ModuleRunner) -> None:
    done = run_module(REFINER, ["Prompt=a red fox"])
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"image-0.png\n"
    assert b"stable-diffusion-xl-refiner-1.0" in done.stderr
    base = run_module(BASE, ["Prompt=a red fox"])
    assert base.files()["image-0.png"] != done.files()["image-0.png"]
