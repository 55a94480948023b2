"""Lilypad's module format: a ``lilypad_module.json.tmpl`` (a Go template) that renders, with the
job's inputs, a JSON document of ``machine`` needs and a Bacalhau ``V1beta1`` job.

Lilypad splices each input, JSON-encoded, into the template's text; a quote in a value can then
end its JSON string, and a template that passes a whole ``NAME=value`` lets the user set any
variable. Here the template decides the document's structure alone:

1. The template runs once with each given input replaced by a sentinel (a string no JSON token
   can hold outside a string) and once with the real values. Both runs write a value that came
   from an input only where it cannot change the JSON around it: inside a JSON string it is
   JSON-escaped (for ``js``, its text before escaping), and outside one only as the whole JSON
   string Lilypad passes (``{{ .Prompt }}``); anything else is refused.
2. The two documents must have the same shape: the same keys, list lengths, numbers and strings,
   but for the strings that hold a sentinel, which must keep the template's text around it. So
   no value changes the structure, whatever a template compares it with.
3. Image, entrypoint, working directory, network, outputs, resources, machine needs, timeout and
   every environment variable's name hold no sentinel, and are the same as when no input is
   given. A template that takes an input as a whole ``NAME=value`` variable (Lilypad's SDXL
   ``PromptEnv``) takes it only for the name its ``else`` branch fixes.

A value that breaks any of this is refused (exit 2) naming the input.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lilypad.errors import InvalidManifest, InvalidTunable, TemplateError
from lilypad.modules.gotemplate import Tainted, Template, go_json_string
from lilypad.modules.manifest import (
    MANIFEST_FILE,
    MODULE_NAME,
    OUTPUTS_PATH,
    MachineSpec,
    Manifest,
    ModuleVersion,
    Verification,
)
from lilypad.modules.tunables import (
    RESERVED_ENV,
    TUNABLE_NAME,
    Tunable,
    TunableType,
    TunableValue,
    parse_inputs,
    suggest,
)

TEMPLATE_FILE = "lilypad_module.json.tmpl"
#: The fields a ``lilypad_module.toml`` beside a template may set; the rest is the template's.
TYPES_KEYS = {"name", "description", "verification", "tunables"}
_TYPED = (TunableType.STRING, TunableType.INT, TunableType.FLOAT, TunableType.BOOL)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Input ``i`` as the sentinel run sees it: ``⦃lp3⦄`` is no JSON token outside a string, and
#: neither Go's JSON encoding nor ``js`` changes it.
_SENTINEL = "\u2983lp{}\u2984"
_SENTINEL_RE = re.compile("\u2983lp(\\d+)\u2984")
#: The fields no input may touch, by where the job keeps them.
_FIXED = ("image", "entrypoint", "workdir", "network", "outputs", "machine", "timeout_s")


class TemplateTunable(Tunable):
    """A template module's input: its value goes where the template writes it, in no variable
    of its own (``env`` is empty)."""

    env: str = ""


@dataclass(frozen=True)
class TemplateModule:
    """A parsed ``lilypad_module.json.tmpl`` and its inputs.

    Attributes:
        template: The parsed template.
        tunables: One per ``.Name`` the template reads, in order of first use: strings, or as
            the ``lilypad_module.toml`` beside it types them.
        shown_defaults: What the template uses for an input left out, where an ``else`` branch
            (or ``or .X "..."``) says it; for people only.
        typed: The tunables a ``lilypad_module.toml`` types; those with a default are always
            given to the template, the others only when the job sets them.
    """

    template: Template
    tunables: tuple[Tunable, ...]
    shown_defaults: Mapping[str, str]
    typed: frozenset[str]

    def tunable(self, name: str) -> Tunable | None:
        return next((t for t in self.tunables if t.name == name or name in t.aliases), None)


def is_template_module(directory: Path) -> bool:
    return (directory / TEMPLATE_FILE).is_file()


def load(directory: Path, version: str, location: str) -> tuple[Manifest, TemplateModule]:
    """Read a template module: its template, the types beside it, and its fixed fields.

    Raises:
        TemplateError: the template does not parse, or renders no job this project runs.
        InvalidManifest: the ``lilypad_module.toml`` beside it is malformed.
    """
    path = directory / TEMPLATE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot be read as UTF-8 text: {exc}") from None
    template = Template.parse(text, TEMPLATE_FILE)
    extra = _types_file(directory)
    typed = {t.name: t for t in extra.get("tunables", ())}
    unused = sorted(set(typed) - set(template.fields))
    if unused:
        raise InvalidManifest(
            f"{directory / MANIFEST_FILE}: tunable {unused[0]!r} is not used by {TEMPLATE_FILE} "
            f"(it reads {', '.join('.' + f for f in template.fields) or 'no input'})"
        )
    shown = template.defaults()
    tunables = tuple(
        typed.get(name) or _untyped(name, shown.get(name))
        for name in template.fields
        if re.match(TUNABLE_NAME, name)
    )
    module = TemplateModule(template, tunables, shown, frozenset(typed))
    job = _reference_job(module)
    _check_reference(job)
    try:
        spec = ModuleVersion(
            summary=f"a Lilypad module ({TEMPLATE_FILE})",
            image=job["image"],
            entrypoint=(*job["entrypoint"], *job["parameters"]),
            machine=job["machine"],
            timeout_s=job["timeout_s"],
            verification=extra.get("verification", Verification()),
        )
        manifest = Manifest(
            name=extra.get("name") or _name_of(location),
            description=extra.get("description", ""),
            versions={version: spec},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TemplateError(f"{path}: {where}: {first['msg']}") from None
    return manifest, module


def _check_reference(job: dict[str, Any]) -> None:
    """What the template alone fixes: no input in the fixed fields, sane variable names."""
    for key in _FIXED:
        if _SENTINEL_RE.search(json.dumps(job[key], ensure_ascii=False, default=repr)):
            raise TemplateError(
                f"{TEMPLATE_FILE}: the job's {key} is written from an input ({job[key]!r:.80}); "
                "the template alone must fix it"
            )
    seen: set[str] = set()
    for entry in job["env_entries"]:
        name = entry.partition("=")[0]
        if _SENTINEL_RE.search(name):
            continue  # an input as a whole variable: checked when it is given
        _check_env_name(name, entry)
        if name in seen:
            raise TemplateError(f"{TEMPLATE_FILE}: the job sets variable {name} twice")
        seen.add(name)


def _untyped(name: str, shown: str | None) -> Tunable:
    described = f"used by the template as .{name}"
    if shown is not None:
        described += f"; left out: {shown[:80]!r}"
    return TemplateTunable(name=name, type=TunableType.STRING, description=described)


def _types_file(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - TYPES_KEYS)
    if unknown:
        raise InvalidManifest(
            f"{path}: beside {TEMPLATE_FILE} it may set only {', '.join(sorted(TYPES_KEYS))}, "
            f"not {', '.join(unknown)}: the template says image, command and machine"
        )
    out: dict[str, Any] = {k: data[k] for k in ("name", "description") if k in data}
    try:
        if "verification" in data:
            out["verification"] = Verification.model_validate(data["verification"])
        out["tunables"] = tuple(_typed(item) for item in data.get("tunables", ()))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidManifest(f"{path}: {where}: {first['msg']}") from None
    except ValueError as exc:
        raise InvalidManifest(f"{path}: {exc}") from None
    return out


def _typed(item: Any) -> Tunable:
    if not isinstance(item, dict):
        raise ValueError("each [[tunables]] entry must be a table")
    if "env" in item:
        raise ValueError(
            f"tunable {item.get('name')!r}: a template module's tunable has no env; the "
            "template writes it where it uses it"
        )
    item = {"description": f"used by the template as .{item.get('name')}", **item}
    tunable = TemplateTunable.model_validate(item)
    if tunable.type not in _TYPED:
        raise ValueError(
            f"tunable {tunable.name!r}: type {tunable.type} is not available to templates; "
            f"use {', '.join(t.value for t in _TYPED)}"
        )
    return tunable


def _name_of(location: str) -> str:
    base = location.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git").lower()
    base = base.removeprefix("lilypad-module-")
    name = re.sub(r"[^a-z0-9._-]+", "-", base).strip("-._")[:64] or "module"
    return name if re.match(MODULE_NAME, name) else "module"


# --- inputs --------------------------------------------------------------------------------------


def validate(module: TemplateModule, inputs: list[str], label: str) -> dict[str, TunableValue]:
    """The values a job gives the template: each input parsed by its tunable, typed defaults
    filled; inputs left out that have no typed default are not given (as in Lilypad).

    Raises:
        InvalidTunable: an unknown input, one given twice, or a value its tunable refuses.
    """
    given: dict[str, TunableValue] = {}
    for key, raw in parse_inputs(inputs):
        tunable = module.tunable(key)
        if tunable is None:
            names = [t.name for t in module.tunables]
            raise InvalidTunable(
                f"{label} has no tunable {key!r}.{suggest(key, names)} "
                f"Allowed: {', '.join(names) or 'none'}"
            )
        if tunable.name in given:
            raise InvalidTunable(f"{tunable.name} is given twice; give it once")
        given[tunable.name] = tunable.parse(raw, key)
    for tunable in module.tunables:
        if tunable.name not in given and tunable.default is not None:
            given[tunable.name] = tunable.default
    return {t.name: given[t.name] for t in module.tunables if t.name in given}


# --- rendering -----------------------------------------------------------------------------------


def render(
    module: TemplateModule, values: Mapping[str, TunableValue], label: str
) -> dict[str, Any]:
    """The job fields (image, entrypoint, env, machine, timeout_s, workdir) of the template
    rendered with ``values``, checked as the module docstring says.

    Raises:
        InvalidTunable: a value (or an input given at all) that would change the structure,
            the fixed fields or an environment variable's name; naming the input.
        TemplateError: the template does not render a job this project runs.
    """
    order = [t.name for t in module.tunables]
    names = [n for n in order if n in values]
    texts = {n: _as_text(module.tunable(n), values[n]) for n in names}
    sentinels = {n: _SENTINEL.format(order.index(n)) for n in names}

    def run(real: set[str]) -> Any:
        data = {n: _tainted(n, texts[n] if n in real else sentinels[n]) for n in names}
        return _run(module.template, data, label)

    marked = run(set())
    actual = run(set(names))
    mismatch = _shape_mismatch(actual, marked, "")
    if mismatch is not None:
        culprits = [n for n in names if _shape_mismatch(run({n}), marked, "") is not None]
        raise _refused(culprits or names, values, f"changes the document's structure ({mismatch})")
    sentinel_job = _job(marked, label)
    by_sentinel = {s: n for n, s in sentinels.items()}
    for key in _FIXED:
        inside = _sentinels_in(sentinel_job[key], by_sentinel)
        if inside:
            raise _refused(inside, values, f"would be written into the job's {key}")
    job = _job(actual, label)
    job["env"] = _env(sentinel_job["env_entries"], job["env_entries"], module, by_sentinel, values)
    reference = _reference_job(module)
    changed = [k for k in _FIXED if job[k] != reference[k]]
    if changed:
        culprits = [n for n in names if _given_changes(module, n, reference, changed)]
        raise _refused(
            culprits or names, values, f"changes the job's {', '.join(changed)} when given"
        )
    return {
        **{k: job[k] for k in _FIXED},
        "entrypoint": job["entrypoint"] + job["parameters"],
        "env": job["env"],
    }


def _given_changes(
    module: TemplateModule,
    name: str,
    reference: dict[str, Any],
    fields: list[str],
) -> bool:
    alone = {name: _tainted(name, _SENTINEL.format(0))}
    try:
        job = _job(_run(module.template, alone, "."), ".")
    except (TemplateError, InvalidTunable):
        return True
    return any(job[k] != reference[k] for k in fields)


def _as_text(tunable: Tunable | None, value: TunableValue) -> str:
    assert tunable is not None
    return tunable.env_value(value)


def _tainted(name: str, text: str) -> Tainted:
    encoded = go_json_string(text)
    return Tainted(encoded, encoded, frozenset({name}), token=True)


def _refused(names: list[str], values: Mapping[str, TunableValue], why: str) -> InvalidTunable:
    shown = ", ".join(f"{n}={str(values[n])[:60]!r}" for n in names)
    return InvalidTunable(
        f"{shown}: refused: the value {why}; in a template module an input fills only the "
        "strings the template puts it in"
    )


def _reference_job(module: TemplateModule) -> dict[str, Any]:
    """The job with no input given; where the template cannot render that, with every input
    given (as sentinels)."""
    try:
        return _job(_run(module.template, {}, TEMPLATE_FILE), TEMPLATE_FILE)
    except TemplateError as first:
        data = {
            t.name: _tainted(t.name, _SENTINEL.format(i)) for i, t in enumerate(module.tunables)
        }
        try:
            job = _job(_run(module.template, data, TEMPLATE_FILE), TEMPLATE_FILE)
        except (TemplateError, InvalidTunable):
            raise first from None
        shown = {_SENTINEL.format(i): "{{." + t.name + "}}" for i, t in enumerate(module.tunables)}
        job["parameters"] = [_SENTINEL_RE.sub(lambda m: shown[m[0]], a) for a in job["parameters"]]
        return job


class _JsonSink:
    """Writes a template's output, tracking whether it is inside a JSON string, and writes a
    value from an input only where it cannot change the JSON around it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.in_string = False
        self.escaping = False

    def text(self, text: str) -> None:
        for char in text:
            if self.escaping:
                self.escaping = False
            elif self.in_string and char == "\\":
                self.escaping = True
            elif char == '"':
                self.in_string = not self.in_string
        self.parts.append(text)

    def value(self, value: Tainted, where: str) -> None:
        names = ", ".join(sorted(value.names))
        if self.in_string and not self.escaping:
            self.parts.append(json.dumps(value.meant, ensure_ascii=False)[1:-1])
        elif not self.in_string and value.token:
            self.parts.append(value.text)
        else:
            place = "right after a backslash" if self.escaping else "outside a JSON string"
            raise InvalidTunable(
                f"{names}: {TEMPLATE_FILE} writes it {place} at {where}, where a value could "
                f"change the document; this module cannot take {names}"
            )


