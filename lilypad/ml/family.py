"""The jobs of the Stable Diffusion family modules (sd15, sd21, sdxl-turbo, sd-turbo, lcm): what
each model is (:class:`Family`), its settings from the environment, and :func:`main`, which each
module's entrypoint runs. Light: diffusers is imported only once the weights are found.

What a job does, in order:

1. Reads its tunables (names in the module's lilypad_module.toml; the defaults and bounds here
   are the same). A turbo or LCM job has no ``Sampler``/``Scheduler``: it samples as its model
   ships (:data:`TRAILING` with euler_ancestral; :data:`LCM` with the ``lcm`` sampler).
2. With an ``Image`` (SD 1.5 and 2.1; SDXL Turbo, SD Turbo and LCM from their v1.1), works at
   the picture's own size within the model's bounds and runs ``Strength`` of the schedule from
   it, as sdxl-img2img does (:mod:`lilypad.ml.edit`); ``Width`` and ``Height`` then do not
   apply. How many steps that is follows the model's diffusers img2img pipeline
   (:func:`strength_steps`); a ``Steps`` and ``Strength`` that run none are refused
   (:class:`~lilypad.errors.InvalidTunable`), but for SD 1.5 and 2.1, whose published v1.0
   gives the picture back through the VAE (its manifest: "0 keeps it").
3. In tiny mode, works at most 64x64 with at most 4 steps, and says so.
4. Samples (:mod:`lilypad.ml.sd`) and writes ``image-<n>.png`` for each of ``Batching`` images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import StrEnum

from PIL import Image

from lilypad.errors import InvalidTunable
from lilypad.ml import determinism, edit, job
from lilypad.ml.edit import Bounds
from lilypad.ml.job import env, env_choice, env_float, env_int, log
from lilypad.ml.settings import ImageSettings
from lilypad.ml.tiny import TINY_LIMITS

#: The schedules a model ships, which its job uses instead of a ``Scheduler`` tunable:
#: diffusers' trailing timestep spacing (the turbo models) and the LCM scheduler's timesteps.
TRAILING, LCM = "trailing", "lcm"
#: The LCM scheduler's ``original_inference_steps``: the distillation schedule its ``Steps``
#: are taken from (LCM Dreamshaper v7's scheduler config, and the tiny one's).
LCM_ORIGINAL_STEPS = 50

DEFAULT_PROMPT = "question mark floating in space"


class Kind(StrEnum):
    """The diffusers pipeline a model loads as; it decides the denoiser (:func:`.sd.denoiser`)."""

    SD = "StableDiffusionPipeline"
    SDXL = "StableDiffusionXLPipeline"
    LCM = "LatentConsistencyModelPipeline"


@dataclass(frozen=True)
class Span:
    """A numeric tunable's default and bounds."""

    default: float
    low: float
    high: float


#: Strength: the guides' 0.8, image to image's default where a model has nothing better.
STRENGTH = Span(0.8, 0, 1)


@dataclass(frozen=True)
class Family:
    """One model of the family and what its module's tunables allow.

    Attributes:
        title: Its name in the job log ("SD 1.5").
        model: Its weights.
        kind: The pipeline it loads as.
        prediction: What its UNet predicts: ``epsilon`` or ``v_prediction`` (SD 2.1). A property
            of the weights: SD Turbo runs on the tiny SD 2.1 weights, yet predicts epsilon.
        size: Its native side (``Width`` and ``Height``'s default).
        bounds: ``Width`` and ``Height``'s range, and the sides a picture is worked at.
        steps: ``Steps``.
        guidance: ``GuidanceScale``.
        sampler: The sampler it ships with, or None for the ``Sampler`` tunable.
        scheduler: The schedule it ships with, or None for the ``Scheduler`` tunable.
        negative_prompt: Whether it has ``NegativePrompt`` (LCM does not: no unguided pass).
        image_to_image: Whether it takes an optional ``Image`` and ``Strength`` (SDXL Turbo,
            SD Turbo and LCM from v1.1: their v1.0 manifests have neither, so a v1.0 job
            never gets a picture).
        strength: ``Strength``.
        keeps_picture_at_no_step: Whether a ``Steps`` and ``Strength`` that run no step give
            the picture back through the VAE (SD 1.5 and 2.1's published v1.0) instead of
            being refused.
    """

    title: str
    model: job.Model
    kind: Kind
    prediction: str
    size: int
    bounds: Bounds
    steps: Span
    guidance: Span
    sampler: str | None = None
    scheduler: str | None = None
    negative_prompt: bool = True
    image_to_image: bool = False
    strength: Span = STRENGTH
    keeps_picture_at_no_step: bool = False


