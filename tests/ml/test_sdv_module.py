"""The sdv-pipeline module, run as its entrypoint on tiny weights; outputs read back by real
decoders (Pillow for APNG and WebP, ffprobe for MP4). The published lilypad2 versions keep their
bytes; the lilypad3 ones sample as ComfyUI does; the lilypad4 ones are lilypad3 with a weighted
prompt."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from PIL import Image

from lilypad.modules import render, resolve
from tests.ml.conftest import CPU_CLASS, ModuleRun, ModuleRunner, published

FRAMES = 4  # tiny SVD's num_frames


def _ffprobe(path: Path) -> dict[str, str]:
    exe = shutil.which("ffprobe")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("ffprobe is missing: as root, make system installs Debian's ffmpeg")
        pytest.skip("ffprobe not installed (apt-get install ffmpeg)")
    out = subprocess.run(
        [exe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,nb_read_frames,r_frame_rate,width,height", "-of", "json", str(path)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    stream: dict[str, str] = json.loads(out.stdout)["streams"][0]
    return stream


def _animation(data: bytes) -> tuple[str, int, list[int]]:
    image = Image.open(io.BytesIO(data))
    durations = []
    for i in range(image.n_frames):
        image.seek(i)
        image.load()  # WebP reads a frame's duration when it decodes it
        durations.append(image.info["duration"])
    return image.format or "", image.n_frames, durations


INPUTS = ["Prompt=an astronaut floating", "Framerate=5", "Batching=2", "VideoSampler=heun"]


RunOnce = Callable[[str, Sequence[str]], ModuleRun]


@pytest.fixture(scope="module")
def run_once(run_module: ModuleRunner) -> RunOnce:
    """Run a version with inputs once for the module's tests; it must succeed."""
    runs: dict[tuple[str, tuple[str, ...]], ModuleRun] = {}

    def run(ref: str, inputs: Sequence[str]) -> ModuleRun:
        key = (ref, tuple(inputs))
        if key not in runs:
            done = run_module(ref, inputs)
            assert done.returncode == 0, done.stderr.decode()
            runs[key] = done
        return runs[key]

    return run


@pytest.fixture(scope="module")
def first(run_once: RunOnce) -> ModuleRun:
    return run_once("sdv-pipeline:v1.1-lilypad2", INPUTS)


def test_outputs_decode_with_the_expected_frames_and_rate(first: ModuleRun) -> None:
    kinds = (("image", "png"), ("video", "apng"), ("video", "webp"), ("video", "mp4"))
    names = [f"{kind}-{n}.{ext}" for n in (0, 1) for kind, ext in kinds]
    assert first.stdout.decode().split() == names
    files = first.files()
    assert Image.open(io.BytesIO(files["image-0.png"])).size == (64, 64)
    assert files["image-0.png"] != files["image-1.png"]
    for n in (0, 1):
        assert _animation(files[f"video-{n}.apng"]) == ("PNG", FRAMES, [200] * FRAMES)
        assert _animation(files[f"video-{n}.webp"]) == ("WEBP", FRAMES, [200] * FRAMES)
        probe = _ffprobe(first.outputs / f"video-{n}.mp4")
        assert probe["codec_name"] == "h264"
        assert int(probe["nb_read_frames"]) == FRAMES
        assert probe["r_frame_rate"] == "5/1"
        assert (probe["width"], probe["height"]) == (64, 64)
    assert b"64x64 instead of 1024x576" in first.stderr


def test_same_tunables_give_identical_bytes(run_module: ModuleRunner, first: ModuleRun) -> None:
    again = run_module("sdv-pipeline:v1.1-lilypad2", INPUTS)
    assert again.files() == first.files()
    assert (again.stdout, again.stderr) == (first.stdout, first.stderr)


def test_video_seed_changes_the_videos_not_the_still(
    run_module: ModuleRunner, first: ModuleRun
) -> None:
    other_video_seed = run_module("sdv-pipeline:v1.1-lilypad2", [*INPUTS, "VideoSeed=7"])
    assert other_video_seed.returncode == 0, other_video_seed.stderr.decode()
    other, files = other_video_seed.files(), first.files()
    assert other["image-0.png"] == files["image-0.png"]  # the still depends on Seed only
    for name in ("video-0.apng", "video-0.webp", "video-0.mp4"):
        assert other[name] != files[name]


