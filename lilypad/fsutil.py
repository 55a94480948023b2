"""Files on disk that survive a crash, and a lock shared by processes: the one owner of each.

* :func:`write_atomic` / :func:`atomic_writer`: a file replaced whole. The new content goes to a
  temporary file in the same folder, is flushed to disk (``fsync``), renamed over the old file,
  and the folder is flushed too (so the rename itself survives a power cut). A reader, or a
  process restarted after ``kill -9``, sees the old content or the new, never a torn write.
* :func:`replace_folder`: a finished folder put in place of another, at once.
* :func:`file_lock`: an exclusive lock on a file, held across processes (``flock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lilypad.errors import StorageError

#: How many times :func:`replace_folder` moves a rival's copy away before it gives up.
REPLACE_ATTEMPTS = 5


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) so that a crash leaves the old
    content or the new.

    Args:
        path: The file; its folder is created if missing.
        data: The whole new content.
        mode: Permissions of a new file, less the umask (``0o600`` for a secret: the file is
            never readable by others, not even for a moment).
    """
    with atomic_writer(path, mode=mode) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an exception.

    For content written in pieces (a download); :func:`write_atomic` for content at hand. On an
    exception, or a crash, ``path`` keeps its old content (a crash may leave the hidden
    temporary file ``.<name>.<pid>-<random>.tmp`` beside it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk (what makes a rename or a new file in it durable)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(fresh: Path, dest: Path) -> None:
    """Move ``fresh`` (a folder or a file) to ``dest``, replacing whatever is there.

    ``dest`` ends holding exactly ``fresh``'s content: an earlier copy there, even one edited
    since, is moved aside and removed, never merged.

    Raises:
        StorageError: ``dest`` cannot be written, or another process keeps putting its own copy
            there.
    """
    for _ in range(REPLACE_ATTEMPTS):  # another process may be installing its copy too
        try:
            os.replace(fresh, dest)  # over a file or an empty folder, at once
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise StorageError(f"cannot write {dest}: {exc.strerror}") from None
        stale = dest.with_name(f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(dest, stale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    raise StorageError(f"cannot replace {dest}: something keeps writing it")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), waiting for any other process
    that holds it; released when the block ends, or when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
