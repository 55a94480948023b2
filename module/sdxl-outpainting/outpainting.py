"""The sdxl-outpainting module's entrypoint: ``python outpainting.py [VERSION]`` (1.0, the
default, or 1.1: prompts with weights and blends), cwd = this folder.

Reads the picture at ``$IMAGE``, the borders to add (``LEFT``, ``RIGHT``, ``TOP``, ``BOTTOM``,
pixels), the overlap and the other tunables from the environment (names in
lilypad_module.toml). Places the picture on the larger canvas, builds the mask and inpaints the
border with SDXL 1.0 inpainting; writes into ``$LILYPAD_OUTPUTS_DIR`` ``image-0.png`` (the
picture's own pixels kept, faded into the new border across the overlap) and ``mask.png`` (what
the model repainted). See lilypad/ml/edit.py for the canvas rules.
"""

from __future__ import annotations

import sys

from lilypad.ml import determinism, edit, job
from lilypad.ml.job import env_int, log
from lilypad.ml.predictor import Predictor

#: Defaults of the tunables (as in lilypad_module.toml): the inpainting model card's.
STRENGTH, STEPS, GUIDANCE = 0.99, 20, 8.0
#: Each border's default: the picture centred on a canvas 256 pixels larger each way.
BORDER, MAX_BORDER = 128, 1024
OVERLAP, MAX_OVERLAP = 8, 64


def main() -> list[str]:
    weighted = edit.reads_weights(sys.argv[1:])
    determinism.configure()
    job.quiet_libraries()
    image = edit.read_image("IMAGE")
    borders = edit.Borders(*(env_int(n, BORDER, 0, MAX_BORDER) for n in edit.BORDER_ENV))
    overlap = env_int("OVERLAP", OVERLAP, 0, MAX_OVERLAP)
    picture = (edit.round_side(image.size[0]), edit.round_side(image.size[1]))
    asked = edit.check_borders(borders, picture)
    picture, borders, overlap = edit.fit_canvas(
        picture, borders, overlap, edit.SDXL_BOUNDS.max_side
    )
    canvas_size = edit.check_borders(borders, picture)
    if canvas_size != asked:
        log(
            f"a {asked[0]}x{asked[1]} canvas is over {edit.SDXL_BOUNDS.max_side} a side: picture, "
            f"borders and overlap scaled alike to {canvas_size[0]}x{canvas_size[1]}"
        )
    s = edit.settings(canvas_size, STRENGTH, STEPS, GUIDANCE)
    if job.weights_mode() is job.WeightsMode.TINY:
        picture, borders, overlap = edit.fit_canvas(
            picture, borders, overlap, edit.TINY_BOUNDS.max_side
        )
        canvas_size = edit.check_borders(borders, picture)
        s = edit.tiny_steps(s, canvas_size, "SDXL 1.0 inpainting")
        log(f"tiny weights: picture {picture[0]}x{picture[1]}, {borders}, overlap {overlap}")
    if image.size != picture:
        log(f"picture {image.size[0]}x{image.size[1]}, worked at {picture[0]}x{picture[1]}")
    canvas, mask, blend = edit.outpaint_canvas(edit.resize(image, picture), borders, overlap)
    log(f"canvas {canvas.size[0]}x{canvas.size[1]}: the picture at ({borders.left}, {borders.top})")
    path = job.weights_path(job.SDXL_INPAINT_10)
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    from diffusers import StableDiffusionXLInpaintPipeline

    from lilypad.ml import sdxl

    log(f"loading {job.SDXL_INPAINT_10.hub_id}")
    pipe = sdxl.load(StableDiffusionXLInpaintPipeline, path)
    edit.log_plan(s)
    generated = sdxl.inpaint(pipe, s, canvas, mask, job.progress, weighted=weighted)
    return edit.write_outputs(edit.composite(generated, canvas, blend), mask)


#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(main)

if __name__ == "__main__":
    predictor.run_once()
