"""The docker executor: a module's image run by a Docker Engine through the docker SDK.

Each job gets a fresh container: no network, a read-only root filesystem, a tmpfs ``/tmp``,
the user ``nobody`` (or the provider's own uid when it is not root), no capabilities, memory,
CPU and PID limits from the module's machine needs, GPUs through device requests when the job
needs them and the host has them, and ``DIR/outputs`` bind-mounted at ``/outputs``. stdout and
stderr come raw from an attach made before the start, so the logs are the module's exact bytes.
The container is always removed, also after a timeout.

Docker and HTTP exceptions are translated into :class:`~lilypad.errors.ExecutorError` here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig, Mount

from lilypad.errors import ExecutorError, ExecutorUnavailable, ImageNotFound
from resource_provider.executors.base import (
    SANDBOX_HOSTNAME,
    SANDBOX_OUTPUTS,
    SANDBOX_SCRATCH,
    SANDBOX_TINY_WEIGHTS,
    SANDBOX_UID,
    ExecutionResult,
    Executor,
    ExecutorKind,
    Job,
    build_command,
    builds_offline,
    job_env,
    output_limit,
    tiny_weights_cache,
)
from resource_provider.executors.layout import OUTPUTS, STDERR, STDOUT, prepare_output_dir
from resource_provider.executors.supervise import LogSink, conclude, watch

#: Most processes and threads a job may have at once (fork bombs stop here).
PIDS_LIMIT = 1024
#: Seconds to wait for the engine's answer to one API call.
API_TIMEOUT_S = 60


@contextlib.contextmanager
def docker_errors(doing: str) -> Iterator[None]:
    """Translate docker SDK and transport errors into :class:`ExecutorError`."""
    try:
        yield
    except docker.errors.APIError as exc:
        detail = exc.explanation or str(exc)
        raise ExecutorError(f"Docker Engine refused to {doing}: {detail}") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ExecutorError(f"could not {doing}: {exc}") from None


def _socket_problem() -> str | None:
    """Why the engine's unix socket does not accept a connection, if it is a unix socket.

    Checked before the SDK touches it: docker-py leaks the socket of a refused connection.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return None
    path = host.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(path)
        except OSError as exc:
            return f"no Docker Engine answers at {host}: {exc.strerror or exc}"
    return None


def engine_problem() -> str | None:
    """Why no Docker Engine can be used, or ``None`` when one answers."""
    problem = _socket_problem()
    if problem is not None:
        return problem
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        return f"no Docker Engine answers at {where}: {_short(exc)}"
    return None


def connect() -> docker.DockerClient:
    """A client of the Docker Engine the environment names (``DOCKER_HOST``, the socket).

    Raises:
        ExecutorUnavailable: no engine answers.
    """
    problem = _socket_problem()
    if problem is not None:
        raise ExecutorUnavailable(problem, hint="start dockerd, or run with --executor process")
    client = None
    try:
        client = docker.from_env(timeout=API_TIMEOUT_S)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if client is not None:
            client.close()
        raise ExecutorUnavailable(
            f"no Docker Engine answers: {_short(exc)}",
            hint="start dockerd, or run with --executor process",
        ) from None
    return client


def _short(exc: Exception) -> str:
    return str(exc).split(" (")[0].strip() or type(exc).__name__


