"""Comparing a re-run with a submitted result, by the module's declared verification.

* ``exact``: the CIDs must be equal (same bytes in every file of the result folder).
* ``perceptual`` (:func:`compare`), in this order, stopping at the first difference:

  1. The entries: the same relative paths in both folders, each of the same kind (regular file,
     folder or symlink). A symlink is compared by its target text and never followed; a special
     file (FIFO, device, socket) is a mismatch and is never opened.
  2. ``exitCode`` and ``stdout``: byte-equal. ``stderr`` (progress and logs) is not compared.
  3. Each file of ``outputs/``: byte-equal or, for an image by its suffix (``.png``/``.apng``
     PNG or APNG, ``.jpg``/``.jpeg`` JPEG, ``.webp`` WebP, ``.gif`` GIF; another format than the
     suffix is a mismatch), of the same size and frame count with a mean absolute pixel
     difference of at most the module's ``tolerance``: per frame the mean over pixels and
     channels (0-255; alpha counts only where either image has it), then the mean over frames.
     Other files (an MP4) must be byte-equal.

The submitted folder is the provider's bytes and may be hostile; the re-run's folder is ours and
trusted, so it sets the bounds. The walk of the submitted folder stops at the first entry the
re-run lacks; a file is read only as far as ours (a byte comparison stops at a difference in size
or bytes); a submitted image of more than twice the bytes of ours plus :data:`IMAGE_BYTES_SLACK`
is a mismatch unread (an encoder of nearly the same pixels stays far within it); its size and,
where the format's header gives it (PNG/APNG, WebP), its frame count must equal ours before a
pixel is decoded; frames are decoded one pair at a time, compared and dropped, until one differs
in size or the mean can no longer be within the tolerance. Pillow's decompression-bomb warning is
made an error (a process-wide warnings filter: it never depends on how Python was started).

Fixed caps on our own result (:data:`MAX_ENTRIES`, :data:`MAX_DEPTH`, :data:`MAX_IMAGE_BYTES`,
:data:`MAX_FRAME_PIXELS`, :data:`MAX_FRAMES`, :data:`MAX_TOTAL_PIXELS`) bound the work whatever the
job asked for; a re-run beyond them, or with an image that does not decode as its suffix says,
raises :class:`~lilypad.errors.InputError` (the deal cannot be checked here: the mediator leaves
it unresolved). Anything wrong with the submitted folder (a difference; a corrupt, truncated or
mislabelled image; an unreadable entry) is a mismatch with its reason, never an exception.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn

from lilypad.errors import InputError, LilypadError
from lilypad.modules.manifest import Verification, VerificationMethod
from resource_provider.executors import layout
from resource_provider.executors.layout import EXIT_CODE, OUTPUTS, STDOUT

if TYPE_CHECKING:
    from PIL import Image

#: Image suffixes compared perceptually, and the one Pillow format each must decode as.
IMAGE_FORMATS = {
    ".png": "PNG",
    ".apng": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".gif": "GIF",
}
IMAGE_SUFFIXES = frozenset(IMAGE_FORMATS)

#: Caps on our own result folder: entries (files, folders, symlinks) and folder depth. They are
#: the executors' own limits on ``outputs/`` (a module writing more is stopped), with room for the
#: layout around it, so every result an executor leaves can be compared.
MAX_ENTRIES = layout.MAX_ENTRIES + len(layout.LAYOUT)
MAX_DEPTH = layout.MAX_DEPTH + 1
#: Caps on each of our own images: file bytes, pixels per frame (8192x8192, below Pillow's
#: decompression-bomb limit), frames, and pixels over all frames.
MAX_IMAGE_BYTES = 512 * 1024 * 1024
MAX_FRAME_PIXELS = 8192 * 8192
MAX_FRAMES = 10_000
MAX_TOTAL_PIXELS = 1 << 30
#: Bytes a submitted image may have beyond twice those of ours.
IMAGE_BYTES_SLACK = 1024 * 1024

_CHUNK_BYTES = 1024 * 1024
_KINDS = {
    "file": "regular file",
    "folder": "folder",
    "symlink": "symlink",
    "special": "special file (not a regular file, folder or symlink)",
}
_OURS, _THEIRS = "re-run's", "submitted"


@dataclass(frozen=True)
class Verdict:
    """Whether the submitted result matches, and why (for the log)."""

    matches: bool
    reason: str


class _Mismatch(LilypadError):
    """A difference found deep in the comparison; :func:`compare` returns it as a Verdict."""


@dataclass(frozen=True)
class _Entry:
    kind: str  # a key of _KINDS
    size: int = 0  # a regular file's bytes
    target: str = ""  # a symlink's target, never followed


def compare_exact(ours: str, theirs: str) -> Verdict:
    if ours == theirs:
        return Verdict(True, "the CIDs are equal")
    return Verdict(False, f"the re-run gives {ours}, the provider submitted {theirs}")


def compare(
    verification: Verification,
    ours: Path,
    theirs: Path,
    *,
    skipped_symlinks: Mapping[str, str] | None = None,
) -> Verdict:
    """Compare our re-run's result folder with the submitted one, for ``perceptual``
    (``exact`` compares CIDs instead); what is compared, and within which bounds, is in the
    module docstring.

    Args:
        verification: The module's declared verification.
        ours: The re-run's result folder (trusted).
        theirs: The submitted result folder, as downloaded (hostile).
        skipped_symlinks: The symlinks the download of ``theirs`` verified and left out, by path
            inside the folder (``outputs/latest``) to link text, as
            :class:`lilypad.storage.dag.SkippedSymlink` reports them; each counts as a symlink
            entry of ``theirs``.

    Returns:
        A mismatch with its reason for any difference or anything wrong with ``theirs``.

    Raises:
        InputError: Our own result is beyond the fixed caps or is not a readable image where
            its suffix says so: the deal cannot be checked here.
    """
    if verification.method is VerificationMethod.EXACT:
        raise LilypadError("exact verification compares CIDs; use compare_exact")
    tolerance = verification.tolerance or 0.0
    try:
        worst = _compare(ours, theirs, dict(skipped_symlinks or {}), tolerance)
    except _Mismatch as exc:
        return Verdict(False, exc.message)
    return Verdict(True, f"within tolerance {tolerance} (worst mean difference {worst:.3f})")


def _compare(ours: Path, theirs: Path, skipped: dict[str, str], tolerance: float) -> float:
    mine = _scan(ours, None)
    with _reading_theirs("the submitted result folder"):
        submitted = _scan(theirs, mine)
    for name, target in skipped.items():
        if name not in mine:
            raise _Mismatch(
                f"the submitted result holds {_show(name)}; the re-run has no such entry"
            )
        if name in submitted:
            raise _Mismatch(f"the submitted result holds {_show(name)} twice")
        submitted[name] = _Entry("symlink", target=target)
    _same_entries(mine, submitted)
    for name in (n for n in (EXIT_CODE, STDOUT) if n in mine and mine[n].kind == "file"):
        if not _same_bytes(name, ours, theirs, mine[name].size, submitted[name].size):
            raise _Mismatch(f"{name} differs")
    worst = 0.0
    for name in sorted(mine):
        if mine[name].kind != "file" or not name.startswith(OUTPUTS + "/"):
            continue
        if _same_bytes(name, ours, theirs, mine[name].size, submitted[name].size):
            continue
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_FORMATS:
            raise _Mismatch(f"{_show(name)} differs and is not an image to compare perceptually")
        distance = _image_distance(
            name, (ours / name, mine[name].size), (theirs / name, submitted[name].size), tolerance
        )
        worst = max(worst, distance)
    return worst


# --- the folders -------------------------------------------------------------------------------


def _scan(root: Path, within: dict[str, _Entry] | None) -> dict[str, _Entry]:
    """Every entry under ``root`` by relative path (``/``-separated), no symlink followed.

    Ours (``within`` None) must stay within the fixed caps; the submitted walk stops at the
    first entry not in ``within``, so it never does more than ours did.
    """
    side = _OURS if within is None else _THEIRS
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        _fail(side, f"the {side} result {root} is not a folder")
    found: dict[str, _Entry] = {}
    pending = [("", 0)]
    while pending:
        folder, depth = pending.pop()
        with os.scandir(root / folder) as items:
            for item in items:
                name = f"{folder}/{item.name}" if folder else item.name
                if within is not None and name not in within:
                    raise _Mismatch(
                        f"the submitted result holds {_show(name)}; the re-run has no such entry"
                    )
                entry = found[name] = _entry(item)
                if len(found) > MAX_ENTRIES:
                    _fail(side, f"the {side} result has more than {MAX_ENTRIES} entries")
                if entry.kind == "folder":
                    if depth + 1 > MAX_DEPTH:
                        _fail(side, f"{_show(name)} is nested deeper than {MAX_DEPTH} folders")
                    pending.append((name, depth + 1))
    return found


def _entry(item: os.DirEntry[str]) -> _Entry:
    if item.is_symlink():
        # As downloads report a symlink they leave out: bytes not UTF-8 shown as \\xNN.
        target = os.fsencode(os.readlink(item.path)).decode("utf-8", "backslashreplace")
        return _Entry("symlink", target=target)
    if item.is_dir(follow_symlinks=False):
        return _Entry("folder")
    if item.is_file(follow_symlinks=False):
        return _Entry("file", size=item.stat(follow_symlinks=False).st_size)
    return _Entry("special")


def _same_entries(mine: dict[str, _Entry], theirs: dict[str, _Entry]) -> None:
    for name in sorted(mine):
        ours, submitted = mine[name], theirs.get(name)
        if submitted is None:
            raise _Mismatch(f"the submitted result lacks {_show(name)}")
        if "special" in (ours.kind, submitted.kind) or ours.kind != submitted.kind:
            raise _Mismatch(
                f"{_show(name)} is a {_KINDS[ours.kind]} in the re-run and a "
                f"{_KINDS[submitted.kind]} in the submitted result"
            )
        if ours.target != submitted.target:
            raise _Mismatch(f"{_show(name)}: the symlinks have different targets (not followed)")


def _same_bytes(name: str, ours: Path, theirs: Path, size: int, their_size: int) -> bool:
    if size != their_size:
        return False
    with _open(ours / name) as mine:
        with _reading_theirs(name):
            submitted = _open(theirs / name)
        with submitted:
            while chunk := mine.read(_CHUNK_BYTES):
                with _reading_theirs(name):
                    same = submitted.read(len(chunk)) == chunk
                if not same:
                    return False
            with _reading_theirs(name):
                return not submitted.read(1)


def _open(path: Path) -> BinaryIO:
    """Open a regular file for reading; never a symlink, never blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


