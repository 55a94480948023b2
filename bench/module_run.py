"""Executor overhead per job: each executor next to running the entrypoint directly.

    .venv/bin/python bench/module_run.py [--module cowsay] [-i KEY=VALUE]... [--repeat 10]
                                         [--weights real|tiny]

For one module (default: cowsay) it measures, in the same run, the median wall time of one job:

* ``direct``               the entrypoint as a plain subprocess in the module's folder, with the
  job's environment: the baseline (what a job costs with no executor at all);
* ``in-process``           for ``python`` entrypoints only: the entrypoint run with ``runpy`` in
  this process after a first warm-up run, so imports and anything cached between calls are paid
  once (the difference to ``direct`` is start-up and model loading);
* ``process``              the process executor with its bubblewrap sandbox;
* ``process-unsandboxed``  the process executor without the sandbox;
* ``docker``               the docker executor (skipped when no Docker Engine answers or the image
  is not built: ``make images``);

and prints each as milliseconds, as overhead over ``direct`` in milliseconds, and as a ratio.

    .venv/bin/python bench/module_run.py --tiny-report [--repeat 3]

instead runs every version of every built-in ML module (those with ``tiny_models``) directly on
tiny weights, with its default tunables and a generated 64x48 picture (a mask: a white square)
for each picture it needs, and prints the median wall time of one job per version: what a tiny
job costs on this machine (imports and model loading included; generating the tiny weights is
the warm-up's, not counted).
"""

from __future__ import annotations

import argparse
import functools
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from lilypad import modules
from lilypad.errors import LilypadError
from lilypad.modules import JobSpec, ResolvedModule, list_builtin, version_key
from lilypad.storage import compute_cid
from resource_provider.executors import (
    DockerExecutor,
    Executor,
    Job,
    ProcessExecutor,
    Sandbox,
    Weights,
    engine_problem,
)
from resource_provider.executors.base import command, job_env, tiny_weights_cache


def median_ms(run: Callable[[], None], repeat: int) -> float:
    run()  # warm-up: page cache, image layers, bytecode
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def direct_env(spec: JobSpec, weights: Weights, outputs: Path, scratch: str) -> dict[str, str]:
    env = job_env(
        spec,
        weights,
        outputs=str(outputs),
        scratch=scratch,
        tiny_weights=str(tiny_weights_cache()),
    )
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    return env


def direct(
    module: ResolvedModule,
    spec: JobSpec,
    weights: Weights,
    work: Path,
    files: dict[str, str] | None = None,
    quiet: bool = False,
) -> None:
    """Run the entrypoint as a plain subprocess; ``files`` maps a file tunable's variable to
    the host file it reads (an executor would mount it); ``quiet`` keeps the job's stderr to
    itself unless it fails."""
    outputs = work / "direct"
    outputs.mkdir(exist_ok=True)
    env = {**direct_env(spec, weights, outputs, str(work)), **(files or {})}
    done = subprocess.run(
        command(spec),
        cwd=module.directory,
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if quiet else None,
    )
    if done.returncode != 0:
        last = (done.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"{spec.module}: the job exited {done.returncode} {' '.join(last)}")


def pictures(module: ResolvedModule, work: Path) -> tuple[list[str], dict[str, str]]:
    """``-i`` inputs (by CID) and host files for each required picture of ``module``: a 64x48
    gradient, or for a mask a white square on black."""
    inputs, files = [], {}
    for tunable in module.spec.tunables:
        if not (tunable.is_file and tunable.required):
            continue
        path = work / f"{tunable.name.lower()}.png"
        if tunable.name == "Mask":
            picture = Image.new("L", (64, 48))
            picture.paste(255, (16, 12, 48, 36))
        else:
            picture = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
        picture.save(path)
        inputs.append(f"{tunable.name}={compute_cid(path).v1()}")
        files[tunable.env] = str(path)
    return inputs, files


