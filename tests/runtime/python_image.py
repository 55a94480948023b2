"""A module image with a Python in it, built offline: the interpreter that runs the tests, its
standard library and the checkout's ``lilypad`` package, on the local busybox base.

No registry answers here, so no ``python`` image can be pulled; the docker executor's warm
workers (``python -m lilypad.ml.serve``) still need one. This copies what the interpreter needs
(its binary, the shared libraries ``ldd`` names, the standard library without its tests) into a
build context below ``/usr/local``, where Python finds its prefix from its binary's path. The
image is labelled with a digest of what went in and built again only when that changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import docker
import docker.errors

import lilypad
from resource_provider.executors.base import BASE_IMAGE
from resource_provider.executors.images import build_image

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


def _rootfs(root: Path, module: Path | None, leave_out: tuple[str, ...]) -> None:
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
    for inside, host in _shared_libraries(libraries).items():
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
    for path in [root, *root.rglob("*")]:  # readable by the job's user
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)


def _digest(module: Path | None, leave_out: tuple[str, ...]) -> str:
    digest = hashlib.sha256(sys.version.encode() + repr(leave_out).encode())
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
) -> str:
    """Build ``tag``: Python, lilypad (less the files named ``leave_out``) and (at ``/module``,
    its working directory) the files of ``module``, unless an image of the same contents has
    that tag; return its id."""
    digest = _digest(module, leave_out)
    try:
        image = client.images.get(tag)
        if image.labels.get(LABEL) == digest:
            return str(image.id)
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="lilypad-python-image-") as context:
        _rootfs(Path(context) / "rootfs", module, leave_out)
        (Path(context) / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nCOPY rootfs/ /\nWORKDIR /module\nLABEL {LABEL}={digest}\n"
        )
        return build_image(client, Path(context), tag)
