"""Deals whose jobs read files by CID, against a real chain, solver, IPFS node, providers,
mediator and job creator (:class:`lilypad.creator.JobRunner`).

A job creator that goes through `lilypad run` has every input checked before anything is signed;
these tests build the spec themselves (as one bypassing the CLI would), so that what reaches the
provider can be anything. Two outcomes are defined for an input that keeps a job from running:

* one its module cannot take (a folder, too large, not a picture) is a result (exit code 2) that
  every machine reaches alike: the mediator agrees, the provider is paid for checking;
* one that cannot be fetched (exit code 123) judges nobody: the job creator always challenges
  it, the mediator leaves it, and once the mediation times out the job creator has its price and
  fee back and the provider its collateral, unpaid.

An input the provider did fetch it keeps pinned on its IPFS node until the deal settles, so that a
job creator that removes its input once it has the result, and challenges, still faces a mediator
that can check the job. Every role here shares one IPFS node (and, being in one process, one
inputs cache: a test that needs the mediator to fetch an input from IPFS, as on a machine of its
own, empties the cache first).
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lilypad.chain.deployment import DEFAULT_MEDIATION_TIMEOUT
from lilypad.chain.light import DealState
from lilypad.chain.offers import Machine
from lilypad.creator import ModuleFailed
from lilypad.creator.runner import InputLost
from lilypad.jobs import JobSubmission
from lilypad.modules import JobSpec, render
from lilypad.modules.files import file_inputs
from lilypad.storage import CID, LocalStorage, compute_cid
from lilypad.storage.backends import KuboStorage
from lilypad.storage.blockstore import PinType
from lilypad.storage.cid import RAW
from lilypad.storage.dag import Entry
from lilypad.verification import Verify
from resource_provider.executors import ExecutionResult, Job, ProcessExecutor
from resource_provider.inputs import inputs_cache
from resource_provider.mediator import MediationPhase, MediationRecord
from resource_provider.runner import EXIT_BAD_INPUT, NOT_RUN, not_run, run_job
from resource_provider.state import DealRecord, JsonStore, Outcome, Phase
from tests.creator.conftest import Creator, cowsay, creator  # noqa: F401 - a fixture used here
from tests.provider.conftest import (
    COLLATERAL,
    COWSAY,
    World,
    records,
    wait_for,
    wait_outcome,
    wait_phase,
)

HASHFILE = f"{Path(__file__).resolve().parents[1] / 'fixtures' / 'modules' / 'hashfile'}:local"
#: The fixture's File limit (64 KiB) and its Picture limits (a PNG of at most 4,096 pixels).
FILE_LIMIT = 65_536
DATA = b"the bytes a job creator wants hashed\n"


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(out, format="PNG")
    return out.getvalue()


def add(world: World, name: str, data: bytes, *, beside: bytes | None = None) -> str:
    """Add ``data`` as ``name`` in a folder of its own (with another file, ``beside``, if given),
    pinned on the world's node (as `lilypad run -i File=@name` does); its IPFS path."""
    key = name.encode() + data + (beside or b"")
    folder = world.tmp / "adds" / hashlib.sha256(key).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    if beside is not None:
        (folder / "beside.bin").write_bytes(beside)
    storage = KuboStorage(world.ipfs.api_url)
    try:
        return f"{storage.add(folder)}/{name}"
    finally:
        storage.close()


def unpin(world: World, ref: str) -> None:
    """What a job creator can do to its input: unpin its folder on the node and collect every
    block no pin holds."""
    world.ipfs.store.unpin(CID.parse(ref.split("/")[0]))
    world.ipfs.store.gc()


def remove(world: World, ref: str) -> None:
    """Unpin ``ref``'s folder on the node and collect its blocks: it is gone from IPFS (no
    provider keeps it)."""
    unpin(world, ref)
    assert not world.ipfs.store.has(CID.parse(ref.split("/")[0]))


def kept_pins(world: World, ref: str) -> dict[CID, PinType]:
    """What a provider pins to keep the input at ``ref`` (a file in a folder): the file, and the
    folder's block under its raw CID (the folder's own CID is its job creator's pin)."""
    folder = CID.parse(ref.split("/")[0])
    file_cid = LocalStorage(world.ipfs.store.root).trace(ref).target
    return {file_cid: PinType.RECURSIVE, CID(1, RAW, folder.multihash): PinType.DIRECT}


