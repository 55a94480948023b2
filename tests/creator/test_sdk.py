"""The Python SDK (:mod:`lilypad.client`) against the real chain, solver, IPFS node and providers
of ``tests/creator/conftest.py``: a job run from a program ends as ``lilypad run`` ends it, with
the same checks before anything is signed, and a job submitted can be waited for, read and
cancelled."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from PIL import Image

import lilypad
from lilypad.chain.light import CreatorMarket, LightChain
from lilypad.client import AsyncClient, Client, Result
from lilypad.creator import Cancelled, JobState, Step, load_records
from lilypad.errors import InputError, InvalidTunable
from lilypad.solver_api import SolverClient
from lilypad.storage import compute_cid
from tests.creator.conftest import Creator
from tests.provider.conftest import World, wait_for
from tests.test_file_inputs import module_dir  # noqa: F401 - the fixture

COWSAY = "cowsay:v0.0.4"


@pytest.fixture
def client(creator: Creator) -> Client:
    creator.world.profile()
    return Client("test", key=creator.account.key.hex())


def _deposit(world: World, creator: Creator) -> int:
    """The account's deposit in the market, on chain."""
    market = CreatorMarket(LightChain(world.net.anvil.rpc_url), world.net.deployment.market)
    try:
        return market.balance_of(creator.account.address)
    finally:
        market.chain.close()


def _committed(world: World, creator: Creator) -> int:
    """What the solver counts the account's open offers as holding of its deposit."""
    with SolverClient(world.server.url) as solver:
        return solver.account(creator.account.address).committed_by_job_offers


def test_a_job_runs_from_a_program_as_lilypad_run_runs_it(
    creator: Creator, client: Client, tmp_path: Path
) -> None:
    creator.world.provider(creator.world.net.providers[0])
    steps: list[Step] = []

    result = client.run(
        COWSAY,
        Message="from the SDK",
        verify="never",
        on_progress=steps.append,
        output_dir=tmp_path / "copy",
    )

    assert isinstance(result, Result)
    assert result.state is JobState.ACCEPTED
    assert result.cid == str(compute_cid(result.output_dir))  # the folder is what the CID names
    assert "outputs/cowsay.txt" in result.outputs
    assert "< from the SDK >" in (result.output_dir / "outputs" / "cowsay.txt").read_text()
    assert (tmp_path / "copy" / "outputs" / "cowsay.txt").is_file()
    assert result.urls["outputs/cowsay.txt"].endswith(f"/ipfs/{result.cid}/outputs/cowsay.txt")
    assert result.provider == creator.world.net.providers[0].address
    names = [step.name for step in steps]
    assert names.index("posted") < names.index("deal") < names.index("accepted")
    assert all(step.text for step in steps)  # every step says something in words
    assert {"posted", "deal", "accepted"} <= set(result.timings)
    assert [r.job_offer_id for r in load_records()] == [result.job_id]  # lilypad jobs list


@pytest.mark.parametrize(
    ("inputs", "options", "error", "says"),
    [
        ({"Mesage": "hi"}, {}, InvalidTunable, "Message"),  # the close match is named
        ({"Message": 24}, {}, InvalidTunable, "is not a JSON string"),
        ({}, {"expires_in": 5}, InputError, "expires_in 5 is out of range"),
        ({}, {"retries": 11}, InputError, "retries 11 is out of range"),
        ({}, {"max_price": "ten"}, InputError, "max_price 'ten'"),
        ({}, {"verify": "sometimes"}, InputError, "verify 'sometimes'"),
        ({}, {"target": "0x1234"}, InputError, "target '0x1234'"),
        ({}, {"timeout": 3}, InputError, "timeout 3 is less than"),
        ({}, {"mediators": ["nobody"]}, InputError, "mediators 'nobody'"),
    ],
)
def test_a_bad_input_or_option_is_refused_before_anything_is_signed(
    creator: Creator,
    client: Client,
    inputs: dict[str, object],
    options: dict[str, object],
    error: type[Exception],
    says: str,
) -> None:
    before = _deposit(creator.world, creator)
    with pytest.raises(error, match=says):
        client.run(COWSAY, inputs, **options)  # type: ignore[arg-type]
    assert load_records() == []  # nothing posted
    assert _deposit(creator.world, creator) == before  # nothing deposited


