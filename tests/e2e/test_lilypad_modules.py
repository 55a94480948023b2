"""A module repository in Lilypad's format (``lilypad_module.json.tmpl``), served by ``lilypad
network up --module`` and run through the market in Docker like a built-in one: rendered by the
job creator and the solver, matched, run by the provider, audited by the mediator, settled."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import docker
import pytest

from lilypad.localnet import key_file
from lilypad.storage import NETWORK_PROFILE
from resource_provider.executors import engine_problem
from tests.conftest import Reference, missing
from tests.e2e.conftest import Up, chain_events, lilypad, logs, run_job
from tests.e2e.test_local_network import containers_started
from tests.test_lilypad_format import DOCKERFILE, LILYSAY, make_repo

NETWORK = "e2e-lilypad"
IMAGE = "lilypad/lilysay-test:v0.1.0"  # LILYSAY's


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.timeout(600)
def test_a_lilypad_module_runs_on_the_network_in_docker(
    tmp_path: Path, network_up: Up, js_reference: Reference
) -> None:
    problem = engine_problem()
    if problem:
        missing("a Docker Engine", f"as root: make services: {problem}")
    _, bare = make_repo(tmp_path, "lilypad-module-lilysay", LILYSAY, Dockerfile=DOCKERFILE)
    ref = f"file://{bare}:v0.1.0"
    client = docker.from_env()
    with contextlib.suppress(docker.errors.ImageNotFound):  # left by another test
        client.images.remove(IMAGE, force=True)
    client.close()
    # without its image, a Lilypad module cannot run: network up says so before starting
    refused = lilypad("network", "up", "--network", NETWORK, "--detach", "--module", ref,
                      "--port-offset", "3300")  # fmt: skip
    if refused.returncode == 0:  # started after all: leave nothing running
        lilypad("network", "down", "--network", NETWORK)
    assert refused.returncode == 2, refused.stderr
    assert "lilypad module build" in refused.stderr
    built = lilypad("module", "build", ref, "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)[0]["image"] == IMAGE

    profile = network_up(NETWORK, "--port-offset", "3300", "--module", ref)
    show = lilypad("module", "show", ref, "--json")
    assert show.returncode == 0, show.stderr
    # what would break out of a JSON string in Lilypad arrives as the literal message
    message = 'a "quoted" } message, with \\ and = signs'
    since = time.time()
    record = run_job(NETWORK, ref, f"Message={message}", verify="always")
    out = Path(record["output_dir"])
    assert (out / "outputs" / "said.txt").read_text() == message + "\n"
    assert (out / "outputs" / "cwd.txt").read_text() == "/tmp\n"  # the template's WorkingDirectory
    assert containers_started(IMAGE, since) >= 2, (
        "the provider and the auditing mediator each run it in Docker" + logs(NETWORK)
    )
    assert js_reference(out, NETWORK_PROFILE) == record["result_cid"]
    assert (record["audited"], record["state"]) == (True, "upheld"), record  # the mediator agreed
    rulings = chain_events(profile, "MediationResolved")
    assert [(e.args["dealId"], e.args["providerWins"]) for e in rulings] == [
        (record["deal_id"], True)
    ]

    # a value the template does not let through is refused before anything is signed
    whole = lilypad(
        "run", ref, "--network", NETWORK, "--yes", "-i", "Unknown=1",
        "--key-file", str(key_file(NETWORK, "job_creator")),
    )  # fmt: skip
    assert whole.returncode == 2, whole.stderr
    assert "Unknown" in whole.stderr
