"""The sd15-controlnet module's entrypoint: ``python controlnet.py``, cwd = this folder.

Reads the control source at ``$IMAGE`` and its tunables from the environment (names in
lilypad_module.toml) and writes ``control-<control>.png`` (the map the ControlNet read) and
``image-<n>.png`` into ``$LILYPAD_OUTPUTS_DIR``. See lilypad/ml/control.py.
"""

from __future__ import annotations

from lilypad.ml import control
from lilypad.ml.predictor import Predictor

#: The module's job, one-shot below or warm in a provider (lilypad/ml/predictor.py).
predictor = Predictor(lambda: control.main(control.MODULES["sd15-controlnet"]))

if __name__ == "__main__":
    predictor.run_once()
