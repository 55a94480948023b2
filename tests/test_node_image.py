"""The node image (top-level ``Dockerfile``) and its deployment (``solver/deploy/compose.yaml``).

No registry answers here, so the image cannot be pulled or built from its public base in CI.
These tests check instead what a build and a deployment depend on, against the real code:

* the wheel built from exactly the files the Dockerfile copies runs the node (contract
  artifacts, built-in modules) with no checkout around it, and has no ML extra;
* every service's command parses with the real CLI (unknown options and bad values fail), its
  environment names only variables the code reads, the network profile lands where
  :func:`lilypad.network.network_path` looks, the solver's database is the PostgreSQL service;
* the provider and mediator, which start job containers on the host's engine, see their data
  and cache dirs at the same path as the host (the docker-out-of-docker rule);
* ``depends_on`` covers every service a service talks to, with a healthcheck behind each
  ``service_healthy``; no key is written in the compose file;
* Debian's ``docker-compose`` accepts the file (``config``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.core
import typer.main
import yaml
from dockerfile_parse import DockerfileParser
from sqlalchemy.engine import make_url

from lilypad.cli import app
from lilypad.config import Settings, get_settings
from lilypad.keys import KEY_ENV
from lilypad.network import NetworkProfile, load_network, network_path
from lilypad.storage.backends import StorageSettings
from resource_provider.executors import ExecutorKind
from resource_provider.executors.base import tiny_weights_cache

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "solver" / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
PROFILE_EXAMPLE = DEPLOY / "network.example.toml"
SECRETS_EXAMPLE = DEPLOY / "secrets.example"
IN_CI = os.environ.get("CI") == "true"

#: The node's roles: the profile fields each one needs (lilypad/cli/provider.py `_require` and
#: `open_storage(api=profile.ipfs_api_url)`); a service needing one must depend on its service.
ROLES = {
    "solver": (),
    "resource-provider": ("solver_url", "ipfs_api_url"),
    "mediator": ("solver_url", "ipfs_api_url"),
    "jobcreator": ("solver_url",),
}
#: Roles that start job containers on a Docker Engine.
EXECUTOR_ROLES = {"resource-provider", "mediator"}
#: Variables read by libraries rather than by lilypad: libpq (the solver's PostgreSQL password)
#: and the docker SDK.
LIBRARY_ENV = {"PGPASSWORD", "DOCKER_HOST"}
#: Variables the image sets for Python itself.
PYTHON_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


# --- the Dockerfile -------------------------------------------------------------------------------


@functools.cache
def _dockerfile() -> DockerfileParser:
    # NOTE: read-only use: DockerfileParser writes to `path` if its content is ever assigned.
    return DockerfileParser(path=str(DOCKERFILE))


def _stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, one list per ``FROM`` stage."""
    stages: list[list[dict[str, Any]]] = []
    for item in _dockerfile().structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages and item["instruction"] != "COMMENT":
            stages[-1].append(item)
    return stages


def _instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [item["value"] for item in stage if item["instruction"] == name]


def _copy_args(value: str) -> tuple[dict[str, str], list[str], str]:
    """``COPY [--flag=v...] SRC... DEST`` (shell or JSON form) -> flags, sources, destination."""
    words = json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


def _context_copies() -> list[tuple[str, str, str]]:
    """(source, destination, workdir) of every COPY from the build context, in order."""
    copies = []
    for stage in _stages():
        workdir = "/"
        for item in stage:
            if item["instruction"] == "WORKDIR":
                workdir = str(PurePosixPath(workdir) / item["value"])
            elif item["instruction"] in ("COPY", "ADD"):
                flags, sources, dest = _copy_args(item["value"])
                if "from" not in flags:
                    copies.extend((source, dest, workdir) for source in sources)
    return copies


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _image_env() -> dict[str, str]:
    """The ENV of the final stage: what every container of the image starts with."""
    return dict(_dockerfile().envs)


def test_every_copied_path_exists_and_the_wheel_needs_nothing_else() -> None:
    copies = _context_copies()
    assert copies, "the Dockerfile copies nothing from the build context"
    for source, _, _ in copies:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the build context {ROOT}"
        assert path.resolve().is_relative_to(ROOT), f"COPY {source} leaves the build context"
    copied = {PurePosixPath(source).parts[0] for source, _, _ in copies}
    project = _pyproject()
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"], *wheel["packages"]}
    needed |= {PurePosixPath(src).parts[0] for src in wheel.get("force-include", {})}
    assert needed <= copied, f"the wheel is built from {sorted(needed - copied)} too: COPY them"