#: SD 1.x/2.x below 256 pixels draw little; above 1024 they repeat themselves.
SD_BOUNDS = Bounds(max_side=1024, min_side=256)
#: SDXL's architecture below 512 pixels draws poorly (SDXL Turbo's native size is 512).
SDXL_TURBO_BOUNDS = Bounds(max_side=1024, min_side=512)
#: The guides: 20-50 steps, guidance about 7 (SD 1.5, 2.1); turbo: 1-4 steps, no guidance;
#: LCM: 4-8 steps, guidance 8 as its w embedding (the model card's).
_STEPS, _GUIDANCE = Span(25, 1, 100), Span(7.0, 0, 20)
_TURBO_STEPS, _TURBO_GUIDANCE = Span(1, 1, 4), Span(0.0, 0, 2)
_LCM_STEPS = Span(4, 2, 8)
#: Strength: the guides' 0.8 for SD 1.5 and 2.1, and for LCM, whose diffusers docs run LCM
#: Dreamshaper v7's img2img at the pipeline's default 0.8. Turbo: the model cards' 0.5 (at 2
#: steps), at least 1/4, below which no Steps up to 4 runs a step. LCM: at least 8/50, from which
#: every Steps up to 8 has its steps among the distillation timesteps Strength keeps
#: (:func:`strength_steps`), so the manifest's bounds alone refuse every job that would run
#: none, before it is signed.
_TURBO_STRENGTH = Span(0.5, 1 / _TURBO_STEPS.high, 1)
_LCM_STRENGTH = Span(0.8, _LCM_STEPS.high / LCM_ORIGINAL_STEPS, 1)

SD15 = Family(
    "SD 1.5", job.SD_15, Kind.SD, "epsilon", 512, SD_BOUNDS, _STEPS, _GUIDANCE,
    image_to_image=True, keeps_picture_at_no_step=True,
)  # fmt: skip
SD21 = Family(
    "SD 2.1", job.SD_21, Kind.SD, "v_prediction", 768, SD_BOUNDS, _STEPS, _GUIDANCE,
    image_to_image=True, keeps_picture_at_no_step=True,
)  # fmt: skip
SDXL_TURBO = Family(
    "SDXL Turbo", job.SDXL_TURBO_10, Kind.SDXL, "epsilon", 512, SDXL_TURBO_BOUNDS,
    _TURBO_STEPS, _TURBO_GUIDANCE, sampler="euler_ancestral", scheduler=TRAILING,
    image_to_image=True, strength=_TURBO_STRENGTH,
)  # fmt: skip
SD_TURBO = Family(
    "SD Turbo", job.SD_TURBO_10, Kind.SD, "epsilon", 512, SD_BOUNDS,
    _TURBO_STEPS, _TURBO_GUIDANCE, sampler="euler_ancestral", scheduler=TRAILING,
    image_to_image=True, strength=_TURBO_STRENGTH,
)  # fmt: skip
LCM_DREAMSHAPER = Family(
    "LCM Dreamshaper v7", job.LCM_DREAMSHAPER_7, Kind.LCM, "epsilon", 512, SD_BOUNDS,
    _LCM_STEPS, Span(8.0, 1, 20), sampler="lcm", scheduler=LCM, negative_prompt=False,
    image_to_image=True, strength=_LCM_STRENGTH,
)  # fmt: skip

