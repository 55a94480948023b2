"""Where modules come from: built-in folders, local folders, and git repositories at a tag.

A reference is ``NAME[:VERSION]``:

* ``sdxl:v0.9-lilypad1`` — a built-in module, ``module/sdxl/`` of this repository;
* ``./my-module`` or ``/abs/path`` — a local folder holding a manifest;
* ``github.com/org/repo:v1.2``, ``https://host/repo.git:v1.2`` or ``/path/to/repo.git:v1.2`` — a
  git repository at a tag, or at a full 40-hex commit. It is cloned once into the cache, keyed by
  commit. The commit each tag pointed at when first used is remembered; a tag that later points
  elsewhere is refused, since a module version must never change under a job;
* ``lilysay:v0.1.0`` — a name that is not built in, with a version: Lilypad's shortcut, the git
  repository ``<module_repo_prefix><name>`` (``github.com/Lilypad-Tech/lilypad-module-lilysay``).

A folder or repository is a module when it holds a ``lilypad_module.toml``, or Lilypad's
``lilypad_module.json.tmpl`` (see :mod:`lilypad.modules.template`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import lilypad
from lilypad.config import get_settings
from lilypad.errors import ModuleSourceError, UnknownModule, UnknownVersion
from lilypad.fsutil import write_atomic
from lilypad.modules.manifest import (
    MANIFEST_FILE,
    MODULE_NAME,
    Manifest,
    load_manifest,
    newest,
    version_key,
)
from lilypad.modules.template import TemplateModule, is_template_module
from lilypad.modules.template import load as load_template
from lilypad.modules.tunables import suggest

GIT_TIMEOUT_S = 120
#: A version that names a commit rather than a tag: 40 hex digits.
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class SourceKind(StrEnum):
    BUILTIN = "builtin"
    LOCAL = "local"
    GIT = "git"


@dataclass(frozen=True)
class Reference:
    """A parsed module reference: where to look and which version (None: the newest)."""

    kind: SourceKind
    location: str
    version: str | None
    #: The name, for a ``NAME:VERSION`` that resolved through the shortcut prefix.
    shortcut: str | None = None

    @property
    def everywhere(self) -> bool:
        """Whether every machine can fetch it alike: a built-in module or an https git
        repository (not a folder, a local repository or an ssh URL of this machine's)."""
        if self.kind is SourceKind.BUILTIN:
            return True
        return self.kind is SourceKind.GIT and self.location.startswith("https://")


@dataclass(frozen=True)
class ModuleSource:
    """Where a resolved module came from."""

    kind: SourceKind
    location: str
    commit: str | None = None


@dataclass(frozen=True)
class FetchedModule:
    """A module's manifest, its folder on disk and its source."""

    manifest: Manifest
    directory: Path
    source: ModuleSource
    #: For a module in Lilypad's format: its template and inputs.
    template: TemplateModule | None = None


def builtin_modules_dir() -> Path:
    """Built-in modules: the setting, else the checkout's ``module/``, else the packaged copy."""
    configured = get_settings().modules_dir
    if configured is not None:
        return configured
    package_dir = Path(lilypad.__file__).resolve().parent
    for candidate in (package_dir / "_builtin_modules", package_dir.parent / "module"):
        if candidate.is_dir():
            return candidate
    raise ModuleSourceError(f"the built-in modules are missing (looked in {package_dir.parent})")


def builtin_names() -> list[str]:
    root = builtin_modules_dir()
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_FILE).is_file())