def input_pins(world: World, ref: str) -> dict[CID, PinType]:
    """The node's pins of the input at ``ref`` under any CID (not those of results)."""
    folder = CID.parse(ref.split("/")[0])
    names = {folder, *kept_pins(world, ref)}
    return {cid: kind for cid, kind in world.ipfs.store.pins().items() if cid in names}


def deal_record(world: World, deal_id: str) -> DealRecord | None:
    return JsonStore(world.state_dir(world.net.providers[0])).get("deals", deal_id, DealRecord)


def settled(world: World, deal_id: str, outcome: Outcome) -> DealRecord:
    """Wait until the provider has settled ``deal_id`` as ``outcome``."""

    def done() -> DealRecord | None:
        record = deal_record(world, deal_id)
        return record if record is not None and record.outcome is outcome else None

    result: DealRecord = wait_for(done, 30)
    return result


def hashfile(**inputs: str) -> JobSpec:
    return render(HASHFILE, [f"{name}={value}" for name, value in inputs.items()])


def offer(world: World, spec: JobSpec) -> JobSubmission:
    """A signed job offer for ``spec``, made without `lilypad run`'s checks."""
    needs = Machine.from_requirements(
        gpus=spec.machine.gpus,
        vram_gb=spec.machine.vram_gb,
        cpus=spec.machine.cpus,
        ram_gb=spec.machine.ram_gb,
        disk_gb=spec.machine.disk_gb,
    )
    return world.net.job(world.net.creators[0], spec=spec, machine=needs.encode())


def provider_folder(world: World, deal_id: str) -> Path:
    return world.state_dir(world.net.providers[0]) / "results" / deal_id


def holdings(world: World, address: str) -> int:
    """Tokens ``address`` holds: its wallet and its market balance."""
    return world.market.token.balance_of(address) + world.market.balance_of(address)


def not_run_layout(folder: Path) -> dict[str, Any]:
    return {
        "entries": sorted(p.name for p in folder.iterdir()),
        "outputs": sorted(p.name for p in (folder / "outputs").iterdir()),
        "stdout": (folder / "stdout").read_bytes(),
        "stderr": (folder / "stderr").read_text(),
        "exitCode": (folder / "exitCode").read_text(),
    }


