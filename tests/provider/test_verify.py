"""The mediator's perceptual comparison against a hostile submitted result folder.

The submitted folder is the provider's bytes: crafted images (many large frames, decompression
bombs, truncation, another format than the suffix), symlinks and special files, many or deeply
nested entries. Each must give a mismatch with a reason, quickly and in bounded memory, while an
honest near-identical result still matches with the same distance as before.

Hostile cases that could exhaust this machine's memory or hang (when the comparison is wrong) run
``compare`` in a child process under an address-space limit and a timeout, and report its peak RSS.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from lilypad.errors import InputError
from lilypad.modules.manifest import Verification, VerificationMethod
from lilypad.storage.backends import LocalStorage
from resource_provider import verify
from resource_provider.verify import compare

ROOT = Path(__file__).resolve().parents[2]
POLICY = Verification(method=VerificationMethod.PERCEPTUAL, tolerance=2.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: What a user cares about: the comparison of one result never needs more than this.
PEAK_RSS_MB = 200
#: A loose guard only (timings belong in benchmarks): a hostile file is refused, not chewed on.
QUICK_S = 5.0

# The child: compare under an address-space limit (so a regression fails here, not on the machine)
# with the interpreter's default warning filters, as in production.
CHILD = """
import json, resource, sys, time
from pathlib import Path
limit = 1 << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from lilypad.modules.manifest import Verification, VerificationMethod
from resource_provider.verify import compare
policy = Verification(method=VerificationMethod.PERCEPTUAL, tolerance=2.0)
start = time.perf_counter()
verdict = compare(policy, Path(sys.argv[1]), Path(sys.argv[2]))
elapsed = time.perf_counter() - start
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
with open("/proc/self/status") as status:
    peak_mb = int(status.read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"matches": verdict.matches, "reason": verdict.reason,
                  "elapsed_s": elapsed, "peak_mb": peak_mb}))
"""


def _in_child(ours: Path, theirs: Path, timeout_s: float = 30) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", CHILD, str(ours), str(theirs)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _assert_refused_quickly(result: dict[str, object], *words: str) -> None:
    assert result["matches"] is False
    reason = str(result["reason"])
    for word in words:
        assert word in reason, reason
    assert float(str(result["peak_mb"])) < PEAK_RSS_MB, result
    assert float(str(result["elapsed_s"])) < QUICK_S, result


# --- building results and images -------------------------------------------------------------


def _result(root: Path, outputs: dict[str, bytes], stdout: bytes = b"ok\n") -> Path:
    (root / "outputs").mkdir(parents=True)
    for name, data in outputs.items():
        (root / "outputs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "outputs" / name).write_bytes(data)
    (root / "stdout").write_bytes(stdout)
    (root / "stderr").write_text(f"took {random.random()} s\n")  # not compared
    (root / "exitCode").write_text("0")
    return root


def _noise(seed: int, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    data = random.Random(seed).randbytes(size[0] * size[1] * channels)
    return Image.frombytes(mode, size, data)


def _nudged(image: Image.Image, seed: int, step: int = 1) -> Image.Image:
    """The same picture with every channel moved by at most ``step``: an honest re-run's noise."""
    rng = random.Random(seed)
    data = bytes(min(255, max(0, b + rng.randint(-step, step))) for b in image.tobytes())
    return Image.frombytes(image.mode, image.size, data)


def _encode(frames: list[Image.Image], fmt: str) -> bytes:
    out = io.BytesIO()
    if len(frames) == 1:
        frames[0].save(out, format=fmt)
    else:
        frames[0].save(out, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _frame_control(sequence: int, width: int, height: int) -> bytes:
    return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, 0, 0))