def parse_reference(ref: str) -> Reference:
    """Split ``NAME[:VERSION]`` and decide which kind of source it names."""
    if not ref.strip():
        raise UnknownModule("the module reference is empty; for example: sdxl:v0.9-lilypad1")
    # A reference names exactly one module: refuse rather than guess at stray spaces or newlines
    # (a contract, or a script, may pass them on), and keep control characters out of logs.
    if ref != ref.strip() or any(ord(c) < 32 or ord(c) == 127 for c in ref):
        raise UnknownModule(
            f"module reference {ref!r} holds whitespace or control characters at its ends or "
            f"inside; for example: {ref.strip()[:80]!r}"
        )
    location, version = ref, None
    head, sep, tail = ref.rpartition(":")
    if sep and head and "/" not in tail:
        location, version = head, tail
        if not version:
            raise UnknownVersion(f"{ref!r} names no version after ':'; drop the ':' for the newest")
    if "/" not in location and not location.startswith((".", "~")):
        shortcut = version is not None and re.match(MODULE_NAME, location)
        if shortcut and location not in builtin_names():
            assert version is not None
            return _shortcut(location, version)
        return Reference(SourceKind.BUILTIN, location, version)
    path = Path(location).expanduser()
    if location.startswith(("/", ".", "~")) or path.exists():
        if version is not None and _is_git_repo(path):
            return Reference(SourceKind.GIT, str(path.resolve()), version)
        return Reference(SourceKind.LOCAL, str(path.resolve()), version)
    if version is None:
        raise UnknownVersion(
            f"git module {location!r} needs a tag, for example {location}:v1.0",
        )
    url = location if re.match(r"^[a-z+]+://|^git@", location) else f"https://{location}"
    return Reference(SourceKind.GIT, url, version)


def _shortcut(name: str, version: str) -> Reference:
    """``NAME:VERSION`` for a name that is not built in: the repository the prefix names."""
    target = f"{get_settings().module_repo_prefix}{name}"
    if "/" not in target:
        raise UnknownModule(
            f"unknown module {name!r}.{suggest(name, builtin_names())} Built-in modules: "
            f"{', '.join(builtin_names())}",
            hint="LILYPAD_MODULE_REPO_PREFIX must name a repository prefix, such as "
            "github.com/Lilypad-Tech/lilypad-module-",
        )
    found = parse_reference(f"{target}:{version}")
    return Reference(found.kind, found.location, found.version, shortcut=name)


def fetch(ref: Reference) -> FetchedModule:
    """Find a module's manifest on disk, cloning a git module into the cache when needed."""
    if ref.kind is SourceKind.BUILTIN:
        return _fetch_builtin(ref.location)
    if ref.kind is SourceKind.LOCAL:
        path = Path(ref.location)
        if not path.is_dir():
            raise UnknownModule(f"module folder {ref.location} does not exist")
        return _load(path, None, ModuleSource(SourceKind.LOCAL, ref.location))
    assert ref.version is not None
    try:
        return _fetch_git(ref.location, ref.version)
    except (ModuleSourceError, UnknownVersion) as exc:
        if ref.shortcut is None:
            raise
        close = suggest(ref.shortcut, builtin_names())
        if close:  # most likely a typo of a built-in name, not a Lilypad module
            raise UnknownModule(
                f"unknown module {ref.shortcut!r}.{close} As a Lilypad module it would be "
                f"{ref.location}, and there: {exc.message}"
            ) from None
        raise type(exc)(
            f"{ref.shortcut}:{ref.version} is {ref.location}: {exc.message}", hint=exc.hint
        ) from None


def _load(directory: Path, version: str | None, source: ModuleSource) -> FetchedModule:
    """A module folder: Lilypad's template format when it has one, else its manifest."""
    if is_template_module(directory):
        manifest, template = load_template(directory, version or "local", source.location)
        return FetchedModule(manifest, directory, source, template)
    return FetchedModule(load_manifest(directory, single_version=version), directory, source)


def pick_version(fetched: FetchedModule, version: str | None) -> tuple[str, bool]:
    """Return the version to use and whether it was chosen as the newest."""
    versions = list(fetched.manifest.versions)
    if version is None:
        return newest(versions), True
    if version not in fetched.manifest.versions:
        listed = ", ".join(sorted(versions, key=version_key))
        raise UnknownVersion(
            f"{fetched.manifest.name} has no version {version!r}.{suggest(version, versions)} "
            f"Versions: {listed}"
        )
    return version, False