def test_the_image_installs_the_project_without_the_ml_extra() -> None:
    build, *_, final = _stages()
    installs = [run for run in _instructions(build, "RUN") if "pip install" in run]
    assert installs, "no pip install in the build stage"
    extras: set[str] = set()
    for run in installs:
        assert "torch" not in run, run
        assert " -e " not in f" {run} ", "an editable install points at /src, absent at run time"
        for match in re.finditer(r"\.\[([a-z0-9_,-]+)\]", run):
            extras |= set(match.group(1).split(","))
    known = set(_pyproject()["project"]["optional-dependencies"])
    assert extras <= known, f"unknown extras {sorted(extras - known)}"
    assert "ml" not in extras, "the node image must not carry torch (the `ml` extra)"
    # compose.yaml runs the solver on PostgreSQL: the driver must be in the image.
    assert "postgres" in extras
    # The runtime stage gets the venv, not the sources.
    assert any("--from=build" in value for value in _instructions(final, "COPY"))


def test_entrypoint_user_volume_and_env_of_the_runtime_stage(cli: Any) -> None:
    *_, final = _stages()
    (entrypoint,) = _instructions(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == list(_pyproject()["project"]["scripts"])
    (cmd,) = _instructions(final, "CMD")
    default = json.loads(cmd)
    result = cli(*default)
    assert result.exit_code == 0, result.stderr
    assert all(role in result.stdout for role in ROLES), result.stdout
    users = _instructions(final, "USER")
    assert users, "the image should not run as root"
    assert users[-1] not in ("root", "0"), "the image should not run as root"
    env = _image_env()
    unknown = set(env) - _env_names() - PYTHON_ENV
    assert not unknown, f"the image sets variables nothing reads: {sorted(unknown)}"
    data_dir = env["LILYPAD_DATA_DIR"]
    volumes = [v for value in _instructions(final, "VOLUME") for v in json.loads(value)]
    assert data_dir in volumes, f"LILYPAD_DATA_DIR {data_dir} is not a VOLUME"
    assert env["LILYPAD_CACHE_DIR"].startswith(data_dir + "/")
    # A role-specific probe would mark the other roles unhealthy; compose.yaml has one per role.
    assert not _instructions(final, "HEALTHCHECK")
    installs = " ".join(_instructions(final, "RUN"))
    assert "bubblewrap" in installs, "the process executor's sandbox (bwrap) is not installed"


def _stage_build_context(dest: Path) -> Path:
    """Lay out what the build stage's COPYs produce; return its WORKDIR (the install source)."""
    workdirs = set()
    for source, target, workdir in _context_copies():
        workdirs.add(workdir)
        src = ROOT / source
        into = dest / PurePosixPath(workdir, target).relative_to("/")
        if src.is_dir():  # as docker does: the folder's contents, not the folder
            shutil.copytree(src, into, dirs_exist_ok=True)
        elif target.endswith("/") or target in (".", "./"):
            into.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into / src.name)
        else:
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into)
    (workdir,) = workdirs
    return dest / PurePosixPath(workdir).relative_to("/")


