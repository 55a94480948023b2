"""bench/faults.py as a test: a cheating provider, the IPFS node and the solver killed once each,
under load. No honest token is lost, every cheat is caught, nothing is created or destroyed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "faults.py"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_faults_and_a_cheater_cost_no_honest_party_anything(tmp_path: Path) -> None:
    # every deal of the cheater is cheated on (rate 1), so that this run surely has cheats
    done = subprocess.run(
        [sys.executable, str(BENCH), "--jobs", "12", "--cheat-rate", "1", "--concurrency", "4",
         "--keep", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=1100, check=False,
    )  # fmt: skip
    out = done.stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert lines["honest tokens lost"] == "0", out
    caught, _, made = lines["cheats caught"].partition(" of ")
    assert int(made) > 0, out  # the cheater took jobs, and cheated on them
    assert caught == made, out
    assert lines["token supply conserved"] == "yes", out
    assert "ipfs restarted" in out
    assert "solver restarted" in out