class CountingStorage(KuboStorage):
    """The provider's real IPFS client, noting what it fetches (``get``) and looks up
    (``stat``)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.fetched: list[str] = []
        self.looked_up: list[str] = []

    def get(self, cid: CID | str, dest: Path, **options: Any) -> Path:
        self.fetched.append(str(cid))
        return super().get(cid, dest, **options)

    def stat(self, cid: CID | str) -> Entry:
        self.looked_up.append(str(cid))
        return super().stat(cid)


class LazyExecutor(ProcessExecutor):
    """Runs nothing: claims, for every job, that its input could not be fetched."""

    def run(self, job: Job) -> ExecutionResult:
        (item,) = file_inputs(job.spec)
        return not_run(self, job.output_dir, item, 123)


# ------------------------------------------------------------------------- the layout itself
def test_a_job_that_did_not_run_has_the_same_result_on_every_machine(tmp_path: Path) -> None:
    (item,) = file_inputs(hashfile(File="bafkqaaa"))
    first = not_run(ProcessExecutor(), tmp_path / "here", item, EXIT_BAD_INPUT)
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "stdout").write_text("left by an earlier run")
    second = not_run(ProcessExecutor(), tmp_path / "there", item, EXIT_BAD_INPUT)
    assert compute_cid(first.output_dir) == compute_cid(second.output_dir)
    assert not_run_layout(second.output_dir) == {
        "entries": ["exitCode", "outputs", "stderr", "stdout"],
        "outputs": [],
        "stdout": b"",
        "stderr": "lilypad: the job did not run: input File=bafkqaaa is not a file File takes\n",
        "exitCode": "2",
    }
    assert first.exit_code == 2
    assert not first.ok
    lost = not_run(ProcessExecutor(), tmp_path / "lost", item, 123)
    assert (lost.output_dir / "exitCode").read_text() == "123"
    assert (lost.output_dir / "stderr").read_text() == NOT_RUN[123].format(
        name="File", ref="bafkqaaa"
    )
    with pytest.raises(ValueError, match="7"):
        not_run(ProcessExecutor(), tmp_path / "other", item, 7)


def test_an_input_the_module_cannot_take_gives_that_result_instead_of_a_run(
    tmp_path: Path,
) -> None:
    """What a mediator's re-run gives for a folder where a file belongs: the same bytes as the
    provider's (whatever the error's wording), never a run."""
    storage = LocalStorage(tmp_path / "ipfs")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.bin").write_bytes(DATA)
    folder = str(storage.add(tmp_path / "in"))
    spec = hashfile(File=folder)
    ran = run_job(ProcessExecutor(), storage, spec, tmp_path / "result")
    (item,) = file_inputs(spec)
    expected = not_run(ProcessExecutor(), tmp_path / "expected", item, EXIT_BAD_INPUT)
    assert ran.cid == compute_cid(expected.output_dir)
    assert ran.execution.exit_code == 2
    storage.close()


# ------------------------------------------------------------------------------- good inputs
def test_a_deal_reads_its_inputs_by_cid(world: World, creator: Creator) -> None:  # noqa: F811
    world.provider(modules=(HASHFILE,))
    picture = png(8, 8)
    spec = hashfile(File=add(world, "photo.bin", DATA), Picture=add(world, "p.png", picture))

    record = creator.run(spec, Verify.NEVER)

    assert record.state == "accepted"
    result = Path(record.output_dir or "")
    assert (result / "outputs" / "sha256").read_text().split()[0] == hashlib.sha256(
        DATA
    ).hexdigest()
    assert (result / "outputs" / "picture.sha256").read_text().split()[0] == (
        hashlib.sha256(picture).hexdigest()
    )
    assert (result / "stdout").read_text() == "/inputs/File/photo.bin\n/inputs/Picture/p.png\n"


def test_an_input_is_fetched_once_and_a_cached_one_runs_even_once_gone(
    world: World,
    creator: Creator,  # noqa: F811
) -> None:
    """Two deals of one input: the first fetches it, the second fetches nothing and asks IPFS
    nothing about it, and so runs although the input has gone from IPFS in between (the
    provider adds it again from its cache, to keep it while the deal is open)."""
    storage = CountingStorage(world.ipfs.api_url)
    world.provider(modules=(HASHFILE,), storage=storage)
    ref = add(world, "data.bin", DATA)
    file_cid = str(compute_file_cid(world, DATA))

    first = creator.run(hashfile(File=ref), Verify.NEVER)
    assert storage.fetched.count(file_cid) == 1
    assert storage.looked_up == [ref]
    settled(world, first.deal_id or "", Outcome.ACCEPTED)  # its pins released
    remove(world, ref)
    second = creator.run(hashfile(File=ref), Verify.NEVER)

    assert first.state == second.state == "accepted"
    assert first.result_cid == second.result_cid  # same input, same bytes
    assert storage.fetched.count(file_cid) == 1
    assert storage.looked_up == [ref]


def compute_file_cid(world: World, data: bytes) -> CID:
    path = world.tmp / "file-cid"
    path.write_bytes(data)
    return compute_cid(path)


# ---------------------------------------------------------- inputs the module cannot take
@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda w: {"File": add(w, "data.bin", DATA).split("/")[0]}, "is a directory"),
        (lambda w: {"File": add(w, "big.bin", b"x" * (FILE_LIMIT + 1))}, "64 KiB"),
        (lambda w: {"File": add(w, "a", DATA), "Picture": add(w, "b.png", DATA)}, "picture"),
        (lambda w: {"File": add(w, "a", DATA), "Picture": add(w, "c.png", png(65, 64))}, "pixels"),
    ],
    ids=["folder", "too-large", "not-a-picture", "too-many-pixels"],
)
def test_an_input_the_module_cannot_take_is_a_result_the_mediator_agrees_with(
    world: World,
    creator: Creator,  # noqa: F811
    make: Any,
    says: str,
) -> None:
    world.provider(modules=(HASHFILE,))
    mediator = world.mediator()
    paid_before = world.market.balance_of(world.net.providers[0].address)
    spec = hashfile(**make(world))

    with pytest.raises(ModuleFailed) as failed:
        creator.run(spec, Verify.ALWAYS)

    assert "exited with 2" in str(failed.value)
    assert "the job did not run: input" in str(failed.value)
    (ruling,) = mediator.store.all("deals", MediationRecord)
    assert ruling.provider_wins is True  # the same verdict here
    (record,) = records(world.state_dir(world.net.providers[0]))
    layout = not_run_layout(provider_folder(world, record.deal_id))
    assert layout["exitCode"] == "2"
    assert layout["outputs"] == []
    assert says in (record.error or "")
    assert world.market.deal_status(record.deal_id).state is DealState.UPHELD
    wait_outcome(world.state_dir(world.net.providers[0]), Outcome.WON)
    after = world.market.balance_of(world.net.providers[0].address)
    assert after == paid_before + record.deal.price  # paid for checking


# ------------------------------------------------------------ inputs that cannot be fetched
@pytest.mark.slow
@pytest.mark.parametrize("cause", ["input gone", "lazy provider"])
def test_an_input_that_cannot_be_fetched_judges_nobody(
    world: World,
    creator: Creator,  # noqa: F811
    cause: str,
) -> None:
    """The attack this outcome stops: the job creator removes its input while the provider
    fetches it, then puts it back for the mediator, who could fetch it and would rule against the
    provider. Instead nobody is judged: the job creator has its price and fee back (even with
    --verify never, the result is challenged), the provider its collateral, unpaid. A provider
    that claims the same without trying (lazy) gains nothing either: it is not paid."""
    provider = world.net.providers[0]
    ref = add(world, "data.bin", DATA)
    if cause == "input gone":
        remove(world, ref)
        world.provider(modules=(HASHFILE,), input_wait_s=1)
    else:
        world.provider(modules=(HASHFILE,), executor=LazyExecutor())
    mediator = world.mediator()
    who = {
        "creator": creator.account.address,
        "provider": provider.address,
        "mediator": world.net.mediator.address,
    }
    before = {role: holdings(world, address) for role, address in who.items()}

    job = creator.start(hashfile(File=ref), Verify.NEVER)
    wait_for(lambda: creator.saw("input_lost"), 90)
    if cause == "input gone":
        add(world, "data.bin", DATA)  # back, for the mediator: it must make no difference
    unresolved = wait_for(
        lambda: next(
            (
                r
                for r in mediator.store.all("deals", MediationRecord)
                if r.phase is MediationPhase.UNRESOLVABLE
            ),
            None,
        ),
        60,
    )
    assert "exit code 123" in (unresolved.reason or "")
    world.advance(DEFAULT_MEDIATION_TIMEOUT + 1)
    with pytest.raises(InputLost) as lost:
        job.result(120)

    assert f"input File={ref}" in str(lost.value)
    assert "refunded" in str(lost.value)
    challenged = next(s for s in creator.steps if s.name == "challenged")
    assert "could not fetch an input" in challenged.detail["reason"]
    (record,) = records(world.state_dir(provider))
    assert not_run_layout(provider_folder(world, record.deal_id)) == {
        "entries": ["exitCode", "outputs", "stderr", "stdout"],
        "outputs": [],
        "stdout": b"",
        "stderr": NOT_RUN[123].format(name="File", ref=ref),
        "exitCode": "123",
    }
    wait_outcome(world.state_dir(provider), Outcome.MEDIATION_TIMED_OUT)
    assert world.market.deal_status(record.deal_id).state is DealState.MEDIATION_EXPIRED
    after = {role: holdings(world, address) for role, address in who.items()}
    assert after == before  # nobody paid anything, nobody was paid, no collateral lost


@pytest.mark.slow
def test_a_provider_waiting_on_an_input_submits_before_the_deadline(world: World) -> None:
    """However long it may wait, a provider submits the result that says the input could not be
    fetched while there is still time: a deadline passed without a result would cost it its
    collateral."""
    ref = add(world, "data.bin", DATA)
    remove(world, ref)
    account = world.net.providers[0]
    world.provider(account, modules=(HASHFILE,), input_wait_s=10**6)
    deal = world.deal_of(world.post(offer(world, hashfile(File=ref))))
    deal_id = deal["deal_id"]
    wait_for(
        lambda: any(
            "could not be fetched" in (r.error or "") for r in records(world.state_dir(account))
        ),
        30,
    )
    assert world.market.deal_status(deal_id).state is DealState.CREATED  # still trying
    deadline = world.market.deal_status(deal_id).deadline
    needed = render(HASHFILE, [f"File={ref}"]).timeout_s + world.config().submit_margin_s
    world.advance(deadline - needed - world.net.now() - 2)  # just before the latest start

    (record,) = wait_phase(world.state_dir(account), Phase.SUBMITTED, timeout=30)
    assert (provider_folder(world, deal_id) / "exitCode").read_text() == "123"
    status = world.market.deal_status(deal_id)
    assert status.state is DealState.SUBMITTED
    assert record.runs == 0  # nothing ran


@pytest.mark.slow
def test_two_providers_that_agree_they_could_not_fetch_an_input_are_not_paid(
    world: World,
    creator: Creator,  # noqa: F811
) -> None:
    """``--verify redundant`` accepts two equal results; two equal "could not fetch" results are
    still nothing to pay for: both are challenged and left to time out."""
    pair = world.net.providers[:2]
    for account in pair:
        world.provider(account, modules=(HASHFILE,), executor=LazyExecutor())
    mediator = world.mediator()
    before = {a.address: holdings(world, a.address) for a in pair}
    job = creator.start(hashfile(File=add(world, "data.bin", DATA)), Verify.REDUNDANT)

    def both_left() -> bool:
        found = list(mediator.store.all("deals", MediationRecord))
        return len(found) == 2 and all(r.phase is MediationPhase.UNRESOLVABLE for r in found)

    wait_for(both_left, 90)
    assert creator.saw("agree")
    world.advance(DEFAULT_MEDIATION_TIMEOUT + 1)
    with pytest.raises(InputLost):
        job.result(120)
    assert {a.address: holdings(world, a.address) for a in pair} == before


class NoInputLazyExecutor(ProcessExecutor):
    """Runs nothing: claims an input could not be fetched, for a job that has none."""

    def run(self, job: Job) -> ExecutionResult:
        result = super().run(job)
        for item in (job.output_dir / "outputs").iterdir():
            item.unlink()
        (job.output_dir / "stdout").write_text("")
        (job.output_dir / "stderr").write_text(NOT_RUN[123].format(name="Message", ref="bafkqaaa"))
        (job.output_dir / "exitCode").write_text("123")
        return result


def test_a_claim_that_an_input_was_lost_for_a_job_without_inputs_is_judged(
    world: World,
    creator: Creator,  # noqa: F811
) -> None:
    """Only a job with file inputs can lack one: for any other, the mediator judges exit code 123
    as any result, and a provider that claims it loses its collateral (else it could claim it for
    every job and never risk anything)."""
    cheat = world.net.providers[1]
    world.provider(cheat, executor=NoInputLazyExecutor())
    world.mediator()
    before = world.market.balance_of(cheat.address)

    record = creator.run(cowsay("you had no input"), Verify.NEVER)  # challenged all the same

    assert record.state == "provider_slashed"
    assert (Path(record.output_dir or "") / "exitCode").read_text() == "0"
    assert world.market.balance_of(cheat.address) == before - COLLATERAL


# ------------------------------------------------------------ inputs kept until the deal settles
def resolved(world: World, timeout: float = 90) -> MediationRecord:
    """The mediator's ruling, once it has ruled."""

    def ruled() -> MediationRecord | None:
        (mediator,) = world.mediators
        found = mediator.store.all("deals", MediationRecord)
        return next((r for r in found if r.phase is MediationPhase.RESOLVED), None)

    result: MediationRecord = wait_for(ruled, timeout)
    return result


