"""The lcm module's entrypoint: ``python lcm.py``, cwd = this folder.

LCM Dreamshaper v7, a latent consistency model: text to image in 2 to 8 steps; from v1.1
also image to image.
Reads its tunables from the environment (names in lilypad_module.toml) and writes
``image-<n>.png`` into ``$LILYPAD_OUTPUTS_DIR``. See lilypad/ml/family.py for the job and
lilypad/ml/sd.py for the sampling.
"""

from __future__ import annotations

from lilypad.ml import family
from lilypad.ml.predictor import Predictor

#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(lambda: family.main(family.LCM_DREAMSHAPER))

if __name__ == "__main__":
    predictor.run_once()
