"""The result layout every executor leaves, and the helpers that build and read it.

::

    DIR/outputs/...   files the module wrote to $LILYPAD_OUTPUTS_DIR
    DIR/stdout        what it wrote to stdout (kept deterministic by modules)
    DIR/stderr        what it wrote to stderr (progress and logs)
    DIR/exitCode      the exit code in decimal, no newline

These exact files become the job's IPFS directory, so nothing here may depend on the executor,
the host or the time.

``outputs/`` is written by the module, which is hostile code: nothing here follows a symlink
(every walk uses ``lstat``, every open ``O_NOFOLLOW``), and :func:`finish_layout` leaves a folder
that the IPFS import always accepts (it removes fifos, sockets and device nodes, and names that are
not UTF-8, noting each on stderr), the same way on every executor, so provider and mediator get
the same CID and a module cannot make its provider fail a deal.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lilypad.errors import OutputDirInUse
from lilypad.storage.importer import special_kind

OUTPUTS = "outputs"
STDOUT = "stdout"
STDERR = "stderr"
EXIT_CODE = "exitCode"
LAYOUT = frozenset({OUTPUTS, STDOUT, STDERR, EXIT_CODE})

#: The whole ``stderr`` of a job stopped for writing too much (its outputs and logs are
#: discarded): how much a module wrote before the watchdog looked depends on the machine's speed,
#: so nothing of it may stay in a result that a provider and a mediator must agree on.
OVER_LIMIT_LINE = (
    "lilypad: stopped for writing more than the module allows (its disk_gb, 10,000 entries or "
    "folders 32 deep); its outputs and logs were discarded\n"
)
#: The most entries ``outputs/`` may hold, and how deep its folders may nest. A module that goes
#: beyond is stopped as one that writes too many bytes (outputs discarded, exit code 125): the
#: walks, the IPFS import and the job creator's download all stay bounded, and a module cannot
#: make its provider fail a deal with a million empty files or a folder chain past PATH_MAX.
MAX_ENTRIES = 10_000
MAX_DEPTH = 32


@dataclass(frozen=True)
class TreeStats:
    """What a result's ``outputs/`` holds, as far as the limits need to know."""

    size: int  # bytes as the import stores them (files' sizes, symlinks' link text)
    entries: int  # files, folders and links, counted up to MAX_ENTRIES + 1
    too_deep: bool  # deeper than MAX_DEPTH, or a path longer than the system allows

    def over(self) -> str | None:
        """Which shape limit the tree is over, in words (None: within both)."""
        if self.entries > MAX_ENTRIES:
            return f"more than {MAX_ENTRIES:,} entries"
        if self.too_deep:
            return f"folders nested deeper than {MAX_DEPTH} levels"
        return None


def prepare_output_dir(path: Path) -> Path:
    """Make ``path`` an empty result folder and return it as an absolute path.

    An absent or empty folder is used as is; a previous result (only layout entries) is cleared.

    Raises:
        OutputDirInUse: ``path`` is a file, or a folder holding anything else.
    """
    path = path.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OutputDirInUse(f"--output {path} is a file; give a folder for the job's result")
    path.mkdir(parents=True, exist_ok=True)
    entries = {p.name for p in path.iterdir()}
    stray = sorted(entries - LAYOUT)
    if stray:
        shown = ", ".join(stray[:3]) + (", ..." if len(stray) > 3 else "")
        raise OutputDirInUse(
            f"--output {path} is not empty and not a previous job result (it holds {shown})",
            hint="give a new or empty folder; a previous result folder is replaced",
        )
    for name in entries:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (path / OUTPUTS).mkdir()
    return path