def test_the_image_reads_the_video_variables_as_lilypads_image_names_them(
    run_module: ModuleRunner,
) -> None:
    """Lilypad's sdv image reads VIDEOSEED, VIDEOSTEPS, VIDEOSAMPLER, VIDEOSCHEDULER: a job
    setting those gets what the tunables give here."""
    tuned = [*INPUTS, "VideoSeed=7", "VideoSteps=6", "VideoScheduler=karras"]
    ours = run_module("sdv-pipeline:v1.1-lilypad4", tuned)
    upstream = run_module(
        "sdv-pipeline:v1.1-lilypad4",
        tuned,
        rename={f"VIDEO_{n}": f"VIDEO{n}" for n in ("SEED", "STEPS", "SAMPLER", "SCHEDULER")},
    )
    assert (ours.returncode, upstream.returncode) == (0, 0), upstream.stderr.decode()
    assert upstream.files() == ours.files()
    default = run_module("sdv-pipeline:v1.1-lilypad4", INPUTS)
    assert default.files()["video-0.apng"] != ours.files()["video-0.apng"]  # they were read


# --- published bytes, and the ComfyUI versions ----------------------------------------------------

#: Where the references differ in each stage: dpm_2's sigmas and progress (the still), lms's last
#: step and ddim_uniform's starting noise (the video).
DIFFERING = [
    "Prompt=an astronaut floating", "Framerate=5", "Sampler=dpm_2", "Scheduler=karras",
    "VideoSampler=lms", "VideoScheduler=ddim_uniform",
]  # fmt: skip
#: The same differences, the other way round between the stages.
DIFFERING_SWAPPED = [
    "Prompt=an astronaut floating", "Framerate=5", "Sampler=lms", "Scheduler=ddim_uniform",
    "VideoSampler=dpm_2_ancestral", "VideoScheduler=karras",
]  # fmt: skip

#: sha256 of stdout, stderr and each output (name, then bytes, by name) of the lilypad2 versions on
#: tiny weights, computed once from the code before sampler references existed (commit f458e45),
#: on x86-64 with this project's pinned torch. NOTE: CPU float kernels differ between CPU
#: classes, so each digest is recorded per class (conftest.published): should a class disagree,
#: record its digest from that commit's code, never from the code under test. The
#: "AVX2 AuthenticAMD" digests are 2cf8402's code (the last commit CI passed before warm
#: workers) run on an AMD EPYC without AVX-512; HEAD gave the same there.
PUBLISHED = {
    ("sdv-pipeline:v1.1-lilypad2", tuple(INPUTS)): {
        "*": "ceea853d0cae4ded3362f8e28fe84b9cb1ba2706420919b5ce7664adb411a4bb",
        "AVX2 AuthenticAMD": "e85001e4d9e2371aa706484b0ec9e00ac04c7acc5f680f4af6db1fcbb3bb101c",
    },
    ("sdv-pipeline:v1.0-lilypad2", tuple(DIFFERING)): {
        "*": "7ef8ff55c9e2272bbfd2b9035259fc603e04651c0ae0d58bfdc2095ad04ddb5e",
        "AVX2 AuthenticAMD": "1ca4653ed5ece23456ea99f1311525f2a5d89d077364b916002978106ef93cf5",
    },
    ("sdv-pipeline:v1.1-lilypad2", tuple(DIFFERING_SWAPPED)): {
        "*": "50364fc84f355590f0f5eb0f08450b388087a75a3a11ca532cb6685684173512",
        "AVX2 AuthenticAMD": "8d63869922b1d75a02687db9598c08e912ce09a27303f2d6fe4a6797e1a3f708",
    },
}


def _digest(run: ModuleRun) -> str:
    digest = hashlib.sha256(run.stdout + run.stderr)
    for name, data in run.files().items():
        digest.update(name.encode() + data)
    return digest.hexdigest()


@pytest.mark.parametrize(("ref", "inputs"), list(PUBLISHED))
def test_published_versions_keep_their_bytes(
    run_once: RunOnce, ref: str, inputs: tuple[str, ...]
) -> None:
    done = run_once(ref, inputs)
    assert b"follow comfyui" not in done.stderr
    assert _digest(done) == published(PUBLISHED[(ref, inputs)]), CPU_CLASS


def _progress(stderr: bytes) -> dict[str, tuple[int, int]]:
    """Each stage's last progress line: ``{"image": (7, 7), "video 0": (4, 4)}``."""
    last: dict[str, tuple[int, int]] = {}
    for line in stderr.decode().splitlines():
        stage, sep, count = line.partition(": step ")
        if sep:
            done, total = count.split("/")
            last[stage] = (int(done), int(total))
    return last


