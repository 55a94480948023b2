"""Leaving a job and coming back to it (``lilypad run --detach``, ``lilypad jobs wait|cancel|
timeout|get``) against the real chain, solver, IPFS node and provider: a job taken up from its
record ends as ``run`` would have ended it, and no step is sent to the chain twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lilypad.chain.crypto import keccak
from lilypad.chain.light import LightChain
from lilypad.chain.offers import min_job_timeout
from lilypad.creator import JobState, Step, find_record, jobs_dir
from lilypad.creator.runner import _job_lock
from lilypad.solver_api import SolverClient
from tests.conftest import CliResult, CliRunner
from tests.creator.conftest import Creator, cowsay
from tests.provider.conftest import World
from tests.solver.test_run import Stack, StandInProvider

RUN = ("run", "cowsay:v0.0.4", "--network", "test", "--yes", "--verify", "never")
#: What a record of an earlier version lacks: taken up from the chain and the solver instead.
NEW_FIELDS = ("job_creator", "offer", "deal", "result_limit")


@pytest.fixture
def profile(creator: Creator, monkeypatch: pytest.MonkeyPatch) -> None:
    creator.world.profile()
    monkeypatch.setenv("WEB3_PRIVATE_KEY", creator.account.key.hex())


def _detach(cli: CliRunner, *args: str) -> dict[str, Any]:
    result = cli(*RUN, *args, "--detach", "--json")
    assert result.exit_code == 0, result.stderr
    record: dict[str, Any] = json.loads(result.stdout)
    assert record["state"] == "created"
    return record


def _said(result: CliResult) -> str:
    return " ".join(result.stderr.split())


def _block(world: World) -> int:
    return int(world.net.chain.w3.eth.block_number)


def _accepted_events(world: World, deal_id: str) -> int:
    chain = LightChain(world.net.anvil.rpc_url)
    try:
        topics = [keccak(text="ResultAccepted(bytes32)"), bytes.fromhex(deal_id[2:])]
        return len(chain.logs("accepted", world.net.deployment.market, topics, 0))
    finally:
        chain.close()


def test_detach_then_wait_gives_the_verified_result_run_gives(
    profile: None, creator: Creator, cli: CliRunner, tmp_path: Path
) -> None:
    world = creator.world
    provider = world.net.providers[0]
    before = world.market.balance_of(provider.address)
    posted = _detach(cli, "-i", "Message=left and back")
    job_id = posted["job_offer_id"]
    assert posted["offer"]["expiry"]
    assert posted["job_creator"] == creator.account.address

    world.provider(provider)
    deal = world.deal_of(job_id, timeout=60)
    refused = cli("jobs", "cancel", job_id)  # too late to withdraw: point at wait
    assert refused.exit_code == 2, refused.stderr
    assert "already dealt" in _said(refused)
    assert f"lilypad jobs wait {job_id}" in _said(refused)

    with _job_lock(job_id):  # another process follows it now
        busy = cli("jobs", "wait", job_id[:12])
    assert busy.exit_code == 2, busy.stderr
    assert "is being followed by another lilypad process" in _said(busy)

    waited = cli("jobs", "wait", job_id[:12], "--json")
    assert waited.exit_code == 0, waited.stderr
    record = json.loads(waited.stdout)
    assert record["state"] == "accepted"
    assert record["deal_id"] == deal["deal_id"]
    out = Path(record["output_dir"])
    assert (out / "outputs" / "cowsay.txt").is_file()
    assert "left and back" in (out / "stdout").read_text()
    assert world.market.balance_of(provider.address) == before + int(record["price"])
    assert _accepted_events(world, record["deal_id"]) == 1

    # The job has ended: waiting again prints it and exits 0, with nothing sent to the chain.
    block = _block(world)
    again = cli("jobs", "wait", job_id, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["state"] == "accepted"
    assert _block(world) == block
    settled = cli("jobs", "timeout", job_id)  # settled: said so, no transaction
    assert settled.exit_code == 0, settled.stderr
    assert "accepted" in settled.stdout
    assert _block(world) == block

    # get fetches the result again, verified, into a new folder or the job's own.
    fetched = cli("jobs", "get", job_id, "-o", str(tmp_path / "again"), "--json")
    assert fetched.exit_code == 0, fetched.stderr
    assert json.loads(fetched.stdout)["cid"] == record["result_cid"]
    assert (tmp_path / "again" / "stdout").read_text() == (out / "stdout").read_text()
    (out / "stdout").write_text("edited")
    assert cli("jobs", "get", job_id).exit_code == 0
    assert "left and back" in (out / "stdout").read_text()
    full = cli("jobs", "get", job_id, "-o", str(tmp_path))  # holds "again": refused
    assert full.exit_code == 2
    assert f"-o {tmp_path} is not an empty folder" in _said(full)


def test_a_wait_stopped_after_the_deal_and_after_accepting_ends_once(
    creator: Creator, world: World
) -> None:
    """Ctrl-C once the deal is made, then a crash between the accept transaction and the record
    save, then a wait that completes: paid once, accepted once, and the record says so. The
    record is also one of an earlier version (no offer, deal or creator saved): the wait takes
    it all from the chain."""
    spec = cowsay("stopped and resumed")
    runner = creator.runner()
    try:
        posted = runner.post(spec, creator.options(spec))
    finally:
        runner.close()
    assert posted.job_offer_id is not None
    path = jobs_dir() / f"{posted.job_offer_id}.json"
    world.provider()

    def interrupted(step: Step) -> None:
        if step.name == "deal":
            raise KeyboardInterrupt

    first = creator.runner()
    first.on_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        first.resume(posted)
    first.close()
    dealt = find_record(posted.job_offer_id)
    assert dealt.state is JobState.DEALT
    assert dealt.deal_id is not None
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in NEW_FIELDS}
    path.write_text(json.dumps(old))

    second = creator.runner()
    accept = second.market.accept_result

    def accept_then_crash(*args: Any) -> Any:
        accept(*args)
        raise KeyboardInterrupt  # the transaction is mined; the record is not saved as accepted

    second.market.accept_result = accept_then_crash  # type: ignore[method-assign,assignment]
    with pytest.raises(KeyboardInterrupt):
        second.resume(dealt)
    second.close()
    crashed = find_record(posted.job_offer_id)
    assert crashed.state is JobState.RESULT_SUBMITTED
    assert crashed.deal is not None  # recovered from the chain, and saved
    assert _accepted_events(world, dealt.deal_id) == 1

    third = creator.runner()
    try:
        done = third.resume(crashed)
    finally:
        third.close()
    assert done.state is JobState.ACCEPTED
    assert "stopped and resumed" in (Path(done.output_dir or "") / "stdout").read_text()
    assert _accepted_events(world, dealt.deal_id) == 1  # not sent again
    assert find_record(posted.job_offer_id).state is JobState.ACCEPTED


def test_cancel_frees_the_deposit_and_bad_ids_and_states_are_exit_2(
    profile: None, creator: Creator, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = creator.world
    solver = SolverClient(world.server.url)
    address = creator.account.address
    try:
        assert solver.account(address).committed_by_job_offers == 0
        job_id = _detach(cli, "-i", "Message=nobody takes this")["job_offer_id"]
        assert solver.account(address).committed_by_job_offers > 0

        nothing = cli("jobs", "get", job_id)
        assert nothing.exit_code == 2
        assert "has no result yet (state created)" in _said(nothing)
        early = cli("jobs", "timeout", job_id)
        assert early.exit_code == 2
        assert "has no deal (state created)" in _said(early)
        monkeypatch.setenv("WEB3_PRIVATE_KEY", world.net.creators[1].key.hex())
        for command in ("wait", "cancel", "timeout"):
            theirs = cli("jobs", command, job_id)
            assert theirs.exit_code == 2, (command, theirs.stderr)
            assert f"was posted by {address}, not by {world.net.creators[1].address}" in _said(
                theirs
            )
        monkeypatch.setenv("WEB3_PRIVATE_KEY", creator.account.key.hex())

        block = _block(world)
        cancelled = cli("jobs", "cancel", job_id[:10])
        assert cancelled.exit_code == 0, cancelled.stderr
        assert "withdrawn" in cancelled.stdout
        assert solver.account(address).committed_by_job_offers == 0  # the deposit is free again
        assert solver.job_offer(job_id).state == "cancelled"
        twice = cli("jobs", "cancel", job_id)
        assert twice.exit_code == 0
        assert "already withdrawn" in twice.stdout
        assert _block(world) == block  # withdrawing costs no transaction
        ended = cli("jobs", "wait", job_id)  # as run ends when nobody takes the offer
        assert ended.exit_code == 1
        assert "withdrawn" in _said(ended)
    finally:
        solver.close()

    for command in ("wait", "cancel", "timeout", "get", "show"):
        unknown = cli("jobs", command, "0xfeed")
        assert unknown.exit_code == 2, (command, unknown.stderr)
        assert "no job with id starting '0xfeed'" in _said(unknown)
    redundant = cli(*RUN[:-1], "redundant", "--detach")
    assert redundant.exit_code == 2
    assert "--verify redundant cannot be detached" in _said(redundant)


def test_timeout_is_refused_before_the_deadline_and_refunds_after(
    profile: None, creator: Creator, cli: CliRunner, tmp_path: Path
) -> None:
    world = creator.world
    stack = Stack(world.net, world.server, world.ipfs)
    provider = StandInProvider(stack, world.net.providers[1], tmp_path / "r", deliver=False)
    provider.start()
    address = creator.account.address
    before = world.market.balance_of(address)
    timeout = str(min_job_timeout(60))
    job_id = _detach(cli, "--timeout", timeout, "--max-price", "5")["job_offer_id"]
    world.deal_of(job_id, timeout=60)

    early = cli("jobs", "timeout", job_id)
    assert early.exit_code == 2, early.stderr
    said = _said(early)
    assert "the result deadline of deal" in said
    assert "has not passed: chain time" in said
    assert "deadline" in said

    world.advance(int(timeout) + 5)
    done = cli("jobs", "timeout", job_id, "--json")
    assert done.exit_code == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "timed_out"
    assert record["txs"]["timeout"]
    # the price came back, and the provider's collateral went to the job creator
    assert world.market.balance_of(address) == before + provider.offer.offer.collateral
    block = _block(world)
    again = cli("jobs", "timeout", job_id)
    assert again.exit_code == 0
    assert "timed_out" in again.stdout
    assert _block(world) == block
    ended = cli("jobs", "wait", job_id)
    assert ended.exit_code == 1
    assert "refunded" in _said(ended)


def test_a_provider_killed_mid_job_then_restarted_and_jobs_wait_completes(
    profile: None, creator: Creator, cli: CliRunner, tmp_path: Path
) -> None:
    """The job creator left (``--detach``), its provider was killed while the job ran and came
    back: ``jobs wait`` follows the deal to the result the restarted provider submits."""
    from tests.provider.conftest import wait_for
    from tests.provider.test_restart import SLOW, Daemon

    world = creator.world
    daemon = Daemon(world, tmp_path / "provider-state")
    daemon.start()
    try:
        posted = cli(
            "run", SLOW, "--network", "test", "--yes", "--verify", "never",
            "-i", "Message=killed and back", "--detach", "--json",
        )  # fmt: skip
        assert posted.exit_code == 0, posted.stderr
        job_id = json.loads(posted.stdout)["job_offer_id"]
        deal_id = world.deal_of(job_id, timeout=60)["deal_id"]
        started = daemon.data_dir / "results" / deal_id / "outputs" / "started"
        wait_for(started.exists, 60)
        daemon.kill()  # mid-job: nothing on chain yet
        daemon.start()
        waited = cli("jobs", "wait", job_id, "--json")
        assert waited.exit_code == 0, waited.stderr
        record = json.loads(waited.stdout)
        assert record["state"] == "accepted"
        outputs = Path(record["output_dir"]) / "outputs"
        assert (outputs / "message.txt").read_text() == "killed and back\n"
        assert _accepted_events(world, deal_id) == 1
    finally:
        daemon.terminate()