def tiny_report(repeat: int) -> None:
    """Each built-in ML module version's tiny-weight job time (module docstring)."""
    refs = [
        f"{manifest.name}:{version}"
        for manifest, _ in list_builtin()
        for version in sorted(manifest.versions, key=version_key)
        if manifest.versions[version].tiny_models
    ]
    print(f"tiny weights, direct runs: median of {repeat} jobs each, same machine, same run")
    print(f"{'module':<36}{'ms/job':>10}")
    with tempfile.TemporaryDirectory(prefix="bench-module-run-") as tmp:
        work = Path(tmp)
        for ref in refs:
            module = modules.resolve(ref)
            inputs, files = pictures(module, work)
            spec = modules.render(module, inputs)
            job = functools.partial(direct, module, spec, Weights.TINY, work, files, quiet=True)
            ms = median_ms(job, repeat)
            print(f"{ref:<36}{ms:>10.1f}", flush=True)


def in_process(module: ResolvedModule, spec: JobSpec, weights: Weights, work: Path) -> None:
    outputs = work / "in-process"
    outputs.mkdir(exist_ok=True)
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    os.environ.update(direct_env(spec, weights, outputs, str(work)))
    os.chdir(module.directory)
    sys.argv = list(spec.entrypoint[1:])
    try:
        runpy.run_path(str(module.directory / spec.entrypoint[1]), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv = saved_argv


def through(executor: Executor, module: ResolvedModule, spec: JobSpec, weights: Weights,
            work: Path) -> Callable[[], None]:  # fmt: skip
    def run() -> None:
        result = executor.run(Job.of(module, spec, work / executor.describe()[:7], weights))
        if not result.ok:
            raise SystemExit(f"{executor.describe()}: the job {result.message}")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", default="cowsay")
    parser.add_argument("-i", "--input", action="append", default=[], dest="inputs")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--weights", choices=[w.value for w in Weights], default="real")
    parser.add_argument(
        "--tiny-report", action="store_true", help="every ML module's tiny-weight job time"
    )
    args = parser.parse_args()
    if args.tiny_report:
        tiny_report(args.repeat)
        return
    module = modules.resolve(args.module)
    spec = modules.render(module, args.inputs)
    weights = Weights(args.weights)
    rows: list[tuple[str, float | str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-module-run-") as tmp:
        work = Path(tmp)
        rows.append(("direct", median_ms(lambda: direct(module, spec, weights, work), args.repeat)))
        if spec.entrypoint[0] == "python":
            bench = lambda: in_process(module, spec, weights, work)  # noqa: E731
            rows.append(("in-process", median_ms(bench, args.repeat)))
        executors: list[tuple[str, Callable[[], Executor]]] = [
            ("process", lambda: ProcessExecutor(sandbox=Sandbox.BWRAP)),
            ("process-unsandboxed", lambda: ProcessExecutor(sandbox=Sandbox.NONE)),
        ]
        problem = engine_problem()
        if problem is None:
            executors.append(("docker", DockerExecutor))
        else:
            rows.append(("docker", f"skipped: {problem}"))
        for name, make in executors:
            try:
                with make() as executor:
                    ms = median_ms(through(executor, module, spec, weights, work), args.repeat)
                rows.append((name, ms))
            except LilypadError as exc:
                rows.append((name, f"skipped: {exc}"))
    report(spec, args.repeat, rows)


def report(spec: JobSpec, repeat: int, rows: list[tuple[str, float | str]]) -> None:
    base = rows[0][1]
    assert isinstance(base, float)
    print(f"{spec.module}: median of {repeat} jobs each, same machine, same run")
    print(f"{'how':<22}{'ms/job':>10}{'overhead ms':>14}{'ratio':>9}")
    for name, value in rows:
        if isinstance(value, str):
            print(f"{name:<22}{value}")
        else:
            print(f"{name:<22}{value:>10.1f}{value - base:>14.1f}{value / base:>9.2f}")


if __name__ == "__main__":
    main()
