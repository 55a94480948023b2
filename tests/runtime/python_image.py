"""A module image with a Python in it, built offline: the interpreter that runs the tests, its
standard library, the checkout's ``lilypad`` package and, where asked, installed distributions
(torch, diffusers...) with what they require, on the local busybox base.

No registry answers here, so no ``python`` image can be pulled; the docker executor's warm
workers (``python -m lilypad.ml.serve``) still need one. This copies what the interpreter needs
(its binary, the shared libraries ``ldd`` names, the standard library without its tests) into a
build context below ``/usr/local``, where Python finds its prefix from its binary's path. The
image is labelled with a digest of what went in and built again only when that changes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import docker
import docker.errors
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import lilypad
from resource_provider.executors.images import base_rootfs, static_busybox

#: Parts of the standard library no job imports (and its largest).
SKIP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "__pycache__",
    "pydoc_data",
}
LIBS = "lib/x86_64-linux-gnu"
LABEL = "lilypad.test.digest"
#: Seconds the engine may take to import an image's tar.
IMPORT_TIMEOUT_S = 900


def _shared_libraries(files: list[Path]) -> dict[str, Path]:
    """Where each shared library the files load lives: ``{path in the image: host file}``."""
    found: dict[str, Path] = {}
    for file in files:
        done = subprocess.run(["ldd", str(file)], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            match = re.match(r"\s*(\S+) => (/\S+)", line)
            if match:
                found[f"{LIBS}/{match[1]}"] = Path(match[2]).resolve()
            elif (loader := re.match(r"\s*(/\S+) \(", line)) is not None:
                found[loader[1].lstrip("/")] = Path(loader[1]).resolve()
    return found


def _closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and every one they require (without extras, as
    their markers evaluate here), each once."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional one this environment does without
        found[name] = dist
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [found[name] for name in sorted(found)]


def _installed_files(dists: list[metadata.Distribution]) -> list[tuple[Path, str]]:
    """``(host file, path below site-packages)`` of each distribution's files, scripts left out."""
    files = []
    for dist in dists:
        for entry in dist.files or ():
            if entry.parts[0] == "..":
                continue  # console scripts, in the environment's bin/
            files.append((Path(str(dist.locate_file(entry))), entry.as_posix()))
    return files


def _rootfs(
    root: Path, module: Path | None, leave_out: tuple[str, ...], dists: list[metadata.Distribution]
) -> list[tuple[Path, str]]:
    """Lay out Python, lilypad and ``module`` below ``root``; return the files of the installed
    ``dists`` as ``(host file, path in the image)``, left where they are."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    binary = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    stdlib = Path(sysconfig.get_path("stdlib"))
    dynload = Path(sysconfig.get_path("platstdlib")) / "lib-dynload"
    prefix = root / "usr" / "local"
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(binary, prefix / "bin" / version)
    (prefix / "bin" / "python").symlink_to(version)
    (prefix / "bin" / "python3").symlink_to(version)
    target = prefix / "lib" / version
    shutil.copytree(
        stdlib,
        target,
        ignore=lambda _dir, names: [n for n in names if n in SKIP or n.startswith("config-")],
        symlinks=True,
    )
    if not (target / "lib-dynload").is_dir():
        shutil.copytree(dynload, target / "lib-dynload")
    libraries = [binary, *sorted((target / "lib-dynload").glob("*.so"))]
    site = (target / "site-packages").relative_to(root)
    installed = [
        (host, (site / inside).as_posix())
        for host, inside in _installed_files(dists)
        if host.is_file()
    ]
    libraries += [host for host, _ in installed if ".so" in host.suffixes]
    system = {  # what the extension modules load from the system, not from their wheels
        inside: host
        for inside, host in _shared_libraries(libraries).items()
        if "site-packages" not in host.parts
    }
    for inside, host in system.items():
        (root / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, root / inside)
    package = Path(lilypad.__file__).parent
    shutil.copytree(
        package,
        target / "site-packages" / "lilypad",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *leave_out),
    )
    if module is not None:
        shutil.copytree(module, root / "module", dirs_exist_ok=True)
    return installed


def _readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Root's, and readable by the job's user (executable where it was)."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if not info.issym():
        info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
    return info


def _archive(archive: Path, root: Path, installed: list[tuple[Path, str]]) -> None:
    """One tar of the whole root filesystem: the busybox base's, ``root`` and the installed
    files (added from where they are, not copied first: torch alone is most of a gigabyte).
    Each path once: the engine refuses a layer with duplicates."""
    added: set[str] = set()
    with tarfile.open(archive, "w") as tar:

        def add(host: Path | None, name: str) -> None:
            """``host``'s file (None: a folder) as ``name``, unless the tar has it already."""
            if name in added:
                return
            added.add(name)
            if host is None:
                folder = tarfile.TarInfo(name)
                folder.type = tarfile.DIRTYPE
                tar.addfile(_readable(folder))
            else:
                tar.add(host, arcname=name, recursive=False, filter=_readable)

        with tarfile.open(fileobj=io.BytesIO(base_rootfs(static_busybox()))) as base:
            for member in base.getmembers():
                added.add(member.name)
                tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        for path in sorted(root.rglob("*")):
            add(path, path.relative_to(root).as_posix())
        for host, inside in installed:  # the same mtimes: their .pyc files stay valid
            for folder in reversed(PurePosixPath(inside).parents[:-1]):
                add(None, str(folder))
            add(host, inside)


def _digest(
    module: Path | None, leave_out: tuple[str, ...], dists: list[metadata.Distribution]
) -> str:
    digest = hashlib.sha256(sys.version.encode() + repr(leave_out).encode())
    for dist in dists:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    sources = sorted(Path(lilypad.__file__).parent.rglob("*.py"))
    if module is not None:
        sources += sorted(p for p in module.rglob("*") if p.is_file())
    for path in sources:
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def python_image(
    client: docker.DockerClient,
    tag: str,
    module: Path | None = None,
    leave_out: tuple[str, ...] = (),
    distributions: tuple[str, ...] = (),
) -> str:
    """Build ``tag``: Python, lilypad (less the files named ``leave_out``), the installed
    ``distributions`` with their requirements and (at ``/module``, its working directory) the
    files of ``module``, unless an image of the same contents has that tag; return its id."""
    dists = _closure(distributions)
    digest = _digest(module, leave_out, dists)
    try:
        image = client.images.get(tag)
        if image.labels.get(LABEL) == digest:
            return str(image.id)
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="lilypad-python-image-") as context:
        root, archive = Path(context) / "rootfs", Path(context) / "image.tar"
        _archive(archive, root, _rootfs(root, module, leave_out, dists))
        # One layer, imported: a build would copy the whole tree once per layer (vfs storage).
        repository, _, version = tag.rpartition(":")
        # The engine answers once the whole tar is in (a minute or more for a gigabyte on a
        # busy machine): the default client's 60 s read timeout would give up first.
        importer = docker.from_env(timeout=IMPORT_TIMEOUT_S)
        try:
            importer.api.import_image_from_file(
                str(archive),
                repository=repository,
                tag=version,
                changes=["WORKDIR /module", f"LABEL {LABEL}={digest}"],
            )
        finally:
            importer.close()
        return str(client.images.get(tag).id)