def _fetch_builtin(name: str) -> FetchedModule:
    if not re.match(MODULE_NAME, name):
        raise UnknownModule(f"{name!r} is not a module name (lower-case letters, digits, . _ -)")
    names = builtin_names()
    if name not in names:
        raise UnknownModule(
            f"unknown module {name!r}.{suggest(name, names)} Built-in modules: {', '.join(names)}",
            hint="`lilypad module list` shows them all",
        )
    directory = builtin_modules_dir() / name
    return FetchedModule(
        load_manifest(directory), directory, ModuleSource(SourceKind.BUILTIN, name)
    )


def _is_git_repo(path: Path) -> bool:
    if (path / ".git").exists():
        return True
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise ModuleSourceError("git is not installed; it is needed for git modules") from None
    except subprocess.TimeoutExpired:
        raise ModuleSourceError(f"git {args[0]} took over {GIT_TIMEOUT_S}s; try again") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith("fatal:")]
        detail = (fatal or lines or ["no message"])[0]
        raise ModuleSourceError(f"git {args[0]} failed: {detail}")
    return done.stdout


def _remote_tags(url: str) -> dict[str, str]:
    """Map each tag of a remote to the commit it points at (annotated tags peeled)."""
    tags: dict[str, str] = {}
    for line in _git("ls-remote", "--tags", url).splitlines():
        sha, _, name = line.partition("\t")
        name = name.removeprefix("refs/tags/")
        if name.endswith("^{}"):
            tags[name[:-3]] = sha
        else:
            tags.setdefault(name, sha)
    return tags


def _cache_root() -> Path:
    return get_settings().cache_dir / "modules"


def _tag_record(url: str, tag: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    return _cache_root() / "tags" / key / hashlib.sha256(tag.encode()).hexdigest()[:32]


def _fetch_git(url: str, tag: str) -> FetchedModule:
    if COMMIT.match(tag):
        return _fetch_commit(url, tag)
    record = _tag_record(url, tag)
    known = record.read_text().strip() if record.is_file() else None
    try:
        tags = _remote_tags(url)
    except ModuleSourceError:
        if known and (_cache_root() / "commits" / known).is_dir():
            tags = {tag: known}  # offline: the cached commit for this tag is still immutable
        else:
            raise
    if tag not in tags:
        listed = ", ".join(sorted(tags)) or "none"
        raise UnknownVersion(
            f"{url} has no tag {tag!r}.{suggest(tag, list(tags))} Tags: {listed} (or name a "
            "commit by its 40 hex digits)"
        )
    commit = tags[tag]
    if known and known != commit:
        raise ModuleSourceError(
            f"tag {tag} of {url} now points at {commit[:12]}, but it pointed at {known[:12]} "
            "when first used; a module version must not change",
            hint=f"if you trust the new commit, forget the old one with: rm {record}",
        )
    directory = _cache_root() / "commits" / commit
    if not directory.is_dir():
        _clone(url, commit, directory)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, commit)
    return _load(directory, tag, ModuleSource(SourceKind.GIT, url, commit))


def _fetch_commit(url: str, commit: str) -> FetchedModule:
    """A repository at a commit: immutable, so no tag to remember; cloned once, then offline."""
    directory = _cache_root() / "commits" / commit
    if not directory.is_dir():
        _clone(url, commit, directory)
    return _load(directory, commit, ModuleSource(SourceKind.GIT, url, commit))


def _clone(url: str, commit: str, directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".clone-", dir=directory.parent))
    try:
        _git("clone", "--quiet", "--no-checkout", url, str(staging))
        _git("checkout", "--quiet", "--detach", commit, cwd=staging)
        head = _git("rev-parse", "HEAD", cwd=staging).strip()
        if head != commit:
            raise ModuleSourceError(f"{url}: checked out {head}, expected {commit}")
        shutil.rmtree(staging / ".git")
        os.replace(staging, directory)
    except OSError as exc:
        if not directory.is_dir():  # another process may have won the race; that copy is equal
            raise ModuleSourceError(f"could not store {url} in the cache: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