#: Every family module by name, as module/<name>/ holds it.
MODULES = {
    "sd15": SD15,
    "sd21": SD21,
    "sdxl-turbo": SDXL_TURBO,
    "sd-turbo": SD_TURBO,
    "lcm": LCM_DREAMSHAPER,
}


def _side(name: str, family: Family) -> int:
    low, high = family.bounds.min_side, family.bounds.max_side
    value = env_int(name, family.size, low, high)
    if value % edit.MULTIPLE:
        raise InvalidTunable(f"{name}={value} is not a multiple of 8; allowed: {low}..{high} in 8s")
    return value


def settings(family: Family) -> ImageSettings:
    """The job's settings from its environment (defaults and bounds from ``family``)."""
    from lilypad.ml.samplers import SAMPLERS
    from lilypad.ml.schedules import SCHEDULES

    return ImageSettings(
        prompt=env("PROMPT", DEFAULT_PROMPT),
        negative_prompt=env("NEGATIVE_PROMPT", "") if family.negative_prompt else "",
        seed=env_int("SEED", 0, 0),
        steps=env_int("STEPS", *(int(x) for x in _span(family.steps))),
        width=_side("WIDTH", family),
        height=_side("HEIGHT", family),
        guidance_scale=env_float("GUIDANCE_SCALE", *_span(family.guidance)),
        sampler=family.sampler or env_choice("SAMPLER", "euler_ancestral", list(SAMPLERS)),
        scheduler=family.scheduler or env_choice("SCHEDULER", "normal", list(SCHEDULES)),
        batch=env_int("BATCHING", 1, 1, 4),
        strength=env_float("STRENGTH", *_span(family.strength)) if family.image_to_image else 1.0,
    )


def _span(span: Span) -> tuple[float, float, float]:
    return span.default, span.low, span.high


def _sized(family: Family, s: ImageSettings, picture: Image.Image | None) -> ImageSettings:
    """``s`` at the size the job works at: the picture's (fitted), capped in tiny mode."""
    if picture is not None:
        width, height = edit.fit(*picture.size, family.bounds)
        s = replace(s, width=width, height=height)
    if job.weights_mode() is job.WeightsMode.TINY:
        tiny = (TINY_LIMITS.width, TINY_LIMITS.height)
        if picture is not None:
            tiny = edit.fit(*picture.size, edit.TINY_BOUNDS)
        s = edit.tiny_steps(s, tiny, family.title)
    if picture is not None and picture.size != (s.width, s.height):
        log(f"picture {picture.size[0]}x{picture.size[1]}, worked at {s.width}x{s.height}")
    return s


def strength_steps(family: Family, steps: int, strength: float) -> int:
    """How many steps an image-to-image job of ``family`` runs, as its diffusers img2img
    pipeline does (the sigmas: :func:`lilypad.ml.sd.image_to_image_sigmas`).

    LCM follows ``LatentConsistencyModelImg2ImgPipeline``, which hands ``strength`` to
    ``LCMScheduler.set_timesteps``: all ``steps``, taken from the ``int(50 * strength)`` least
    noisy distillation timesteps, and none where those are fewer than ``steps`` (diffusers
    raises). The others follow ``StableDiffusion(XL)Img2ImgPipeline.get_timesteps``: the last
    ``int(steps * strength)`` of the ``steps``-step schedule
    (:func:`lilypad.ml.sdxl.strength_steps`).
    """
    if family.scheduler == LCM:
        return steps if int(LCM_ORIGINAL_STEPS * strength) >= steps else 0
    from lilypad.ml.sdxl import strength_steps as last_steps

    return last_steps(steps, strength)


