"""Job modules: references, manifests, typed tunables and rendered job specs.

The public surface:

* :func:`resolve` turns ``name[:version]`` (or a folder, or a git repository at a tag) into a
  :class:`ResolvedModule`;
* :func:`render` validates ``-i KEY=VALUE`` inputs against it and returns a :class:`JobSpec`;
* :func:`list_builtin` lists the modules that ship with the project.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lilypad.errors import InvalidTunable
from lilypad.modules import template as _template
from lilypad.modules.manifest import (
    NETWORK,
    OUTPUTS_PATH,
    Manifest,
    ModuleVersion,
    load_manifest,
    version_key,
)
from lilypad.modules.sources import (
    ModuleSource,
    SourceKind,
    builtin_modules_dir,
    builtin_names,
    fetch,
    parse_reference,
    pick_version,
)
from lilypad.modules.spec import JobSpec, SpecSource
from lilypad.modules.template import TemplateModule
from lilypad.modules.tunables import (
    Tunable,
    TunableValue,
    parse_inputs,
    resolve_tunables,
    tunables_env,
)


@dataclass(frozen=True)
class ResolvedModule:
    """One version of one module, ready to render.

    Attributes:
        name: The module's name from its manifest.
        version: The resolved version (a git tag for git modules).
        chose_newest: True when the reference named no version and the newest was picked.
        description: The module's description.
        spec: The version's fixed fields (image, entrypoint, machine needs, tunables...).
        directory: The module's folder on disk (code, Dockerfile).
        source: Where it came from; for git modules, the commit.
        versions: Every version the source offers, oldest first.
        template: For a module in Lilypad's format (``lilypad_module.json.tmpl``): its
            template and inputs; ``spec`` then holds what it renders with no input given.
    """

    name: str
    version: str
    chose_newest: bool
    description: str
    spec: ModuleVersion
    directory: Path
    source: ModuleSource
    versions: tuple[str, ...]
    template: TemplateModule | None = None

    @property
    def ref(self) -> str:
        """The reference that names exactly this version."""
        base = self.name if self.source.kind is SourceKind.BUILTIN else self.source.location
        return f"{base}:{self.version}"

    def tunable(self, name: str) -> Tunable | None:
        if self.template is not None:
            return self.template.tunable(name)
        return next((t for t in self.spec.tunables if t.name == name), None)


def resolve(ref: str) -> ResolvedModule:
    """Resolve a module reference to one version.

    Raises:
        UnknownModule, UnknownVersion, InvalidManifest, ModuleSourceError.
    """
    parsed = parse_reference(ref)
    fetched = fetch(parsed)
    version, chose_newest = pick_version(fetched, parsed.version)
    return ResolvedModule(
        name=fetched.manifest.name,
        version=version,
        chose_newest=chose_newest,
        description=fetched.manifest.description,
        spec=fetched.manifest.versions[version],
        directory=fetched.directory,
        source=fetched.source,
        versions=tuple(sorted(fetched.manifest.versions, key=version_key)),
        template=fetched.template,
    )


def validate_inputs(module: ResolvedModule, inputs: Sequence[str]) -> dict[str, TunableValue]:
    """Validate raw ``KEY=VALUE`` inputs and return every tunable's value, defaults filled.

    Raises:
        InvalidTunable: for any input that is unknown, malformed or out of range, or a group of
            the manifest's ``at_least_one`` left all at 0, or a picture given with a
            ``Steps`` and ``Strength`` that run no step (``strength_steps``), or a pair of
            the manifest's ``ordered`` the wrong way round.
    """
    if module.template is not None:
        values = _template.validate(module.template, list(inputs), module.ref)
        _template.render(module.template, values, module.ref)  # a value that would be refused
        return values
    values = resolve_tunables(
        module.spec.tunables, module.spec.legacy_inputs, parse_inputs(inputs), module.ref
    )
    for group in module.spec.at_least_one:
        if not any(values.get(name) not in (None, 0, "", False) for name in group):
            given = ", ".join(f"{name}={values.get(name)!r}" for name in group)
            raise InvalidTunable(
                f"{module.ref} needs at least one of {', '.join(group)} above 0 or set; "
                f"all are left at nothing ({given})"
            )
    if module.spec.strength_steps:
        _check_strength_steps(module, values, *module.spec.strength_steps)
    for low, high in module.spec.ordered:
        first, last = values.get(low), values.get(high)
        if isinstance(first, int | float) and isinstance(last, int | float) and first > last:
            raise InvalidTunable(
                f"{module.ref}: {low}={first:g} is after {high}={last:g}; allowed: {low} at "
                f"most {high}"
            )
    return values


def _check_strength_steps(
    module: ResolvedModule, values: dict[str, TunableValue], picture: str, steps: str, strength: str
) -> None:
    n, fraction = values.get(steps), values.get(strength)
    if not values.get(picture) or not isinstance(n, int) or not isinstance(fraction, float | int):
        return
    if int(n * fraction) >= 1:
        return
    # the least Strength (to 3 decimals, rounded up) and the fewest Steps that run one
    least_strength = math.ceil(1000 / n) / 1000 if n > 0 else None
    top = next((t.max for t in module.spec.tunables if t.name == steps), None)
    fewest = math.ceil(1 / fraction) if fraction > 0 else None
    ways = [f"{strength} at least {least_strength:g} at {steps}={n}"] if least_strength else []
    if fewest is not None and (top is None or fewest <= top):
        ways.append(f"{steps}={fewest} at {strength}={fraction:g}")
    raise InvalidTunable(
        f"{module.ref} with {picture} set runs the last int({steps} x {strength}) of its steps: "
        f"{steps}={n} with {strength}={fraction:g} runs none; allowed: {' or '.join(ways)}"
    )


def check_scaled_size(
    module: ResolvedModule,
    values: dict[str, TunableValue],
    picture: str,
    label: str,
    size: tuple[int, int],
) -> None:
    """Refuse a picture of ``size`` (width, height) given as ``label`` (``Image=@photo.png``) for
    the tunable ``picture`` when the manifest's ``scaled_size`` says the job would enlarge it
    past its ``max_side``; ``values`` are the job's other inputs (the scale among them). The
    file stager calls this once it has read a picture's size, before the file is added.

    Raises:
        InvalidTunable: naming the picture's size, the result's and what is allowed.
    """
    rule = module.spec.scaled_size
    factor = values.get(rule.scale) if rule is not None else None
    if rule is None or picture != rule.picture or not isinstance(factor, int):
        return
    width, height = size
    if max(width, height) * factor <= rule.max_side:
        return
    scale = module.tunable(rule.scale)
    offered = [c for c in (scale.choices or ()) if isinstance(c, int)] if scale else []
    smaller = [c for c in offered if c < factor and max(width, height) * c <= rule.max_side]
    ways = [f"a picture at most {rule.max_side // factor} pixels a side at {rule.scale}={factor}"]
    if smaller:
        ways.append(f"{rule.scale}={max(smaller)} for this one")
    raise InvalidTunable(
        f"{label} is {width}x{height}: at {rule.scale}={factor} the result would be "
        f"{width * factor}x{height * factor}, and {module.ref} makes results at most "
        f"{rule.max_side} pixels a side; allowed: {' or '.join(ways)}"
    )


def render(module: ResolvedModule | str, inputs: Sequence[str] = ()) -> JobSpec:
    """Render the job spec of a module version with the given inputs.

    Tunables reach the job only as the environment variables the manifest declares for them;
    image, entrypoint, network and outputs come from the manifest and constants alone.

    Raises:
        InvalidTunable: for any input that is unknown, malformed or out of range.
    """
    if isinstance(module, str):
        module = resolve(module)
    if module.template is not None:
        return _render_template(module, inputs)
    values = validate_inputs(module, inputs)
    spec = module.spec
    fields = {
        **_identity(module),
        "image": spec.image_ref,
        "entrypoint": list(spec.entrypoint),
        "env": {**spec.env, **tunables_env(spec.tunables, values)},
        "machine": spec.machine.model_dump(mode="json"),
        "network": NETWORK,
        "outputs": OUTPUTS_PATH,
        "timeout_s": spec.timeout_s,
        "tunables": values,
        "verification": spec.verification.model_dump(mode="json"),
    }
    return JobSpec.model_validate({**fields, "spec_hash": JobSpec.hash_of(fields)})


def _identity(module: ResolvedModule) -> dict[str, Any]:
    """The spec fields that say which module version a job runs, and from where."""
    return {
        "module": module.ref,
        "name": module.name,
        "version": module.version,
        "source": SpecSource(
            kind=module.source.kind.value,
            location=module.source.location,
            commit=module.source.commit,
        ).model_dump(mode="json"),
    }


def _render_template(module: ResolvedModule, inputs: Sequence[str]) -> JobSpec:
    """A Lilypad-format module's spec: the template's job, checked, in this project's terms."""
    assert module.template is not None
    values = _template.validate(module.template, list(inputs), module.ref)
    job = _template.render(module.template, values, module.ref)
    fields = {
        **_identity(module),
        "image": job["image"],
        "entrypoint": job["entrypoint"],
        "env": job["env"],
        "machine": job["machine"].model_dump(mode="json"),
        "network": NETWORK,
        "outputs": OUTPUTS_PATH,
        "timeout_s": job["timeout_s"],
        "tunables": values,
        "verification": module.spec.verification.model_dump(mode="json"),
    }
    if job["workdir"] is not None:
        fields["workdir"] = job["workdir"]
    return JobSpec.model_validate({**fields, "spec_hash": JobSpec.hash_of(fields)})


def list_builtin() -> list[tuple[Manifest, Path]]:
    """Every built-in module's manifest and folder, by name."""
    root = builtin_modules_dir()
    return [(load_manifest(root / name), root / name) for name in builtin_names()]


__all__ = [
    "NETWORK",
    "OUTPUTS_PATH",
    "JobSpec",
    "Manifest",
    "ModuleVersion",
    "ResolvedModule",
    "TemplateModule",
    "Tunable",
    "TunableValue",
    "check_scaled_size",
    "list_builtin",
    "render",
    "resolve",
    "validate_inputs",
    "version_key",
]