def test_a_client_that_may_not_deposit_says_so_and_posts_nothing(creator: Creator) -> None:
    creator.world.profile()
    strict = Client("test", key=creator.account.key.hex(), deposit=False)
    before = _deposit(creator.world, creator)  # 100 tokens: short of an offer of 150
    with pytest.raises(InputError, match="deposit=False"):
        strict.run(COWSAY, Message="no deposit", max_price="150")
    assert load_records() == []
    assert _deposit(creator.world, creator) == before


def test_a_submitted_job_is_waited_for_and_its_logs_read(creator: Creator, client: Client) -> None:
    creator.world.provider(creator.world.net.providers[0])
    seen: list[str] = []

    first = client.submit(COWSAY, ["Message=one"], verify="never", on_progress=lambda s: None)
    second = client.submit(COWSAY, Message="two", verify="never")
    assert first.id is not None  # posted: it has its offer's id already
    assert second.id not in (None, first.id)
    second.subscribe(lambda step: seen.append(step.name))

    results = [first.wait(120), second.wait(120)]

    assert [r.state for r in results] == [JobState.ACCEPTED, JobState.ACCEPTED]
    assert "< two >" in (results[1].output_dir / "outputs" / "cowsay.txt").read_text()
    assert first.done()
    assert "accepted" in seen
    assert first.logs() == (results[0].output_dir / "stderr").read_text().splitlines()
    again = client.job(first.id)  # from the record on disk, as `lilypad jobs wait` does
    assert again.wait().cid == results[0].cid


def test_a_pending_job_is_cancelled_and_no_funds_move(creator: Creator, client: Client) -> None:
    world = creator.world
    absent = world.net.providers[2].address  # no provider runs: nothing can take the offer
    job = client.submit(COWSAY, Message="never", verify="never", target=absent)
    assert job.state == "created"

    assert job.cancel() is True

    with pytest.raises(Cancelled, match="no funds moved"):
        job.wait(30)
    assert job.record is not None
    assert job.record.state is JobState.CANCELLED
    assert job.cancel() is False  # it has ended
    assert _committed(world, creator) == 0  # the deposit holds nothing for it any more


def test_a_job_posted_and_left_is_cancelled_from_its_record(
    creator: Creator, client: Client
) -> None:
    absent = creator.world.net.providers[2].address
    posted = client.prepare(COWSAY, Message="left", verify="never", target=absent)
    try:
        record = posted.post()  # lilypad run --detach
    finally:
        posted.close()
    assert record.job_offer_id is not None

    again = client.job(record.job_offer_id[:12])  # a prefix, as lilypad jobs takes it
    assert again.cancel() is True
    again.close()

    (after,) = load_records()
    assert after.state is JobState.CANCELLED
    assert _committed(creator.world, creator) == 0


def test_a_file_input_is_a_path_bytes_or_what_i_takes(
    client: Client,
    module_dir: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photo)
    jobs = [
        client.prepare(str(module_dir), Image=photo),
        client.prepare(str(module_dir), [f"Image=@{photo}"]),
        client.prepare(str(module_dir), Image=photo.read_bytes()),
    ]
    specs = [job.spec for job in jobs]
    assert specs[0] is not None
    assert specs[1] is not None
    assert specs[2] is not None
    assert specs[0].tunables == specs[1].tunables
    assert str(specs[0].tunables["Image"]).endswith("/photo.png")
    assert str(specs[2].tunables["Image"]).endswith("/Image")  # bytes: named as the input
    staged = [s for s in jobs[2].steps if s.name == "staged"]
    assert [s.text for s in staged] == [f"Image: ipfs://{specs[2].tunables['Image']}"]
    with pytest.raises(InvalidTunable, match="Image"):
        client.prepare(str(module_dir), Image=b"not a picture")


def test_the_async_client_runs_a_job_and_calls_back_on_the_loop(creator: Creator) -> None:
    creator.world.profile()
    creator.world.provider(creator.world.net.providers[0])
    threads: set[int] = set()

    async def main() -> lilypad.Result:
        async with AsyncClient("test", key=creator.account.key.hex()) as client:
            return await client.run(
                COWSAY,
                Message="async",
                verify="never",
                on_progress=lambda _: threads.add(threading.get_ident()),
            )

    loop_thread: list[int] = []

    async def wrapped() -> lilypad.Result:
        loop_thread.append(threading.get_ident())
        return await main()

    result = asyncio.run(wrapped())
    assert result.state is JobState.ACCEPTED
    wait_for(lambda: threads or None, 5)
    assert threads == set(loop_thread)  # on_progress ran on the event loop's thread
