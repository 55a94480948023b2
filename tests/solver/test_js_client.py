"""A job creator in JavaScript (ethers 6), written from the README's solver API rules alone,
against a real solver on a real chain: the canonical spec encoding, the signature forms, decimal
amounts, the event stream and the deal id are the protocol, not Python's habits."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from lilypad.chain.light import DealState
from lilypad.chain.offers import module_id
from lilypad.modules import render, resolve
from lilypad.modules.spec import canonical_json
from lilypad.solver_api import EventKind
from tests.conftest import missing
from tests.solver.conftest import ETH, HAS, Net, Server

JS = Path(__file__).parent / "js"
MODULE = "sdxl:v1.0-lilypad1"  # float tunables (GuidanceScale, RefinerSwitch), float machine needs

#: RFC 8785 as README.md's "Canonical spec encoding" states it: (value, its canonical JSON).
VECTORS: list[tuple[Any, str]] = [
    (
        {"b": 1.5, "a": 0.0, "c": 1e21, "d": -0.0, "e": 1e-7, "f": 0.000001, "g": 100.0, "h": 7},
        '{"a":0,"b":1.5,"c":1e+21,"d":0,"e":1e-7,"f":0.000001,"g":100,"h":7}',
    ),
    (
        {
            "€": "€",
            "\r": "line\nbreak",
            "ö": 'say "hi"',
            "😀": "😀",
            "\ufb33": "\\",
            "1": "\x00\x1f\x7f",
        },
        '{"\\r":"line\\nbreak","1":"\\u0000\\u001f\x7f","ö":"say \\"hi\\"","€":"€","😀":"😀",'
        '"\ufb33":"\\\\"}',
    ),
    (
        {
            "tunables": {"Seed": 9223372036854775807, "Prompt": "café ☕"},
            "machine": {"vram_gb": 16.0, "cpus": 0.5, "gpus": 1},
            "entrypoint": ["python", "sdxl.py"],
            "source": {"commit": None, "kind": "builtin"},
            "ok": True,
        },
        '{"entrypoint":["python","sdxl.py"],"machine":{"cpus":0.5,"gpus":1,"vram_gb":16},'
        '"ok":true,"source":{"commit":null,"kind":"builtin"},'
        '"tunables":{"Prompt":"café ☕","Seed":9223372036854775807}}',
    ),
]
#: The hash of cowsay:v0.0.4 rendered with its defaults (README.md quotes it).
COWSAY_DEFAULT = "sha256:5c0a8d0caa026513f808183103e1162108609bde3a71be26e39fb4b9ec699fdb"


def node(*args: str, stdin: str | None = None, timeout: float = 90) -> str:
    exe = shutil.which("node")
    if exe is None or not (JS / "node_modules" / "ethers").is_dir():
        missing("Node and tests/solver/js's npm packages (ethers)", "run `make install`")
    assert exe is not None
    done = subprocess.run(
        [exe, str(JS / "creator.mjs"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=JS,
    )
    if done.returncode != 0:
        raise AssertionError(f"node creator.mjs {args[0]} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def _for_js(value: Any) -> Any:
    """JSON the JS side can read: integers beyond 2**53 - 1 as {"bigint": digits}."""
    if isinstance(value, dict):
        return {k: _for_js(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_js(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        return {"bigint": str(value)}
    return value


@pytest.mark.parametrize(("value", "expected"), VECTORS)
def test_canonical_json_is_rfc_8785(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected


def test_javascript_writes_the_same_canonical_json_and_hashes() -> None:
    values = [v for v, _ in VECTORS] + [render(MODULE).model_dump(mode="json")]
    lines = node("vectors", stdin=json.dumps(_for_js(values))).splitlines()
    assert [json.loads(line)["jcs"] for line in lines] == [canonical_json(v) for v in values]
    spec = render(MODULE)
    body = {k: v for k, v in spec.model_dump(mode="json").items() if k != "spec_hash"}
    assert json.loads(node("vectors", stdin=json.dumps([body])))["sha256"] == spec.spec_hash[7:]


def test_the_spec_hash_of_a_default_cowsay_is_the_readmes() -> None:
    assert render("cowsay:v0.0.4").spec_hash == COWSAY_DEFAULT


def test_float_tunables_reach_the_job_as_the_readme_says() -> None:
    floats = [7.0, 0.8, 0.0001, 1e-05, 1e15, 1e16, 1.5e16, 123456789.125, -2.5, 0.0, 1e21]
    assert json.loads(node("float-text", json.dumps(floats))) == [repr(f) for f in floats]


def test_a_javascript_job_creator_gets_deals(net: Net, served: tuple[Server, httpx.Client]) -> None:
    server, client = served
    for provider in net.providers[:2]:
        offer = net.resource(provider, module=module_id(MODULE), machine=HAS.encode())
        assert client.post("/api/v1/resource_offers", json=offer.model_dump(mode="json")).is_success
    module = resolve(MODULE)
    creator = net.creators[0]
    config = {
        "solver": server.url,
        "chainId": net.chain.chain_id,
        "market": net.market.address,
        "key": "0x" + bytes(creator.key).hex(),
        "mediator": net.mediator.address,
        "maxPrice": str(10 * ETH + 1),  # above 2**53: a JSON number would round it
        "expiry": net.now() + 3600,
        "nonces": {label: net.nonce() for label in ("full", "compact", "v01", "noMachine")},
        "module": {
            "module": module.ref,
            "name": module.name,
            "version": module.version,
            "source": {"kind": module.source.kind.value, "location": module.source.location},
            "manifest": module.spec.model_dump(mode="json"),
        },
    }
    result = json.loads(node("run", json.dumps(config)))

    assert "machine" in result["refused"]
    signatures = {k: len(bytes.fromhex(v["signature"][2:])) for k, v in result["offers"].items()}
    assert signatures == {"full": 65, "compact": 64, "v01": 65}
    assert set(result["kinds"]) <= set(EventKind)
    assert result["kinds"].count("job_offer.added") == 3
    for label, deal in result["deals"].items():
        assert deal["price"] == str(5 * ETH)
        assert net.market.deal_status(deal["deal_id"]).state is DealState.CREATED, label
        view = client.get(f"/api/v1/deals/{deal['deal_id']}").json()
        assert view["job_offer_id"] == result["offers"][label]["id"]
    assert {d["provider"] for d in result["deals"].values()} == {
        p.address for p in net.providers[:2]
    }
