"""Following events: confirmations, resumption from a block, filtering by name."""

from __future__ import annotations

from collections.abc import Mapping

from lilypad.chain import Deal, EventFollower
from tests.chain.conftest import CID, Env


def follower(env: Env, **kwargs: object) -> EventFollower:
    return EventFollower(env.chain, [env.market.contract], **kwargs)  # type: ignore[arg-type]


def test_events_wait_for_their_confirmations(env: Env) -> None:
    start = env.chain.w3.eth.block_number + 1
    events = follower(env, from_block=start, confirmations=2)
    deal = env.deal()
    assert events.poll() == []
    env.rpc("evm_mine")
    assert events.poll() == []
    env.rpc("evm_mine")
    (created,) = events.poll()
    assert created.name == "DealCreated"
    assert created.args["dealId"] == deal.deal_id
    assert Deal.from_event(created.args["deal"]) == deal
    assert events.poll() == []


def test_a_follower_resumes_where_it_stopped(env: Env) -> None:
    start = env.chain.w3.eth.block_number + 1
    first = follower(env, from_block=start)
    deal = env.deal()
    assert [e.name for e in first.poll()] == ["DealCreated"]
    resume_at = first.next_block
    env.market.submit_result(env.provider, deal, CID)
    env.market.accept_result(env.jc, deal)
    # A new process resumes from the persisted block: nothing missed, nothing twice.
    second = follower(env, from_block=resume_at, batch_blocks=1)
    seen = second.poll()
    assert [e.name for e in seen] == ["ResultSubmitted", "ResultAccepted"]
    assert seen[0].args["resultCid"] == "0x" + CID.hex()
    assert all(e.args["dealId"] == deal.deal_id for e in seen)
    assert seen[0].block_number < seen[1].block_number


def test_only_the_named_events_are_reported(env: Env) -> None:
    start = env.chain.w3.eth.block_number + 1
    events = follower(env, from_block=start, events=["ResultSubmitted"])
    env.submitted()
    assert [e.name for e in events.poll()] == ["ResultSubmitted"]


def test_follow_stops_when_asked(env: Env) -> None:
    import threading

    stop = threading.Event()
    events = follower(env, from_block=env.chain.w3.eth.block_number + 1)
    env.deal()
    for event in events.follow(stop, poll_interval=0.01):
        assert event.name == "DealCreated"
        stop.set()
    assert stop.is_set()


def test_every_market_event_reads_as_web3_decodes_it(env: Env) -> None:
    """The follower decodes logs itself (no web3 formatters): each kind of the market's events,
    structs and enums and dynamic bytes included, gives what web3's own decoder gives."""
    start = env.chain.w3.eth.block_number + 1
    env.market.deposit(env.jc, 5)
    env.market.withdraw(env.jc, 5)
    accepted = env.submitted()
    env.market.accept_result(env.jc, accepted)
    upheld = env.challenged()
    env.market.resolve_mediation(env.mediator, upheld, provider_wins=True, result_cid=CID)
    timed_out = env.deal()
    lapsed = env.challenged()
    env.advance(3600 * 24 * 30)
    env.market.timeout_result(env.stranger, timed_out)
    env.market.timeout_mediation(env.stranger, lapsed)

    seen = follower(env, from_block=start).poll()
    logs = env.chain.w3.eth.get_logs(
        {"fromBlock": start, "toBlock": "latest", "address": env.market.address}
    )
    by_topic = {bytes.fromhex(e.topic[2:]): e for e in env.market.contract.all_events()}
    expected = []
    for log in logs:
        decoded = by_topic[bytes(log["topics"][0])].process_log(log)
        args = {k: _plain(v) for k, v in decoded["args"].items()}
        expected.append((decoded["event"], args, decoded["address"], decoded["blockNumber"]))
    assert [(e.name, e.args, e.address, e.block_number) for e in seen] == expected
    names = {e.name for e in seen}
    assert {"Deposited", "Withdrawn", "DealCreated", "ResultSubmitted", "ResultAccepted"} <= names
    assert {"ResultChallenged", "MediationResolved", "DealTimedOut"} <= names


def _plain(value: object) -> object:
    """web3's decoded value as the follower gives it: bytes as hex, structs (web3's
    AttributeDict) as dicts, and sequences as lists."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
