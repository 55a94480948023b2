"""Lilypad's module format: git repositories with a ``lilypad_module.json.tmpl``, rendered safely.

Every repository here is a local git repository in Lilypad's format (no network is needed): a
bare clone is the remote, as in tests/test_sources.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lilypad import modules
from lilypad.errors import InputError, InvalidTunable, ModuleSourceError, TemplateError
from lilypad.modules.gotemplate import Template, go_json_string, js_escape
from tests.conftest import CliRunner
from tests.test_sources import git

# Lilypad's SDXL module as its repository has it (PromptEnv passes a whole NAME=value), with a
# subst, a js and a Parameters input besides.
SDXL = """\
{
    "machine": {"gpu": 1, "cpu": 8000, "ram": 16000, "gpus": [{"vram": 24576}]},
    "job": {
        "APIVersion": "V1beta1",
        "Spec": {
            "Deal": {"Concurrency": 1},
            "Docker": {
                "Entrypoint": ["bash", "-c", "python3 inference.py 2>/dev/null"],
                "Parameters": [
                    {{- if .Steps }}"--steps", {{ .Steps }}{{ else }}"--steps", "30"{{ end -}}
                ],
                "Image": "quay.io/lukemarsden/sdxl:v0.9-lilypad1",
                "EnvironmentVariables": [
                    {{- /* Lilypad's own: the user's whole NAME=value */ -}}
                    {{if .PromptEnv}}{{.PromptEnv}}{{else}}"PROMPT=a swarm of bees"{{end}},
                    {{if .Seed}}"{{ subst "RANDOM_SEED=%s" .Seed }}"{{else}}"RANDOM_SEED=42"{{end}},
                    "INPUT={{ js .Input }}",
                    "OUTPUT_DIR=/outputs/",
                    "HF_HUB_OFFLINE=1"
                ]
            },
            "Engine": "Docker",
            "Network": {"Type": "None"},
            "Outputs": [{"Name": "outputs", "StorageSource": "IPFS", "path": "/outputs"}],
            "PublisherSpec": {"Type": "IPFS"},
            "Resources": {"GPU": "1"},
            "Timeout": 1800,
            "Verifier": "Noop"
        }
    }
}
"""

# A module that runs here: busybox writes the message to /outputs.
LILYSAY = """\
{
  "machine": {"gpu": 0, "cpu": 500, "ram": 256},
  "job": {
    "APIVersion": "V1beta1",
    "Spec": {
      "EngineSpec": {
        "Type": "docker",
        "Params": {
          "Image": "lilypad/lilysay-test:v0.1.0",
          "Entrypoint": [
            "/bin/sh", "-c",
            "printf '%s\\\\n' \\"$MESSAGE\\" > /outputs/said.txt; pwd > /outputs/cwd.txt; echo said"
          ],
          "WorkingDirectory": "/tmp",
          "EnvironmentVariables": [
            {{ if .Message }}"{{ subst "MESSAGE=%s" .Message }}"{{ else }}"MESSAGE=hello"{{ end }}
          ]
        }
      },
      "Network": {"Type": "None"},
      "Outputs": [{"Name": "outputs", "Path": "/outputs"}],
      "Timeout": 60
    }
  }
}
"""

DOCKERFILE = "FROM lilypad/busybox:local\nUSER 65534:65534\n"


def make_repo(root: Path, name: str, template: str, **files: str) -> tuple[Path, Path]:
    """A work tree in Lilypad's format, tagged v0.1.0, and its bare clone (the remote)."""
    work = root / f"{name}-work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "lilypad_module.json.tmpl").write_text(template)
    for file, text in files.items():
        (work / file).write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "v0.1.0", cwd=work)
    git("tag", "v0.1.0", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return work, bare


def module_of(tmp_path: Path, template: str, **files: str) -> modules.ResolvedModule:
    _, bare = make_repo(tmp_path, "lilypad-module-x", template, **files)
    return modules.resolve(f"{bare}:v0.1.0")


@pytest.fixture
def sdxl(tmp_path: Path) -> modules.ResolvedModule:
    return module_of(tmp_path, SDXL)


# --- the interpreter -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data", "out"),
    [
        ("a {{- .X -}} b", {"X": "1"}, "a1b"),
        ("{{ .Missing }}", {}, "<no value>"),
        ("{{ if .X }}y{{ else if .Y }}z{{ else }}n{{ end }}", {"Y": "1"}, "z"),
        ('{{ or .X "d" }}|{{ and .X .Y }}|{{ not .X }}', {"Y": "v"}, "d|<no value>|true"),
        ('{{ if eq .X "a" "b" }}in{{ end }}{{ if ne .X "b" }}!{{ end }}', {"X": "b"}, "in"),
        ('{{ printf "%s-%d-%v" "a" 3 true }}', {}, "a-3-true"),
        ('{{ printf "%d" "a" }}{{ printf "%s" }}', {}, "%!d(string=a)%!s(MISSING)"),
        ('{{ subst "P=%s" .X }}', {"X": '"a\\"b"'}, 'P=a"b'),
        ("{{ .X | js }}", {"X": "<a='b'>"}, "\\u003Ca\\u003D\\'b\\'\\u003E"),
        ("{{/* a comment */}}x{{- /* and */ -}} y", {}, "xy"),
        ('{{ "}}" }}', {}, "}}"),
    ],
)
def test_go_template_semantics(text: str, data: dict[str, str], out: str) -> None:
    assert Template.parse(text, "t").execute(data) == out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{\n  "a": {{ if .X }}1\n}', r"t:2:10: unexpected EOF: \{\{if\}\} without \{\{end\}\}"),
        ("{\n  {{ mul 2 .X }}", r't:2:6: function "mul" not defined'),
        ("x\n{{ end }}", r"t:2:3: unexpected \{\{end\}\}"),
        ('{{ .X "a }}', r"t:1:7: unterminated quoted string"),
        ("{{ range .X }}{{ end }}", r"t:1:4: \{\{range\}\} is not supported"),
        ("{{ .X", r"t:1:1: unclosed action"),
        ("{{ .X | .Y }}", r"t:1:9: non executable command"),
        ("{{ if .X }}a{{ else }}b{{ else }}c{{ end }}", r"expected \{\{end\}\} after \{\{else\}\}"),
    ],
)
def test_a_malformed_template_names_line_and_column(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        Template.parse(text, "t")


def test_go_escaping_matches_go() -> None:
    # json.Marshal is HTML-safe; JSEscapeString escapes = and uses upper-case hex
    assert go_json_string('a"b\\<&>\u2028') == '"a\\"b\\\\\\u003c\\u0026\\u003e\\u2028"'
    assert js_escape('"x"=<y>\u00e9') == '\\"x\\"\\u003D\\u003Cy\\u003E\u00e9'


# --- the format ----------------------------------------------------------------------------------


def test_lilypad_sdxl_module_renders_like_lilypad_means_it(sdxl: modules.ResolvedModule) -> None:
    spec = modules.render(sdxl, ["PromptEnv=PROMPT=a fox", "Seed=7", "Input=x", "Steps=12"])
    assert spec.image == "quay.io/lukemarsden/sdxl:v0.9-lilypad1"
    assert spec.entrypoint == ("bash", "-c", "python3 inference.py 2>/dev/null", "--steps", "12")
    assert spec.env == {
        "PROMPT": "a fox",
        "RANDOM_SEED": "7",
        "INPUT": '"x"',  # js of the JSON-encoded input, as Lilypad renders it
        "OUTPUT_DIR": "/outputs/",
        "HF_HUB_OFFLINE": "1",
    }
    assert spec.machine.model_dump() == {
        "gpus": 1, "vram_gb": 24.0, "cpus": 8.0, "ram_gb": 16000 / 1024, "disk_gb": 1.0,
    }  # fmt: skip
    assert (spec.network, spec.outputs, spec.timeout_s) == ("none", "/outputs", 1800)
    assert spec.verification.method == "exact"
    assert spec.tunables == {"Steps": "12", "PromptEnv": "PROMPT=a fox", "Seed": "7", "Input": "x"}
    assert spec.source.commit is not None
    assert spec.version == "v0.1.0"


def test_inputs_left_out_take_the_templates_else_branch(sdxl: modules.ResolvedModule) -> None:
    spec = modules.render(sdxl)
    assert spec.env["PROMPT"] == "a swarm of bees"
    assert spec.env["RANDOM_SEED"] == "42"
    assert spec.entrypoint[-2:] == ("--steps", "30")
    assert spec.tunables == {}
    assert modules.render(sdxl).spec_hash == spec.spec_hash  # same inputs, same bytes


def test_a_quote_cannot_break_out_of_its_string(sdxl: modules.ResolvedModule) -> None:
    # In Lilypad this value ends the JSON string and adds a variable of its own.
    evil = '1", "LD_PRELOAD=/tmp/evil.so'
    spec = modules.render(sdxl, [f"Seed={evil}"])
    assert spec.env["RANDOM_SEED"] == evil
    assert "LD_PRELOAD" not in spec.env
    assert set(spec.env) == set(modules.render(sdxl).env)


def test_a_whole_variable_input_may_set_only_the_name_the_template_fixes(
    sdxl: modules.ResolvedModule,
) -> None:
    for value in ["PATH=/evil", "LD_PRELOAD=x", "prompt=x", "no equals sign"]:
        with pytest.raises(InvalidTunable, match=r"PromptEnv=.*may only set PROMPT"):
            modules.render(sdxl, [f"PromptEnv={value}"])
    assert modules.render(sdxl, ["PromptEnv=PROMPT=a=b"]).env["PROMPT"] == "a=b"


def test_a_whole_variable_without_a_fixed_name_is_refused(tmp_path: Path) -> None:
    module = module_of(tmp_path, SDXL.replace('{{else}}"PROMPT=a swarm of bees"', '{{else}}"X"'))
    with pytest.raises(InvalidTunable, match=r"PromptEnv=.*would name an environment variable"):
        modules.render(module, ["PromptEnv=PROMPT=hi"])


@pytest.mark.parametrize(
    ("change", "given", "message"),
    [
        (('"quay.io/lukemarsden/sdxl:v0.9-lilypad1"',
          '"example/x:{{ if .Tag }}{{ subst "%s" .Tag }}{{ else }}v1{{ end }}"'),
         "Tag=v1", r"Tag='v1': refused: the value would be written into the job's image"),
        (('"bash", "-c"', '"bash", {{ if .Cmd }}{{ .Cmd }}, {{ end }}"-c"'),
         "Cmd=ls", r"Cmd='ls': refused: .* into the job's entrypoint"),
        (('"Timeout": 1800', '"Timeout": {{ if .T }}{{ subst "%s" .T }}{{ else }}1{{ end }}'),
         "T=1", r"T: lilypad_module.json.tmpl writes it outside a JSON string at "
                r"lilypad_module.json.tmpl:\d+:\d+"),
        (('"quay.io/lukemarsden/sdxl:v0.9-lilypad1"',
          '{{ if and .Model (eq .Model "\\"evil\\"") }}"evil/img"{{ else }}"quay.io/lukemarsden/sdxl:v0.9-lilypad1"{{ end }}'),  # noqa: E501
         "Model=evil", r"Model='evil': refused: the value changes the document's structure"),
        (('"Resources": {"GPU": "1"}', '"Resources": {"GPU": {{ if .G }}"2"{{ else }}"1"{{ end }}}'),  # noqa: E501
         "G=x", r"G='x': refused: the value changes the job's machine when given"),
    ],
)  # fmt: skip
def test_no_input_reaches_the_fixed_fields(
    tmp_path: Path, change: tuple[str, str], given: str, message: str
) -> None:
    module = module_of(tmp_path, SDXL.replace(*change))
    with pytest.raises(InvalidTunable, match=message):
        modules.render(module, [given])
    modules.render(module)  # left out, the template alone decides: fine


def test_model_other_values_pass(tmp_path: Path) -> None:
    branch = '{{ if and .Model (eq .Model "\\"evil\\"") }}"evil/img"{{ else }}"ok/img"{{ end }}'
    change = ('"quay.io/lukemarsden/sdxl:v0.9-lilypad1"', branch)
    module = module_of(tmp_path, SDXL.replace(*change))
    assert modules.render(module, ["Model=fine"]).image == "ok/img"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('"Type": "None"', '"Type": "Full"'), r"asks for network 'Full'; jobs here run with no"),
        (('"path": "/outputs"', '"path": "/"'), r"publishes '/'; a job's results are what it"),
        (('"Engine": "Docker"', '"Engine": "Wasm"'), r"Engine 'Wasm'; only Docker runs here"),
        (('"OUTPUT_DIR=/outputs/"', '"PATH=/tmp"'), r"environment variable PATH is reserved"),
        (('"Entrypoint": ["bash", "-c", "python3 inference.py 2>/dev/null"],', ""),
         r"sets no Entrypoint"),
        (('"Timeout": 1800', '"Timeout": "long"'), r"Timeout 'long': expected whole seconds"),
        (('"HF_HUB_OFFLINE=1"', '"HF_HUB_OFFLINE=1", "OUTPUT_DIR=x"'), r"sets variable OUTPUT_DIR twice"),  # noqa: E501
    ],
)  # fmt: skip
def test_a_template_asking_for_what_jobs_here_cannot_have_is_refused(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(TemplateError, match=message):
        module_of(tmp_path, SDXL.replace(*change))


# --- the property: no value, however crafted, changes anything but its own strings ------------

VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="\"\\}{=\n\t'<>&%$`/ ab\u2028\u00e9\U0001f600", max_size=40),
    st.sampled_from(['1", "LD_PRELOAD=x', "}}", "{{ .Seed }}", '"', "\\", "%s%d%v", "a=b=c"]),
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=VALUES, prompt=VALUES, steps=VALUES, input_=VALUES)
def test_no_value_changes_the_structure_or_the_fixed_fields(
    sdxl: modules.ResolvedModule, seed: str, prompt: str, steps: str, input_: str
) -> None:
    baseline = modules.render(sdxl)
    inputs = [f"Seed={seed}", f"PromptEnv=PROMPT={prompt}", f"Steps={steps}", f"Input={input_}"]
    printable = all(c.isprintable() or c == " " for c in seed + prompt + steps + input_)
    try:
        spec = modules.render(sdxl, inputs)
    except InputError:
        # refused only for what every tunable refuses: control characters and the like
        assert not printable
        return
    assert (spec.image, spec.machine, spec.timeout_s) == (
        baseline.image, baseline.machine, baseline.timeout_s,
    )  # fmt: skip
    assert spec.entrypoint == (*baseline.entrypoint[:3], "--steps", steps)
    assert (spec.network, spec.outputs) == ("none", "/outputs")
    assert set(spec.env) == set(baseline.env)
    assert spec.env["PROMPT"] == prompt
    assert spec.env["RANDOM_SEED"] == seed  # given, even empty: `if .Seed` sees `""`, as in Go
    assert spec.env["INPUT"] == go_json_string(input_)
    assert spec.env["OUTPUT_DIR"] == "/outputs/"


