"""The upscale module's entrypoint: ``python upscale.py``, cwd = this folder.

Reads the picture at ``$IMAGE`` and its tunables from the environment (names in
lilypad_module.toml) and writes ``image-0.png`` into ``$LILYPAD_OUTPUTS_DIR``: the picture
enlarged ``Scale`` times by Real-ESRGAN or the SD x4 upscaler, in tiles. See
lilypad/ml/upscale.py.
"""

from __future__ import annotations

from lilypad.ml import upscale
from lilypad.ml.predictor import Predictor

#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(upscale.main)

if __name__ == "__main__":
    predictor.run_once()
