"""``lilypad network up`` on one machine, as a developer uses it: cowsay in Docker, SDXL and the
rest of the Stable Diffusion family with tiny weights as local processes (their GPU images cannot
be built here), all through the market."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
from PIL import Image

from lilypad.localnet import key_file
from lilypad.storage import CID, NETWORK_PROFILE
from resource_provider.executors import engine_problem
from tests.conftest import Reference, missing
from tests.e2e.conftest import Up, chain_events, lilypad, run_job

NETWORK = "e2e"
COWSAY_IMAGE = "lilypad/cowsay:v0.0.4"


def containers_started(image: str, since: float) -> int:
    """How many containers of ``image`` the Docker Engine started since ``since``."""
    client = docker.from_env()
    try:
        # the executor starts the image it checked, by id: match the tag's id too
        names = {image}
        with contextlib.suppress(docker.errors.ImageNotFound):
            names.add(client.images.get(image).id)
        events = client.events(
            since=int(since),
            until=int(time.time()) + 1,
            filters={"type": "container", "event": "start"},
            decode=True,
        )
        return sum(1 for e in events if e.get("from") in names)
    finally:
        client.close()


@pytest.fixture
def engine_with_cowsay() -> None:
    problem = engine_problem()
    if problem:
        missing("a Docker Engine", f"as root: make services: {problem}")
    client = docker.from_env()
    try:
        client.images.get(COWSAY_IMAGE)
    except docker.errors.ImageNotFound:
        missing(f"the {COWSAY_IMAGE} image", "build it with `make images`")
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.timeout(900)
def test_network_up_runs_jobs_end_to_end(
    network_up: Up, engine_with_cowsay: None, js_reference: Reference, tmp_path: Path
) -> None:
    profile = network_up(NETWORK, "--port-offset", "3000")  # the executor is left to pick
    status = lilypad("network", "status", "--network", NETWORK, "--json")
    services = json.loads(status.stdout)["services"]
    assert {s["service"]: s["running"] for s in services} == {
        "chain": True,
        "ipfs": True,
        "solver": True,
        "provider": True,
        "mediator": True,
        "bridge": True,
    }

    # the market as a user sees it: the local provider, its machine and what it serves
    listed = lilypad("providers", "list", "--network", NETWORK, "--json")
    assert listed.returncode == 0, listed.stderr
    [provider] = json.loads(listed.stdout)
    assert "cowsay:v0.0.4" in provider["modules"]
    assert "sd15:v1.0-lilypad1" in provider["modules"]
    assert provider["machine"]["cpu_millis"] >= 1000
    assert [g["model"] for g in provider["gpus"]] == ["emulated: tiny weights on the CPU"]

    # leave a job and come back to it, see its logs, fetch it again, look at the account
    key = ["--key-file", str(key_file(NETWORK, "job_creator"))]
    posted = lilypad(
        "run", "cowsay:v0.0.4", "-i", "Message=left and back", "--network", NETWORK, "--yes",
        "--detach", "--json", *key,
    )  # fmt: skip
    assert posted.returncode == 0, posted.stderr
    job_id = json.loads(posted.stdout)["job_offer_id"]
    waited = lilypad("jobs", "wait", job_id, "--json", *key, timeout=300)
    assert waited.returncode == 0, waited.stderr
    left = json.loads(waited.stdout)
    assert left["state"] in ("accepted", "upheld"), left
    logs = lilypad("jobs", "logs", job_id, *key)
    assert logs.returncode == 0, logs.stderr
    again = tmp_path / "again"
    got = lilypad("jobs", "get", job_id, "-o", str(again))
    assert got.returncode == 0, got.stderr
    assert "left and back" in (again / "outputs" / "cowsay.txt").read_text()
    account = lilypad("account", "--network", NETWORK, "--json", *key)
    assert account.returncode == 0, account.stderr
    assert json.loads(account.stdout)["address"] == left["job_creator"]

    since = time.time()
    record = run_job(NETWORK, "cowsay:v0.0.4", "Message=hello from the network")
    out = Path(record["output_dir"])
    assert "hello from the network" in (out / "outputs" / "cowsay.txt").read_text()
    assert (out / "exitCode").read_text() == "0"
    assert containers_started(COWSAY_IMAGE, since) >= 1, "cowsay did not run in Docker"
    # the CID on chain is the reference importer's CID of exactly what was saved
    submitted = {
        e.args["dealId"]: e.args["resultCid"] for e in chain_events(profile, "ResultSubmitted")
    }
    on_chain = bytes.fromhex(submitted[record["deal_id"]].removeprefix("0x"))
    assert str(CID.parse(on_chain)) == record["result_cid"]
    assert js_reference(out, NETWORK_PROFILE) == record["result_cid"]

    # an ML module with tiny weights, through the same network, as a local process
    since = time.time()
    # audited: the network's mediator re-runs it and compares the images perceptually
    sdxl = run_job(
        NETWORK, "sdxl:v0.9-lilypad1", "Prompt=a lighthouse", timeout=600, verify="always"
    )
    assert sdxl["state"] == "upheld", sdxl
    sdxl_out = Path(sdxl["output_dir"])
    with Image.open(sdxl_out / "outputs" / "image-0.png") as image:
        image.load()  # decodes every pixel
        assert image.size[0] > 0
        assert image.mode in ("RGB", "RGBA")
    assert js_reference(sdxl_out, NETWORK_PROFILE) == sdxl["result_cid"]
    assert containers_started("lilypad/sdxl:v0.9-lilypad1", since) == 0

    # file inputs, as the README writes them: a local picture (added to the network's IPFS by
    # the CLI, fetched by the provider and, audited, by the mediator, each verified) ...
    photo = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (30, 120, 200)).save(photo)
    edited = run_job(
        NETWORK, "sdxl-img2img:v1.0-lilypad1", f"Image=@{photo}", "Prompt=a watercolour painting",
        "Strength=0.5", timeout=600, verify="always",
    )  # fmt: skip
    assert edited["state"] == "upheld", edited
    assert edited["tunables"]["Image"].endswith("/photo.png")
    with Image.open(Path(edited["output_dir"]) / "outputs" / "image-0.png") as image:
        image.load()
    # ... and the SDXL job's output, by CID
    source = f"{sdxl['result_cid']}/outputs/image-0.png"
    chained = run_job(
        NETWORK, "sdxl-img2img:v1.0-lilypad1", f"Image=ipfs://{source}", "Prompt=at night",
        timeout=600, verify="never",
    )  # fmt: skip
    assert chained["tunables"]["Image"] == source
    assert (Path(chained["output_dir"]) / "exitCode").read_text() == "0"

    # the rest of the family, side by side through the market (one provider slot per module
    # version): SD 1.5 audited by the mediator, the others as a user runs them by default
    family = {
        "sd15:v1.0-lilypad1": "always",
        "sd21:v1.0-lilypad1": "never",
        "sdxl-turbo:v1.0-lilypad1": "never",
        "sd-turbo:v1.0-lilypad1": "never",
        "lcm:v1.0-lilypad1": "never",
    }
    with ThreadPoolExecutor(len(family)) as pool:
        runs = {
            module: pool.submit(
                run_job, NETWORK, module, "Prompt=a red fox", timeout=600, verify=verify
            )
            for module, verify in family.items()
        }
        records = {module: run.result() for module, run in runs.items()}
    assert records["sd15:v1.0-lilypad1"]["state"] == "upheld", records["sd15:v1.0-lilypad1"]
    cids = set()
    for module, record in records.items():
        folder = Path(record["output_dir"])
        assert (folder / "exitCode").read_text() == "0", module
        with Image.open(folder / "outputs" / "image-0.png") as image:
            image.load()
            assert image.mode in ("RGB", "RGBA"), module
        assert js_reference(folder, NETWORK_PROFILE) == record["result_cid"], module
        cids.add(record["result_cid"])
    assert len(cids) == len(family), "two models gave the same result"
