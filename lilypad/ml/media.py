"""Byte-deterministic image and video writers: no timestamps, no metadata, fixed settings."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from lilypad.errors import InferenceError

#: zlib level for PNG and APNG (fixed: the level changes the bytes, not the pixels).
PNG_COMPRESS_LEVEL = 6

#: x264 settings of the MP4: one thread (thread scheduling must not change the bitstream),
#: a fixed preset and quality, bit-exact muxing without creation time or encoder tags.
MP4_ARGS = (
    "-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
    "-threads", "1", "-x264-params", "threads=1:sliced-threads=0",
    "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
    "-movflags", "+faststart",
)  # fmt: skip


def _plain(image: Image.Image) -> Image.Image:
    """A copy with no ``info`` (PIL would otherwise carry metadata into the file)."""
    plain = Image.new("RGB", image.size)
    plain.paste(image.convert("RGB"))
    return plain


def write_png(image: Image.Image, path: Path) -> None:
    """A PNG with only the image chunks."""
    _plain(image).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)


def write_images(images: Sequence[Image.Image], out: Path) -> list[str]:
    """``image-<n>.png`` for each of ``images`` in ``out`` (as :func:`write_png`); their names."""
    names = [f"image-{n}.png" for n in range(len(images))]
    for image, name in zip(images, names, strict=True):
        write_png(image, out / name)
    return names


def _duration_ms(fps: int) -> int:
    return round(1000 / fps)


def write_apng(frames: Sequence[Image.Image], path: Path, fps: int) -> None:
    """An animated PNG looping forever at ``fps`` frames per second."""
    plain = [_plain(f) for f in frames]
    plain[0].save(
        path,
        format="PNG",
        save_all=True,
        append_images=plain[1:],
        duration=_duration_ms(fps),
        loop=0,
        disposal=0,
        blend=0,
        default_image=False,
        compress_level=PNG_COMPRESS_LEVEL,
        optimize=False,
    )


def write_webp(frames: Sequence[Image.Image], path: Path, fps: int) -> None:
    """A lossless animated WebP looping forever at ``fps`` frames per second."""
    plain = [_plain(f) for f in frames]
    plain[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=plain[1:],
        duration=_duration_ms(fps),
        loop=0,
        lossless=True,
        quality=100,
        method=4,
        minimize_size=False,
        allow_mixed=False,
        exif=b"",
        xmp=b"",
        icc_profile=b"",
    )


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped in the ``imageio-ffmpeg`` wheel (pinned, so same bytes)."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def write_mp4(frames: Sequence[Image.Image], path: Path, fps: int) -> None:
    """An H.264 MP4 at exactly ``fps`` frames per second, one frame per input image.

    Raises:
        InferenceError: when ffmpeg fails, with the tail of its log.
    """
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise InferenceError(f"MP4 needs even frame sizes (yuv420p), got {width}x{height}")
    raw = b"".join(_plain(f).tobytes() for f in frames)
    command = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps),
        "-i", "pipe:0", *MP4_ARGS, "-r", str(fps), str(path),
    ]  # fmt: skip
    done = subprocess.run(command, input=raw, capture_output=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise InferenceError(f"ffmpeg could not write {path.name}: {' / '.join(tail)}")
