"""The sdv-pipeline module's entrypoint: ``python sdv.py VERSION [weighted]``, cwd = here.

``VERSION`` is Stable Video Diffusion's, 1.0 or 1.1; ``weighted`` reads the prompt with weights
and blends (:mod:`lilypad.ml.prompts`), as the ``lilypad4`` versions ask; without it the prompt is
read as diffusers' ``encode_prompt`` does.

An SDXL 1.0 still from the prompt (``Sampler``/``Scheduler``/``Steps``/``Seed``), then Stable
Video Diffusion on it (``VideoSampler``/``VideoScheduler``/``VideoSteps``/``VideoSeed``), for each
of ``Batching`` stills. Writes into ``$LILYPAD_OUTPUTS_DIR``, for each still n: ``image-n.png``,
``video-n.apng``, ``video-n.webp`` and ``video-n.mp4`` at ``Framerate`` frames per second.

The module is ComfyUI-based: its ``lilypad3`` versions sample as today's ComfyUI does where it and
k-diffusion differ; the ``lilypad2`` ones keep k-diffusion's behaviour, their published bytes
(``LILYPAD_SAMPLER_REFERENCE``, fixed by the manifest's ``sampler_reference``). The ``lilypad4``
versions are the ``lilypad3`` ones with a weighted prompt.
"""

from __future__ import annotations

import os
import sys

from lilypad.ml import determinism, job
from lilypad.ml.job import env, env_choice, env_int, log
from lilypad.ml.predictor import Predictor
from lilypad.ml.samplers import DEFAULT_REFERENCE, REFERENCE_ENV, REFERENCES, SAMPLERS, STEP_NOTES
from lilypad.ml.schedules import SCHEDULES

#: SVD's native resolution (both versions), used for the still too.
WIDTH, HEIGHT = 1024, 576
#: Classifier-free guidance of the SDXL still (not a tunable of this module).
STILL_GUIDANCE = 7.0
#: The SVD versions, and their weights.
MODELS = {"1.0": job.SVD_10, "1.1": job.SVD_11}
#: The entrypoint's word for a weighted prompt.
WEIGHTED = "weighted"


def arguments(args: list[str]) -> tuple[str, bool]:
    """The SVD version and whether the prompt is weighted, from ``sys.argv[1:]``; 1.1, plain
    without arguments."""
    from lilypad.errors import InferenceError

    version = args[0] if args else "1.1"
    if version not in MODELS or args[1:] not in ([], [WEIGHTED]):
        raise InferenceError(
            f"unknown arguments {' '.join(args)!r}; allowed: an SDV version (1.0, 1.1), then "
            f"{WEIGHTED!r} for a weighted prompt"
        )
    return version, bool(args[1:])


def video_variable(name: str) -> str:
    """The variable a video setting is read from: Lilypad's image reads ``VIDEOSEED``,
    ``VIDEOSTEPS``, ``VIDEOSAMPLER`` and ``VIDEOSCHEDULER`` (while its template sets
    ``VIDEO_SEED``...: there, the video tunables never reach the model); this image reads
    upstream's name where it is set, else the manifest's, so a job of either naming runs."""
    upstream = name.replace("_", "")
    return upstream if upstream in os.environ else name


