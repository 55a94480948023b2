"""What a provider and a warm worker (:mod:`lilypad.ml.serve`) say to each other. Light: no
torch import, so the provider reads it without the ``ml`` extra.

The worker's stdin is one end of a ``SOCK_SEQPACKET`` Unix socket pair (a process), or it
connects to the ``SOCK_SEQPACKET`` socket the provider listens on at ``$LILYPAD_WARM_SOCKET`` (a
container, where the socket's folder is bound in): one datagram per message, a JSON object
with its ``kind``. A job's message carries, as ``SCM_RIGHTS``, the two files the job's stdout
and stderr go to (its result's ``stdout`` file, a pipe the provider reads stderr from as it
comes); the worker closes both before it says the job is done, so the provider's reader meets
the end of the job's stderr before the end of the job::

    worker  -> Ready | Refused(reason) | SetupFailed(message)      once, after setup
    provider -> RunJob(env) + [stdout fd, stderr fd]                per job
    worker  -> JobDone(exit_code)                                   per job

The provider ends a worker by closing its end (the worker exits) or by killing it.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from dataclasses import dataclass
from typing import Any, ClassVar

#: The variable that names, comma-separated, the variables the provider launched the worker with.
LAUNCH_ENV = "LILYPAD_WARM_LAUNCH_ENV"
#: The variable that names the socket a worker in a container connects to.
SOCKET_ENV = "LILYPAD_WARM_SOCKET"
#: The largest message: a job's environment (the manifest caps each tunable's value far below).
MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class Ready:
    """The worker has run its predictor's setup and waits for jobs."""

    kind: ClassVar[str] = "ready"


@dataclass(frozen=True)
class Refused:
    """The entrypoint defines no predictor: the module runs one-shot only."""

    reason: str
    kind: ClassVar[str] = "refused"


@dataclass(frozen=True)
class SetupFailed:
    """The predictor's setup (or the entrypoint's import) raised."""

    message: str
    kind: ClassVar[str] = "setup_failed"


@dataclass(frozen=True)
class RunJob:
    """One job: its whole environment (tunables, runtime variables)."""

    env: dict[str, str]
    kind: ClassVar[str] = "job"


@dataclass(frozen=True)
class JobDone:
    """The job ended with ``exit_code`` (its one-shot run's), its stdout and stderr closed."""

    exit_code: int
    kind: ClassVar[str] = "done"


Message = Ready | Refused | SetupFailed | RunJob | JobDone
_KINDS: dict[str, type[Any]] = {m.kind: m for m in (Ready, Refused, SetupFailed, RunJob, JobDone)}


class ProtocolError(Exception):
    """A message that is not one of the protocol's."""


def send(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    data = json.dumps({"kind": message.kind, **dataclasses.asdict(message)}).encode()
    socket.send_fds(sock, [data], fds or [])


def receive(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """The next message and the files it carries; ``(None, [])`` when the other end closed."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 2)
    if not data:
        return None, fds
    try:
        fields = json.loads(data)
        cls = _KINDS[fields.pop("kind")]
        return cls(**fields), fds
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"not a warm-worker message: {data[:80]!r} ({exc})") from None