@contextmanager
def _reading_theirs(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _Mismatch(f"{_show(what)} cannot be read: {exc.strerror or exc}") from exc


# --- the images --------------------------------------------------------------------------------


def _image_distance(
    name: str, ours: tuple[Path, int], theirs: tuple[Path, int], tolerance: float
) -> float:
    fmt = IMAGE_FORMATS[Path(name).suffix.lower()]
    (our_path, size), (their_path, their_size) = ours, theirs
    if size > MAX_IMAGE_BYTES:
        _fail(_OURS, f"{_show(name)}: the re-run's image has {size} bytes, over {MAX_IMAGE_BYTES}")
    allowed = 2 * size + IMAGE_BYTES_SLACK
    if their_size > allowed:
        raise _Mismatch(
            f"{_show(name)}: the submitted image has {their_size} bytes, more than {allowed} "
            f"(twice the re-run's {size}, plus {IMAGE_BYTES_SLACK})"
        )
    from PIL import Image

    # Pillow only warns for an image over MAX_IMAGE_PIXELS (it raises over twice that); here the
    # image is hostile, so the warning is an error (process-wide) whatever the filters were.
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    with _open(our_path) as a, _reading_theirs(name), _open(their_path) as b:
        with _decoding(name, _OURS, fmt):
            mine = Image.open(a, formats=[fmt])
        with mine:
            with _decoding(name, _THEIRS, fmt):
                submitted = Image.open(b, formats=[fmt])
            with submitted:
                return _frames_distance(name, fmt, mine, submitted, tolerance)


def _frames_distance(
    name: str, fmt: str, mine: Image.Image, theirs: Image.Image, tolerance: float
) -> float:
    from PIL import ImageChops, ImageStat

    with _decoding(name, _OURS, fmt):
        frames = getattr(mine, "n_frames", 1)  # ours is trusted: a GIF's count costs a pass
    _check_caps(name, mine, frames)
    # A GIF's header gives no count (Pillow would read every frame): it is checked frame by frame.
    declared = None if fmt == "GIF" else getattr(theirs, "n_frames", 1)
    if theirs.size != mine.size or declared not in (None, frames):
        raise _Mismatch(
            f"{_show(name)}: the submitted image is {_shape(theirs.size, declared)}, "
            f"the re-run's {_shape(mine.size, frames)}"
        )
    # Alpha counts only where an image has it: an opaque channel would dilute the mean.
    mode = "RGBA" if "A" in mine.mode + theirs.mode else "RGB"
    total = 0.0
    for index in range(frames):
        if not _seek(name, fmt, mine, index, _OURS):
            _fail(_OURS, f"{_show(name)}: the re-run's image ends after {index} of {frames} frames")
        if not _seek(name, fmt, theirs, index, _THEIRS):
            raise _Mismatch(f"{_show(name)}: the submitted image has {index} frames, not {frames}")
        if theirs.size != mine.size:
            raise _Mismatch(
                f"{_show(name)}: frame {index + 1} is {_shape(theirs.size)} in the submitted "
                f"image, {_shape(mine.size)} in the re-run's"
            )
        _check_caps(name, mine, frames)
        with _decoding(name, _OURS, fmt):
            x = mine.convert(mode)
        with _decoding(name, _THEIRS, fmt):
            y = theirs.convert(mode)
        means = ImageStat.Stat(ImageChops.difference(x, y)).mean
        total += sum(means) / len(means)
        if total / frames > tolerance:  # the mean over every frame can only be larger
            seen = "" if index + 1 == frames else f" at least (from {index + 1} of {frames} frames)"
            raise _Mismatch(
                f"{_show(name)}: mean pixel difference{seen} {total / frames:.3f} "
                f"> tolerance {tolerance}"
            )
    if _seek(name, fmt, theirs, frames, _THEIRS):
        raise _Mismatch(f"{_show(name)}: the submitted image has more than {frames} frames")
    return total / frames


def _check_caps(name: str, image: Image.Image, frames: int) -> None:
    pixels = image.width * image.height
    if frames > MAX_FRAMES or pixels > MAX_FRAME_PIXELS or pixels * frames > MAX_TOTAL_PIXELS:
        _fail(
            _OURS,
            f"{_show(name)}: the re-run's image is {_shape(image.size, frames)} ({pixels} pixels "
            f"a frame), over the caps of {MAX_FRAME_PIXELS} pixels a frame, {MAX_FRAMES} frames "
            f"and {MAX_TOTAL_PIXELS} pixels in all",
        )


def _seek(name: str, fmt: str, image: Image.Image, index: int, side: str) -> bool:
    """Go to frame ``index``; False if the image has no such frame."""
    with _decoding(name, side, fmt):
        try:
            image.seek(index)
        except EOFError:
            return False
    return True


@contextmanager
def _decoding(name: str, side: str, fmt: str) -> Iterator[None]:
    """Turn what Pillow raises for an undecodable image into a mismatch (theirs) or an
    InputError (ours: the deal cannot be checked here)."""
    from PIL import Image

    try:
        yield
    except (
        OSError,  # truncated, corrupt data, not this format (UnidentifiedImageError)
        SyntaxError,  # Pillow's "broken PNG file" and the like
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        struct.error,
        zlib.error,
        Image.DecompressionBombError,
        Warning,  # the bomb warning (made an error above), or any other a filter made an error
    ) as exc:
        _fail(side, f"{_show(name)}: the {side} file is not a readable {fmt} image ({_show(exc)})")


def _fail(side: str, message: str) -> NoReturn:
    if side == _OURS:
        raise InputError(f"{message}; the deal cannot be checked here")
    raise _Mismatch(message)


def _shape(size: tuple[int, int], frames: int | None = None) -> str:
    shape = f"{size[0]}x{size[1]}"
    return shape if frames is None else f"{shape} with {frames} frames"


def _show(value: object, limit: int = 200) -> str:
    """Text the provider chose (a name, a decoder's message) as one printable line."""
    text = str(value) or type(value).__name__
    if text.isprintable() and len(text) <= limit:
        return text
    return ascii(text[:limit])
