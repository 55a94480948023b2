"""The sdxl-pipeline module's entrypoint: ``python sdxl_pipeline.py base|refiner``, cwd = here.

Lilypad's ComfyUI-based SDXL Pipeline, run on this project's SDXL 1.0 code (lilypad/ml/sdxl.py,
as ``sdxl:v1.0-lilypad1`` runs it) and read from the variables upstream's image reads: ``PROMPT``,
``SEED``, ``STEPS``, ``SIZE`` (the side of a square), ``BATCHING``, ``SAMPLER``, ``SCHEDULER``.
``refiner`` hands the last fifth of the steps to the SDXL 1.0 refiner. Writes ``image-<n>.png``
into ``$LILYPAD_OUTPUTS_DIR``.
"""

from __future__ import annotations

import sys

from lilypad.ml import determinism, job
from lilypad.ml.job import env, env_choice, env_int, log
from lilypad.ml.predictor import Predictor
from lilypad.ml.samplers import DEFAULT_REFERENCE, REFERENCE_ENV, REFERENCES, SAMPLERS, STEP_NOTES
from lilypad.ml.schedules import SCHEDULES
from lilypad.ml.settings import ImageSettings

#: What upstream's workflow fixes that is not a tunable: its KSampler's guidance and its
#: negative prompt.
GUIDANCE = 8.0
NEGATIVE_PROMPT = "text, watermark"
#: Where ``refiner`` hands over to the refiner (the sdxl module's default RefinerSwitch).
REFINER_SWITCH = 0.8
VARIANTS = ("base", "refiner")


def settings(variant: str) -> ImageSettings:
    size = int(env_choice("SIZE", "1024", ["512", "768", "1024", "2048"]))
    return ImageSettings(
        prompt=env("PROMPT", "question mark floating in space"),
        negative_prompt=NEGATIVE_PROMPT,
        seed=env_int("SEED", 42, 0),
        steps=env_int("STEPS", 50, 5, 200),
        width=size,
        height=size,
        guidance_scale=GUIDANCE,
        sampler=env_choice("SAMPLER", "euler_ancestral", list(SAMPLERS)),
        scheduler=env_choice("SCHEDULER", "normal", list(SCHEDULES)),
        batch=int(env_choice("BATCHING", "1", ["1", "2", "4", "8"])),
        refiner_switch=REFINER_SWITCH if variant == "refiner" else 0.0,
        sampler_reference=env_choice(REFERENCE_ENV, DEFAULT_REFERENCE, list(REFERENCES)),
    )


def main() -> list[str]:
    import dataclasses

    from lilypad.errors import InferenceError
    from lilypad.ml.tiny import TINY_LIMITS

    variant = sys.argv[1] if len(sys.argv) > 1 else "base"
    if variant not in VARIANTS:
        raise InferenceError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    determinism.configure()
    job.quiet_libraries()
    s = settings(variant)
    if job.weights_mode() is job.WeightsMode.TINY:
        capped = dataclasses.replace(
            s,
            width=TINY_LIMITS.width,
            height=TINY_LIMITS.height,
            steps=min(s.steps, TINY_LIMITS.max_steps),
        )
        log(
            "tiny weights: random SDXL 1.0 of the same architecture; "
            f"{capped.width}x{capped.height} instead of {s.width}x{s.height}, "
            f"{capped.steps} steps instead of {s.steps}"
        )
        s = capped
    base_path = job.weights_path(job.SDXL_BASE_10)
    refiner_path = job.weights_path(job.SDXL_REFINER_10) if s.refiner_switch > 0 else None
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from lilypad.ml import media, sdxl

    log(f"loading {job.SDXL_BASE_10.hub_id}")
    pipe = sdxl.load(StableDiffusionXLPipeline, base_path)
    refiner = None
    if refiner_path is not None:
        log(f"loading {job.SDXL_REFINER_10.hub_id}")
        refiner = sdxl.load(StableDiffusionXLImg2ImgPipeline, refiner_path)
    log(f"sampler {s.sampler}, schedule {s.scheduler}, {s.steps} steps, seed {s.seed}")
    if s.sampler in STEP_NOTES:
        log(STEP_NOTES[s.sampler])

    images = sdxl.generate(pipe, s, job.progress, refiner)
    return media.write_images(images, job.outputs_dir())


#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(main)

if __name__ == "__main__":
    predictor.run_once()