def _crafted_apng(width: int, height: int, frames: int) -> bytes:
    """An RGBA APNG of a transparent canvas, then ``frames - 1`` frames of one pixel each: a few
    bytes per frame, a whole canvas for each frame to whoever keeps the frames."""
    rows = (b"\x00" + bytes(4 * width)) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"acTL", struct.pack(">II", frames, 0))]
    parts += [_frame_control(0, width, height), _chunk(b"IDAT", zlib.compress(rows, 9))]
    pixel = zlib.compress(b"\x00\xff\x00\x00\xff")
    for frame in range(1, frames):
        sequence = 2 * frame - 1
        parts.append(_frame_control(sequence, 1, 1))
        parts.append(_chunk(b"fdAT", struct.pack(">I", sequence + 1) + pixel))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _bomb_png(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of zeros: a few KiB declaring ``width * height`` pixels."""
    packer = zlib.compressobj(9)
    row = b"\x00" + bytes((width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture
def honest_apng() -> list[Image.Image]:
    return [_noise(1), _noise(2)]


@pytest.fixture
def ours(tmp_path: Path, honest_apng: list[Image.Image]) -> Path:
    return _result(tmp_path / "ours", {"video.apng": _encode(honest_apng, "PNG")})


# --- honest results still match ----------------------------------------------------------------


def _mean_difference(a: list[Image.Image], b: list[Image.Image]) -> float:
    """The documented distance, computed independently: per frame the mean absolute difference
    over pixels and channels, averaged over frames."""
    per_frame = []
    for x, y in zip(a, b, strict=True):
        pairs = zip(x.convert("RGB").tobytes(), y.convert("RGB").tobytes(), strict=True)
        per_frame.append(sum(abs(p - q) for p, q in pairs) / (x.width * x.height * 3))
    return sum(per_frame) / len(per_frame)


@pytest.mark.parametrize(("suffix", "fmt"), [(".apng", "PNG"), (".gif", "GIF"), (".webp", "WEBP")])
def test_an_honest_animation_within_tolerance_matches(
    tmp_path: Path, suffix: str, fmt: str
) -> None:
    mode = "L" if fmt == "GIF" else "RGB"  # a GIF stores gray levels exactly, not RGB noise
    frames = [_noise(seed, mode=mode) for seed in range(3)]
    lossless = {"lossless": True} if fmt == "WEBP" else {}
    nudged = [_nudged(f, seed) for seed, f in enumerate(frames)]
    ours_file, theirs_file = io.BytesIO(), io.BytesIO()
    frames[0].save(ours_file, fmt, save_all=True, append_images=frames[1:], **lossless)
    nudged[0].save(theirs_file, fmt, save_all=True, append_images=nudged[1:], **lossless)
    ours = _result(tmp_path / "ours", {f"video{suffix}": ours_file.getvalue()})
    theirs = _result(tmp_path / "theirs", {f"video{suffix}": theirs_file.getvalue()})

    verdict = compare(POLICY, ours, theirs)

    with (
        Image.open(ours / "outputs" / f"video{suffix}") as a,
        Image.open(theirs / "outputs" / f"video{suffix}") as b,
    ):
        expected = _mean_difference(_all_frames(a), _all_frames(b))
    assert verdict.matches, verdict.reason
    assert f"worst mean difference {expected:.3f}" in verdict.reason
    assert 0 < expected <= 2.0


def test_a_long_honest_animation_is_compared_a_frame_at_a_time(tmp_path: Path) -> None:
    # 40 frames of 1024x576 (a Stable Video Diffusion clip) are 70 MB of RGB per side.
    def clip(shade: int) -> list[Image.Image]:
        gradient = Image.linear_gradient("L").resize((1024, 576)).convert("RGB")
        frames = []
        for index in range(40):
            frame = gradient.copy()
            ImageDraw.Draw(frame).rectangle((20 * index, 100, 20 * index + 200, 300), (shade, 9, 9))
            frames.append(frame)
        return frames

    ours = _result(tmp_path / "ours", {"video.apng": _encode(clip(200), "PNG")})
    theirs = _result(tmp_path / "theirs", {"video.apng": _encode(clip(201), "PNG")})

    result = _in_child(ours, theirs)

    assert result["matches"] is True, result
    assert float(str(result["peak_mb"])) < PEAK_RSS_MB, result


def _all_frames(image: Image.Image) -> list[Image.Image]:
    frames = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(image.convert("RGB"))
    return frames


def test_a_far_frame_is_a_mismatch_naming_the_distance(
    tmp_path: Path, ours: Path, honest_apng: list[Image.Image]
) -> None:
    far_last = [honest_apng[0], Image.new("RGB", (64, 64))]
    far_first = [Image.new("RGB", (64, 64)), honest_apng[1]]
    last = _result(tmp_path / "last", {"video.apng": _encode(far_last, "PNG")})
    first = _result(tmp_path / "first", {"video.apng": _encode(far_first, "PNG")})

    verdict = compare(POLICY, ours, last)
    expected = _mean_difference(honest_apng, far_last)
    assert not verdict.matches
    assert f"outputs/video.apng: mean pixel difference {expected:.3f} > tolerance 2.0" == (
        verdict.reason
    )
    # The first frame alone puts the mean over the tolerance: the second is not decoded.
    verdict = compare(POLICY, ours, first)
    assert not verdict.matches
    assert "mean pixel difference at least (from 1 of 2 frames)" in verdict.reason


def test_identical_results_match_without_decoding(tmp_path: Path, ours: Path) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    (theirs / "stderr").write_text("other timings\n")

    verdict = compare(POLICY, ours, theirs)

    assert verdict.matches, verdict.reason


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        relative = target / path.relative_to(source)
        if path.is_dir():
            relative.mkdir(parents=True)
        else:
            relative.parent.mkdir(parents=True, exist_ok=True)
            relative.write_bytes(path.read_bytes())


# --- crafted images ----------------------------------------------------------------------------


def test_an_apng_of_many_large_frames_is_refused_in_bounded_memory(
    tmp_path: Path, ours: Path
) -> None:
    # Finding 7 of issue #13: 66 KiB of APNG made the comparison take 2.3 GB, as it decoded every
    # frame (a whole canvas each) before comparing the counts.
    crafted = _crafted_apng(2048, 2048, frames=1000)
    assert len(crafted) < 100 * 1024
    theirs = _result(tmp_path / "theirs", {"video.apng": crafted})

    _assert_refused_quickly(_in_child(ours, theirs), "outputs/video.apng", "2048x2048")


def test_an_apng_declaring_more_frames_is_refused_from_its_header(
    tmp_path: Path, ours: Path
) -> None:
    crafted = _crafted_apng(64, 64, frames=1000)  # the canvas of ours, 1000 frames instead of 2
    theirs = _result(tmp_path / "theirs", {"video.apng": crafted})

    _assert_refused_quickly(
        _in_child(ours, theirs), "1000 frames", "the re-run's 64x64 with 2 frames"
    )


@pytest.mark.parametrize(
    "side",
    [
        12_000,  # over Pillow's MAX_IMAGE_PIXELS, where it only warns
        20_000,  # over twice that, where it raises
    ],
)
def test_a_decompression_bomb_is_a_mismatch(tmp_path: Path, side: int) -> None:
    ours = _result(tmp_path / "ours", {"image.png": _encode([_noise(1)], "PNG")})
    bomb = _bomb_png(side, side)
    assert len(bomb) < 100 * 1024
    theirs = _result(tmp_path / "theirs", {"image.png": bomb})

    verdict = compare(POLICY, ours, theirs)
    assert not verdict.matches
    assert "outputs/image.png" in verdict.reason
    # With the interpreter's default filters (production), Pillow's warning must not be all.
    _assert_refused_quickly(_in_child(ours, theirs), "outputs/image.png", "pixels")


def test_a_truncated_png_is_a_mismatch_with_a_reason(tmp_path: Path) -> None:
    honest = _encode([_noise(1)], "PNG")
    ours = _result(tmp_path / "ours", {"image.png": honest})
    theirs = _result(tmp_path / "theirs", {"image.png": honest[: len(honest) // 2]})

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "outputs/image.png" in verdict.reason
    assert "submitted" in verdict.reason
    assert "truncated" in verdict.reason


def test_an_image_in_another_format_than_its_suffix_is_a_mismatch(tmp_path: Path) -> None:
    flat = Image.new("RGB", (64, 64), (90, 90, 90))
    ours = _result(tmp_path / "ours", {"image.png": _encode([flat], "PNG")})
    theirs = _result(tmp_path / "theirs", {"image.png": _encode([flat], "JPEG")})

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "outputs/image.png" in verdict.reason
    assert "not a readable PNG" in verdict.reason


def test_a_submitted_image_far_larger_in_bytes_is_refused_unread(tmp_path: Path) -> None:
    honest = _encode([_noise(1)], "PNG")
    ours = _result(tmp_path / "ours", {"image.png": honest})
    # A valid PNG followed by junk: nothing an encoder of the same pixels writes.
    padded = _encode([_nudged(_noise(1), 1)], "PNG") + bytes(8 * 1024 * 1024)
    theirs = _result(tmp_path / "theirs", {"image.png": padded})

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "bytes" in verdict.reason


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    fmt=st.sampled_from(["PNG", "GIF", "WEBP", "JPEG"]),
    cut=st.integers(min_value=0, max_value=4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
)
def test_a_damaged_image_never_raises(
    tmp_path: Path, fmt: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    suffix = {"PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "JPEG": ".jpg"}[fmt]
    frames = [_noise(1, (24, 24)), _noise(2, (24, 24))]
    honest = _encode(frames[:1] if fmt == "JPEG" else frames, fmt)
    damaged = bytearray(honest[: max(1, len(honest) - cut)])
    for offset, value in flips:
        damaged[offset % len(damaged)] = value
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    ours = _result(case / "ours", {f"file{suffix}": honest})
    theirs = _result(case / "theirs", {f"file{suffix}": bytes(damaged)})

    verdict = compare(POLICY, ours, theirs)

    assert verdict.reason


# --- hostile folders ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["outputs/video.apng", "stdout"])
def test_a_symlink_to_dev_zero_is_a_mismatch_never_read(
    tmp_path: Path, ours: Path, name: str
) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    (theirs / name).unlink()
    (theirs / name).symlink_to("/dev/zero")

    _assert_refused_quickly(_in_child(ours, theirs, timeout_s=20), name, "symlink")


def test_a_symlink_to_the_right_bytes_is_still_a_mismatch(tmp_path: Path, ours: Path) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    (theirs / "stdout").unlink()
    (theirs / "stdout").symlink_to(ours / "stdout")

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "stdout" in verdict.reason
    assert "symlink" in verdict.reason


@pytest.mark.parametrize(("their_target", "matches"), [("frame.png", True), ("/etc/shadow", False)])
def test_a_symlink_the_download_left_out_is_compared_by_its_target(
    tmp_path: Path, their_target: str, matches: bool
) -> None:
    # Downloads never create symlinks: they verify them and report them. The provider's result
    # goes through a real IPFS store and download, as the mediator fetches it.
    honest = _encode([_noise(1)], "PNG")
    ours = _result(tmp_path / "ours", {"frame.png": honest})
    (ours / "outputs" / "latest").symlink_to("frame.png")
    provider = _result(
        tmp_path / "provider", {"frame.png": _encode([_nudged(_noise(1), 1)], "PNG")}
    )
    (provider / "outputs" / "latest").symlink_to(their_target)
    storage = LocalStorage(tmp_path / "repo")
    skipped: dict[str, str] = {}
    theirs = storage.get(
        storage.add(provider),
        tmp_path / "theirs",
        on_symlink=lambda link: skipped.__setitem__(link.path, link.target),
    )
    assert not (theirs / "outputs" / "latest").is_symlink()

    verdict = compare(POLICY, ours, theirs, skipped_symlinks=skipped)
    assert verdict.matches is matches, verdict.reason
    if not matches:
        assert "outputs/latest: the symlinks have different targets" in verdict.reason
    # Without the download's report the symlink is simply missing.
    assert not compare(POLICY, ours, theirs).matches


@pytest.mark.timeout(60)
def test_a_fifo_is_a_mismatch_never_opened(tmp_path: Path, ours: Path) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    (theirs / "outputs" / "video.apng").unlink()
    os.mkfifo(theirs / "outputs" / "video.apng")

    _assert_refused_quickly(_in_child(ours, theirs, timeout_s=20), "not a regular file")


def test_a_folder_where_the_rerun_has_a_file_is_a_mismatch(tmp_path: Path, ours: Path) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    (theirs / "outputs" / "video.apng").unlink()
    (theirs / "outputs" / "video.apng").mkdir()
    (theirs / "outputs" / "video.apng" / "frame.png").write_bytes(b"")

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "outputs/video.apng" in verdict.reason


def test_many_extra_entries_stop_at_the_first(tmp_path: Path, ours: Path) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    deep = theirs / "outputs"
    for level in range(100):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    for index in range(2000):
        (theirs / "outputs" / f"extra{index}").write_bytes(b"")

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "the re-run has no" in verdict.reason


def test_a_missing_entry_is_named(tmp_path: Path, ours: Path) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    (theirs / "outputs" / "video.apng").unlink()

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "outputs/video.apng" in verdict.reason


def test_a_control_character_in_a_name_is_not_logged_raw(tmp_path: Path, ours: Path) -> None:
    theirs = tmp_path / "theirs"
    _copy_tree(ours, theirs)
    (theirs / "outputs" / "x\nERROR forged line").write_bytes(b"")

    verdict = compare(POLICY, ours, theirs)

    assert not verdict.matches
    assert "\n" not in verdict.reason


# --- our own result beyond the caps: the deal cannot be checked here ---------------------------


def test_a_rerun_over_the_caps_cannot_be_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, honest_apng: list[Image.Image]
) -> None:
    ours = _result(tmp_path / "ours", {"video.apng": _encode(honest_apng, "PNG")})
    theirs = _result(
        tmp_path / "theirs", {"video.apng": _encode([_nudged(f, 3) for f in honest_apng], "PNG")}
    )
    monkeypatch.setattr(verify, "MAX_FRAME_PIXELS", 64 * 63)
    with pytest.raises(InputError, match=r"outputs/video\.apng.*4096 pixels"):
        compare(POLICY, ours, theirs)
    monkeypatch.undo()

    monkeypatch.setattr(verify, "MAX_ENTRIES", 3)
    with pytest.raises(InputError, match="more than 3 entries"):
        compare(POLICY, ours, theirs)


def test_a_rerun_image_that_does_not_decode_cannot_be_checked(tmp_path: Path) -> None:
    ours = _result(tmp_path / "ours", {"image.png": b"not a png, written by the module"})
    theirs = _result(tmp_path / "theirs", {"image.png": b"not a png either"})

    with pytest.raises(
        InputError, match=r"outputs/image\.png: the re-run's file is not a readable"
    ):
        compare(POLICY, ours, theirs)