def test_comfyui_versions_differ_where_the_references_do(run_once: RunOnce) -> None:
    published = run_once("sdv-pipeline:v1.0-lilypad2", DIFFERING)
    comfy = run_once("sdv-pipeline:v1.0-lilypad3", DIFFERING)
    assert b"samplers and schedules follow comfyui" in comfy.stderr
    assert comfy.stdout == published.stdout
    mine, theirs = comfy.files(), published.files()
    for name in ("image-0.png", "video-0.apng", "video-0.webp", "video-0.mp4"):
        assert mine[name] != theirs[name], name
    # dpm_2 over 4 steps: 2 calls a step, one on the last; k-diffusion's count says 8
    assert _progress(published.stderr)["image"] == (7, 8)
    assert _progress(comfy.stderr)["image"] == (7, 7)
    assert _progress(comfy.stderr)["video 0"] == (4, 4)


def test_comfyui_versions_agree_where_the_references_do(
    run_once: RunOnce, first: ModuleRun
) -> None:
    """euler_ancestral and heun over the normal schedule: the same bytes; only heun's progress
    count (2 calls a step, one on the last) now reaches its total."""
    comfy = run_once("sdv-pipeline:v1.1-lilypad3", INPUTS)
    assert comfy.files() == first.files()
    assert comfy.stdout == first.stdout
    assert _progress(first.stderr)["video 1"] == (7, 8)
    assert _progress(comfy.stderr)["video 1"] == (7, 7)
    assert (
        comfy.stderr.replace(b"/7\n", b"/8\n").replace(
            b"samplers and schedules follow comfyui where it and k-diffusion differ\n", b""
        )
        == first.stderr
    )


# --- the weighted prompt of the lilypad4 versions -------------------------------------------------


def _with_prompt(prompt: str) -> list[str]:
    return [f"Prompt={prompt}", *INPUTS[1:]]


def test_lilypad4_reads_a_plain_prompt_and_a_weight_of_1_as_lilypad3_does(
    run_once: RunOnce,
) -> None:
    comfy = run_once("sdv-pipeline:v1.1-lilypad3", INPUTS)
    weighted = run_once("sdv-pipeline:v1.1-lilypad4", _with_prompt("an (astronaut:1.0) floating"))
    # every byte, logs included: compel reads a plain prompt as diffusers does, to the bit
    assert weighted.files() == comfy.files()
    assert (weighted.stdout, weighted.stderr) == (comfy.stdout, comfy.stderr)


def test_lilypad4_stills_follow_the_prompt_weights(run_once: RunOnce) -> None:
    heavier = _with_prompt("an (astronaut:1.5) floating")
    plain = run_once("sdv-pipeline:v1.1-lilypad3", INPUTS).files()
    v11 = run_once("sdv-pipeline:v1.1-lilypad4", heavier).files()
    for n in (0, 1):
        assert v11[f"image-{n}.png"] != plain[f"image-{n}.png"]
        assert v11[f"video-{n}.apng"] != plain[f"video-{n}.apng"]  # made from the new still
    # the still is SDXL's alone: v1.0-lilypad4 makes the same ones
    v10 = run_once("sdv-pipeline:v1.0-lilypad4", heavier).files()
    assert [v10[f"image-{n}.png"] for n in (0, 1)] == [v11[f"image-{n}.png"] for n in (0, 1)]


def test_lilypad4_is_lilypad3_with_a_weighted_prompt_and_the_newest() -> None:
    for svd in ("1.0", "1.1"):
        old = resolve(f"sdv-pipeline:v{svd}-lilypad3").spec
        new = resolve(f"sdv-pipeline:v{svd}-lilypad4").spec
        assert new.entrypoint == (*old.entrypoint, "weighted")
        assert (
            render(f"sdv-pipeline:v{svd}-lilypad4").env
            == render(f"sdv-pipeline:v{svd}-lilypad3").env
        )
        assert new.sampler_reference == "comfyui"
        assert [t.model_dump(exclude={"description"}) for t in new.tunables] == [
            t.model_dump(exclude={"description"}) for t in old.tunables
        ]
        assert "(word:1.4)" in next(t.description for t in new.tunables if t.name == "Prompt")
    newest = resolve("sdv-pipeline")
    assert (newest.version, newest.chose_newest) == ("v1.1-lilypad4", True)


def test_the_entrypoint_refuses_unknown_arguments() -> None:
    args = ["1.1", "weigted"]  # a manifest's typo
    folder = resolve("sdv-pipeline").directory
    done = subprocess.run(
        [sys.executable, "sdv.py", *args], cwd=folder, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: unknown arguments {' '.join(args)!r}; allowed: an SDV version (1.0, 1.1), "
        "then 'weighted' for a weighted prompt"
    )