def submitted(world: World, job: JobSubmission) -> DealRecord:
    """The provider's record of the deal of ``job``, once it has submitted the result."""
    deal_id = world.deal_of(world.post(job))["deal_id"]

    def done() -> DealRecord | None:
        record = deal_record(world, deal_id)
        return record if record is not None and record.phase is Phase.SUBMITTED else None

    result: DealRecord = wait_for(done, 60)
    return result


def forget_inputs() -> None:
    """Empty the inputs cache: the mediator fetches from IPFS, as on a machine of its own."""
    shutil.rmtree(inputs_cache(), ignore_errors=True)


@pytest.mark.slow
def test_a_job_creator_that_removes_its_input_after_the_run_still_pays(world: World) -> None:
    """The hole this closes: a job creator has the result, unpins its input, lets the node
    collect it, and challenges. A mediator that could not fetch the input would leave the deal
    to time out: the job creator would have the result and its money back, the provider nothing
    for its work. The provider kept the input pinned, so the mediator checks the job and upholds
    the result: the provider is paid."""
    account, job_creator = world.net.providers[0], world.net.creators[0]
    world.provider(account, modules=(HASHFILE,))
    world.mediator()
    ref = add(world, "data.bin", DATA)
    who = {"creator": job_creator, "provider": account, "mediator": world.net.mediator}
    before = {role: holdings(world, a.address) for role, a in who.items()}
    record = submitted(world, offer(world, hashfile(File=ref)))

    unpin(world, ref)
    forget_inputs()
    world.market.challenge_result(job_creator, record.deal)

    ruling = resolved(world)
    assert ruling.provider_wins is True, ruling.reason
    assert world.market.deal_status(record.deal_id).state is DealState.UPHELD
    settled(world, record.deal_id, Outcome.WON)
    deal = record.deal
    after = {role: holdings(world, a.address) for role, a in who.items()}
    assert after == {
        "creator": before["creator"] - deal.price - deal.mediation_fee,
        "provider": before["provider"] + deal.price,
        "mediator": before["mediator"] + deal.mediation_fee,
    }


