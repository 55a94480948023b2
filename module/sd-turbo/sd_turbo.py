"""The sd-turbo module's entrypoint: ``python sd_turbo.py``, cwd = this folder.

SD Turbo: text to image in 1 to 4 steps, without guidance; from v1.1 also image to image.
Reads its tunables from the environment (names in lilypad_module.toml) and writes
``image-<n>.png`` into ``$LILYPAD_OUTPUTS_DIR``. See lilypad/ml/family.py for the job and
lilypad/ml/sd.py for the sampling.
"""

from __future__ import annotations

from lilypad.ml import family
from lilypad.ml.predictor import Predictor

#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(lambda: family.main(family.SD_TURBO))

if __name__ == "__main__":
    predictor.run_once()
