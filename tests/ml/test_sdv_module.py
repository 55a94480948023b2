"""The sdv-pipeline module, run as its entrypoint on tiny weights; outputs read back by real
decoders (Pillow for APNG and WebP, ffprobe for MP4)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.ml.conftest import ModuleRun, ModuleRunner

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


@pytest.fixture(scope="module")
def first(run_module: ModuleRunner) -> ModuleRun:
    done = run_module("sdv-pipeline:v1.1-lilypad2", INPUTS)
    assert done.returncode == 0, done.stderr.decode()
    return done


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
