"""A module's job as a predictor: ``setup()`` once per process, ``predict()`` once per job.

In the spirit of Cog's predictors, a built-in ML module's entrypoint defines a top-level
``predictor`` (a :class:`Predictor`), and runs it two ways:

- one-shot (``python sdxl.py 1.0``, as every executor and ``lilypad module run`` run it):
  :meth:`Predictor.run_once` runs one job, exactly as the entrypoint always has;
- warm (:mod:`lilypad.ml.serve`, which a provider keeps alive per module version):
  :meth:`Predictor.setup` once (imports torch and diffusers), then :meth:`Predictor.predict` per
  job, with :class:`JobScope` around each so that no job sees what the one before left behind.

The pipelines and networks a job loads (diffusers pipelines, ControlNets, annotators, upscalers)
go through :func:`load_once`: cached in a warm worker (the load is most of a real model's
start-up), loaded afresh in a one-shot run. What a job can change in a cached pipeline is undone
before the next one gets it: its schedulers are fresh copies of the ones loaded, and a pipeline
a job has changed for good (LoRAs, a textual-inversion embedding:
:func:`mark_changed`) is dropped from the cache when the job ends, and loaded again by the next
job that needs it. The same job therefore gives the same bytes, warm or cold; tests/ml/test_warm.py
runs several jobs through one worker, in an order that would show a leak (A, B, A), against cold
runs.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import warnings
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lilypad.ml import job

T = TypeVar("T")

#: The seed of torch's default generator in a fresh process.
FRESH_TORCH_SEED = 67280421310721


class Predictor:
    """The job of a module entrypoint, runnable once or many times in one process.

    Args:
        main: Runs one job from the environment (tunables as variables, outputs into
            ``$LILYPAD_OUTPUTS_DIR``) and returns the names of the files it wrote.
        imports: What :meth:`setup` imports ahead of the first job: the seconds of a cold start.
            With any, setup also makes torch deterministic and diffusers quiet, as a job does.
    """

    def __init__(
        self,
        main: Callable[[], list[str]],
        imports: tuple[str, ...] = ("diffusers", "transformers", "lilypad.ml.sdxl"),
    ) -> None:
        self._main = main
        self._imports = imports

    def setup(self) -> None:
        """Load what every job of this module needs, once per worker, before its first job.

        It writes nothing a job's stderr would hold (a warm job's logs must be a cold one's):
        the pipelines themselves load on first use, through :func:`load_once`.
        """
        import importlib

        if not self._imports:
            return  # a module that needs no ML library (the tests' fixtures)
        from lilypad.ml import determinism

        determinism.configure()
        job.quiet_libraries()
        for name in self._imports:
            importlib.import_module(name)

    def predict(self) -> list[str]:
        """Run one job from the environment; returns the files it wrote."""
        return self._main()

    def run_once(self) -> None:
        """The one-shot entrypoint: one job, its files on stdout, its error as an exit code."""
        job.run_main(self.predict)


# ---------------------------------------------------------------------------- the cache
@dataclass
class _Cache:
    """The pipelines a warm worker keeps between jobs, and those a job changed for good."""

    entries: dict[Hashable, _Entry] = field(default_factory=dict)
    changed: set[int] = field(default_factory=set)


@dataclass
class _Entry:
    value: Any
    #: The schedulers as loaded (``scheduler``, the SD x4 upscaler's ``low_res_scheduler``):
    #: each job gets fresh copies (a scheduler keeps its step index and timesteps).
    schedulers: dict[str, Any]
    #: What the load warned about, said again to every job that gets the value (as its own
    #: load would have said it).
    warnings: list[warnings.WarningMessage]


#: None in a one-shot run (nothing is kept); a cache in a warm worker (:func:`enable_cache`).
_cache: _Cache | None = None


def enable_cache() -> None:
    """Keep loaded pipelines between jobs (a warm worker calls this before its first job)."""
    global _cache
    _cache = _Cache()


def load_once(key: Hashable, load: Callable[[], T], *, alone: bool = False) -> T:
    """``load()``, or in a warm worker the value a previous job loaded under ``key``.

    ``key`` must name everything the load depends on (class, folder, dtype, device). A cached
    pipeline comes back with fresh copies of its schedulers, and with the warnings its load
    gave, said again, so the job's stderr is what a fresh load's would be.

    Args:
        alone: Hold nothing else meanwhile: every other cached value is dropped (and its memory
            freed) first. For a job that loads two large models one after the other and frees
            the first before the second (SDV: SDXL, then SVD), so that a warm worker never
            holds both, as a cold run never does.
    """
    if _cache is None:
        return load()
    if alone and any(k != key for k in _cache.entries):
        _cache.entries = {k: e for k, e in _cache.entries.items() if k == key}
        from lilypad.ml import determinism

        determinism.release_memory()
    entry = _cache.entries.get(key)
    if entry is None:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("default")
            value = load()
        entry = _Entry(value, copy.deepcopy(_schedulers(value)), list(said))
        _cache.entries[key] = entry
    for w in entry.warnings:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for name, scheduler in entry.schedulers.items():
        setattr(entry.value, name, copy.deepcopy(scheduler))
    return entry.value  # type: ignore[no-any-return]


def _schedulers(value: Any) -> dict[str, Any]:
    """The schedulers of a diffusers pipeline (none of another value)."""
    components = getattr(value, "components", None)
    if not isinstance(components, dict):
        return {}
    return {
        name: part
        for name, part in components.items()
        if name.endswith("scheduler") and part is not None
    }


def mark_changed(value: Any) -> None:
    """Say that the job changed ``value`` (a cached pipeline) for good: LoRAs loaded into it,
    tokens added to its tokenizers. It is dropped from the cache when the job ends."""
    if _cache is not None:
        _cache.changed.add(id(value))


def end_job() -> None:
    """Drop from the cache what the job changed (see :func:`mark_changed`)."""
    if _cache is None or not _cache.changed:
        return
    changed = _cache.changed
    _cache.entries = {k: e for k, e in _cache.entries.items() if id(e.value) not in changed}
    _cache.changed = set()
    from lilypad.ml import determinism

    determinism.release_memory()


def cached_keys() -> list[Hashable]:
    """What the warm worker holds now (for tests and the worker's log)."""
    return [] if _cache is None else list(_cache.entries)


# ------------------------------------------------------------------------ per-job state
@dataclass(frozen=True)
class JobScope:
    """The process state a job may change and the next job must not see, as it was after
    :meth:`Predictor.setup`: captured once, put back before every job.

    It covers the environment, the working directory, the global random generators (torch's,
    CUDA's, NumPy's, Python's), torch's grad mode, default dtype and thread count, and the
    warning filters together with the "already shown" registries (a warning shown in one job is
    shown again in the next, as a cold run would show it).
    """

    cwd: str
    argv: tuple[str, ...]
    #: What the imports added to the environment (``os.environ.setdefault`` at import time, as
    #: lilypad.ml.job does): a cold job has it too, below its own variables.
    env_defaults: tuple[tuple[str, str], ...]
    rng: Any
    numpy_rng: Any
    python_rng: Any
    filters: tuple[Any, ...]
    default_dtype: Any
    threads: int

    @classmethod
    def capture(cls, start_env: Mapping[str, str]) -> JobScope:
        """The state now, after setup; ``start_env`` is the environment before any import.

        torch and NumPy are captured only where setup imported them: importing them here would
        change the environment (torch sets variables at import) of a module that uses neither.
        """
        torch, numpy = sys.modules.get("torch"), sys.modules.get("numpy")
        added = sorted((k, v) for k, v in os.environ.items() if k not in start_env)
        return cls(
            cwd=os.getcwd(),
            argv=tuple(sys.argv),
            env_defaults=tuple(added),
            rng=None if torch is None else torch.random.get_rng_state(),
            numpy_rng=None if numpy is None else numpy.random.get_state(),
            python_rng=random.getstate(),
            filters=tuple(warnings.filters),
            default_dtype=None if torch is None else torch.get_default_dtype(),
            threads=0 if torch is None else torch.get_num_threads(),
        )

    def enter(self, env: Mapping[str, str]) -> None:
        """Make the process as it was at capture, with ``env`` as the job's whole environment."""
        os.environ.clear()
        os.environ.update({**dict(self.env_defaults), **env})
        os.chdir(self.cwd)
        sys.argv[:] = self.argv
        random.setstate(self.python_rng)
        numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")
        if numpy is not None:
            if self.numpy_rng is None:
                numpy.random.seed(None)  # a job imported it: as fresh as a cold job's
            else:
                numpy.random.set_state(self.numpy_rng)
        if torch is not None:
            self._reset_torch(torch)
        warnings.filters[:] = list(self.filters)  # type: ignore[index]
        # NOTE: a change of the filters empties every module's registry of warnings shown
        # (CPython compares each registry's version with the filters'): each job shows them.
        warnings._filters_mutated()  # type: ignore[attr-defined]

    def _reset_torch(self, torch: Any) -> None:
        if self.rng is None:  # a job imported it: its seed as in a fresh process
            torch.manual_seed(FRESH_TORCH_SEED)
        else:
            torch.random.set_rng_state(self.rng)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(torch.initial_seed())
        torch.set_grad_enabled(True)
        if self.default_dtype is not None:
            torch.set_default_dtype(self.default_dtype)
            torch.set_num_threads(self.threads)

    def leave(self) -> None:
        """After the job: drop what it changed for good from the cache."""
        end_job()


def entrypoint_predictor(path: Path) -> Predictor | None:
    """The ``predictor`` the entrypoint file at ``path`` defines, imported (not run as
    ``__main__``), or None when it defines none."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lilypad_module_entrypoint", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    found = getattr(module, "predictor", None)
    return found if isinstance(found, Predictor) else None
