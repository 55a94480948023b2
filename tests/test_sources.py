"""Module sources: local folders and git repositories at a tag, cached by commit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lilypad import modules
from lilypad.errors import InvalidManifest, ModuleSourceError, UnknownVersion
from tests.conftest import CliRunner

MANIFEST = """\
name = "hello"
description = "Says hello"
image = "example/hello:{tag}"
entrypoint = ["/bin/sh", "hello.sh"]
timeout_s = 30

[[tunables]]
name = "Name"
type = "string"
env = "NAME"
default = "world"
description = "Who to greet"
"""


def git(*args: str, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "HOME": str(cwd),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def module_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A work tree with a module at tags v1.0 (lightweight) and v1.1 (annotated), and its bare
    clone, which the tests use as the remote."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    for tag, annotated in (("v1.0", False), ("v1.1", True)):
        (work / "lilypad_module.toml").write_text(MANIFEST.format(tag=tag))
        (work / "hello.sh").write_text(f'echo "hello $NAME from {tag}"\n')
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", tag, cwd=work)
        git(*(["tag", "-a", tag, "-m", tag] if annotated else ["tag", tag]), cwd=work)
    bare = tmp_path / "hello.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return work, bare


def test_git_module_at_tag_resolves_and_records_commit(module_repo: tuple[Path, Path]) -> None:
    work, bare = module_repo
    module = modules.resolve(f"{bare}:v1.0")
    commit = git("rev-parse", "v1.0^{commit}", cwd=work)
    assert module.version == "v1.0"
    assert module.source.commit == commit
    assert module.spec.image == "example/hello:v1.0"
    assert (module.directory / "hello.sh").read_text() == 'echo "hello $NAME from v1.0"\n'
    assert module.directory.name == commit  # cached by commit
    spec = modules.render(module, ["Name=lilypad"])
    assert spec.source.commit == commit
    assert spec.env["NAME"] == "lilypad"


def test_annotated_tag_resolves_to_its_commit(module_repo: tuple[Path, Path]) -> None:
    work, bare = module_repo
    module = modules.resolve(f"{bare}:v1.1")
    assert module.source.commit == git("rev-parse", "v1.1^{commit}", cwd=work)
    assert module.spec.image == "example/hello:v1.1"


def test_git_module_is_cloned_once(module_repo: tuple[Path, Path]) -> None:
    _, bare = module_repo
    first = modules.resolve(f"{bare}:v1.0")
    marker = first.directory / "marker"
    marker.write_text("still the same copy")
    second = modules.resolve(f"{bare}:v1.0")
    assert second.directory == first.directory
    assert marker.exists()


def test_moved_tag_is_refused(module_repo: tuple[Path, Path]) -> None:
    work, bare = module_repo
    modules.resolve(f"{bare}:v1.0")
    (work / "hello.sh").write_text('echo "sneaky"\n')
    git("commit", "-qam", "change", cwd=work)
    git("tag", "-f", "v1.0", cwd=work)
    git("push", "-q", "--force", str(bare), "refs/tags/v1.0", cwd=work)
    with pytest.raises(ModuleSourceError, match=r"tag v1\.0 .* now points at"):
        modules.resolve(f"{bare}:v1.0")


def test_unknown_tag_lists_tags(module_repo: tuple[Path, Path]) -> None:
    _, bare = module_repo
    with pytest.raises(UnknownVersion, match=r"v1\.0, v1\.1"):
        modules.resolve(f"{bare}:v2.0")


def test_cached_tag_resolves_when_remote_is_gone(module_repo: tuple[Path, Path]) -> None:
    _, bare = module_repo
    first = modules.resolve(f"file://{bare}:v1.0")
    bare.rename(bare.with_name("moved.git"))
    again = modules.resolve(f"file://{bare}:v1.0")
    assert again.source.commit == first.source.commit


def test_unreachable_remote_is_a_clear_error() -> None:
    with pytest.raises(ModuleSourceError, match="git ls-remote failed"):
        modules.resolve("file:///nonexistent/repo.git:v1.0")


def test_git_reference_without_tag_is_refused(cli: CliRunner) -> None:
    result = cli("module", "show", "github.com/org/repo")
    assert result.exit_code == 2
    assert "needs a tag" in result.stderr


def test_local_folder_module(tmp_path: Path, cli: CliRunner) -> None:
    folder = tmp_path / "hello"
    folder.mkdir()
    (folder / "lilypad_module.toml").write_text(MANIFEST.format(tag="dev"))
    result = cli("module", "render", str(folder), "-i", "Name=you", "--json")
    assert result.exit_code == 0, result.stderr
    spec = json.loads(result.stdout)
    assert spec["source"] == {"kind": "local", "location": str(folder), "commit": None}
    assert spec["version"] == "local"
    assert spec["env"] == {"NAME": "you"}


def test_git_module_through_cli(module_repo: tuple[Path, Path], cli: CliRunner) -> None:
    work, bare = module_repo
    result = cli("module", "render", f"{bare}:v1.1", "--json")
    assert result.exit_code == 0, result.stderr
    spec = json.loads(result.stdout)
    assert spec["source"]["commit"] == git("rev-parse", "v1.1^{commit}", cwd=work)
    assert spec["module"] == f"{bare}:v1.1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[versions."v1"]\nnetwork = "host"', "network"),
        ('[versions."v1"]\noutputs = "/"', "outputs"),
        (
            '[[tunables]]\nname = "P"\ntype = "string"\nenv = "LD_PRELOAD"\ndescription = "x"',
            "reserved",
        ),
        ('[[tunables]]\nname = "P"\ntype = "string"\nenv = "PATH"\ndescription = "x"', "reserved"),
        (
            '[[tunables]]\nname = "Name"\ntype = "string"\nenv = "OTHER"\ndescription = "x"',
            "declared twice",
        ),
        (
            '[[tunables]]\nname = "N2"\ntype = "int"\nenv = "N2"\ndefault = 50\nmax = 10\n'
            'description = "x"',
            "out of range",
        ),
    ],
)
def test_unsafe_or_broken_manifests_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "lilypad_module.toml").write_text(MANIFEST.format(tag="x") + extra + "\n")
    with pytest.raises(InvalidManifest, match=message):
        modules.resolve(str(folder))
