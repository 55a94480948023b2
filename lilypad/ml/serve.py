"""A warm worker: ``python -m lilypad.ml.serve ENTRYPOINT.py [ARGS...]``, cwd = the module.

Imports the entrypoint (not as ``__main__``: its one-shot job does not run), takes the
``predictor`` it defines (:mod:`lilypad.ml.predictor`), runs its setup once, then serves jobs one
at a time over the socket on its stdin, or the one at ``$LILYPAD_WARM_SOCKET`` in a container
(:mod:`lilypad.ml.protocol`), until the provider closes it. Each job runs as its one-shot run
would: ``sys.argv`` is the entrypoint's, the environment is the job's alone, its stdout and stderr
are the files the provider passed with it, and the process state a job could leave behind is put
back first (:class:`~lilypad.ml.predictor.JobScope`).

What the worker itself says (setup, its own failures) goes to its original stderr, which the
provider keeps as the worker's log, never in a job's result.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

from lilypad.ml import protocol

_STDIN, _STDOUT, _STDERR = 0, 1, 2


def _redirect(stdout: int, stderr: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(stdout, _STDOUT)
    os.dup2(stderr, _STDERR)


def serve(entrypoint: Path, args: list[str]) -> int:
    # What the provider launched the worker with (LAUNCH_ENV names it): the rest of the
    # environment was added by the sandbox (PWD) and Python's start-up (LC_CTYPE, PEP 538), as
    # for a cold job, and stays below each job's own variables.
    launched = set(os.environ.pop(protocol.LAUNCH_ENV, "").split(","))
    address = os.environ.pop(protocol.SOCKET_ENV, "")
    start_env = {k: v for k, v in os.environ.items() if k in launched}
    if address:  # a container: the provider listens on a socket bound in
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(address)
    else:  # a process: its stdin is the socket
        sock = socket.socket(fileno=os.dup(_STDIN))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, _STDIN)
    worker_log = os.dup(_STDERR)
    sys.argv = [str(entrypoint), *args]
    sys.path.insert(0, str(entrypoint.parent.absolute()))  # as `python ENTRYPOINT.py` has it
    try:
        from lilypad.ml import predictor as api

        predictor = api.entrypoint_predictor(entrypoint)
        if predictor is None:
            protocol.send(sock, protocol.Refused(f"{entrypoint.name} defines no predictor"))
            return 0
        _redirect(devnull, worker_log)  # setup's own words are the worker's, not a job's
        predictor.setup()
        api.enable_cache()
        scope = api.JobScope.capture(start_env)
    except BaseException as exc:
        traceback.print_exc()
        protocol.send(sock, protocol.SetupFailed(f"{type(exc).__name__}: {exc}"))
        return 1
    protocol.send(sock, protocol.Ready())
    from lilypad.ml import job

    while True:
        message, fds = protocol.receive(sock)
        if message is None:
            return 0
        if not isinstance(message, protocol.RunJob) or len(fds) != 2:
            print(f"warm worker: unexpected {message!r}", file=sys.stderr, flush=True)
            return 1
        _redirect(*fds)
        for fd in fds:
            os.close(fd)
        scope.enter(message.env)
        try:
            code = job.run_job(predictor.predict)
        finally:
            scope.leave()
            # closes the job's stdout and its stderr pipe: the provider's reader sees its end
            _redirect(devnull, worker_log)
        protocol.send(sock, protocol.JobDone(code))


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: python -m lilypad.ml.serve ENTRYPOINT.py [ARGS...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(Path(sys.argv[1]), sys.argv[2:]))


if __name__ == "__main__":
    main()
