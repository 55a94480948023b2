"""``lilypad module``: list, show and render job modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from lilypad import modules
from lilypad.cli.output import console, emit, note
from lilypad.errors import InvalidTunable
from lilypad.modules import JobSpec, ResolvedModule, version_key
from lilypad.modules.manifest import SamplerReference

if TYPE_CHECKING:
    from lilypad.modules.files import StagedInputs

app = typer.Typer(help="List, inspect and render job modules.", no_args_is_help=True)

INPUT_HELP = (
    'A tunable as KEY=VALUE; repeat for more (-i Prompt="a cat" -i Seed=24). A file tunable '
    "takes @path/to/file, ipfs://CID\\[/path] or a bare CID (-i Image=@photo.png)."
)


#: Words after the reference that belong to no option; caught to explain `-i Key Value`.
STRAY_ARGS: Any = typer.Argument(None, hidden=True, show_default=False)


def check_inputs(inputs: list[str], stray: list[str] | None) -> list[str]:
    """Refuse stray words, explaining the common slip ``-i VideoSteps 70`` (no ``=``)."""
    if stray:
        lone = next((i for i in inputs if "=" not in i), None)
        if lone is not None:
            raise InvalidTunable(
                f"-i {lone} {stray[0]}: expected KEY=VALUE; write -i {lone}={stray[0]}"
            )
        raise InvalidTunable(f"unexpected argument {stray[0]!r}; tunables go as -i KEY=VALUE")
    return inputs


def stage(
    module: ResolvedModule,
    inputs: list[str],
    workdir: Path,
    *,
    add: Callable[[Path], Any] | None = None,
    storage: Any = None,
) -> tuple[JobSpec, StagedInputs]:
    """Render ``module`` with ``inputs``, file inputs first turned into IPFS paths: local files
    added with ``add`` (default: only their CID computed, nothing stored), ``ipfs://`` inputs
    checked on ``storage`` when one is given. Nothing is signed or paid before this returns."""
    from lilypad.modules.files import stage_inputs
    from lilypad.storage import compute_cid

    staged = stage_inputs(module, inputs, add=add or compute_cid, workdir=workdir, storage=storage)
    for name, ref in staged.refs.items():
        note(f"{name}: ipfs://{ref}")
    return modules.render(module, staged.inputs), staged


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print as JSON.")


@app.command("list")
def list_modules(
    json_output: bool = _json_option(),
    network: str | None = typer.Option(
        None,
        "--network",
        "-n",
        help="Also show, per version, how many providers of this network serve it now and "
        "the lowest price.",
    ),
) -> None:
    """List the built-in modules and their versions."""
    builtin = modules.list_builtin()
    data: list[dict[str, Any]] = [
        {
            "name": manifest.name,
            "versions": sorted(manifest.versions, key=version_key),
            "description": manifest.description,
        }
        for manifest, _ in builtin
    ]
    if network is not None:
        market = _market(network, [manifest for manifest, _ in builtin])
        for item in data:
            item["market"] = {v: market[f"{item['name']}:{v}"] for v in item["versions"]}

    def human() -> None:
        columns = ["module", "versions"]
        if network is not None:
            columns += ["providers", "lowest price"]
        table = Table(*columns, "description", box=None, pad_edge=False)
        for item in data:
            cells = [item["name"], "\n".join(item["versions"])]
            if network is not None:
                now = [item["market"][v] for v in item["versions"]]
                cells.append("\n".join(str(m["providers"]) for m in now))
                cells.append("\n".join(_tokens(m["lowest_price"]) for m in now))
            table.add_row(*cells, item["description"])
        console.print(table)
        if network is not None:
            console.print(f"\nProviders with an open offer on {network!r} now; prices in tokens.")
        console.print("\nSee a module's tunables with: lilypad module show NAME")

    emit(data, json_output, human)


def _market(network: str, manifests: list[Any]) -> dict[str, dict[str, Any]]:
    """Per ``name:version``: how many providers have an open offer on ``network`` that can
    take its job now (the module, or any module; machine and ``min_timeout`` enough for it),
    and the lowest such price (base units as a string; None when none)."""
    from lilypad.chain.offers import ZERO_BYTES32, Machine, default_job_timeout, module_id
    from lilypad.cli.providers import network_offers

    offers = network_offers(network)
    market = {}
    for manifest in manifests:
        for version, spec in manifest.versions.items():
            wanted = {module_id(f"{manifest.name}:{version}"), ZERO_BYTES32}
            needs = Machine.from_requirements(**spec.machine.model_dump())
            timeout = default_job_timeout(spec.timeout_s)
            fit = [
                o
                for o in offers
                if o.offer.offer.module in wanted
                and o.machine.satisfies(needs)
                and o.offer.offer.min_timeout <= timeout
            ]
            prices = [o.offer.offer.price for o in fit]
            market[f"{manifest.name}:{version}"] = {
                "providers": len({o.provider for o in fit}),
                "lowest_price": str(min(prices)) if prices else None,
            }
    return market


def _tokens(units: str | None) -> str:
    from lilypad.units import format_tokens

    return "-" if units is None else format_tokens(int(units))


def _resolve(ref: str) -> ResolvedModule:
    module = modules.resolve(ref)
    if module.chose_newest:
        n = len(module.versions)
        which = "its only version" if n == 1 else f"the newest of {n} versions"
        note(f"{ref} resolved to {module.ref} ({which}: {', '.join(module.versions)})")
    return module


def describe(module: ResolvedModule) -> dict[str, Any]:
    """The ``module show`` document: everything a user needs to call the module."""
    data = _describe(module)
    if module.template is not None:
        # a template's inputs fill the strings it writes them into, no variable of their own;
        # left out, an input without a typed default is not given (the template's else branch)
        shown = module.template.shown_defaults
        typed = module.template.typed
        data["tunables"] = [
            {**_tunable(t), "env": None, "default": t.default if t.name in typed
             else shown.get(t.name), "required": False}
            for t in module.template.tunables
        ]  # fmt: skip
        data["format"] = "lilypad template"
    return data


def _describe(module: ResolvedModule) -> dict[str, Any]:
    spec = module.spec
    return {
        "name": module.name,
        "version": module.version,
        "ref": module.ref,
        "resolved_newest": module.chose_newest,
        "description": module.description,
        "summary": spec.summary,
        "source": {
            "kind": module.source.kind.value,
            "location": module.source.location,
            "commit": module.source.commit,
        },
        "image": spec.image_ref,
        "entrypoint": list(spec.entrypoint),
        "machine": spec.machine.model_dump(mode="json"),
        "timeout_s": spec.timeout_s,
        "network": modules.NETWORK,
        "outputs": modules.OUTPUTS_PATH,
        "verification": spec.verification.model_dump(mode="json"),
        "tiny_weights": spec.tiny_weights,
        "sampler_reference": spec.sampler_reference.value,
        "format": "lilypad_module.toml",
        "tunables": [_tunable(t) for t in spec.tunables],
        "legacy_inputs": [
            {"name": item.name, "variable": item.variable, "tunable": item.tunable}
            for item in spec.legacy_inputs
        ],
        "at_least_one": [list(group) for group in spec.at_least_one],
    }


def _tunable(t: Any) -> dict[str, Any]:
    return {
        "name": t.name,
        "type": t.type.value,
        "default": t.default,
        "min": t.min,
        "max": t.max,
        "choices": list(t.choices) if t.choices is not None else None,
        "multiple_of": t.multiple_of,
        "max_length": t.max_length if t.type.value == "string" else None,
        "max_bytes": t.byte_limit if t.is_file else None,
        "max_pixels": t.pixel_limit if t.type.value == "image" else None,
        "formats": [f.value for f in t.image_formats] if t.type.value == "image" else None,
        "safetensors": t.safetensors.value if t.safetensors is not None else None,
        "required": t.required,
        "mount": f"/inputs/{t.name}/<file name>" if t.is_file else None,
        "aliases": list(t.aliases),
        "env": t.env,
        "description": t.description,
    }


@app.command()
def show(
    ref: str = typer.Argument(
        ..., help="Module reference, e.g. sdxl:v0.9-lilypad1 or sdv-pipeline."
    ),
    json_output: bool = _json_option(),
    schema: bool = typer.Option(
        False,
        "--schema",
        help="Print only the version's inputs as a JSON Schema (draft 2020-12), for forms and "
        "SDKs; with or without --json.",
    ),
) -> None:
    """Show a module version: image, machine needs, timeout and every tunable."""
    module = _resolve(ref)
    if schema:
        from lilypad.modules.schema import input_schema

        # NOTE: not output.dumps: it sorts keys, and the properties keep the manifest's order
        print(json.dumps(input_schema(module), indent=2, ensure_ascii=False))
        return
    data = describe(module)
    emit(data, json_output, lambda: _print_show(data))


def _print_show(data: dict[str, Any]) -> None:
    m = data["machine"]
    console.print(f"[bold]{escape(data['ref'])}[/]  {escape(data['description'])}")
    if data["summary"]:
        console.print(f"  {escape(data['summary'])}")
    console.print(f"  image      {escape(data['image'])}")
    console.print(
        f"  machine    {m['gpus']} GPU ({m['vram_gb']:g} GB VRAM), {m['cpus']:g} CPU, "
        f"{m['ram_gb']:g} GB RAM, {m['disk_gb']:g} GB disk"
    )
    console.print(
        f"  timeout    {data['timeout_s']} s;  network {data['network']};  outputs "
        f"{data['outputs']};  results compared {data['verification']['method']}"
    )
    if data["tiny_weights"]:
        console.print(f"  tiny mode  {escape(data['tiny_weights'])}")
    # NOTE: every version has a reference; it matters to those that sample (the ML modules,
    # which all describe their tiny mode) or that chose one.
    if data["tiny_weights"] or data["sampler_reference"] != SamplerReference.K_DIFFUSION:
        console.print(
            f"  samplers   follow {data['sampler_reference']} where k-diffusion and ComfyUI differ"
        )
    if data["format"] == "lilypad template":
        console.print("  format     Lilypad's lilypad_module.json.tmpl (a Go template)")
    console.print("\n[bold]Tunables[/] (-i NAME=VALUE)")
    for t in data["tunables"]:
        default = repr(t["default"]) if t["type"] == "string" else str(t["default"])
        if t["max_bytes"] is not None:
            default = "none, required" if t["required"] else "none, optional"
        aliases = "".join(f", alias {a}" for a in t["aliases"])
        where = f"env {t['env']}" if t["env"] else "in the template"
        if not t["env"] and t["default"] is None:
            default = "none (left out: not given)"
        console.print(
            f"  [bold]{t['name']}[/] ({t['type']}, {where}{aliases})  default {escape(default)}",
            soft_wrap=True,
        )
        console.print(
            f"      {escape(t['description'])}. Allowed: {escape(_allowed(t))}", soft_wrap=True
        )
    for item in data["legacy_inputs"]:
        console.print(
            f'  legacy input {item["name"]}="{item["variable"]}=..." sets {item["tunable"]}'
        )
    for group in data["at_least_one"]:
        console.print(f"  at least one of {', '.join(group)} must be above 0")


def _allowed(t: dict[str, Any]) -> str:
    if t["choices"] is not None:
        return ", ".join(str(c) for c in t["choices"])
    if t["min"] is not None or t["max"] is not None:
        low = "" if t["min"] is None else _number(t["min"])
        high = "" if t["max"] is None else _number(t["max"])
        step = f", multiple of {t['multiple_of']}" if t["multiple_of"] else ""
        return f"{low}..{high}{step}"
    if t["type"] == "string":
        return f"text, up to {t['max_length']} characters"
    if t["max_bytes"] is not None:
        names = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}
        kinds = "/".join(names[f] for f in t["formats"]) if t["formats"] else "any file"
        if t["safetensors"]:
            what = {"lora-sdxl": "an SDXL LoRA", "embedding-sdxl": "an SDXL embedding"}
            kinds = f"{what.get(t['safetensors'], t['safetensors'])} (.safetensors)"
        pixels = f", {t['max_pixels']:,} pixels" if t["max_pixels"] else ""
        return (
            f"{kinds} up to {t['max_bytes']:,} bytes{pixels}, as @file, ipfs://CID[/path] or "
            f"a CID; the job reads it at {t['mount']}"
        )
    return "any"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@app.command()
def render(
    ref: str = typer.Argument(..., help="Module reference, e.g. sdxl:v0.9-lilypad1."),
    inputs: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    json_output: bool = _json_option(),
    stray: list[str] = STRAY_ARGS,
) -> None:
    """Print the fully resolved job spec: image, env, machine needs, tunables and spec_hash.

    A local file (-i Image=@photo.png) shows as the CID it would have on IPFS; nothing is added.
    """
    import tempfile

    inputs = check_inputs(inputs, stray)
    module = _resolve(ref)
    with tempfile.TemporaryDirectory(prefix="lilypad-render-") as work:
        spec, _ = stage(module, inputs, Path(work))
    # The spec is data either way; both forms are stable, byte for byte, for the same inputs.
    emit(spec.model_dump(mode="json"), json_output, lambda: print(spec.to_json()))
