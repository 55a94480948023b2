"""The docker executor: a module's image run by a Docker Engine through the docker SDK.

Each job gets a fresh container: no network, a read-only root filesystem, a tmpfs ``/tmp``,
the user ``nobody`` (or the provider's own uid when it is not root), no capabilities, memory,
CPU and PID limits from the module's machine needs, GPUs through device requests when the job
needs them and the host has them, ``DIR/outputs`` bind-mounted at ``/outputs``, the image's
tiny-weights cache read-only at ``/cache/tiny-weights`` and each input file read-only at its path
under ``/inputs/`` (a copy the job's user can read when it may not read the file itself).
stdout and stderr come raw from an attach made before the start, so the logs are the module's
exact bytes. The container is always removed, also after a timeout, and every process in it
ends with it.

Tiny weights are generated before the job, in a container of the same image with the same
limits where only the cache is writable. That generator is the image's own code, so each image
has a cache of its own: a hostile image can make bad weights only for itself.

Docker and HTTP exceptions are translated into :class:`~lilypad.errors.ExecutorError` here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig, Mount

from lilypad.config import get_settings
from lilypad.errors import ExecutorError, ExecutorUnavailable, ImageNotFound
from lilypad.ml import protocol
from resource_provider.executors.base import (
    SANDBOX_HOSTNAME,
    SANDBOX_INPUTS,
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
    tiny_weights_command,
    tiny_weights_env,
)
from resource_provider.executors.inputs import check_inputs, readable_inputs
from resource_provider.executors.layout import OUTPUTS, STDERR, STDOUT, prepare_output_dir
from resource_provider.executors.supervise import LogSink, conclude, watch
from resource_provider.executors.warm import (
    Handle,
    SetupTimedOut,
    WarmConfig,
    WarmPool,
    WorkerKey,
    WorkerUnavailable,
    run_warm,
    session_rss,
    warm_key,
    warm_pool,
)

if TYPE_CHECKING:
    from resource_provider.metrics import Metrics

log = logging.getLogger("lilypad.executor.docker")

#: Most processes and threads a job may have at once (fork bombs stop here).
PIDS_LIMIT = 1024
#: Seconds to wait for the engine's answer to one API call.
API_TIMEOUT_S = 60
#: Where a warm worker's container finds the socket its provider listens on (a bound folder).
WORKER_SOCKET_DIR = "/run/lilypad-warm"


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
        warm: How many warm workers to keep (``--warm``): each a long-lived container of a
            module version's image that serves its jobs one at a time (see :mod:`.warm`).

    Raises:
        ExecutorUnavailable: no Docker Engine answers.
    """

    kind = ExecutorKind.DOCKER

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        output_limit_bytes: int | None = None,
        warm: WarmConfig | WarmPool | None = None,
    ) -> None:
        self.client = client or connect()
        self.warm = warm_pool(warm)
        if self.warm is not None:
            self._remove_ended_workers()
        with docker_errors("describe the Docker Engine"):
            info: dict[str, Any] = self.client.info()
        self._limit = output_limit_bytes
        self._tiny_lock = threading.Lock()
        self.version = str(info.get("ServerVersion", "?"))
        self.host_cpus = int(info.get("NCPU") or os.cpu_count() or 1)
        runtimes = info.get("Runtimes") or {}
        self.host_gpus = "nvidia" in runtimes or Path("/dev/nvidia0").exists()

    def describe(self) -> str:
        warm = "" if self.warm is None else f"; {self.warm.describe()}"
        return (
            f"docker (Docker Engine {self.version}: no network, read-only root, "
            f"runs as nobody, with limits{warm})"
        )

    def use_metrics(self, metrics: Metrics) -> None:
        if self.warm is not None:
            self.warm.metrics = metrics

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()
        self.client.close()

    def run(self, job: Job) -> ExecutionResult:
        inputs = check_inputs(job.inputs)
        out = prepare_output_dir(job.output_dir)
        job = dataclasses.replace(
            job, module_dir=job.module_dir.absolute(), output_dir=out, inputs=inputs
        )
        image = self._check_image(job)
        tiny = tiny_weights_cache(self.kind) / image.removeprefix("sha256:")
        tiny.mkdir(parents=True, exist_ok=True)
        key = warm_key(self.warm, job, image)
        if key is not None:
            try:
                return self._run_warm(job, key, image, tiny)
            except WorkerUnavailable as exc:
                log.info("%s runs cold: %s", job.spec.module, exc)
        if job.needs_tiny_weights:
            # one generator at a time: another's clean-up would take the cache from under it
            with self._tiny_lock:
                self._make_tiny_weights(job, image, tiny)
        notes: list[str] = []
        user = self._hand_over(out / OUTPUTS)
        uid, gid = (int(part) for part in user.split(":"))
        try:
            with readable_inputs(job.inputs, uid=uid, gid=gid) as readable:
                job = dataclasses.replace(job, inputs=readable)
                with docker_errors("create the job's container"):
                    container = self.client.containers.create(
                        **self._container_args(job, image, user, tiny, notes)
                    )
                try:
                    return self._execute(job, container, tuple(notes))
                finally:
                    with contextlib.suppress(docker.errors.DockerException):
                        container.remove(force=True)
        finally:
            self._take_back(out / OUTPUTS)

    # ------------------------------------------------------------------- warm workers
    def _run_warm(self, job: Job, key: WorkerKey, image: str, tiny: Path) -> ExecutionResult:
        """Run ``job`` on a warm container of its image (:func:`~.warm.run_warm`).

        Raises:
            WorkerUnavailable: no worker can serve it (all busy, or the module is one-shot).
        """
        assert self.warm is not None
        notes: list[str] = []
        isolation = self._isolation(job, notes)
        env = self._job_env(job)

        def launch() -> ContainerLaunch:
            if job.needs_tiny_weights:
                with self._tiny_lock:
                    self._make_tiny_weights(job, image, tiny)
            parent = get_settings().cache_dir / "warm-docker"  # seen at the same path by dockerd
            parent.mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix="worker-", dir=parent))
            for name in (OUTPUTS, "inputs", "tmp", "socket"):
                (root / name).mkdir()
            user = self._hand_over(root / OUTPUTS)
            self._hand_over(root / "tmp")
            (root / "tmp").chmod(0o1777)  # as a cold job's tmpfs
            args = self._worker_args(job, image, user, tiny, root, isolation)
            return ContainerLaunch(self.client, args, root)

        try:
            return run_warm(
                self.warm,
                job,
                key,
                launch,
                lambda _worker: env,
                kind=self.kind,
                limit=output_limit(job.spec, self._limit),
                notes=tuple(notes),
            )
        finally:
            self._take_back(job.output_dir / OUTPUTS)

    def _worker_args(
        self,
        job: Job,
        image: str,
        user: str,
        tiny: Path,
        root: Path,
        isolation: dict[str, Any],
    ) -> dict[str, Any]:
        """A warm worker's container: a cold job's isolation and image, ``python -m
        lilypad.ml.serve`` for its entrypoint, its root's folders bound at the job's paths."""
        bare = job.spec.model_copy(update={"env": {}})  # the runtime's variables, no tunables
        env = self._job_env(dataclasses.replace(job, spec=bare))
        env[protocol.SOCKET_ENV] = f"{WORKER_SOCKET_DIR}/{WORKER_SOCKET}"
        env[protocol.LAUNCH_ENV] = ",".join(sorted(env))
        # /tmp is a folder of the worker's root, emptied after each job from here (a tmpfs
        # would keep one job's scratch for the next)
        isolation = {k: v for k, v in isolation.items() if k != "tmpfs"}
        return {
            **isolation,
            # the engine's init as the container's first process: it reaps what the jobs
            # leave, and the worker is not a PID 1 that signals cannot end
            "init": True,
            "image": image,
            "entrypoint": [job.spec.entrypoint[0]],
            "command": ["-m", "lilypad.ml.serve", *job.spec.entrypoint[1:]],
            **({"working_dir": job.spec.workdir} if job.spec.workdir else {}),
            "environment": env,
            "user": user,
            "mounts": [
                Mount(SANDBOX_OUTPUTS, str(root / OUTPUTS), type="bind"),
                Mount(SANDBOX_SCRATCH, str(root / "tmp"), type="bind"),
                # the running job's input files only, copied in before it and removed after it
                Mount(SANDBOX_INPUTS, str(root / "inputs"), type="bind", read_only=True),
                Mount(SANDBOX_TINY_WEIGHTS, str(tiny), type="bind", read_only=True),
                Mount(WORKER_SOCKET_DIR, str(root / "socket"), type="bind", read_only=True),
            ],
            # the worker's own words (its setup, its failures); each job's go to its result
            "log_config": LogConfig(type="json-file", config={"max-size": "1m"}),
            "labels": {
                "lilypad.spec_hash": job.spec.spec_hash,
                "lilypad.module": job.spec.module,
                "lilypad.warm": "worker",
                "lilypad.warm.root": str(root),
            },
        }

    def _remove_ended_workers(self) -> None:
        """Remove the worker containers a provider that crashed left (a worker exits when its
        provider's end of the socket closes) and their folders; running ones are another
        provider's on this engine."""
        filters: dict[str, str | list[str] | bool] = {
            "label": "lilypad.warm=worker",
            "status": "exited",
        }
        parent = (get_settings().cache_dir / "warm-docker").resolve()
        with contextlib.suppress(
            docker.errors.DockerException, requests.exceptions.RequestException
        ):
            for container in self.client.containers.list(all=True, filters=filters):
                root = Path(container.labels.get("lilypad.warm.root", "")).resolve()
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
                if root.parent == parent:
                    shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def _job_env(job: Job) -> dict[str, str]:
        return job_env(
            job.spec,
            job.weights,
            outputs=SANDBOX_OUTPUTS,
            scratch=SANDBOX_SCRATCH,
            tiny_weights=SANDBOX_TINY_WEIGHTS,
        )

    def _check_image(self, job: Job) -> str:
        """The id of the job's image, which its containers then run (a tag could move)."""
        image = job.spec.image
        try:
            return str(self.client.images.get(image).id)
        except docker.errors.ImageNotFound:
            raise ImageNotFound(
                f"image {image} is not on this Docker Engine; build it with: "
                f"{build_command(job.spec, job.module_dir)}",
                hint=_build_hint(job.module_dir),
            ) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise ExecutorError(f"could not look up image {image}: {exc}") from None

    def _container_args(
        self, job: Job, image: str, user: str, tiny: Path, notes: list[str]
    ) -> dict[str, Any]:
        spec = job.spec
        env = self._job_env(job)
        return {
            **self._isolation(job, notes),
            "image": image,
            "entrypoint": [spec.entrypoint[0]],
            "command": list(spec.entrypoint[1:]),
            # a Lilypad-format module's WorkingDirectory; built-in modules use the image's
            **({"working_dir": spec.workdir} if spec.workdir else {}),
            "environment": env,
            "user": user,
            "mounts": [
                Mount(SANDBOX_OUTPUTS, str(job.output_dir / OUTPUTS), type="bind"),
                # read-only: every job of this image is made with these weights
                Mount(SANDBOX_TINY_WEIGHTS, str(tiny), type="bind", read_only=True),
                # an /inputs of the engine's making (the job's user cannot write in it), empty
                # when the job has no inputs, as on a warm worker
                Mount(SANDBOX_INPUTS, "", type="tmpfs", tmpfs_size=1 << 20, tmpfs_mode=0o755),
                # the file itself, not its folder: the job sees nothing else of the host's
                *(
                    Mount(item.mount, str(item.source), type="bind", read_only=True)
                    for item in job.inputs
                ),
            ],
            # The logs come from the attach; the engine need not keep a copy.
            "log_config": LogConfig(type="none"),
            "labels": {"lilypad.spec_hash": spec.spec_hash, "lilypad.module": spec.module},
        }

    def _isolation(self, job: Job, notes: list[str]) -> dict[str, Any]:
        """What every container of a job gets: no network, read-only root, limits, user."""
        machine = job.spec.machine
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
            "hostname": SANDBOX_HOSTNAME,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {SANDBOX_SCRATCH: f"rw,nosuid,nodev,size={scratch},mode=1777"},
            "mem_limit": memory,
            "memswap_limit": memory,
            "nano_cpus": int(cpus * 1e9),
            "pids_limit": PIDS_LIMIT,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "device_requests": devices,
            "stdin_open": False,
            "tty": False,
        }

    def _make_tiny_weights(self, job: Job, image: str, tiny: Path) -> None:
        """Generate the tiny weights the job needs into the image's own cache, with the
        image's lilypad, in a container like the job's where only the cache is writable."""
        models = job.needs_tiny_weights
        argv = tiny_weights_command(models)
        doing = f"generate the tiny weights of {', '.join(models)} for {job.spec.module}"
        args = {
            **self._isolation(job, []),
            "image": image,
            "entrypoint": [argv[0]],
            "command": argv[1:],
            "environment": tiny_weights_env(
                scratch=SANDBOX_SCRATCH, tiny_weights=SANDBOX_TINY_WEIGHTS
            ),
            "user": self._hand_over(tiny),
            "mounts": [Mount(SANDBOX_TINY_WEIGHTS, str(tiny), type="bind")],
            "log_config": LogConfig(type="json-file"),  # for its stderr, should it fail
            "labels": {"lilypad.module": job.spec.module, "lilypad.tiny_weights": "generator"},
        }
        with docker_errors(doing):
            container = self.client.containers.create(**args)
        try:
            with docker_errors(doing):
                container.start()
                try:
                    code = int(container.wait(timeout=job.spec.timeout_s)["StatusCode"])
                except requests.exceptions.RequestException:
                    raise ExecutorError(
                        f"could not {doing}: it took more than the module's "
                        f"{job.spec.timeout_s} s timeout"
                    ) from None
                last = container.logs(stdout=False, stderr=True, tail=1)
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
            self._take_back(tiny)
        if code != 0:
            detail = last.decode("utf-8", "replace").strip() or f"exit code {code}"
            raise ExecutorError(
                f"could not {doing}: {detail}",
                hint=f"the image runs `{' '.join(argv)}` for it: an ML module's image has "
                "lilypad's ml extra installed",
            )

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
    def _hand_over(writable: Path) -> str:
        """The user to run as, and make the writable mount its own when we are root."""
        if os.geteuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        os.chown(writable, SANDBOX_UID, SANDBOX_UID)
        return f"{SANDBOX_UID}:{SANDBOX_UID}"

    @staticmethod
    def _take_back(written: Path) -> None:
        """Give the files a container wrote back to us (root), so later steps own them and no
        container user can change them."""
        if os.geteuid() != 0 or not written.exists():
            return
        uid, gid = os.getuid(), os.getgid()
        os.chown(written, uid, gid)
        for root, dirs, files in os.walk(written):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)


