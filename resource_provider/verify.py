"""Comparing a re-run with a submitted result, by the module's declared verification.

* ``exact``: the CIDs must be equal (same bytes in every file of the result folder).
* ``perceptual``: the same files must exist; ``exitCode`` and ``stdout`` must be equal; each file
  of ``outputs/`` must be byte-equal or, for an image PIL can read (PNG, JPEG, WebP, GIF, APNG,
  every frame), of the same size and frame count with a mean absolute pixel difference (0-255,
  over all channels and frames) of at most the module's ``tolerance``. ``stderr`` (progress and
  logs) is not compared. Other files (an MP4) must be byte-equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lilypad.errors import LilypadError
from lilypad.modules.manifest import Verification, VerificationMethod
from resource_provider.executors.layout import EXIT_CODE, OUTPUTS, STDOUT

IMAGE_SUFFIXES = frozenset({".png", ".apng", ".jpg", ".jpeg", ".webp", ".gif"})


@dataclass(frozen=True)
class Verdict:
    """Whether the submitted result matches, and why (for the log)."""

    matches: bool
    reason: str


def compare_exact(ours: str, theirs: str) -> Verdict:
    if ours == theirs:
        return Verdict(True, "the CIDs are equal")
    return Verdict(False, f"the re-run gives {ours}, the provider submitted {theirs}")


def compare(verification: Verification, ours: Path, theirs: Path) -> Verdict:
    """Compare two result folders (for ``perceptual``; ``exact`` compares CIDs instead)."""
    if verification.method is VerificationMethod.EXACT:
        raise LilypadError("exact verification compares CIDs; use compare_exact")
    tolerance = verification.tolerance or 0.0
    ours_files, theirs_files = _files(ours), _files(theirs)
    if ours_files != theirs_files:
        missing = sorted(ours_files ^ theirs_files)[:5]
        return Verdict(False, f"the result folders hold different files: {', '.join(missing)}")
    for name in (EXIT_CODE, STDOUT):
        if (ours / name).read_bytes() != (theirs / name).read_bytes():
            return Verdict(False, f"{name} differs")
    worst = 0.0
    for name in sorted(f for f in ours_files if f.startswith(OUTPUTS + "/")):
        a, b = ours / name, theirs / name
        if a.read_bytes() == b.read_bytes():
            continue
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            return Verdict(False, f"{name} differs and is not an image to compare perceptually")
        distance = image_distance(a, b)
        if distance is None:
            return Verdict(False, f"{name}: the images differ in size or frame count")
        worst = max(worst, distance)
        if distance > tolerance:
            return Verdict(
                False, f"{name}: mean pixel difference {distance:.3f} > tolerance {tolerance}"
            )
    return Verdict(True, f"within tolerance {tolerance} (worst mean difference {worst:.3f})")


def image_distance(a: Path, b: Path) -> float | None:
    """Mean absolute difference (0-255) over every pixel, channel and frame; None if the
    images differ in size, mode or frame count."""
    from PIL import Image, ImageChops, ImageSequence, ImageStat

    with Image.open(a) as first, Image.open(b) as second:
        # Alpha counts only where an image has it: an opaque channel would dilute the mean.
        mode = "RGBA" if "A" in first.mode + second.mode else "RGB"
        frames_a = [f.convert(mode) for f in ImageSequence.Iterator(first)]
        frames_b = [f.convert(mode) for f in ImageSequence.Iterator(second)]
    if len(frames_a) != len(frames_b) or any(
        x.size != y.size for x, y in zip(frames_a, frames_b, strict=True)
    ):
        return None
    total = 0.0
    for x, y in zip(frames_a, frames_b, strict=True):
        means = ImageStat.Stat(ImageChops.difference(x, y)).mean
        total += sum(means) / len(means)
    return total / len(frames_a)


def _files(root: Path) -> set[str]:
    found = set()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            found.add(str((Path(folder) / name).relative_to(root)))
    return found