def main() -> list[str]:
    import dataclasses

    from lilypad.ml.settings import ImageSettings, VideoSettings
    from lilypad.ml.tiny import TINY_LIMITS

    version, weighted = arguments(sys.argv[1:])
    determinism.configure()
    job.quiet_libraries()
    samplers, schedules = list(SAMPLERS), list(SCHEDULES)
    reference = env_choice(REFERENCE_ENV, DEFAULT_REFERENCE, list(REFERENCES))
    still = ImageSettings(
        prompt=env("PROMPT", "question mark floating in space"),
        seed=env_int("SEED", 42, 0),
        steps=env_int("STEPS", 50, 5, 200),
        width=WIDTH,
        height=HEIGHT,
        guidance_scale=STILL_GUIDANCE,
        sampler=env_choice("SAMPLER", "euler_ancestral", samplers),
        scheduler=env_choice("SCHEDULER", "normal", schedules),
        batch=int(env_choice("BATCHING", "1", ["1", "2", "4", "8"])),
        sampler_reference=reference,
    )
    video = VideoSettings(
        seed=env_int(video_variable("VIDEO_SEED"), 42, 0),
        steps=env_int(video_variable("VIDEO_STEPS"), 50, 5, 70),
        sampler=env_choice(video_variable("VIDEO_SAMPLER"), "euler_ancestral", samplers),
        scheduler=env_choice(video_variable("VIDEO_SCHEDULER"), "normal", schedules),
        fps=env_int("FRAMERATE", 8, 1, 20),
        width=WIDTH,
        height=HEIGHT,
        sampler_reference=reference,
    )
    if job.weights_mode() is job.WeightsMode.TINY:
        size = {"width": TINY_LIMITS.width, "height": TINY_LIMITS.height}
        cap = TINY_LIMITS.max_steps
        log(
            "tiny weights: random SDXL 1.0 and SVD of the same architectures; "
            f"{TINY_LIMITS.width}x{TINY_LIMITS.height} instead of {WIDTH}x{HEIGHT}, "
            f"{min(still.steps, cap)} image steps instead of {still.steps}, "
            f"{min(video.steps, cap)} video steps instead of {video.steps}, "
            f"{TINY_LIMITS.video_frames} frames per video"
        )
        still = dataclasses.replace(still, steps=min(still.steps, cap), **size)
        video = dataclasses.replace(video, steps=min(video.steps, cap), **size)

    def progress(stage: str) -> job.Callable[[int, int], None]:
        return lambda done, total: job.progress(done, total, stage)

    image_path = job.weights_path(job.SDXL_BASE_10)
    video_path = job.weights_path(MODELS[version])
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    from diffusers import StableDiffusionXLPipeline, StableVideoDiffusionPipeline

    from lilypad.ml import media, sdxl, svd

    if reference != DEFAULT_REFERENCE:  # the lilypad2 versions' logs keep their bytes
        log(f"samplers and schedules follow {reference} where it and k-diffusion differ")
    log(f"loading {job.SDXL_BASE_10.hub_id}")
    # alone: a warm worker holds SDXL or SVD, never both (as this job frees one for the other)
    pipe = sdxl.load(StableDiffusionXLPipeline, image_path, alone=True)
    log(f"image: sampler {still.sampler}, schedule {still.scheduler}, {still.steps} steps")
    for sampler in sorted({still.sampler, video.sampler} & set(STEP_NOTES)):
        log(STEP_NOTES[sampler])
    stills = sdxl.generate(pipe, still, progress("image"), weighted=weighted)
    del pipe  # free the GPU memory of SDXL before SVD loads
    determinism.release_memory()
    log(f"loading {MODELS[version].hub_id}")
    video_pipe = sdxl.load(StableVideoDiffusionPipeline, video_path, alone=True)
    log(f"video: sampler {video.sampler}, schedule {video.scheduler}, {video.steps} steps")
    generator = determinism.generator(video.seed)
    out = job.outputs_dir()
    names: list[str] = []
    for n, image in enumerate(stills):
        frames = svd.generate(video_pipe, image, video, generator, progress(f"video {n}"))
        media.write_png(image, out / f"image-{n}.png")
        media.write_apng(frames, out / f"video-{n}.apng", video.fps)
        media.write_webp(frames, out / f"video-{n}.webp", video.fps)
        media.write_mp4(frames, out / f"video-{n}.mp4", video.fps)
        names += [f"image-{n}.png", f"video-{n}.apng", f"video-{n}.webp", f"video-{n}.mp4"]
    return names


#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(main)

if __name__ == "__main__":
    predictor.run_once()