# --- tunables ------------------------------------------------------------------------------------


def test_module_show_lists_the_templates_inputs(tmp_path: Path, cli: CliRunner) -> None:
    _, bare = make_repo(tmp_path, "lilypad-module-sdxl", SDXL)
    result = cli("module", "show", f"{bare}:v0.1.0", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    tunables = {t["name"]: t for t in shown["tunables"]}
    assert list(tunables) == ["Steps", "PromptEnv", "Seed", "Input"]
    assert {t["type"] for t in tunables.values()} == {"string"}
    assert tunables["PromptEnv"]["default"] == "PROMPT=a swarm of bees"
    assert tunables["Seed"]["default"] == "RANDOM_SEED=42"
    assert tunables["Input"]["default"] is None
    assert shown["name"] == "sdxl"
    assert shown["image"] == "quay.io/lukemarsden/sdxl:v0.9-lilypad1"
    assert shown["format"] == "lilypad template"
    human = cli("module", "show", f"{bare}:v0.1.0")
    assert "PromptEnv" in human.stdout
    assert "in the template" in human.stdout


TYPES = """\
name = "sdxl-typed"
description = "SDXL, typed"
verification = { method = "perceptual", tolerance = 2.0 }

[[tunables]]
name = "Seed"
type = "int"
min = 0
max = 100
default = 3
description = "The seed"
"""


def test_a_toml_beside_the_template_types_its_inputs(tmp_path: Path) -> None:
    module = module_of(tmp_path, SDXL, **{"lilypad_module.toml": TYPES})
    assert module.name == "sdxl-typed"
    with pytest.raises(InvalidTunable, match=r"Seed='abc' is not an integer"):
        modules.render(module, ["Seed=abc"])
    with pytest.raises(InvalidTunable, match=r"Seed=101 is out of range"):
        modules.render(module, ["Seed=101"])
    spec = modules.render(module)
    assert spec.env["RANDOM_SEED"] == "3"  # a typed default is always given
    assert spec.tunables == {"Seed": 3}
    assert spec.verification.method == "perceptual"
    assert modules.render(module, ["Seed=50"]).env["RANDOM_SEED"] == "50"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('image = "x"\n', r"may set only description, name, tunables, verification, not image"),
        ('[[tunables]]\nname = "Nope"\ntype = "string"\n', r"tunable 'Nope' is not used by"),
        ('[[tunables]]\nname = "Seed"\ntype = "int"\nenv = "SEED"\n', r"has no env"),
        ('[[tunables]]\nname = "Seed"\ntype = "image"\n', r"type image is not available"),
    ],
)
def test_a_bad_types_file_is_refused(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        module_of(tmp_path, SDXL, **{"lilypad_module.toml": toml})


def test_unknown_input_is_refused_with_the_close_name(sdxl: modules.ResolvedModule) -> None:
    with pytest.raises(InvalidTunable, match=r"no tunable 'seed'. Did you mean 'Seed'\?"):
        modules.render(sdxl, ["seed=1"])


# --- references ----------------------------------------------------------------------------------


def test_short_name_resolves_through_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bare = make_repo(tmp_path, "lilypad-module-lilysay", LILYSAY)
    bare.rename(tmp_path / "lilypad-module-lilysay")
    monkeypatch.setenv("LILYPAD_MODULE_REPO_PREFIX", f"{tmp_path}/lilypad-module-")
    module = modules.resolve("lilysay:v0.1.0")
    assert module.name == "lilysay"
    assert module.source.location == str(tmp_path / "lilypad-module-lilysay")
    assert modules.render(module, ["Message=hi"]).env == {"MESSAGE": "hi"}
    assert modules.resolve("cowsay:v0.0.4").source.kind.value == "builtin"  # built in wins


def test_default_prefix_is_lilypads_github() -> None:
    from lilypad.modules.sources import SourceKind, parse_reference

    ref = parse_reference("lilysay:v0.1.0")
    assert (ref.kind, ref.location) == (
        SourceKind.GIT, "https://github.com/Lilypad-Tech/lilypad-module-lilysay",
    )  # fmt: skip


def test_a_typo_of_a_builtin_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LILYPAD_MODULE_REPO_PREFIX", f"file://{tmp_path}/none-")
    with pytest.raises(InputError, match=r"unknown module 'cowsy'. Did you mean 'cowsay'\?"):
        modules.resolve("cowsy:v0.0.4")


def test_commit_reference(tmp_path: Path) -> None:
    work, bare = make_repo(tmp_path, "lilypad-module-lilysay", LILYSAY)
    commit = git("rev-parse", "HEAD", cwd=work)
    module = modules.resolve(f"file://{bare}:{commit}")
    assert (module.version, module.source.commit) == (commit, commit)
    spec = modules.render(module)
    assert spec.module == f"file://{bare}:{commit}"
    bare.rename(tmp_path / "gone.git")  # a commit never moves: the cached copy serves offline
    assert modules.resolve(f"file://{bare}:{commit}").directory == module.directory


def test_a_moved_tag_of_a_template_module_is_refused(tmp_path: Path) -> None:
    work, bare = make_repo(tmp_path, "lilypad-module-lilysay", LILYSAY)
    modules.resolve(f"{bare}:v0.1.0")
    (work / "lilypad_module.json.tmpl").write_text(LILYSAY.replace("hello", "moved"))
    git("commit", "-qam", "moved", cwd=work)
    git("tag", "-f", "v0.1.0", cwd=work)
    git("push", "-q", "--force", str(bare), "refs/tags/v0.1.0", cwd=work)
    with pytest.raises(ModuleSourceError, match=r"tag v0\.1\.0 .* now points at"):
        modules.resolve(f"{bare}:v0.1.0")


# --- end to end: a Lilypad module runs with the docker executor -------------------------------


@pytest.mark.docker
def test_lilypad_module_runs_with_the_docker_executor(tmp_path: Path, cli: CliRunner) -> None:
    import docker

    from resource_provider.executors import engine_problem
    from resource_provider.executors.images import build_image
    from tests.conftest import missing

    problem = engine_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the docker tests need a Docker Engine in CI: {problem}")
        missing("a Docker Engine", problem)
    _, bare = make_repo(tmp_path, "lilypad-module-lilysay", LILYSAY, Dockerfile=DOCKERFILE)
    module = modules.resolve(f"{bare}:v0.1.0")
    client = docker.from_env()
    try:
        build_image(client, module.directory, module.spec.image)
    finally:
        client.close()
    out = tmp_path / "out"
    message = 'a "quoted", \\ message }} with = signs'
    result = cli("module", "run", f"{bare}:v0.1.0", "-i", f"Message={message}",
                 "--output", str(out), "--executor", "docker", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "exitCode").read_text() == "0"
    assert (out / "outputs" / "said.txt").read_text() == message + "\n"
    assert (out / "outputs" / "cwd.txt").read_text() == "/tmp\n"  # its WorkingDirectory
    assert (out / "stdout").read_text() == "said\n"
