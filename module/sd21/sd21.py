"""The sd21 module's entrypoint: ``python sd21.py``, cwd = this folder.

Stable Diffusion 2.1 (768, v-prediction): text to image, or image to image from the picture
at ``$IMAGE``. Reads its tunables from the environment (names in lilypad_module.toml) and writes
``image-<n>.png`` into ``$LILYPAD_OUTPUTS_DIR``. See lilypad/ml/family.py for the job and
lilypad/ml/sd.py for the sampling.
"""

from __future__ import annotations

from lilypad.ml import family
from lilypad.ml.predictor import Predictor

#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(lambda: family.main(family.SD21))

if __name__ == "__main__":
    predictor.run_once()
