"""Running a local anvil node (Foundry's dev chain, from the npm package ``@foundry-rs/anvil``).

The binary is looked up in ``$LILYPAD_ANVIL``, then in ``contracts/node_modules`` of the checkout
(``make contracts-deps`` installs it), then on ``$PATH``. anvil listens on 127.0.0.1 only and
pre-funds ten well-known development accounts whose keys it writes to a JSON file
(``--config-out``, in a private temporary folder); :attr:`Anvil.keys` holds them once it has
started, and the file is removed at once. The folder (and anvil's log in it) goes when anvil is
stopped, or, for a detached anvil that outlives this process, as soon as it answers.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from lilypad.errors import ChainError, ChainUnavailable

_CHECKOUT = Path(__file__).resolve().parents[2]


def find_anvil() -> Path:
    """The anvil executable to run.

    Raises:
        ChainError: No anvil was found; the hint says how to install it.
    """
    env = os.environ.get("LILYPAD_ANVIL")
    if env:
        return Path(env)
    machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    modules = _CHECKOUT / "contracts" / "node_modules"
    for candidate in (
        # The native binary directly: the npm wrapper (a node script) would outlive a kill.
        modules / "@foundry-rs" / f"anvil-{system}-{machine}" / "bin" / "anvil",
        modules / ".bin" / "anvil",
    ):
        if candidate.is_file():
            return candidate
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise ChainError(
        "anvil not found",
        hint="run `make contracts-deps` (npm ci in contracts/) or set LILYPAD_ANVIL",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Anvil:
    """An anvil process (on 127.0.0.1 unless ``host`` says otherwise).

    Args:
        port: The port to listen on (a free one when None).
        chain_id: The chain id to report.
        block_time: Seconds between blocks on a quiet chain (transactions are still mined at
            once, unless ``mixed_mining`` is False); None: a block only for each transaction.
        mixed_mining: With ``block_time``, mine each transaction at once besides the blocks on
            the clock. False: transactions wait for the next block, as on a real chain.
        state_file: Load the chain from, and save it to, this file (``--state``).
        host: The address to listen on (another machine's providers need a reachable one).
        accounts: How many pre-funded development accounts to make (anvil's default is 10).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        chain_id: int = 31337,
        block_time: float | None = None,
        mixed_mining: bool = True,
        state_file: Path | None = None,
        host: str = "127.0.0.1",
        accounts: int = 10,
    ) -> None:
        self.host = host
        self.n_accounts = accounts
        self.port = port or free_port()
        self.chain_id = chain_id
        self._block_time = block_time
        self._mixed_mining = mixed_mining
        self._state_file = state_file
        self._dir = Path(tempfile.mkdtemp(prefix="lilypad-anvil-"))  # mode 700
        self._keys: list[str] = []
        self._returncode: int | None = None  # of a detached anvil, once reaped
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def rpc_url(self) -> str:
        """The node's JSON-RPC URL."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts this node."""
        cmd = [
            str(find_anvil()),
            "--host", self.host,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--accounts", str(self.n_accounts),
            "--config-out", str(self._dir / "anvil.json"),
            # its log is read only for why it did not start; the banner would list the keys
            "--quiet",
        ]  # fmt: skip
        if self._block_time:
            # a block every block_time seconds, so time passes on a quiet chain, and (mixed
            # mining) every transaction mined at once besides; without it each one waits for
            # the next block
            cmd += ["--block-time", f"{self._block_time:g}"]
            if self._mixed_mining:
                cmd.append("--mixed-mining")
        if self._state_file:
            cmd += ["--state", str(self._state_file)]
        return cmd

    def start(self, *, timeout: float = 30.0, detach: bool = False) -> Anvil:
        """Start anvil and wait until it answers; ``detach`` lets it outlive this process.

        Raises:
            ChainUnavailable: anvil exited or did not answer within ``timeout`` seconds.
        """
        try:
            self._start(timeout, detach)
        except BaseException:
            self.stop()
            raise
        self._keys = list(json.loads((self._dir / "anvil.json").read_text())["private_keys"])
        (self._dir / "anvil.json").unlink()  # the dev keys: in memory only from here on
        if detach:
            # Nothing here outlives this process to remove the folder: it goes now. anvil runs
            # --quiet, so it writes nothing more to its (now unlinked) log.
            shutil.rmtree(self._dir, ignore_errors=True)
        return self

    def _start(self, timeout: float, detach: bool) -> None:
        log_path = self._dir / "anvil.log"
        if detach:
            # A session of its own, and no Popen object that would want to reap it.
            self.pid = os.posix_spawn(
                self.command()[0],
                self.command(),
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT, 0o600),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                setsid=True,
            )
        else:
            # The child keeps its own copy of the log's descriptor; ours is closed at once.
            with log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.pid = self.process.pid
        deadline = time.monotonic() + timeout
        while not (self._dir / "anvil.json").exists() or not _listening(self.port, self.host):
            code = self._exit_code()
            if code is not None:
                output = log_path.read_text(errors="replace")[-500:]
                raise ChainUnavailable(f"anvil exited with {code}: {output}")
            if time.monotonic() > deadline:
                raise ChainUnavailable(f"anvil did not start listening on port {self.port}")
            time.sleep(0.05)

    def _exit_code(self) -> int | None:
        if self.process is not None:
            return self.process.poll()
        if self.pid is None or self._returncode is not None:
            return self._returncode
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self._returncode = os.waitstatus_to_exitcode(status)
        return self._returncode

    @property
    def keys(self) -> list[str]:
        """The private keys of anvil's pre-funded development accounts (public test keys).

        Raises:
            ChainError: anvil has not been started.
        """
        if not self._keys:
            raise ChainError("anvil's accounts are known once it has started (Anvil.start)")
        return list(self._keys)

    @property
    def accounts(self) -> list[LocalAccount]:
        """The pre-funded development accounts, ready to sign."""
        return [Account.from_key(k) for k in self.keys]

    def stop(self) -> None:
        """Stop anvil (it saves its state first when started with a state file) and remove its
        folder."""
        try:
            if self.process is None:
                if self.pid is not None and self._exit_code() is None:
                    os.kill(self.pid, signal.SIGTERM)
                    os.waitpid(self.pid, 0)
            elif self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``port`` of ``host``."""
    return _listening(port, host)


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
