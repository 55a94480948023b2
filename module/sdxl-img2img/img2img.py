"""The sdxl-img2img module's entrypoint: ``python img2img.py [VERSION]`` (1.0, the default, or
1.1: prompts with weights and blends), cwd = this folder.

Reads the picture at ``$IMAGE`` and its tunables from the environment (names in
lilypad_module.toml) and writes ``image-0.png`` into ``$LILYPAD_OUTPUTS_DIR``: the picture
re-imagined after the prompt by SDXL 1.0 base, at its own size within 512..2048 a side in
multiples of 8. See lilypad/ml/edit.py for the picture rules and lilypad/ml/sdxl.py for Strength.
"""

from __future__ import annotations

import sys

from lilypad.ml import determinism, edit, job
from lilypad.ml.job import log
from lilypad.ml.predictor import Predictor

#: Defaults of the tunables (as in lilypad_module.toml): the guides' prompt strength, SDXL's
#: steps and guidance.
STRENGTH, STEPS, GUIDANCE = 0.8, 30, 7.0


def main() -> list[str]:
    weighted = edit.reads_weights(sys.argv[1:])
    determinism.configure()
    job.quiet_libraries()
    image = edit.read_image("IMAGE")
    size = edit.fit(*image.size, edit.SDXL_BOUNDS)
    s = edit.settings(size, STRENGTH, STEPS, GUIDANCE)
    if job.weights_mode() is job.WeightsMode.TINY:
        s = edit.tiny_steps(s, edit.fit(*image.size, edit.TINY_BOUNDS), "SDXL 1.0 base")
    if image.size != (s.width, s.height):
        log(f"picture {image.size[0]}x{image.size[1]}, worked at {s.width}x{s.height}")
    path = job.weights_path(job.SDXL_BASE_10)
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from lilypad.ml import sdxl

    log(f"loading {job.SDXL_BASE_10.hub_id}")
    pipe = sdxl.load(StableDiffusionXLImg2ImgPipeline, path)
    edit.log_plan(s)
    result = sdxl.img2img(
        pipe, s, edit.resize(image, (s.width, s.height)), job.progress, weighted=weighted
    )
    return edit.write_outputs(result)


#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(main)

if __name__ == "__main__":
    predictor.run_once()