def _walk(
    path: Path, *, racing: bool = False, fix: bool = False
) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(relative path, full path, lstat)`` of everything under ``path``, sorted, links not
    followed (a symlink to a directory is an entry, not a folder to enter).

    Args:
        racing: The module may still be running: skip what vanishes or changes under us.
        fix: Give us (the owner) back the read and search bits a module took off its own
            directories and files, so every entry can be listed and read.
    """
    stack = [("", os.fspath(path))]
    while stack:
        rel, full = stack.pop()
        names = _names(full, racing=racing)
        if names is None:
            continue
        below: list[tuple[str, str]] = []
        for name in names:
            child_rel, child = f"{rel}/{name}" if rel else name, os.path.join(full, name)
            try:
                st = os.lstat(child)
            except FileNotFoundError:
                if racing:
                    continue
                raise
            if fix:
                st = _readable(child, st)
            yield child_rel, child, st
            if stat.S_ISDIR(st.st_mode):
                below.append((child_rel, child))
        stack.extend(reversed(below))


def _names(folder: str, *, racing: bool) -> list[str] | None:
    """The sorted names in ``folder``; ``None`` if it vanished while the module runs.

    A folder the module made unsearchable (``chmod 000``) gets its owner's bits back and is
    listed: it must neither hide what it holds from the output-size watchdog nor fail the import.
    """
    try:
        return _listing(folder)
    except (FileNotFoundError, NotADirectoryError):
        if racing:
            return None
        raise
    except PermissionError:
        pass
    try:  # never through a link: with follow_symlinks=False a link raises NotImplementedError
        mode = stat.S_IMODE(os.lstat(folder).st_mode)
        os.chmod(folder, mode | 0o700, follow_symlinks=False)
        return _listing(folder)
    except (OSError, NotImplementedError):
        if racing:
            return None
        raise


def _listing(folder: str) -> list[str]:
    with os.scandir(folder) as listing:
        return sorted(entry.name for entry in listing)


def _readable(path: str, st: os.stat_result) -> os.stat_result:
    """Make a directory listable and a file readable by its owner (modes are not in the CID)."""
    wanted = 0o700 if stat.S_ISDIR(st.st_mode) else 0o400 if stat.S_ISREG(st.st_mode) else 0
    if st.st_mode & wanted == wanted:
        return st
    os.chmod(path, stat.S_IMODE(st.st_mode) | wanted, follow_symlinks=False)
    return os.lstat(path)


def tree_size(path: Path) -> int:
    """Bytes under ``path`` as the import stores them: regular files' sizes, symlinks' link text.

    Nothing is followed: a symlink to ``/dev/zero`` or to a huge file counts its few bytes of
    link text. Safe to call while the module still writes.
    """
    return tree_stats(path).size


def tree_stats(path: Path) -> TreeStats:
    """Size, entry count and depth of the tree under ``path`` (see :func:`tree_size`); stops
    counting once a shape limit is passed. Safe to call while the module still writes."""
    total = entries = 0
    try:
        for rel, _full, st in _walk(path, racing=True):
            entries += 1
            if rel.count("/") >= MAX_DEPTH:
                return TreeStats(total, entries, too_deep=True)
            if entries > MAX_ENTRIES:
                break
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                total += st.st_size
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        return TreeStats(total, entries, too_deep=True)
    return TreeStats(total, entries, too_deep=False)


def finish_layout(path: Path, code: int) -> list[str]:
    """The last step of every run: make ``outputs/`` addable, then write ``exitCode``.

    Removes what the IPFS import refuses, in name order: fifos, sockets and device nodes, and
    entries whose name is not UTF-8 (with everything under them); gives the owner back read
    access a module took away. Each removal is appended to ``stderr`` as one line (stderr is part
    of the result, and every executor writes the same lines), and returned.
    """
    notes = _clean_outputs(path / OUTPUTS)
    if notes:
        with open(path / STDERR, "ab") as log:
            log.write("".join(f"{note}\n" for note in notes).encode())
    (path / EXIT_CODE).write_text(str(code), encoding="ascii")
    return notes


def _clean_outputs(outputs: Path) -> list[str]:
    notes: list[str] = []
    if not outputs.is_dir() or outputs.is_symlink():
        return notes
    outputs.chmod(outputs.stat().st_mode | 0o700)
    doomed: list[tuple[str, str, str]] = []
    for rel, full, st in _walk(outputs, fix=True):
        if any(rel.startswith(f"{gone}/") for gone, _, _ in doomed):
            continue  # under a folder that goes as a whole
        reason = _why_removed(rel, st.st_mode)
        if reason is not None:
            doomed.append((rel, full, reason))
    for rel, full, reason in doomed:
        if stat.S_ISDIR(os.lstat(full).st_mode):
            shutil.rmtree(full)
        else:
            os.unlink(full)
        notes.append(f"lilypad: removed {OUTPUTS}/{_printable(rel)}: {reason}")
    return notes


def _why_removed(rel: str, mode: int) -> str | None:
    try:
        rel.encode()
    except UnicodeEncodeError:
        return "its name is not UTF-8, which IPFS (UnixFS) names must be"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    kind = special_kind(mode)
    return f"a {kind}; a result holds only files, directories and symlinks"


def _printable(rel: str) -> str:
    """``rel`` on one line: control characters and bytes that are not UTF-8 escaped."""
    text = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def discard_outputs(path: Path) -> None:
    """Empty ``outputs/``, empty ``stdout`` and leave :data:`OVER_LIMIT_LINE` as ``stderr``: what
    a job that wrote too much leaves behind, the same bytes on every machine."""
    outputs = path / OUTPUTS
    if outputs.is_dir() and not outputs.is_symlink():
        outputs.chmod(outputs.stat().st_mode | 0o700)
        try:
            for _ in _walk(outputs, fix=True):  # a folder made unreadable is removed too
                pass
            shutil.rmtree(outputs)
        except (OSError, RecursionError):
            # a folder chain past PATH_MAX or Python's recursion limit: rm walks any depth
            # (modes were restored above as far as the walk got; rm asks nothing of them)
            subprocess.run(["rm", "-rf", "--", str(outputs)], check=True, timeout=600)
    elif os.path.lexists(outputs):
        outputs.unlink()
    outputs.mkdir()
    (path / STDOUT).write_bytes(b"")
    (path / STDERR).write_text(OVER_LIMIT_LINE, encoding="utf-8")


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file (stderr), decoded leniently."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - 64 * 1024))
            data = file.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def result_digest(path: Path) -> str:
    """SHA-256 over every path and byte of a result folder: equal digests, equal results.

    Used to compare two runs of a job (determinism checks); file modes and times are ignored,
    as they are by the IPFS import. Symlinks count by their link text and are never followed;
    only regular files are read.
    """
    digest = hashlib.sha256()
    for rel, full, st in _walk(path):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            digest.update(b"d " + os.fsencode(rel) + b"\n")
        elif stat.S_ISLNK(mode):
            digest.update(b"l " + os.fsencode(rel) + b" " + os.readlink(os.fsencode(full)) + b"\n")
        elif stat.S_ISREG(mode):
            digest.update(f"f {st.st_size} ".encode() + os.fsencode(rel) + b"\n")
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(f"s {special_kind(mode)} ".encode() + os.fsencode(rel) + b"\n")
    return "sha256:" + digest.hexdigest()
