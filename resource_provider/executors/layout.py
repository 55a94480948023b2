"""The result layout every executor leaves, and the helpers that build and read it.

::

    DIR/outputs/...   files the module wrote to $LILYPAD_OUTPUTS_DIR
    DIR/stdout        what it wrote to stdout (kept deterministic by modules)
    DIR/stderr        what it wrote to stderr (progress and logs)
    DIR/exitCode      the exit code in decimal, no newline

These exact files become the job's IPFS directory, so nothing here may depend on the executor,
the host or the time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from lilypad.errors import OutputDirInUse

OUTPUTS = "outputs"
STDOUT = "stdout"
STDERR = "stderr"
EXIT_CODE = "exitCode"
LAYOUT = frozenset({OUTPUTS, STDOUT, STDERR, EXIT_CODE})

#: What is kept of stdout and stderr when a job is stopped for writing too much.
KEPT_LOG_BYTES = 64 * 1024


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


def tree_size(path: Path) -> int:
    """Bytes in the regular files under ``path`` (symlinks are not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we walked: the module is still running
                continue
    return total


def write_exit_code(path: Path, code: int) -> None:
    (path / EXIT_CODE).write_text(str(code), encoding="ascii")


def discard_outputs(path: Path) -> None:
    """Empty ``outputs/`` and cut the logs: what a job that wrote too much leaves behind."""
    shutil.rmtree(path / OUTPUTS, ignore_errors=True)
    (path / OUTPUTS).mkdir()
    for name in (STDOUT, STDERR):
        with open(path / name, "r+b") as log:
            log.truncate(min(KEPT_LOG_BYTES, os.fstat(log.fileno()).st_size))


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
    as they are by the IPFS import.
    """
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        rel_root = os.path.relpath(root, path)
        digest.update(f"d {rel_root}\n".encode())
        for name in sorted(files):
            full = os.path.join(root, name)
            if os.path.islink(full):
                digest.update(f"l {os.path.join(rel_root, name)} {os.readlink(full)}\n".encode())
                continue
            size = os.path.getsize(full)
            digest.update(f"f {os.path.join(rel_root, name)} {size}\n".encode())
            with open(full, "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()
