"""The pictures of image-editing jobs (image to image, inpainting, outpainting): how an input
file becomes the picture and mask a job works on, and how the result is put together.

Every rule is deterministic and uses Pillow and numpy only (no torch):

- **Decoding** (:func:`read_image`, :func:`read_mask`): PNG, JPEG or WebP; the EXIF orientation
  is applied (``ImageOps.exif_transpose``). A picture becomes 8-bit RGB, transparency flattened
  over white; a mask becomes 8-bit grayscale (ITU-R 601 luma), transparency flattened over
  black (a transparent pixel is kept), 16-bit samples keep their high byte.
- **Size** (:func:`fit`): the picture is worked at its own size, scaled (aspect kept) so that
  its longer side is at most ``max_side`` or, if its shorter side is under ``min_side``, up to
  that (the longer side still at most ``max_side``), then each side rounded to the nearest
  multiple of 8 (the VAE's scale). A change of size resamples with Lanczos.
- **Masks** (:func:`binary_mask`): resized to the working size with the nearest pixel, then
  thresholded: 128 or more repaints, less keeps (diffusers' ``do_binarize`` at 0.5).
- **Keeping pixels** (:func:`composite`): the decoded result shows through the mask only;
  everywhere the mask is 0 the output pixel is the input's own, exactly.
- **Outpainting** (:func:`outpaint_canvas`): the picture is placed at (left, top) on a canvas
  grown by the borders, the border filled by stretching the picture's edge pixels outwards. The
  model repaints the border plus ``overlap`` pixels into the picture on each side that has a
  border; across that band the result fades into the picture (the model's weight falls from
  ``1 - 0.5 / overlap`` at the edge to ``0.5 / overlap`` inside), so no seam shows.
- **Tiny mode** (``LILYPAD_WEIGHTS=tiny``): pictures are worked at most 64 pixels a side
  (:data:`TINY_BOUNDS`); an outpainting canvas is scaled down as a whole (:func:`fit_canvas`).
- **Versions** (:func:`reads_weights`): each editing entrypoint takes its module version as an
  argument (``python img2img.py 1.1``); 1.1 reads Prompt and NegativePrompt with weights and
  blends (:mod:`lilypad.ml.prompts`), 1.0 (no argument, as its published entrypoint runs) as
  diffusers' ``encode_prompt`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lilypad.errors import InferenceError, InvalidTunable
from lilypad.ml import job
from lilypad.ml.job import env, env_choice, env_float, env_int, log
from lilypad.ml.settings import ImageSettings
from lilypad.ml.tiny import TINY_LIMITS

#: What Pillow may decode an input as: the formats an ``image`` tunable accepts.
FORMATS = ("PNG", "JPEG", "WEBP")
#: Sides are multiples of this: the VAE's scale factor, so every pixel has its latent.
MULTIPLE = 8
#: The mask value from which a pixel is repainted (of 255).
MASK_THRESHOLD = 128


@dataclass(frozen=True)
class Bounds:
    """The sides a job's picture is worked at (see :func:`fit`)."""

    max_side: int
    min_side: int


#: SDXL's range: below 512 pixels it draws poorly, above 2048 it repeats itself.
SDXL_BOUNDS = Bounds(max_side=2048, min_side=512)


#: The environment variables of an outpainting job's borders, in :class:`Borders` order.
BORDER_ENV = ("LEFT", "RIGHT", "TOP", "BOTTOM")


@dataclass(frozen=True)
class Borders:
    """Pixels added on each side of an outpainted picture."""

    left: int
    right: int
    top: int
    bottom: int

    def __str__(self) -> str:
        return f"Left {self.left}, Right {self.right}, Top {self.top}, Bottom {self.bottom}"


def _open(variable: str) -> Image.Image:
    path = job.env_file(variable)
    try:
        image = Image.open(path, formats=FORMATS)
        image.load()
    except UnidentifiedImageError:
        raise InvalidTunable(f"{variable}={path.name} is not a PNG, JPEG or WebP picture") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidTunable(f"{variable}={path.name} could not be decoded: {exc}") from None
    transposed = ImageOps.exif_transpose(image)
    return transposed if transposed is not None else image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer samples (16-bit grayscale PNGs) as 8-bit: their high byte."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        samples = np.asarray(image).astype(np.uint32) >> 8
        return Image.fromarray(np.clip(samples, 0, 255).astype(np.uint8), "L")
    return image


def _flatten(image: Image.Image, background: int) -> Image.Image:
    image = _eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA") or image.has_transparency_data:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(variable: str) -> Image.Image:
    """The picture at the path in ``$variable``: EXIF-oriented, RGB, transparency on white.

    Raises:
        InvalidTunable: (exit code 2) no such file, or not a decodable PNG, JPEG or WebP.
    """
    return _flatten(_open(variable), 255)


