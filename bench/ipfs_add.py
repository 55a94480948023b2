"""Add throughput of the UnixFS importer, next to plain hashlib.sha256 over the same bytes.

    .venv/bin/python bench/ipfs_add.py [--size-mib 256] [--files 10000] [--repeat 2]

For each workload (one large file; many small files) it measures, in the same run and on the same
files (warm in the page cache):

* ``sha256``    reading the files and hashing them with hashlib: the bound;
* ``copy``      reading the files and writing them to one file on the same disk: what the disk
  allows for storing (no hashing), to read the ``add`` row against;
* ``only-hash`` ``lilypad ipfs add --only-hash``: chunking, hashing, building the DAG;
* ``add``       adding into an on-disk blockstore (one file per block) and pinning;

and prints MB/s and the ratio to the bound (the goal: at least 0.5 for ``add`` on the large file).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lilypad.storage import LocalStorage
from lilypad.storage.importer import add_path

READ_SIZE = 1024 * 1024


def sha256_files(paths: list[Path]) -> None:
    """The baseline: read every file and hash it."""
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(READ_SIZE):
                digest.update(chunk)
        digest.digest()


def copy_files(paths: list[Path], dest: Path) -> None:
    """The disk's share: read every file and append it to one file, as a pack is written."""
    with dest.open("wb") as out:
        for path in paths:
            with path.open("rb") as handle:
                while chunk := handle.read(READ_SIZE):
                    out.write(chunk)


def best_of(repeat: int, run: Callable[[], object], reset: Callable[[], None]) -> float:
    """Fastest wall time of ``repeat`` runs (``reset`` before each, untimed)."""
    times = []
    for _ in range(repeat):
        reset()
        os.sync()  # NOTE: start with no dirty pages left by the set-up or the previous run
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str, root: Path, files: list[Path], work: Path, repeat: int) -> None:
    """Measure one workload and print its three rows."""
    total = sum(p.stat().st_size for p in files)
    repo = work / "repo"

    def reset() -> None:
        shutil.rmtree(repo, ignore_errors=True)

    baseline = best_of(repeat, lambda: sha256_files(files), lambda: None)
    copied = best_of(repeat, lambda: copy_files(files, work / "copy"), lambda: None)
    (work / "copy").unlink()
    only_hash = best_of(repeat, lambda: add_path(root, None), lambda: None)
    stored = best_of(repeat, lambda: LocalStorage(repo).add(root), reset)
    reset()
    mb = total / 1e6
    print(f"\n{name}: {len(files)} file(s), {mb:,.1f} MB")
    print(f"  {'method':<10} {'seconds':>8} {'MB/s':>9} {'ratio to sha256':>16}")
    rows = (("sha256", baseline), ("copy", copied), ("only-hash", only_hash), ("add", stored))
    for method, seconds in rows:
        print(f"  {method:<10} {seconds:8.3f} {mb / seconds:9.1f} {baseline / seconds:16.2f}")


def main() -> None:
    """Create the workloads in a temporary folder and run them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the large file")
    parser.add_argument("--files", type=int, default=10_000, help="number of small files")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipfs-bench-") as tmp:
        work = Path(tmp)
        big_dir = work / "big"
        big_dir.mkdir()
        big = big_dir / "data.bin"
        with big.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(1024 * 1024))
        bench(f"large file ({args.size_mib} MiB)", big, [big], work, args.repeat)

        small_dir = work / "small"
        small_dir.mkdir()
        small = []
        for i in range(args.files):
            path = small_dir / f"file-{i:05d}.txt"
            path.write_bytes(os.urandom(1 + i % 4096))
            small.append(path)
        bench(f"small files ({args.files:,})", small_dir, small, work, args.repeat)


if __name__ == "__main__":
    main()