def check_strength(family: Family, s: ImageSettings) -> None:
    """Refuse an image-to-image job whose ``Steps`` and ``Strength`` run no step (but for a
    family that keeps the picture then: :attr:`Family.keeps_picture_at_no_step`).

    Raises:
        InvalidTunable: naming both values and the ``Strength`` (or ``Steps``) that would run.
    """
    if family.keeps_picture_at_no_step or strength_steps(family, s.steps, s.strength):
        return
    given = f"Steps={s.steps} with Strength={s.strength:g} runs no step of {family.title}"
    least = f"Strength at least {_least_strength(family, s.steps):g} at Steps={s.steps}"
    steps = range(int(family.steps.low), int(family.steps.high) + 1)
    fit = [n for n in steps if strength_steps(family, n, s.strength)]
    if family.scheduler == LCM:
        kept = int(LCM_ORIGINAL_STEPS * s.strength)
        fewer = f", or Steps={fit[-1]} or fewer" if fit else ""
        raise InvalidTunable(
            f"{given}: with an Image, its Steps are taken from the int({LCM_ORIGINAL_STEPS} x "
            f"Strength) = {kept} least noisy of its {LCM_ORIGINAL_STEPS} distillation "
            f"timesteps, fewer than {s.steps}; allowed: {least}{fewer}"
        )
    more = f", or Steps={fit[0]} at Strength={s.strength:g}" if fit else ""
    raise InvalidTunable(
        f"{given}: with an Image it runs the last int(Steps x Strength) of Steps steps, so "
        f"Steps x Strength must reach 1; allowed: {least}{more}"
    )


def _least_strength(family: Family, steps: int) -> float:
    """The least ``Strength`` (to 3 decimals, rounded up) at which ``steps`` run."""
    exact = steps / LCM_ORIGINAL_STEPS if family.scheduler == LCM else 1 / steps
    shown = round(exact, 3)
    return shown if strength_steps(family, steps, shown) else round(shown + 0.001, 3)


def _log_plan(family: Family, s: ImageSettings, picture: Image.Image | None) -> None:
    from lilypad.ml.samplers import STEP_NOTES

    if picture is not None and family.scheduler == LCM:
        # edit.log_plan says "the last n of Steps": LCM runs all of them, over a shorter range
        kept = int(LCM_ORIGINAL_STEPS * s.strength)
        start = "pure noise" if s.strength >= 1 else "the noised picture"
        log(
            f"sampler {s.sampler}, schedule {s.scheduler}, seed {s.seed}; Strength "
            f"{s.strength:g}: {s.steps} steps over the {kept} least noisy of the "
            f"{LCM_ORIGINAL_STEPS} distillation timesteps, from {start}"
        )
    elif picture is not None:
        edit.log_plan(s)
    else:
        log(f"sampler {s.sampler}, schedule {s.scheduler}, {s.steps} steps, seed {s.seed}")
        if s.sampler in STEP_NOTES:
            log(STEP_NOTES[s.sampler])
    if family.kind is Kind.LCM:
        w = s.guidance_scale - 1
        log(f"guidance {s.guidance_scale:g} as the UNet's w embedding (w = {w:g})")
    elif s.guidance_scale <= 1:
        log(f"GuidanceScale {s.guidance_scale:g}: no classifier-free guidance (at or below 1)")


def main(family: Family) -> list[str]:
    """Run one job of ``family`` from the environment; returns the files it wrote."""
    determinism.configure()
    job.quiet_libraries()
    s = settings(family)
    picture = None
    if family.image_to_image and os.environ.get("IMAGE"):
        check_strength(family, s)  # on the Steps asked for: tiny mode's cap would change them
        picture = edit.read_image("IMAGE")
    s = _sized(family, s, picture)
    path = job.weights_path(family.model)
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    import diffusers

    from lilypad.ml import media, sd

    log(f"loading {family.model.hub_id}")
    pipe = sd.load(getattr(diffusers, family.kind.value), path)
    _log_plan(family, s, picture)
    denoiser = sd.denoiser(pipe, family, s)
    if picture is None:
        images = sd.text_to_image(pipe, s, denoiser, job.progress)
    else:
        resized = edit.resize(picture, (s.width, s.height))
        images = sd.image_to_image(pipe, s, denoiser, resized, job.progress)
    return media.write_images(images, job.outputs_dir())