def read_mask(variable: str) -> Image.Image:
    """The mask at the path in ``$variable``: EXIF-oriented, grayscale, transparency on black.

    Raises:
        InvalidTunable: (exit code 2) no such file, or not a decodable PNG, JPEG or WebP.
    """
    return _flatten(_open(variable), 0).convert("L")


def round_side(value: float) -> int:
    """``value`` to the nearest multiple of 8 (halves up), at least 8."""
    return max(MULTIPLE, math.floor(value / MULTIPLE + 0.5) * MULTIPLE)


def fit(width: int, height: int, bounds: Bounds) -> tuple[int, int]:
    """The size a ``width`` x ``height`` picture is worked at (module docstring: Size)."""
    longer, shorter = max(width, height), min(width, height)
    scale = 1.0
    if longer > bounds.max_side:
        scale = bounds.max_side / longer
    elif shorter < bounds.min_side:
        scale = min(bounds.min_side / shorter, bounds.max_side / longer)
    return round_side(width * scale), round_side(height * scale)


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size`` (Lanczos); itself when it has that size already."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def binary_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``mask`` at ``size`` (nearest pixel), 255 where it repaints and 0 where it keeps."""
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return mask.point(lambda v: 255 if v >= MASK_THRESHOLD else 0)


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` where ``mask`` is 255, ``original`` where it is 0, blended between."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask)


def check_borders(borders: Borders, picture: tuple[int, int]) -> tuple[int, int]:
    """The canvas size of ``picture`` grown by ``borders`` (see :func:`fit_canvas` for a canvas
    over SDXL's size).

    Raises:
        InvalidTunable: (exit code 2) every border is 0 or one is not a multiple of 8; the
            manifest refuses both before a job is signed, this is for a hand-made spec.
    """
    sides = (borders.left, borders.right, borders.top, borders.bottom)
    if not any(sides):
        raise InvalidTunable(
            f"{borders}: every border is 0, so there is nothing to outpaint; give at least one "
            "in pixels (a multiple of 8, up to 1024)"
        )
    off = [s for s in sides if s < 0 or s % MULTIPLE]
    if off:
        raise InvalidTunable(f"{borders}: borders are multiples of 8 from 0, not {off[0]}")
    return picture[0] + borders.left + borders.right, picture[1] + borders.top + borders.bottom


def fit_canvas(
    picture: tuple[int, int], borders: Borders, overlap: int, max_side: int
) -> tuple[tuple[int, int], Borders, int]:
    """Picture size, borders and overlap scaled alike so that the canvas is at most
    ``max_side`` a side (sides rounded to multiples of 8, a border kept at least 8; the canvas
    may end a few multiples of 8 over): the outpainted picture keeps its proportions, as an
    img2img input over the bounds does. Real jobs fit 2048 (:data:`SDXL_BOUNDS`), tiny ones
    :data:`TINY_BOUNDS`."""
    width = picture[0] + borders.left + borders.right
    height = picture[1] + borders.top + borders.bottom
    scale = min(1.0, max_side / max(width, height))
    if scale == 1:
        return picture, borders, overlap

    def side(border: int) -> int:
        return max(MULTIPLE, int(border * scale) // MULTIPLE * MULTIPLE) if border else 0

    scaled = Borders(
        side(borders.left), side(borders.right), side(borders.top), side(borders.bottom)
    )
    small = (round_side(picture[0] * scale), round_side(picture[1] * scale))
    return small, scaled, int(overlap * scale)


def _ramp(length: int, overlap: int, start: bool, end: bool) -> np.ndarray:
    """Per pixel along one side of the picture: the model's weight in the overlap band."""
    weights = np.zeros(length)
    band = (1 - (np.arange(min(overlap, length)) + 0.5) / overlap) if overlap else np.zeros(0)
    if start:
        weights[: len(band)] = np.maximum(weights[: len(band)], band)
    if end:
        weights[length - len(band) :] = np.maximum(weights[length - len(band) :], band[::-1])
    return weights


def outpaint_canvas(
    image: Image.Image, borders: Borders, overlap: int
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """The canvas to outpaint ``image`` on, the mask the model repaints, the blend of the result.

    Returns:
        The canvas (RGB: the picture at (left, top), its edge pixels stretched into the border),
        the model's mask (255 on the border and the overlap band, 0 elsewhere) and the blend
        for :func:`composite` (255 on the border, fading across the band, 0 elsewhere).
    """
    width, height = image.size
    pixels = np.asarray(image.convert("RGB"))
    pad = ((borders.top, borders.bottom), (borders.left, borders.right), (0, 0))
    canvas = Image.fromarray(np.pad(pixels, pad, mode="edge"), "RGB")
    across = _ramp(width, overlap, borders.left > 0, borders.right > 0)
    down = _ramp(height, overlap, borders.top > 0, borders.bottom > 0)
    inside = np.maximum(across[None, :], down[:, None])
    weights = np.pad(inside, pad[:2], constant_values=1.0)
    blend = np.rint(weights * 255).astype(np.uint8)
    mask = np.where(weights > 0, 255, 0).astype(np.uint8)
    return canvas, Image.fromarray(mask, "L"), Image.fromarray(blend, "L")


# ------------------------------------------------------------------------------------ the jobs


#: The versions an editing entrypoint knows, the first its default; those after 1.0 read
#: weighted prompts.
VERSIONS = ("1.0", "1.1")


def reads_weights(args: Sequence[str]) -> bool:
    """Whether an editing entrypoint started with ``args`` (``sys.argv[1:]``: the version, none
    for 1.0) reads its prompts with weights and blends.

    Raises:
        InferenceError: an unknown version, or more than one argument (a manifest's mistake).
    """
    version = args[0] if args else VERSIONS[0]
    if version not in VERSIONS or len(args) > 1:
        raise InferenceError(
            f"unknown arguments {' '.join(args)!r} for an editing entrypoint; it takes one "
            f"version, {' or '.join(VERSIONS)} (none: 1.0)"
        )
    return version != "1.0"


#: In tiny mode (``LILYPAD_WEIGHTS=tiny``) pictures are worked at most this large.
TINY_BOUNDS = Bounds(max_side=min(TINY_LIMITS.width, TINY_LIMITS.height), min_side=MULTIPLE)


def settings(size: tuple[int, int], strength: float, steps: int, guidance: float) -> ImageSettings:
    """An editing job's settings from its environment (the tunables every editing module has),
    for a picture worked at ``size``; ``strength``, ``steps`` and ``guidance`` are the defaults."""
    from lilypad.ml.samplers import SAMPLERS
    from lilypad.ml.schedules import SCHEDULES

    return ImageSettings(
        prompt=env("PROMPT", ""),
        negative_prompt=env("NEGATIVE_PROMPT", ""),
        seed=env_int("SEED", 0, 0),
        steps=env_int("STEPS", steps, 1, 100),
        width=size[0],
        height=size[1],
        guidance_scale=env_float("GUIDANCE_SCALE", guidance, 0, 20),
        sampler=env_choice("SAMPLER", "euler_ancestral", list(SAMPLERS)),
        scheduler=env_choice("SCHEDULER", "normal", list(SCHEDULES)),
        strength=env_float("STRENGTH", strength, 0, 1),
    )


def tiny_steps(s: ImageSettings, size: tuple[int, int], what: str) -> ImageSettings:
    """``s`` as tiny mode runs it: at ``size``, at most ``TINY_LIMITS.max_steps`` steps; logged."""
    capped = replace(s, width=size[0], height=size[1], steps=min(s.steps, TINY_LIMITS.max_steps))
    log(
        f"tiny weights: random {what} of the same architecture; "
        f"{capped.width}x{capped.height} instead of {s.width}x{s.height}, "
        f"{capped.steps} steps instead of {s.steps}"
    )
    return capped


def log_plan(s: ImageSettings) -> None:
    """Say on stderr what the sampler will do, Strength's share of the schedule included."""
    from lilypad.ml.samplers import STEP_NOTES
    from lilypad.ml.sdxl import strength_steps

    run = strength_steps(s.steps, s.strength)
    start = "pure noise" if s.strength >= 1 else "the noised picture"
    log(
        f"sampler {s.sampler}, schedule {s.scheduler}, seed {s.seed}; Strength {s.strength:g}: "
        f"the last {run} of {s.steps} steps, from {start}"
    )
    if run == 0:
        log(f"Strength {s.strength:g} selects no step: the picture is only encoded and decoded")
    if s.sampler in STEP_NOTES:
        log(STEP_NOTES[s.sampler])


def write_outputs(image: Image.Image, mask: Image.Image | None = None) -> list[str]:
    """Write ``image-0.png`` (and the mask the model used, ``mask.png``) into the outputs."""
    from lilypad.ml import media

    out = job.outputs_dir()
    media.write_png(image, out / "image-0.png")
    if mask is None:
        return ["image-0.png"]
    media.write_png(mask, out / "mask.png")
    return ["image-0.png", "mask.png"]