def _run(template: Template, data: Mapping[str, Any], label: str) -> Any:
    sink = _JsonSink()
    template.execute(data, sink)
    text = "".join(sink.parts)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = text.splitlines()[exc.lineno - 1] if text.splitlines() else ""
        raise TemplateError(
            f"{TEMPLATE_FILE} renders text that is not JSON ({exc}): {line.strip()[:120]!r}"
        ) from None


def _shape_mismatch(actual: Any, marked: Any, path: str) -> str | None:
    """Where ``actual`` differs from ``marked`` other than in the sentinels' text, or None."""
    if isinstance(marked, dict):
        if not isinstance(actual, dict) or list(actual) != list(marked):
            return path or "the document"
        for key, value in marked.items():
            found = _shape_mismatch(actual[key], value, f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(marked, list):
        if not isinstance(actual, list) or len(actual) != len(marked):
            return path or "the document"
        for i, (a, m) in enumerate(zip(actual, marked, strict=True)):
            found = _shape_mismatch(a, m, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(marked, str) and _SENTINEL_RE.search(marked):
        pieces = _SENTINEL_RE.split(marked)[::2]
        pattern = "(.*)".join(re.escape(p) for p in pieces)
        ok = isinstance(actual, str) and re.fullmatch(pattern, actual, re.DOTALL)
        return None if ok else path
    same = type(actual) is type(marked) and actual == marked
    return None if same else path


def _sentinels_in(value: Any, by_sentinel: Mapping[str, str]) -> list[str]:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return sorted({by_sentinel.get(m[0], m[0]) for m in _SENTINEL_RE.finditer(text)})


# --- the Bacalhau job ----------------------------------------------------------------------------


def _get(obj: Any, key: str, where: str, default: Any = None) -> Any:
    """A field as Go's JSON decoding finds it: by name, upper or lower case alike."""
    if obj is None:
        return default
    if not isinstance(obj, dict):
        raise TemplateError(f"{TEMPLATE_FILE}: {where} must be an object, not {obj!r:.60}")
    found = [k for k in obj if k.lower() == key.lower()]
    if len(found) > 1:
        raise TemplateError(f"{TEMPLATE_FILE}: {where} sets {key} twice ({', '.join(found)})")
    return obj[found[0]] if found else default


def _job(doc: Any, label: str) -> dict[str, Any]:
    """Image, command, env entries, machine needs, timeout of a rendered document."""
    job = _get(doc, "job", "the document")
    spec = _get(job, "Spec", "job")
    if not isinstance(spec, dict):
        raise TemplateError(f"{TEMPLATE_FILE}: the document has no job.Spec")
    api = _get(job, "APIVersion", "job")
    if api not in (None, "V1beta1"):
        raise TemplateError(f"{TEMPLATE_FILE}: job.APIVersion {api!r}; expected V1beta1")
    engine = _get(spec, "EngineSpec", "job.Spec")
    if engine is not None:
        kind = _get(engine, "Type", "job.Spec.EngineSpec")
        if str(kind).lower() != "docker":
            raise TemplateError(
                f"{TEMPLATE_FILE}: job.Spec.EngineSpec.Type {kind!r}; only docker jobs run here"
            )
        params = _get(engine, "Params", "job.Spec.EngineSpec") or {}
    else:
        named = _get(spec, "Engine", "job.Spec")
        if named is not None and str(named).lower() != "docker":
            raise TemplateError(
                f"{TEMPLATE_FILE}: job.Spec.Engine {named!r}; only Docker runs here"
            )
        params = _get(spec, "Docker", "job.Spec")
        if params is None:
            raise TemplateError(
                f"{TEMPLATE_FILE}: job.Spec has neither Docker nor EngineSpec: nothing to run"
            )
    _no_input_files(doc)
    return {
        "image": _image(params),
        "entrypoint": _entrypoint(params),
        "parameters": _strings(_get(params, "Parameters", "Docker"), "Parameters"),
        "workdir": _workdir(params),
        "env_entries": _env_entries(_get(params, "EnvironmentVariables", "Docker")),
        "network": _network(spec),
        "outputs": _outputs(spec),
        "machine": _machine(_get(doc, "machine", "the document"), _get(spec, "Resources", "Spec")),
        "timeout_s": _timeout(_get(spec, "Timeout", "job.Spec")),
    }


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TemplateError(f"{TEMPLATE_FILE}: {what} must be a string, not {value!r:.60}")
    return value


def _workdir(params: Any) -> str | None:
    """The job's working directory inside its image: absolute, without ``..`` (the container is
    made with it; a relative one would fail only on the provider)."""
    workdir = _string(_get(params, "WorkingDirectory", "Docker"), "WorkingDirectory")
    if not workdir:
        return None
    if not workdir.startswith("/") or ".." in workdir.split("/") or "\x00" in workdir:
        raise TemplateError(
            f"{TEMPLATE_FILE}: WorkingDirectory {workdir!r:.80} must be an absolute path inside "
            "the image, without '..'"
        )
    return workdir


def _image(params: Any) -> str:
    image = _string(_get(params, "Image", "Docker"), "Image")
    if not image:
        raise TemplateError(f"{TEMPLATE_FILE}: the job names no Image")
    return image


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TemplateError(f"{TEMPLATE_FILE}: {what} must be a list of strings, not {value!r:.80}")
    return list(value)


def _entrypoint(params: Any) -> list[str]:
    entrypoint = _strings(_get(params, "Entrypoint", "Docker"), "Entrypoint")
    if not entrypoint:
        raise TemplateError(
            f"{TEMPLATE_FILE}: the job sets no Entrypoint; a job here runs the command its spec "
            "names, so set Entrypoint (the image's own is not read)"
        )
    return entrypoint


def _env_entries(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={_string(v, f'EnvironmentVariables.{k}')}" for k, v in value.items()]
    return _strings(value, "EnvironmentVariables")


def _network(spec: Any) -> str:
    kind = _get(_get(spec, "Network", "job.Spec"), "Type", "job.Spec.Network", "None")
    if not isinstance(kind, str) or kind.lower() != "none":
        raise TemplateError(
            f"{TEMPLATE_FILE}: the job asks for network {kind!r}; jobs here run with no "
            'network at all (Network.Type "None")'
        )
    return "none"


def _outputs(spec: Any) -> str:
    for output in _get(spec, "Outputs", "job.Spec") or []:
        path = _get(output, "Path", "job.Spec.Outputs[]")
        if path not in (OUTPUTS_PATH, OUTPUTS_PATH + "/"):
            raise TemplateError(
                f"{TEMPLATE_FILE}: the job publishes {path!r}; a job's results are what it "
                f"writes to {OUTPUTS_PATH}, and only that"
            )
    return OUTPUTS_PATH


def _number(value: Any, what: str) -> float:
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise TemplateError(f"{TEMPLATE_FILE}: {what} must be a non-negative number, not {value!r:.40}")


_SIZES = {"": 1 / 2**30, "b": 1 / 2**30, "kb": 1 / 2**20, "mb": 1 / 2**10, "gb": 1, "tb": 2**10}


def _size_gb(value: Any, what: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", str(value).lower())
    if m is None:
        raise TemplateError(f"{TEMPLATE_FILE}: {what} {value!r} is not a size like 2Gb or 512mb")
    return float(m[1]) * _SIZES[m[2].replace("i", "")]


def _machine(machine: Any, resources: Any) -> MachineSpec:
    """``machine`` (gpu count, cpu in millicores, ram and gpus[].vram in MB), with
    ``Resources`` where ``machine`` says nothing."""
    gpu = _number(_get(machine, "gpu", "machine", 0), "machine.gpu")
    wanted = _get(resources, "GPU", "Resources", "") or 0
    gpus = int(max(gpu, _number(wanted, "Resources.GPU")))
    vram = [
        _number(_get(g, "vram", "machine.gpus[]", 0), "vram")
        for g in _get(machine, "gpus", "machine") or []
    ]
    cpu = _get(machine, "cpu", "machine")
    if cpu is not None:
        cpus = _number(cpu, "machine.cpu") / 1000
    else:
        text = str(_get(resources, "CPU", "Resources", "") or "1").strip().lower()
        cpus = (
            _number(text[:-1], "Resources.CPU") / 1000
            if text.endswith("m")
            else _number(text, "Resources.CPU")
        )
    ram = _get(machine, "ram", "machine")
    memory = _get(resources, "Memory", "Resources")
    ram_gb = (
        _number(ram, "machine.ram") / 1024
        if ram is not None
        else (_size_gb(memory, "Resources.Memory") if memory else 1.0)
    )
    try:
        return MachineSpec(gpus=gpus, vram_gb=max(vram, default=0) / 1024, cpus=cpus, ram_gb=ram_gb)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TemplateError(f"{TEMPLATE_FILE}: machine {first['loc'][0]}: {first['msg']}") from None


def _timeout(value: Any) -> int:
    if value is None:
        return 600
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 86_400:
        raise TemplateError(
            f"{TEMPLATE_FILE}: job.Spec.Timeout {value!r}: expected whole seconds, 1 to 86400"
        )
    return value


def _no_input_files(doc: Any) -> None:
    files = _get(doc, "inputFiles", "the document")
    if files:
        raise TemplateError(
            f"{TEMPLATE_FILE}: inputFiles are not supported yet: a job here reads files only "
            "through a file tunable of a lilypad_module.toml module"
        )


def _env(
    marked: list[str],
    actual: list[str],
    module: TemplateModule,
    by_sentinel: Mapping[str, str],
    values: Mapping[str, TunableValue],
) -> dict[str, str]:
    """The job's variables: every name the template's own; an input given as a whole
    ``NAME=value`` only for the name its ``else`` branch fixes."""
    env: dict[str, str] = {}
    for pattern, entry in zip(marked, actual, strict=True):
        head = pattern.partition("=")[0]
        name, sep, value = entry.partition("=")
        inside = _sentinels_in(head, by_sentinel)
        if inside:
            fixed = _whole_entry_name(pattern, module, by_sentinel)
            if fixed is None:
                raise _refused(inside, values, "would name an environment variable")
            if not sep or name != fixed:
                who = inside[0]
                raise InvalidTunable(
                    f"{who}={str(values[who])[:60]!r}: {TEMPLATE_FILE} takes {who} as a whole "
                    f"variable, and it may only set {fixed}: give {who}={fixed}=<value>"
                )
        _check_env_name(name, entry)
        if name in env:
            raise TemplateError(f"{TEMPLATE_FILE}: the job sets variable {name} twice")
        env[name] = value
    return env


def _whole_entry_name(
    pattern: str, module: TemplateModule, by_sentinel: Mapping[str, str]
) -> str | None:
    """The variable a whole-entry input may set: the name of its ``else`` branch's default."""
    if pattern not in by_sentinel:
        return None
    default = module.shown_defaults.get(by_sentinel[pattern], "")
    name, sep, _ = default.partition("=")
    return name if sep and _ENV_NAME.match(name) else None


def _check_env_name(name: str, entry: str) -> None:
    if not _ENV_NAME.match(name):
        raise TemplateError(
            f"{TEMPLATE_FILE}: environment entry {entry[:60]!r} is not NAME=value with a "
            "name of letters, digits and _"
        )
    if name in RESERVED_ENV or name.startswith(("LD_", "DYLD_")):
        raise TemplateError(f"{TEMPLATE_FILE}: environment variable {name} is reserved")


__all__ = [
    "TEMPLATE_FILE",
    "TemplateModule",
    "TemplateTunable",
    "is_template_module",
    "load",
    "render",
    "validate",
]
