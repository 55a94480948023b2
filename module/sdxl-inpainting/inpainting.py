"""The sdxl-inpainting module's entrypoint: ``python inpainting.py [VERSION]`` (1.0, the default,
or 1.1: prompts with weights and blends), cwd = this folder.

Reads the picture at ``$IMAGE``, its mask at ``$MASK`` (white repaints, black keeps) and the
tunables from the environment (names in lilypad_module.toml); writes into
``$LILYPAD_OUTPUTS_DIR`` ``image-0.png``, the picture repainted inside the mask by SDXL 1.0
inpainting with every pixel outside it the picture's own, and ``mask.png``, the mask as the job
used it. See lilypad/ml/edit.py for the picture and mask rules.
"""

from __future__ import annotations

import sys

from lilypad.ml import determinism, edit, job
from lilypad.ml.job import log
from lilypad.ml.predictor import Predictor

#: Defaults of the tunables (as in lilypad_module.toml): the inpainting model card's.
STRENGTH, STEPS, GUIDANCE = 0.99, 20, 8.0


def main() -> list[str]:
    weighted = edit.reads_weights(sys.argv[1:])
    determinism.configure()
    job.quiet_libraries()
    image = edit.read_image("IMAGE")
    raw_mask = edit.read_mask("MASK")
    size = edit.fit(*image.size, edit.SDXL_BOUNDS)
    s = edit.settings(size, STRENGTH, STEPS, GUIDANCE)
    if job.weights_mode() is job.WeightsMode.TINY:
        s = edit.tiny_steps(s, edit.fit(*image.size, edit.TINY_BOUNDS), "SDXL 1.0 inpainting")
    size = (s.width, s.height)
    if image.size != size:
        log(f"picture {image.size[0]}x{image.size[1]}, worked at {s.width}x{s.height}")
    if raw_mask.size != size:
        log(f"mask {raw_mask.size[0]}x{raw_mask.size[1]} resized to {s.width}x{s.height} (nearest)")
    picture, mask = edit.resize(image, size), edit.binary_mask(raw_mask, size)
    repainted = sum(mask.histogram()[255:]) / (size[0] * size[1])
    log(f"the mask repaints {repainted:.1%} of the picture")
    path = job.weights_path(job.SDXL_INPAINT_10)
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    from diffusers import StableDiffusionXLInpaintPipeline

    from lilypad.ml import sdxl

    log(f"loading {job.SDXL_INPAINT_10.hub_id}")
    pipe = sdxl.load(StableDiffusionXLInpaintPipeline, path)
    edit.log_plan(s)
    generated = sdxl.inpaint(pipe, s, picture, mask, job.progress, weighted=weighted)
    return edit.write_outputs(edit.composite(generated, picture, mask), mask)


#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(main)

if __name__ == "__main__":
    predictor.run_once()
