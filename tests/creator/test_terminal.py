"""``lilypad run`` in a real terminal (tmux): the module's progress as a bar with its step, total
and time left while the job runs, then the result. The CLI draws bars only on a terminal, so only
a terminal shows them; tmux is that terminal, and ``capture-pane`` what a user sees."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.creator.conftest import Creator
from tests.creator.test_live_logs import progress_module, unsandboxed
from tests.provider.conftest import World, wait_for

#: A rich bar as the CLI draws it: the label, the bar, done/total (then the time left).
BAR = re.compile(r"^\s*(?P<label>step|image)\s+[━╸╺\s]+\s(?P<done>\d)/3\b", re.MULTILINE)


class Terminal:
    """A tmux session of its own (a private server: the test's environment, no one else's)."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"lilypad-test-{secrets.token_hex(4)}"
        self.tmp = tmp

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-x", "140", "-y", "40", command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed (make test installs it as root: apt-get install tmux)")
    term = Terminal(tmp_path)
    try:
        yield term
    finally:
        term.close()


def test_lilypad_run_shows_the_modules_progress_as_a_bar_in_a_terminal(
    world: World,
    creator: Creator,
    terminal: Terminal,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world.profile()
    go = tmp_path / "go"
    module = progress_module(tmp_path / "progress", go)
    world.provider(executor=unsandboxed(), modules=(module,))
    lilypad = Path(sys.executable).with_name("lilypad")
    status = tmp_path / "status"
    # the tmux server starts with this environment (the test's data dir and profile, the key)
    monkeypatch.setenv("WEB3_PRIVATE_KEY", creator.account.key.hex())
    monkeypatch.delenv("COLUMNS")  # the terminal's own width
    terminal.start(
        f"{lilypad} run {module} --network test --yes --verify never; echo $? > {status}; sleep 600"
    )
    # while the module waits for `go`, the bar shows its first step of three
    wait_for(lambda: (m := BAR.search(terminal.screen())) is not None and m["done"] == "1", 120)
    running = terminal.screen()
    assert "Job complete" not in running
    assert "│ step 1/3" in running  # the line itself, as the module wrote it
    go.touch()
    wait_for(status.exists, 120)
    assert status.read_text().strip() == "0", terminal.screen()
    done = terminal.screen()
    assert "Job complete" in done
    assert "│ image: step 3/3" in done
    assert creator.account.key.hex().removeprefix("0x") not in done