@pytest.mark.slow
def test_a_cached_input_gone_from_ipfs_is_added_again_and_kept(world: World) -> None:
    """The same, with an input the provider cached for an earlier deal and that has gone from
    IPFS since: the provider puts it back from its cache (a file in a folder of its own, as
    `lilypad run -i File=@file` adds it, gives the same CIDs) and keeps it, and is paid."""
    job_creator = world.net.creators[0]
    world.provider(modules=(HASHFILE,))
    world.mediator()
    ref = add(world, "data.bin", DATA)
    first = submitted(world, offer(world, hashfile(File=ref)))
    world.market.accept_result(job_creator, first.deal)
    settled(world, first.deal_id, Outcome.ACCEPTED)
    remove(world, ref)

    record = submitted(world, offer(world, hashfile(File=ref)))
    forget_inputs()
    world.market.challenge_result(job_creator, record.deal)

    assert resolved(world).provider_wins is True
    settled(world, record.deal_id, Outcome.WON)


def test_an_input_that_cannot_be_kept_is_a_warning_and_the_job_runs(
    world: World,
    creator: Creator,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cached input gone from IPFS whose folder held more than the file cannot be put back
    from the cache: the job runs all the same, and the provider says what it risks."""
    world.provider(modules=(HASHFILE,))
    ref = add(world, "data.bin", DATA, beside=b"another file")
    first = creator.run(hashfile(File=ref), Verify.NEVER)
    settled(world, first.deal_id or "", Outcome.ACCEPTED)
    remove(world, ref)

    with caplog.at_level(logging.WARNING, logger="resource_provider.inputs"):
        second = creator.run(hashfile(File=ref), Verify.NEVER)

    assert second.state == "accepted"
    assert second.result_cid == first.result_cid
    (warning,) = [r.getMessage() for r in caplog.records if "cannot be kept" in r.getMessage()]
    assert f"File={ref}" in warning
    assert "this provider is not paid (its collateral comes back)" in warning


@pytest.mark.slow
def test_the_provider_unpins_only_its_own_pins_once_every_deal_of_the_input_settles(
    world: World,
) -> None:
    """Two open deals of one input hold it until both have settled, across a restart; then the
    provider's pins are gone, and the job creator's pin of its folder is still there."""
    job_creator = world.net.creators[0]
    daemon = world.provider(modules=(HASHFILE,))
    ref = add(world, "data.bin", DATA)
    theirs = input_pins(world, ref)
    assert theirs == {CID.parse(ref.split("/")[0]): PinType.RECURSIVE}
    first = submitted(world, offer(world, hashfile(File=ref)))
    second = submitted(world, offer(world, hashfile(File=ref)))
    ours = kept_pins(world, ref)
    assert input_pins(world, ref) == {**theirs, **ours}
    assert first.kept == second.kept == {str(cid): kind for cid, kind in ours.items()}

    daemon.stop()
    world.providers.remove(daemon)
    world.provider(modules=(HASHFILE,))
    world.market.accept_result(job_creator, first.deal)
    settled(world, first.deal_id, Outcome.ACCEPTED)
    assert input_pins(world, ref) == {**theirs, **ours}  # the other deal still holds them
    world.market.accept_result(job_creator, second.deal)
    settled(world, second.deal_id, Outcome.ACCEPTED)

    assert input_pins(world, ref) == theirs


def test_the_provider_times_out_a_mediation_nobody_ruled_on(world: World) -> None:
    """A challenged deal no mediator rules on, whose job creator never times it out: the
    provider does once the deadline has passed, so that its collateral comes back (and the job
    creator's price and fee)."""
    account, job_creator = world.net.providers[0], world.net.creators[0]
    world.provider(account)
    before = {a.address: holdings(world, a.address) for a in (account, job_creator)}
    record = submitted(world, world.job("nobody rules on this"))
    assert record.module == COWSAY
    world.market.challenge_result(job_creator, record.deal)

    world.advance(DEFAULT_MEDIATION_TIMEOUT + 1)

    settled(world, record.deal_id, Outcome.MEDIATION_TIMED_OUT)
    assert world.market.deal_status(record.deal_id).state is DealState.MEDIATION_EXPIRED
    assert {a.address: holdings(world, a.address) for a in (account, job_creator)} == before