#: The socket's name in :data:`WORKER_SOCKET_DIR`.
WORKER_SOCKET = "worker.sock"


@dataclass(frozen=True)
class ContainerLaunch:
    """A warm worker that is a container (``args`` for ``containers.create``): the provider
    listens on a socket in ``root/socket``, bound into it, and the worker connects to it."""

    client: docker.DockerClient
    args: dict[str, Any]
    root: Path

    def open(self, deadline: float) -> tuple[Handle, socket.socket]:
        path = self.root / "socket" / WORKER_SOCKET
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handle: ContainerHandle | None = None
        try:
            listener.bind(str(path))
            path.chmod(0o666)  # for the container's user; only that container sees the folder
            listener.listen(1)
            with docker_errors("create a warm worker's container"):
                handle = ContainerHandle(self.client.containers.create(**self.args))
            with docker_errors("start a warm worker's container"):
                handle.container.start()
                handle.container.reload()
            handle.pid = int(handle.container.attrs["State"].get("Pid") or 0)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SetupTimedOut("its container did not connect in the job's time left")
                listener.settimeout(min(0.25, left))
                try:
                    conn, _ = listener.accept()
                    return handle, conn
                except TimeoutError:
                    if not handle.alive():
                        raise WorkerUnavailable(
                            f"its container exited: {handle.log_tail() or 'no message'}"
                        ) from None
        except BaseException as exc:
            if handle is not None:
                handle.kill()
                handle.close()
            if isinstance(exc, ExecutorError):
                raise WorkerUnavailable(exc.message) from None
            raise
        finally:
            listener.close()  # nothing else connects to this worker
            path.unlink(missing_ok=True)


@dataclass(eq=False)
class ContainerHandle:
    """A warm worker's container. Its first process leads a session of its own on this host,
    so its memory is read from ``/proc`` as a worker process's is."""

    container: Container
    pid: int = 0

    def alive(self) -> bool:
        try:
            self.container.reload()
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        return self.container.status == "running"

    def kill(self) -> None:
        with contextlib.suppress(
            docker.errors.DockerException, requests.exceptions.RequestException
        ):
            self.container.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return int(self.container.wait(timeout=timeout)["StatusCode"])
        except requests.exceptions.RequestException:
            return None
        except docker.errors.NotFound:
            return -1

    def memory(self) -> int:
        return session_rss(self.pid) if self.pid else 0

    def close(self) -> None:
        with contextlib.suppress(
            docker.errors.DockerException, requests.exceptions.RequestException
        ):
            self.container.remove(force=True)

    def log_tail(self) -> str:
        try:
            last = self.container.logs(stdout=False, stderr=True, tail=1)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return ""
        return bytes(last).decode("utf-8", "replace").strip()


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
