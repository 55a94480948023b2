"""A job's file inputs: checked before anything runs, then made readable by the job's user.

Both executors bind each input read-only as the single file at its mount path under
``/inputs/`` (the docker executor as a bind mount of the container, the process executor with
bubblewrap's ``--ro-bind``), so a job reads the same bytes at the same path on either and its
result does not depend on the backend. The rules here are the ones both follow:

* :func:`check_inputs` refuses an input that could not be mounted as asked, before anything runs;
* :func:`readable_inputs` hands the job, for a file its user may not read (a user's ``0600``
  file when jobs run as ``nobody``), a copy that user can read, and removes it after the job;
* :func:`host_paths` gives an unsandboxed job, which has no mount namespace, the host paths.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from lilypad.config import get_settings
from lilypad.errors import ExecutorError
from lilypad.storage.importer import special_kind
from resource_provider.executors.base import SANDBOX_INPUTS, JobInput

#: The mode of a staged copy: anyone may read it, nobody may change it.
STAGED_MODE = 0o444
_COPY_CHUNK = 1 << 20


def check_inputs(inputs: Iterable[JobInput]) -> tuple[JobInput, ...]:
    """Check that each input can be bound where it asks, and return them with absolute sources.

    A mount is an absolute, normalised path strictly under ``/inputs/`` without ``..``; no two
    inputs share one, nor lies one inside another's. A source is an existing regular file, not
    a symlink (which could point anywhere by the time it is bound), a folder or a fifo.

    Raises:
        ExecutorError: an input breaks one of these rules; the message names it.
    """
    checked: dict[str, JobInput] = {}
    for item in inputs:
        _check_mount(item.mount)
        source = Path(item.source).absolute()
        _check_source(item.mount, source)
        other = checked.get(item.mount)
        if other is not None:
            raise ExecutorError(
                f"two inputs are mounted at {item.mount!r} ({other.source} and {source}); "
                "each input needs a path of its own"
            )
        checked[item.mount] = JobInput(source, item.mount)
    for mount in checked:
        for parent in PurePosixPath(mount).parents:
            if str(parent) in checked:
                raise ExecutorError(
                    f"input {mount!r} would be mounted inside input {str(parent)!r}, which is a "
                    "file; give each input a path that is not below another's"
                )
    return tuple(checked.values())


def _check_mount(mount: str) -> None:
    where = f"input mount {mount!r}"
    root = SANDBOX_INPUTS + "/"
    if not isinstance(mount, str) or "\0" in mount or not mount.startswith("/"):
        raise ExecutorError(f"{where} is not an absolute path; give one under {root}")
    if ".." in mount.split("/"):
        raise ExecutorError(f"{where} has a '..' segment; give a path under {root} without one")
    normal = posixpath.normpath(mount)
    if normal != mount:
        raise ExecutorError(
            f"{where} is not normalised (no '.', '//' or trailing '/'); did you mean {normal!r}?"
        )
    if not mount.startswith(root):
        raise ExecutorError(
            f"{where} is outside {root}: a job's inputs are mounted at {root}<name>/<file name>"
        )


def _check_source(mount: str, source: Path) -> None:
    where = f"input {mount!r}: its source {source}"
    try:
        mode = source.lstat().st_mode
    except FileNotFoundError:
        raise ExecutorError(f"{where} does not exist") from None
    except OSError as exc:
        raise ExecutorError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISLNK(mode):
        raise ExecutorError(
            f"{where} is a symlink; give the file itself (inputs are never bound through a link)"
        )
    if stat.S_ISDIR(mode):
        raise ExecutorError(f"{where} is a directory; an input is one regular file")
    if not stat.S_ISREG(mode):
        raise ExecutorError(f"{where} is a {special_kind(mode)}; an input is one regular file")


@contextlib.contextmanager
def readable_inputs(
    inputs: tuple[JobInput, ...], *, uid: int, gid: int
) -> Iterator[tuple[JobInput, ...]]:
    """The inputs as a job running as ``uid:gid`` can read them.

    A file that user may not read (by its owner, group and other bits) is copied, mode 0444,
    into a staging folder of this job, which is removed when the context ends; the others are
    bound as they are. The caller's file is never changed: no chmod, no chown. The copies are
    made under :func:`staging_dir`.

    Raises:
        ExecutorError: a copy could not be made (the file vanished, the disk is full...).
    """
    hidden = [item for item in inputs if not _readable_by(item.source, uid, gid)]
    if not hidden:
        yield inputs
        return
    with tempfile.TemporaryDirectory(prefix="job-", dir=staging_dir()) as staging:
        copies = {item: _stage(item, Path(staging) / str(n)) for n, item in enumerate(hidden)}
        yield tuple(copies.get(item, item) for item in inputs)


def staging_dir() -> Path:
    """Where the copies of :func:`readable_inputs` are made, one folder per job: under the cache
    dir, which a provider in a container shares with the Docker Engine at the same path (the
    engine resolves a bind mount's source on the host)."""
    folder = get_settings().cache_dir / "staged-inputs"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _readable_by(source: Path, uid: int, gid: int) -> bool:
    """Whether ``uid:gid``, without privileges or other groups, may read the file."""
    st = source.lstat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _stage(item: JobInput, copy: Path) -> JobInput:
    """Copy the input's file to ``copy``, readable by anyone; never through a link."""
    try:
        fd = os.open(item.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise ExecutorError(
                    f"input {item.mount!r}: its source {item.source} is no longer a regular file"
                )
            out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, STAGED_MODE)
            with open(out, "wb") as dst:
                os.fchmod(dst.fileno(), STAGED_MODE)  # as asked, whatever the umask
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
    except OSError as exc:
        raise ExecutorError(
            f"could not copy input {item.mount!r} ({item.source}) where the job's user can read "
            f"it: {exc.strerror or exc}"
        ) from None
    return JobInput(copy, item.mount)


def host_paths(env: dict[str, str], inputs: Iterable[JobInput]) -> dict[str, str]:
    """The env of an unsandboxed job, which has no mount namespace to see ``/inputs/`` in:
    every variable whose value is an input's mount path holds the input's host path instead."""
    where = {item.mount: str(item.source) for item in inputs}
    return {name: where.get(value, value) for name, value in env.items()}
