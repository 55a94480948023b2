"""The upscale module's entrypoint: ``python upscale.py``, cwd = this folder.

Reads the picture at ``$IMAGE`` and its tunables from the environment (names in
lilypad_module.toml) and writes ``image-0.png`` into ``$LILYPAD_OUTPUTS_DIR``: the picture
enlarged ``Scale`` times by Real-ESRGAN or the SD x4 upscaler, in tiles. See
lilypad/ml/upscale.py.
"""

from __future__ import annotations

from lilypad.ml import job, upscale

if __name__ == "__main__":
    job.run_main(upscale.main)
