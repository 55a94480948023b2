"""Building module images with no registry: a local busybox base and the modules FROM it.

The base image ``lilypad/busybox:local`` is imported from a root filesystem made here out of a
static busybox (Debian's ``busybox-static``), so the hello-world module and the test fixtures
build fully offline. GPU modules' Dockerfiles start FROM a CUDA image instead and need a registry.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import docker
import docker.errors

from lilypad.errors import ExecutorError
from lilypad.modules import ResolvedModule
from resource_provider.executors.base import (
    BASE_IMAGE,
    SANDBOX_TINY_WEIGHTS,
    SANDBOX_UID,
    builds_offline,
)
from resource_provider.executors.docker import connect, docker_errors

#: Where a static busybox is looked for (``busybox-static`` installs it at /bin/busybox).
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def ensure_base(client: docker.DockerClient, *, rebuild: bool = False) -> str:
    """Import the busybox base image unless it is there; return its id."""
    if not rebuild:
        try:
            return str(client.images.get(BASE_IMAGE).id)
        except docker.errors.ImageNotFound:
            pass
    rootfs = base_rootfs(static_busybox())
    repository, tag = BASE_IMAGE.split(":")
    with docker_errors(f"import {BASE_IMAGE}"):
        client.api.import_image_from_data(rootfs, repository=repository, tag=tag)
        return str(client.images.get(BASE_IMAGE).id)


def build_module(module: ResolvedModule) -> tuple[str, str]:
    """Build a module's image from its folder; return the tag and the image id.

    Raises:
        ExecutorUnavailable: no Docker Engine answers.
        ExecutorError: the build failed (the message has the end of its log).
    """
    client = connect()
    try:
        return module.spec.image, build_image(client, module.directory, module.spec.image)
    finally:
        client.close()


def build_image(client: docker.DockerClient, context: Path, tag: str) -> str:
    """Build ``context/Dockerfile`` as ``tag`` (the local base first when it needs it)."""
    if not (context / "Dockerfile").is_file():
        raise ExecutorError(f"{context} has no Dockerfile to build {tag} from")
    if builds_offline(context):
        ensure_base(client)
    try:
        image, _logs = client.images.build(path=str(context), tag=tag, rm=True, pull=False)
    except docker.errors.BuildError as exc:
        lines = [str(item.get("stream", item.get("error", ""))).strip() for item in exc.build_log]
        detail = " | ".join(line for line in lines if line)[-500:]
        raise ExecutorError(f"docker build of {tag} from {context} failed: {detail}") from None
    except (docker.errors.DockerException, OSError) as exc:
        raise ExecutorError(f"docker build of {tag} from {context} failed: {exc}") from None
    return str(image.id)


def base_rootfs(busybox: Path) -> bytes:
    """A tar of the smallest root filesystem that runs sh scripts: busybox and its applets."""
    applets = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "module", "outputs"):
            _add_dir(tar, folder, 0o1777 if folder == "tmp" else 0o755)
        _add_dir(tar, "cache", 0o755)
        _add_dir(tar, SANDBOX_TINY_WEIGHTS.strip("/"), 0o755)
        info = tarfile.TarInfo("bin/busybox")
        data = busybox.read_bytes()
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            if applet == "bin/busybox":
                continue
            link = tarfile.TarInfo(applet)
            link.type = tarfile.SYMTYPE
            link.linkname = "/bin/busybox"
            tar.addfile(link)
        nobody = f"nobody:x:{SANDBOX_UID}:{SANDBOX_UID}:nobody:/tmp:/bin/sh\n"
        _add_file(tar, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n" + nobody)
        _add_file(tar, "etc/group", f"root:x:0:\nnogroup:x:{SANDBOX_UID}:\n")
    return buffer.getvalue()


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def static_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ExecutorError(
        "no busybox found to make the base image from",
        hint="install it: apt-get install -y busybox-static",
    )
