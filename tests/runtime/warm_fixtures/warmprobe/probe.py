"""The warmprobe fixture: ``python probe.py``; a predictor that needs no ML library."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lilypad.ml.predictor import Predictor

#: Jobs this process has run: more than zero only in a warm worker.
SERVED: list[str] = []
#: What jobs asked the process to hold (HoldMB): kept until the worker ends.
HELD: list[bytearray] = []


def _listing(folder: str) -> list[str]:
    root = Path(folder)
    if not root.is_dir():
        return [f"{folder}: absent"]
    return sorted(f"{folder}/{p.relative_to(root)}" for p in root.rglob("*"))


def main() -> list[str]:
    mode, secret = os.environ.get("MODE", "probe"), os.environ.get("SECRET", "")
    time.sleep(float(os.environ.get("SLEEP", "0")))
    HELD.append(bytearray(os.urandom(1) * (int(os.environ.get("HOLD_MB", "0")) << 20)))
    if SERVED and mode == "crash-when-reused":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang" or (SERVED and mode == "hang-when-reused"):
        time.sleep(3600)
    out = Path(os.environ["LILYPAD_OUTPUTS_DIR"])
    seen = [*_listing(str(out)), *_listing(os.environ["TMPDIR"]), *_listing("/inputs")]
    (out / "seen.txt").write_text("\n".join(seen) + "\n")
    (out / "env.txt").write_text("\n".join(sorted(os.environ)) + "\n")
    if secret:
        Path(os.environ["TMPDIR"], f"left-by-{secret}").write_text(secret)
        (out / f"made-by-{secret}").write_text(secret)
    if os.environ.get("INPUT"):
        (out / "input-copy").write_bytes(Path(os.environ["INPUT"]).read_bytes())
    SERVED.append(mode)
    print(f"job {mode}", file=__import__("sys").stderr)
    return sorted(p.name for p in out.iterdir())


predictor = Predictor(main, imports=())

if __name__ == "__main__":
    predictor.run_once()