@pytest.mark.slow
def test_the_wheel_from_the_copied_files_runs_the_node_on_its_own(tmp_path: Path) -> None:
    source = _stage_build_context(tmp_path / "context")
    # A deployment's keys beside compose.yaml (git-ignored, but `COPY solver/` takes them).
    secrets = source / "solver" / "deploy" / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "provider.env").write_text("WEB3_PRIVATE_KEY=0x" + "11" * 32 + "\n")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("lilypad-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert not [n for n in names if n.endswith(".pyc")]
    leaked = [n for n in names if n.startswith("solver/deploy/")]
    assert not leaked, f"the deployment's files (keys!) are in the wheel: {leaked}"
    # The installed code alone, away from the checkout: artifacts and built-in modules come
    # from the package, not from ROOT.
    probe = (
        "import json, lilypad\n"
        "from lilypad.chain.abi import CONTRACT_NAMES, load_artifact\n"
        "from lilypad.modules.sources import builtin_modules_dir, builtin_names\n"
        "print(json.dumps({'file': lilypad.__file__, 'modules': str(builtin_modules_dir()),\n"
        "  'names': builtin_names(),\n"
        "  'abis': {n: len(load_artifact(n).abi) for n in CONTRACT_NAMES}}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LILYPAD_MODULES")}
    env["PYTHONPATH"] = str(tmp_path / "site")
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    site = str(tmp_path / "site")
    assert seen["file"].startswith(site), seen
    assert seen["modules"].startswith(site), seen
    builtin = sorted(p.parent.name for p in (ROOT / "module").glob("*/lilypad_module.toml"))
    assert seen["names"] == builtin
    assert all(count > 0 for count in seen["abis"].values()), seen["abis"]
    render = subprocess.run(
        [sys.executable, "-m", "lilypad", "module", "render", "sdxl:v0.9-lilypad1", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert render.returncode == 0, render.stderr
    assert json.loads(render.stdout)["module"].startswith("sdxl:")


# --- the compose file -----------------------------------------------------------------------------


@functools.cache
def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _is_node(service: dict[str, Any]) -> bool:
    """Built from the top-level Dockerfile."""
    build = service.get("build")
    if not isinstance(build, dict):
        return False
    context = (DEPLOY / build["context"]).resolve()
    return context == ROOT and build.get("dockerfile", "Dockerfile") == DOCKERFILE.name


NODE_SERVICES = sorted(name for name, s in _services().items() if _is_node(s))


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _env_file_names(service: dict[str, Any]) -> dict[str, str]:
    """The variables of the service's env files, read from their committed examples."""
    files = service.get("env_file") or []
    names: dict[str, str] = {}
    for entry in [files] if isinstance(files, str) else files:
        path = PurePosixPath(entry if isinstance(entry, str) else entry["path"])
        assert path.parts[0] == "secrets", f"env file {path} is not under secrets/"
        example = SECRETS_EXAMPLE.joinpath(*path.parts[1:])
        assert example.is_file(), f"env file {path} has no example {example}"
        for line in example.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                names[key.strip()] = value.strip()
    return names


def _container_env(service: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees (env file values are secrets: empty here)."""
    return {**_image_env(), **_env_file_names(service), **_environment(service)}


# NOTE: typer 0.29 carries its own copy of click (typer._click): commands are typed loosely here.
@functools.cache
def _cli() -> typer.core.TyperGroup:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    return command


def _walk(command: Any) -> Iterator[Any]:
    yield command
    if isinstance(command, typer.core.TyperGroup):
        for sub in command.commands.values():
            yield from _walk(sub)


@functools.cache
def _env_names() -> set[str]:
    """Every variable lilypad reads: its settings, its options' envvars, keys, config dir."""
    names = {f"LILYPAD_{field.upper()}" for field in Settings.model_fields}
    names |= {f"LILYPAD_{field.upper()}" for field in StorageSettings.model_fields}
    for command in _walk(_cli()):
        for param in command.params:
            envvar = param.envvar
            names |= {envvar} if isinstance(envvar, str) else set(envvar or ())
    return names | {KEY_ENV, "LILYPAD_CONFIG_DIR"} | LIBRARY_ENV


def _parse(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse ``lilypad ARGV`` as the CLI would (options, types, ranges, envvars); no run."""
    for key in list(os.environ):
        if key.startswith("LILYPAD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    command: Any = _cli()
    ctx = command.make_context("lilypad", list(argv))
    while isinstance(command, typer.core.TyperGroup):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None, argv
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return ctx


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _role(service: dict[str, Any]) -> str:
    return _command(service)[0]


def _profile() -> NetworkProfile:
    return NetworkProfile.model_validate(tomllib.loads(PROFILE_EXAMPLE.read_text()))


def _service_of_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname in _services(), f"{url}: {parts.hostname} is not a compose service"
    return parts.hostname, parts.port or 80


def _volumes(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume in short syntax."""
    out = []
    for volume in service.get("volumes") or []:
        source, target, *mode = str(volume).split(":")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


def test_compose_builds_every_node_service_from_the_top_level_dockerfile() -> None:
    assert set(ROLES) <= {_role(_services()[name]) for name in NODE_SERVICES}
    images = {_services()[name]["image"] for name in NODE_SERVICES}
    assert len(images) == 1, f"one node image for every role, not {sorted(images)}"


@pytest.mark.parametrize("name", NODE_SERVICES)
def test_each_node_service_runs_a_valid_command(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _services()[name]
    ctx = _parse(_command(service), _container_env(service), monkeypatch)
    assert ctx.info_name in ROLES, f"{name} runs `lilypad {ctx.info_name}`, not a node role"


@pytest.mark.parametrize("name", NODE_SERVICES)
def test_each_node_service_sets_only_variables_the_code_reads(name: str) -> None:
    service = _services()[name]
    names = set(_environment(service)) | set(_env_file_names(service))
    unknown = names - _env_names()
    assert not unknown, f"{name} sets {sorted(unknown)}, which nothing reads"
    assert KEY_ENV in _env_file_names(service), f"{name} gets no {KEY_ENV} from its env file"


@pytest.mark.parametrize("name", NODE_SERVICES)
def test_each_node_service_reads_the_mounted_profile(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = _services()[name]
    env = _container_env(service)
    ctx = _parse(_command(service), env, monkeypatch)
    network = ctx.params["network"]
    where = str(network_path(network))  # under the container's LILYPAD_CONFIG_DIR
    mounts = {target: (source, mode) for source, target, mode in _volumes(service)}
    assert where in mounts, f"{name} reads {where}, which is not mounted"
    source, mode = mounts[where]
    assert mode == "ro", f"{name} may write its network profile"
    assert (DEPLOY / source).name == "network.toml"
    # The example, put where the service looks, loads as that network.
    monkeypatch.setenv("LILYPAD_CONFIG_DIR", str(tmp_path))
    path = network_path(network)
    path.parent.mkdir(parents=True)
    shutil.copy(PROFILE_EXAMPLE, path)
    assert load_network(network).name == network


def test_the_profile_names_the_services_and_the_ipfs_api_stays_private() -> None:
    profile = _profile()
    assert profile.solver_url
    assert profile.ipfs_api_url
    solver, port = _service_of_url(profile.solver_url)
    listen = next(a for a in _command(_services()[solver]) if a.startswith("--listen="))
    assert listen.endswith(f":{port}"), f"the solver listens on {listen}, the profile says {port}"
    kubo, api_port = _service_of_url(profile.ipfs_api_url)
    image = _services()[kubo]["image"]
    assert re.fullmatch(r"ipfs/kubo:v\d+\.\d+\.\d+", image), f"kubo is not pinned: {image}"
    for mapping in _services()[kubo].get("ports") or []:
        container_port = str(mapping).split(":")[-1].split("/")[0]
        assert container_port != str(api_port), f"the Kubo RPC API is published: {mapping}"
    if urlsplit(profile.rpc_url).hostname == "host.docker.internal":
        for name in NODE_SERVICES:
            hosts = _services()[name].get("extra_hosts") or []
            assert "host.docker.internal:host-gateway" in hosts, name


def test_the_solver_database_is_the_postgres_service(monkeypatch: pytest.MonkeyPatch) -> None:
    (name,) = [n for n in NODE_SERVICES if _role(_services()[n]) == "solver"]
    solver = _services()[name]
    ctx = _parse(_command(solver), _container_env(solver), monkeypatch)
    url = make_url(ctx.params["db"])
    assert url.drivername == "postgresql+psycopg"
    assert url.password is None, "the database password is written in the compose file"
    assert url.host in _services(), f"--db names host {url.host}, not a service"
    postgres = _services()[url.host]
    assert str(postgres["image"]).startswith("postgres:")
    env = _environment(postgres)
    assert (url.username, url.database) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    assert url.port in (None, 5432)
    assert "POSTGRES_PASSWORD" in _env_file_names(postgres)
    assert "PGPASSWORD" in _env_file_names(solver), "libpq gets the password from PGPASSWORD"
    assert solver["depends_on"][url.host]["condition"] == "service_healthy"


def _covering_mount(service: dict[str, Any], path: Path) -> tuple[str, str]:
    best: tuple[str, str] | None = None
    for source, target, _ in _volumes(service):
        if path.is_relative_to(target) and (best is None or len(target) > len(best[1])):
            best = (source, target)
    assert best is not None, f"{path} is on no volume"
    return best


@pytest.mark.parametrize(
    "name", [n for n in NODE_SERVICES if _role(_services()[n]) in EXECUTOR_ROLES]
)
def test_job_runners_see_their_dirs_at_the_hosts_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's engine resolves a job's bind mounts (outputs, tiny weights) on the host."""
    service = _services()[name]
    ctx = _parse(_command(service), _container_env(service), monkeypatch)
    assert ctx.params["executor"] is ExecutorKind.DOCKER, f"{name} should use the docker executor"
    targets = {target: source for source, target, _ in _volumes(service)}
    assert targets.get("/var/run/docker.sock") == "/var/run/docker.sock"
    assert service.get("user") in ("root", "0"), f"{name} cannot open root's docker socket"
    data_dir = ctx.params["data_dir"] or get_settings().data_dir
    for path in (Path(data_dir), tiny_weights_cache(ExecutorKind.DOCKER)):
        source, target = _covering_mount(service, path)
        assert source == target, f"{name}: {path} is {source}:{target}, not the same path"
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    gpus = any("gpu" in d.get("capabilities", []) for d in devices)
    if ctx.params.get("gpus", "auto") != "0":
        assert gpus, f"{name} offers GPUs but reserves none"


def _needs(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The services this one talks to: its database, and the profile's URLs its role uses."""
    if not _is_node(service):
        return set()
    ctx = _parse(_command(service), _container_env(service), monkeypatch)
    needs = set()
    if ctx.params.get("db"):
        needs.add(str(make_url(ctx.params["db"]).host))
    for field in ROLES[str(ctx.info_name)]:
        needs.add(_service_of_url(getattr(_profile(), field))[0])
    return needs


def test_depends_on_has_no_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _services()
    graph = {name: dict(s.get("depends_on") or {}) for name, s in services.items()}
    for name, deps in graph.items():
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on {dep}, which is not a service"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck for {name}"
            if not services[name].get("profiles"):
                assert not services[dep].get("profiles"), f"{name} needs {dep} from a profile"
        missing = _needs(services[name], monkeypatch) - set(deps)
        assert not missing, f"{name} talks to {sorted(missing)} but does not depend on them"
    # No cycles: compose could never start them.
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {n for n, deps in graph.items() if n not in done and set(deps) <= done}
        assert ready, f"depends_on has a cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_healthchecks_probe_what_the_services_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    from solver.app import create_app

    # only the routes are read: a stand-in solver with no store, whose changes nobody follows
    stand_in = types.SimpleNamespace(
        store=None, add_listener=lambda _listener: None, add_deal_listener=lambda _listener: None
    )
    routes = {getattr(r, "path", None) for r in create_app(stand_in).routes}  # type: ignore[arg-type]
    for name in NODE_SERVICES:
        service = _services()[name]
        if "healthcheck" not in service:
            continue
        test = " ".join(service["healthcheck"]["test"])
        url = urlsplit(re.findall(r"http://[^'\" ]+", test)[0])
        ctx = _parse(_command(service), _container_env(service), monkeypatch)
        if ctx.info_name == "solver":
            assert ctx.params["listen"] == f"0.0.0.0:{url.port}"
            assert url.path in routes, f"the solver serves no {url.path}"
        else:
            assert ctx.params["metrics"].endswith(f":{url.port}"), name
            assert url.path == "/metrics", name


def test_no_key_or_password_is_written_in_the_deployment() -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"0x[0-9a-fA-F]{64}", text), "a private key is in compose.yaml"
    for name, service in _services().items():
        written = set(_environment(service)) & {KEY_ENV, "PGPASSWORD", "POSTGRES_PASSWORD"}
        assert not written, f"{name} writes {sorted(written)} in compose.yaml: use its env file"
    for example in SECRETS_EXAMPLE.iterdir():
        for line in example.read_text().splitlines():
            if not line.startswith("#") and "=" in line:
                assert line.endswith("="), f"{example} holds a value: {line.split('=')[0]}"
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert "/secrets/" in ignored
    assert "/network.toml" in ignored


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        message = "Debian's docker-compose is not installed (apt-get install docker-compose)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return exe


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    exe = _docker_compose()
    deploy = tmp_path / "solver" / "deploy"
    shutil.copytree(DEPLOY, deploy)
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    shutil.copytree(deploy / "secrets.example", deploy / "secrets")
    shutil.copy(deploy / "network.example.toml", deploy / "network.toml")
    # docker-compose 1.29 predates the top-level `name` (Compose v2); everything else it knows.
    data = dict(_compose())
    data.pop("name", None)
    (deploy / "compose.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    run = subprocess.run(
        [exe, "-f", "compose.yaml", "--profile", "cpu", "--profile", "bridge", "config"],
        cwd=deploy, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    resolved = yaml.safe_load(run.stdout)
    assert set(resolved["services"]) == set(_services())