class DockerExecutor(Executor):
    """Runs jobs in containers on a Docker Engine.

    Args:
        client: A docker client; by default one from the environment (``DOCKER_HOST``...).
        output_limit_bytes: Overrides the cap on what a job writes (default: its ``disk_gb``).

    Raises:
        ExecutorUnavailable: no Docker Engine answers.
    """

    kind = ExecutorKind.DOCKER

    def __init__(
        self, client: docker.DockerClient | None = None, *, output_limit_bytes: int | None = None
    ) -> None:
        self.client = client or connect()
        with docker_errors("describe the Docker Engine"):
            info: dict[str, Any] = self.client.info()
        self._limit = output_limit_bytes
        self.version = str(info.get("ServerVersion", "?"))
        self.host_cpus = int(info.get("NCPU") or os.cpu_count() or 1)
        runtimes = info.get("Runtimes") or {}
        self.host_gpus = "nvidia" in runtimes or Path("/dev/nvidia0").exists()

    def describe(self) -> str:
        return (
            f"docker (Docker Engine {self.version}: no network, read-only root, "
            "runs as nobody, with limits)"
        )

    def close(self) -> None:
        self.client.close()

    def run(self, job: Job) -> ExecutionResult:
        out = prepare_output_dir(job.output_dir)
        job = Job(job.spec, job.module_dir.absolute(), out, job.weights, job.on_stderr)
        self._check_image(job)
        notes: list[str] = []
        tiny = tiny_weights_cache(self.kind)
        tiny.mkdir(parents=True, exist_ok=True)
        user = self._hand_over(out / OUTPUTS, tiny)
        with docker_errors("create the job's container"):
            container = self.client.containers.create(**self._container_args(job, user, notes))
        try:
            return self._execute(job, container, tuple(notes))
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
            self._take_back(out / OUTPUTS)

    def _check_image(self, job: Job) -> None:
        image = job.spec.image
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ImageNotFound(
                f"image {image} is not on this Docker Engine; build it with: "
                f"{build_command(job.spec, job.module_dir)}",
                hint=_build_hint(job.module_dir),
            ) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise ExecutorError(f"could not look up image {image}: {exc}") from None

    def _container_args(self, job: Job, user: str, notes: list[str]) -> dict[str, Any]:
        spec = job.spec
        machine = spec.machine
        env = job_env(
            spec,
            job.weights,
            outputs=SANDBOX_OUTPUTS,
            scratch=SANDBOX_SCRATCH,
            tiny_weights=SANDBOX_TINY_WEIGHTS,
        )
        memory = max(int(machine.ram_gb * 2**30), 64 * 2**20)
        scratch = max(int(min(machine.disk_gb, machine.ram_gb) * 2**30), 16 * 2**20)
        cpus = min(machine.cpus, self.host_cpus)
        if cpus < machine.cpus:
            notes.append(f"the job asks for {machine.cpus:g} CPUs; this host has {cpus}")
        devices = []
        if machine.gpus and self.host_gpus:
            devices = [DeviceRequest(count=machine.gpus, capabilities=[["gpu"]])]
        elif machine.gpus:
            notes.append(f"the job asks for {machine.gpus} GPU(s); this host has none: CPU only")
        return {
            "image": spec.image,
            "entrypoint": [spec.entrypoint[0]],
            "command": list(spec.entrypoint[1:]),
            "environment": env,
            "user": user,
            "hostname": SANDBOX_HOSTNAME,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {SANDBOX_SCRATCH: f"rw,nosuid,nodev,size={scratch},mode=1777"},
            "mounts": [
                Mount(SANDBOX_OUTPUTS, str(job.output_dir / OUTPUTS), type="bind"),
                Mount(SANDBOX_TINY_WEIGHTS, str(tiny_weights_cache(self.kind)), type="bind"),
            ],
            "mem_limit": memory,
            "memswap_limit": memory,
            "nano_cpus": int(cpus * 1e9),
            "pids_limit": PIDS_LIMIT,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "device_requests": devices,
            # The logs come from the attach; the engine need not keep a copy.
            "log_config": LogConfig(type="none"),
            "stdin_open": False,
            "tty": False,
            "labels": {"lilypad.spec_hash": spec.spec_hash, "lilypad.module": spec.module},
        }

    def _execute(self, job: Job, container: Container, notes: tuple[str, ...]) -> ExecutionResult:
        out = job.output_dir
        limit = output_limit(job.spec, self._limit)
        stdout, stderr = LogSink(out / STDOUT), LogSink(out / STDERR, job.on_stderr)
        try:
            with docker_errors("attach to the job's container"):
                # Attached before the start, so not one byte of output is missed.
                stream = self.client.api.attach(
                    str(container.id), stdout=True, stderr=True, stream=True, logs=False, demux=True
                )
            try:
                reader = threading.Thread(
                    target=_demux, args=(stream, stdout, stderr), name="docker-logs", daemon=True
                )
                reader.start()
                with docker_errors("start the job's container"):
                    container.start()
                started = time.monotonic()

                def wait(seconds: float) -> bool:
                    if reader.is_alive():
                        reader.join(seconds)  # the attach ends when the container does ...
                        if reader.is_alive():
                            return False
                    with docker_errors("follow the job's container"):
                        container.reload()  # ... or when the job closes its stdout and stderr
                    if container.status in ("exited", "dead"):
                        return True
                    time.sleep(seconds)
                    return False

                def kill() -> None:
                    with contextlib.suppress(docker.errors.DockerException):
                        container.kill()

                stopped = watch(
                    wait,
                    kill,
                    output_dir=out,
                    logs=(stdout, stderr),
                    timeout_s=job.spec.timeout_s,
                    limit=limit,
                )
                with docker_errors("wait for the job's container"):
                    code = int(container.wait(timeout=API_TIMEOUT_S)["StatusCode"])
                    duration_ms = round((time.monotonic() - started) * 1000)
                    container.reload()
                reader.join(timeout=5)
            finally:
                stream.close()
                # NOTE: docker-py's close() leaves the socket referenced by the response's
                # file object, so the descriptor stays open until the response is closed too.
                getattr(stream, "_response").close()  # noqa: B009 - private, see the NOTE
        finally:
            stdout.close()
            stderr.close()
        if container.attrs["State"].get("OOMKilled") and stopped is None:
            ram = job.spec.machine.ram_gb
            notes = (*notes, f"killed for using more than its {ram:g} GB of memory (ram_gb)")
        return conclude(
            job,
            self.kind,
            exit_code=code,
            stopped=stopped,
            duration_ms=duration_ms,
            limit=limit,
            notes=notes,
        )

    @staticmethod
    def _hand_over(outputs: Path, tiny: Path) -> str:
        """The user to run as, and make the writable mounts its own when we are root."""
        if os.geteuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        for path in (outputs, tiny):
            os.chown(path, SANDBOX_UID, SANDBOX_UID)
        return f"{SANDBOX_UID}:{SANDBOX_UID}"

    @staticmethod
    def _take_back(outputs: Path) -> None:
        """Give the files the job wrote back to us (root), so later steps own the result."""
        if os.geteuid() != 0 or not outputs.exists():
            return
        uid, gid = os.getuid(), os.getgid()
        os.chown(outputs, uid, gid)
        for root, dirs, files in os.walk(outputs):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)


def _demux(stream: Iterator[tuple[bytes | None, bytes | None]], out: LogSink, err: LogSink) -> None:
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        for chunk_out, chunk_err in stream:
            if chunk_out:
                out.write(chunk_out)
            if chunk_err:
                err.write(chunk_err)


def _build_hint(module_dir: Path) -> str:
    if builds_offline(module_dir):
        return "it builds offline, from a local busybox base; `make images` builds them all"
    if (module_dir / "Dockerfile").is_file():
        return (
            f"the head of {module_dir / 'Dockerfile'} gives its full build command (it needs a "
            "registry); or run the module with --executor process"
        )
    return f"{module_dir} has no Dockerfile; run the module with --executor process"
