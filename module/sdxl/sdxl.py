"""The sdxl module's entrypoint: ``python sdxl.py VERSION`` (0.9, 1.0 or 1.1), cwd = this folder.

Reads its tunables from the environment (names in lilypad_module.toml) and writes
``image-<n>.png`` into ``$LILYPAD_OUTPUTS_DIR``. See lilypad/ml/sdxl.py for the pipelines; 1.1 is
1.0 with LoRAs, an embedding and weighted prompts (lilypad/ml/lora.py, lilypad/ml/prompts.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lilypad.ml import determinism, job, lora
from lilypad.ml.job import env, env_choice, env_file, env_float, env_int, log
from lilypad.ml.predictor import Predictor
from lilypad.ml.samplers import SAMPLERS, STEP_NOTES
from lilypad.ml.schedules import SCHEDULES
from lilypad.ml.settings import ImageSettings

#: What each version fixes that is not a tunable.
V09_STEPS, V09_SIZE, V09_GUIDANCE = 50, 1024, 5.0


def settings(version: str) -> ImageSettings:
    if version == "0.9":
        return ImageSettings(
            prompt=env("PROMPT", "question mark floating in space"),
            seed=env_int("RANDOM_SEED", 0, 0),
            steps=V09_STEPS,
            width=V09_SIZE,
            height=V09_SIZE,
            guidance_scale=V09_GUIDANCE,
        )
    return ImageSettings(
        prompt=env("PROMPT", "question mark floating in space"),
        negative_prompt=env("NEGATIVE_PROMPT", ""),
        seed=env_int("SEED", 0, 0),
        steps=env_int("STEPS", 30, 1, 100),
        width=env_int("WIDTH", 1024, 512, 2048),
        height=env_int("HEIGHT", 1024, 512, 2048),
        guidance_scale=env_float("GUIDANCE_SCALE", 7.0, 0, 20),
        sampler=env_choice("SAMPLER", "euler_ancestral", list(SAMPLERS)),
        scheduler=env_choice("SCHEDULER", "normal", list(SCHEDULES)),
        batch=env_int("BATCHING", 1, 1, 4),
        refiner_switch=env_float("REFINER_SWITCH", 0.8, 0, 1),
    )


@dataclass(frozen=True)
class FineTunes:
    """What 1.1 adds to a job: LoRAs, an embedding and its token."""

    loras: tuple[lora.LoraFile, ...] = ()
    embedding: Path | None = None
    token: str = "<embedding>"


def finetunes(version: str) -> FineTunes:
    if version != "1.1":
        return FineTunes()
    loras = tuple(
        lora.LoraFile(env_file(variable), env_float(f"{variable}_SCALE", 0.8, 0, 2), variable)
        for variable in ("LORA", "LORA_2")
        if os.environ.get(variable)
    )
    embedding = env_file("EMBEDDING") if os.environ.get("EMBEDDING") else None
    return FineTunes(loras, embedding, env("EMBEDDING_TOKEN", "<embedding>"))


def apply(tunes: FineTunes, pipe: Any, refiner: Any | None, prompt: str) -> None:
    lora.apply_loras(pipe, tunes.loras, log)
    if tunes.embedding is not None:
        pipes = [pipe] if refiner is None else [pipe, refiner]
        lora.load_embedding(pipes, "EMBEDDING", tunes.embedding, tunes.token, log)
        if tunes.token not in prompt:
            log(f"the prompt does not name {tunes.token}: the embedding has no effect")


def main() -> list[str]:
    import dataclasses

    from lilypad.errors import InferenceError
    from lilypad.ml.tiny import TINY_LIMITS

    version = sys.argv[1] if len(sys.argv) > 1 else "0.9"
    if version not in ("0.9", "1.0", "1.1"):
        raise InferenceError(f"unknown SDXL version {version!r}; allowed: 0.9, 1.0, 1.1")
    determinism.configure()
    job.quiet_libraries()
    s = settings(version)
    tunes = finetunes(version)
    if job.weights_mode() is job.WeightsMode.TINY:
        capped = dataclasses.replace(
            s,
            width=TINY_LIMITS.width,
            height=TINY_LIMITS.height,
            steps=min(s.steps, TINY_LIMITS.max_steps),
        )
        log(
            f"tiny weights: random SDXL {'0.9' if version == '0.9' else '1.0'} of the same "
            "architecture; "
            f"{capped.width}x{capped.height} instead of {s.width}x{s.height}, "
            f"{capped.steps} steps instead of {s.steps}"
        )
        s = capped
    base_model = job.SDXL_BASE_09 if version == "0.9" else job.SDXL_BASE_10  # 1.1: 1.0's weights
    base_path = job.weights_path(base_model)
    refiner_path = None
    if version != "0.9" and s.refiner_switch > 0:
        refiner_path = job.weights_path(job.SDXL_REFINER_10)
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from lilypad.ml import media, sdxl

    log(f"loading {base_model.hub_id}")
    pipe = sdxl.load(StableDiffusionXLPipeline, base_path)

    if version == "0.9":
        images = sdxl.generate_default(pipe, s, job.progress)
    else:
        refiner = None
        if refiner_path is not None:
            log(f"loading {job.SDXL_REFINER_10.hub_id}")
            refiner = sdxl.load(StableDiffusionXLImg2ImgPipeline, refiner_path)
        apply(tunes, pipe, refiner, s.prompt)
        log(f"sampler {s.sampler}, schedule {s.scheduler}, {s.steps} steps, seed {s.seed}")
        if s.sampler in STEP_NOTES:
            log(STEP_NOTES[s.sampler])
        images = sdxl.generate(pipe, s, job.progress, refiner, weighted=version == "1.1")
    return media.write_images(images, job.outputs_dir())


#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(main)

if __name__ == "__main__":
    predictor.run_once()
