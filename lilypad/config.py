"""Settings read from the environment (``LILYPAD_*``), with defaults that work on one machine."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "lilypad"


class Settings(BaseSettings):
    """Process-wide settings.

    Attributes:
        data_dir: Where results and local state live (``LILYPAD_DATA_DIR``, or Lilypad's
            ``DATA_DIR``; the first wins when both are set); results are saved under
            ``<data_dir>/downloaded-files/<CID>/``.
        cache_dir: Where fetched git modules and generated tiny weights are cached
            (``LILYPAD_CACHE_DIR``).
        modules_dir: Where the built-in modules are (``LILYPAD_MODULES_DIR``); by default the
            ``module/`` folder of the checkout or the copy shipped inside the package.
        module_repo_prefix: Where ``NAME:VERSION`` points for a name that is not built in
            (``LILYPAD_MODULE_REPO_PREFIX``): the git repository ``<prefix><NAME>`` at that tag
            or commit, as Lilypad's module shortcuts resolve.
    """

    model_config = SettingsConfigDict(env_prefix="LILYPAD_", extra="ignore")

    data_dir: Path = Field(
        Path("/tmp/lilypad/data"), validation_alias=AliasChoices("LILYPAD_DATA_DIR", "DATA_DIR")
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    modules_dir: Path | None = None
    module_repo_prefix: str = "github.com/Lilypad-Tech/lilypad-module-"


def get_settings() -> Settings:
    """The settings for the environment as it is now: a changed environment (tests,
    subprocesses) is honoured. Read once per distinct environment: building :class:`Settings`
    costs about a millisecond, and a provider resolves modules (which reads them) for every offer
    and deal."""
    relevant = tuple(
        (name, value)
        for name, value in os.environ.items()
        if name.startswith("LILYPAD_") or name in _OTHER_INPUTS
    )
    return _settings_for(relevant)


#: Environment variables besides ``LILYPAD_*`` that the settings depend on.
_OTHER_INPUTS = frozenset({"DATA_DIR", "HOME"})


@functools.lru_cache(maxsize=16)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    del environment  # the cache key: Settings() reads the same variables itself
    return Settings()
