"""Faults lose no job (finding 6 of the trust review): the job creator follows its deal on chain
when the solver is gone, and retries an IPFS node that is down; the provider retries its upload,
never its run."""

from __future__ import annotations

from pathlib import Path

from lilypad.modules import render
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.node import EmbeddedNode
from lilypad.verification import Verify
from resource_provider.state import Phase
from tests.creator.conftest import Creator
from tests.provider.conftest import World, records, wait_for, wait_phase

SLOW = str(Path(__file__).resolve().parents[1] / "provider" / "fixtures" / "slow")


def test_a_result_reaches_the_job_creator_from_the_chain_when_the_solver_is_down(
    world: World, creator: Creator
) -> None:
    provider = world.net.providers[0]
    world.provider(provider, modules=(f"{SLOW}:local",))
    spec = render(f"{SLOW}:local", ["Message=the solver is gone"])
    job = creator.start(spec, Verify.NEVER)
    wait_phase(world.state_dir(provider), Phase.RUNNING, timeout=60)  # the spec is fetched
    world.server.__exit__()  # the solver goes down for good, before the result exists
    record = job.result(120)
    assert record.state == "accepted"
    assert (Path(record.output_dir or "") / "outputs" / "message.txt").read_text() == (
        "the solver is gone\n"
    )


def test_an_ipfs_node_down_at_upload_and_download_costs_a_retry_not_the_job(
    world: World, creator: Creator
) -> None:
    """The network's IPFS node dies while the provider finishes: it retries the upload (the job
    ran once); the job creator's download retries too; the node comes back and the job ends."""
    port = int(world.ipfs.api_url.rsplit(":", 1)[1])
    gateway = int(str(world.ipfs.gateway_url).rsplit(":", 1)[1])
    provider = world.net.providers[0]
    world.provider(provider, modules=(f"{SLOW}:local",))
    job = creator.start(render(f"{SLOW}:local", ["Message=ipfs is back"]), Verify.NEVER)
    wait_phase(world.state_dir(provider), Phase.RUNNING, timeout=60)
    world.ipfs.stop()
    (executed,) = wait_phase(world.state_dir(provider), Phase.EXECUTED, timeout=60)
    wait_for(lambda: "ipfs add" in (records(world.state_dir(provider))[0].error or ""), 30)
    assert executed.runs == 1
    revived = EmbeddedNode(
        Blockstore(world.ipfs.store.root),  # the same repository: what was added before
        api=f"127.0.0.1:{port}",
        gateway=f"127.0.0.1:{gateway}",
    ).start()
    try:
        record = job.result(120)
    finally:
        revived.stop()
    assert record.state == "accepted"
    (done,) = records(world.state_dir(provider))
    assert done.runs == 1  # the upload was retried, the job was not run again
    assert (Path(record.output_dir or "") / "outputs" / "message.txt").read_text() == (
        "ipfs is back\n"
    )
