"""Contract-submitted jobs end to end: a client contract -> JobCreator -> the real bridge -> the
real solver -> a real provider (process executor, bubblewrap) -> result on chain -> the client's
callback with the CID. Every job ends, and each job's funds are its own."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from web3.contract import Contract

from lilypad.chain.deployment import DEFAULT_MEDIATION_TIMEOUT
from lilypad.chain.job_creator import JobCreatorClient, JobState
from lilypad.chain.market import JobMarketClient, TokenClient
from lilypad.solver_api import SolverClient
from lilypad.storage import compute_cid
from lilypad.storage.backends import KuboStorage
from lilypad.verification import Verify
from resource_provider.bridge import BridgeConfig, BridgeJob, BridgePhase, JobCreatorBridge
from resource_provider.mediator import MediationPhase, MediationRecord
from resource_provider.state import JsonStore, Outcome, Phase
from solver.store import JobOfferRow, OfferState
from tests.chain.solidity import deploy_test_contract
from tests.provider.conftest import COWSAY, World, records, wait_outcome, wait_phase
from tests.provider.test_inputs import DATA, FILE_LIMIT, HASHFILE, add, png, remove
from tests.solver.conftest import ETH, Server, SolverFactory, wait_for

JOB_COST = ETH  # the deployment's default job cost
PRICE = ETH // 2
#: The least collateral the default deployment takes at PRICE (ten times the price).
COLLATERAL = 10 * PRICE
FEE = ETH // 10  # the dev mediators' fee
BUILTIN_COWSAY = Path(__file__).resolve().parents[2] / "module" / "cowsay"


@dataclass
class Bridges:
    """Contract jobs in a world: the JobCreator, a paying user, client contracts, bridges."""

    world: World
    job_creator: JobCreatorClient
    token: TokenClient
    started: list[JobCreatorBridge] = field(default_factory=list)

    @property
    def user(self) -> Any:
        return self.world.net.creators[2]

    def bridge(
        self, verify: Verify = Verify.NEVER, solver_url: str | None = None, **config: Any
    ) -> JobCreatorBridge:
        """The real bridge in a thread, with the deployment's bridge key (the owner)."""
        net = self.world.net
        settings: dict[str, Any] = {
            "modules": (COWSAY,),
            "mediators": (net.mediator.address,),
            "verify": verify,
            "start_block": net.deployment.block,
        }
        bridge = JobCreatorBridge(
            account=net.owner,
            market=JobMarketClient(net.chain, net.deployment.market),
            job_creator=self.job_creator,
            solver=SolverClient(solver_url or self.world.server.url),
            storage=KuboStorage(self.world.ipfs.api_url),
            state_dir=self.world.tmp / "bridge",
            config=BridgeConfig(**(settings | config)),
        )
        bridge.start()
        self.started.append(bridge)
        return bridge

    def provider(self, **config: Any) -> None:
        self.world.provider(
            self.world.net.providers[0], price=PRICE, collateral=COLLATERAL, **config
        )

    def client(self, name: str = "ExampleClient") -> Contract:
        net = self.world.net
        if name == "ExampleClient":
            address, _ = net.chain.deploy(
                "ExampleClient", self.job_creator.address, sender=net.owner
            )
            return net.chain.contract("ExampleClient", address)
        return deploy_test_contract(net.chain, name, sender=net.owner)

    def run_job(
        self,
        client: Contract,
        message: str,
        module: str = COWSAY,
        inputs: list[str] | None = None,
    ) -> int:
        """The user asks ``client`` for a job (and pays for it); returns its job id. The job's
        inputs are ``Message=<message>`` unless ``inputs`` are given."""
        chain = self.world.net.chain
        self.token.approve(self.user, client.address, JOB_COST)
        inputs = [f"Message={message}"] if inputs is None else inputs
        if any(entry.get("name") == "ask" for entry in client.abi):  # the test clients
            fn = client.functions.ask(self.job_creator.address, module, inputs)
        else:
            fn = client.functions.runJob(module, inputs)
        receipt = chain.transact(fn, self.user)
        (event,) = self.job_creator.events(receipt, "JobRequested")
        return int(event["jobId"])

    def ended(self, state_dir: Path, job_id: int, timeout: float = 60) -> BridgeJob:
        """The bridge's record of ``job_id`` once the job has ended."""

        def done() -> BridgeJob | None:
            job = JsonStore(state_dir).get("jobs", str(job_id), BridgeJob)
            return job if job is not None and job.phase.is_terminal() else None

        job: BridgeJob = wait_for(done, timeout)
        return job

    def held(self) -> int:
        """What the JobCreator holds in the market: open jobs' funds not in escrow."""
        return self.world.market.balance_of(self.job_creator.address)

    def spent(self, job_ids: list[int], prices: dict[int, int]) -> int:
        """What the user's jobs cost: each its deal's price, and the fee where audited."""
        fees = sum(FEE for j in job_ids if self.job_creator.job(j).challenged)
        return sum(prices[j] for j in job_ids) + fees


@pytest.fixture
def bridges(world: World) -> Iterator[Bridges]:
    net = world.net
    rig = Bridges(
        world,
        JobCreatorClient(net.chain, net.deployment.job_creator),
        TokenClient(net.chain, net.deployment.token),
    )
    try:
        yield rig
    finally:
        for bridge in rig.started:
            bridge.stop()


def result_folder(world: World, deal_id: str) -> Path:
    return world.state_dir(world.net.providers[0]) / "results" / deal_id


def test_fast_cowsay_jobs_all_get_their_callbacks(bridges: Bridges) -> None:
    """A cowsay job's result lands within milliseconds of its deal, often before the bridge
    hears of the deal from the solver: every callback must still come (was 0 of 7)."""
    world = bridges.world
    bridges.provider()
    world.mediator()  # audits (15% at this price and collateral) are re-run by it
    bridge = bridges.bridge(verify=Verify.AUDIT, poll_interval_s=1.0)  # the daemon's default
    client = bridges.client()
    wallet = bridges.token.balance_of(bridges.user.address)
    job_ids = [bridges.run_job(client, f"contract job {n}") for n in range(5)]

    for job_id in job_ids:
        job = bridges.ended(bridge.store.root, job_id, timeout=90)
        assert job.phase is BridgePhase.DELIVERED, job.error
        assert job.callback_ok is True
        assert job.deal is not None
        assert job.deal.price == PRICE
        cid = bytes(world.net.chain.call(client.functions.results(job_id)))
        assert "0x" + cid.hex() == job.result_cid
        folder = result_folder(world, job.deal.deal_id)
        assert cid == bytes(compute_cid(folder))
        assert (
            f"contract job {job_ids.index(job_id)}"
            in (folder / "outputs" / "cowsay.txt").read_text()
        )
        assert bridges.job_creator.job(job_id).state is JobState.DELIVERED
    # Each job paid its own deal (and its audit's fee, where drawn); nothing is left behind.
    prices = {j: PRICE for j in job_ids}
    assert bridges.token.balance_of(bridges.user.address) == wallet - bridges.spent(job_ids, prices)
    assert bridges.held() == 0


def test_a_module_the_bridge_does_not_serve_is_cancelled_unrendered(
    bridges: Bridges, make_solver: SolverFactory
) -> None:
    """A module string is the caller's: a local folder on the bridge's host (here a copy of
    cowsay) is refused before anything reads it, and never reaches the solver, even one that
    takes modules from anywhere."""
    world = bridges.world
    permissive = make_solver(
        db_url=f"sqlite:///{world.tmp / 'permissive.db'}", any_module_source=True
    )
    local = world.tmp / "cowsay-on-the-bridge-host"
    shutil.copytree(BUILTIN_COWSAY, local)
    with Server(permissive) as server:
        bridge = bridges.bridge(solver_url=server.url)
        client = bridges.client()
        wallet = bridges.token.balance_of(bridges.user.address)
        unknown = [
            bridges.run_job(client, "hi", module=str(local)),
            bridges.run_job(client, "hi", module=f"{local}:v0.0.4"),
            bridges.run_job(client, "hi", module="cowsay:v0.0.3"),
        ]
        ended = [bridges.ended(bridge.store.root, job_id) for job_id in unknown]
        bridge.stop()
    for job in ended:
        assert job.phase is BridgePhase.CANCELLED
        assert "is not served by this bridge" in (job.error or "")
        assert job.offer is None  # nothing signed
    assert "did you mean 'cowsay:v0.0.4'" in (ended[-1].error or "")
    assert bridges.token.balance_of(bridges.user.address) == wallet  # every job refunded
    assert bridges.held() == 0
    assert permissive.store.offers(JobOfferRow, *OfferState) == []  # nothing was posted


def test_a_reverting_client_ends_recorded_and_the_next_job_runs(bridges: Bridges) -> None:
    world = bridges.world
    bridges.provider()
    bridge = bridges.bridge()
    hostile, client = bridges.client("RevertingClient"), bridges.client()
    wallet = bridges.token.balance_of(bridges.user.address)
    refused = bridges.run_job(hostile, "nobody listens")
    job = bridges.ended(bridge.store.root, refused)
    assert job.phase is BridgePhase.DELIVERED
    assert job.callback_ok is False  # recorded from JobDelivered, not retried
    assert bridges.job_creator.job(refused).state is JobState.DELIVERED

    taken = bridges.run_job(client, "somebody listens")
    job = bridges.ended(bridge.store.root, taken)
    assert job.callback_ok is True
    assert bytes(world.net.chain.call(client.functions.results(taken)))
    # Both jobs paid their price; the failed callback cost its payee nothing more.
    assert bridges.token.balance_of(bridges.user.address) == wallet - 2 * PRICE
    assert bridges.held() == 0


def test_an_audited_result_is_delivered_after_the_mediation(bridges: Bridges) -> None:
    world = bridges.world
    bridges.provider()
    world.mediator()
    bridge = bridges.bridge(verify=Verify.ALWAYS)
    client = bridges.client()
    wallet = bridges.token.balance_of(bridges.user.address)
    job_id = bridges.run_job(client, "checked by a mediator")
    job = bridges.ended(bridge.store.root, job_id, timeout=90)
    assert job.phase is BridgePhase.DELIVERED, job.error
    assert job.audit is True
    assert job.callback_ok is True
    assert job.deal is not None
    assert world.market.deal_status(job.deal.deal_id).state.name == "UPHELD"
    cid = bytes(world.net.chain.call(client.functions.results(job_id)))
    assert cid == bytes(compute_cid(result_folder(world, job.deal.deal_id)))
    assert bridges.token.balance_of(bridges.user.address) == wallet - PRICE - FEE
    assert bridges.held() == 0


def test_an_offer_nobody_takes_is_cancelled_and_refunded(bridges: Bridges) -> None:
    world = bridges.world
    bridge = bridges.bridge(offer_ttl_s=20)  # no provider runs
    client = bridges.client()
    wallet = bridges.token.balance_of(bridges.user.address)
    job_id = bridges.run_job(client, "anyone?")
    wait_for(lambda: (job := bridge.job(job_id)) is not None and job.posted)
    world.advance(30)
    job = bridges.ended(bridge.store.root, job_id)
    assert job.phase is BridgePhase.CANCELLED
    assert "expired" in (job.error or "")
    assert bridges.token.balance_of(bridges.user.address) == wallet
    assert world.market.nonce_used(bridges.job_creator.address, job_id)  # no late deal


class BridgeProcess:
    """`lilypad jobcreator` as a child process, logging to a file."""

    def __init__(self, world: World, data_dir: Path) -> None:
        self.world, self.data_dir = world, data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "bridge.log"

    def start(self) -> None:
        env = {**os.environ, "WEB3_PRIVATE_KEY": self.world.net.owner.key.hex()}
        argv = [
            sys.executable,
            "-m",
            "lilypad",
            "jobcreator",
            "--network",
            "test",
            "--modules",
            COWSAY,
            "--verify",
            "never",
            "--data-dir",
            str(self.data_dir),
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def job(self, job_id: int) -> BridgeJob | None:
        return JsonStore(self.data_dir).get("jobs", str(job_id), BridgeJob)


@pytest.fixture
def bridge_process(world: World) -> Iterator[BridgeProcess]:
    world.profile()
    runner = BridgeProcess(world, world.tmp / "bridge-state")
    try:
        yield runner
    finally:
        runner.terminate()


def test_a_bridge_killed_mid_job_and_restarted_completes_it(
    bridges: Bridges, bridge_process: BridgeProcess
) -> None:
    """Killed once its offer is out; the deal is made and the result lands while it is gone.
    Restarted, it learns the deal from the chain, finds the result it missed, and delivers."""
    world = bridges.world
    client = bridges.client()
    bridge_process.start()
    job_id = bridges.run_job(client, "survives kill -9")
    wait_for(lambda: (job := bridge_process.job(job_id)) is not None and job.posted, 60)
    bridge_process.kill()

    bridges.provider()
    (record,) = wait_phase(world.state_dir(world.net.providers[0]), Phase.SUBMITTED, timeout=60)
    job = bridge_process.job(job_id)
    assert job is not None
    assert job.phase is BridgePhase.POSTED  # the bridge knows nothing of the deal yet

    bridge_process.start()
    job = bridges.ended(bridge_process.data_dir, job_id, timeout=60)
    assert job.phase is BridgePhase.DELIVERED, job.error
    assert job.callback_ok is True
    cid = bytes(world.net.chain.call(client.functions.results(job_id)))
    assert cid == bytes(compute_cid(result_folder(world, record.deal_id)))
    assert "0x" + bytes(world.net.chain.call(client.functions.deals(job_id))).hex() == (
        record.deal_id
    )
    assert bridges.held() == 0


def test_a_result_the_bridge_never_saw_is_read_back_from_the_chain(bridges: Bridges) -> None:
    """A bridge that skipped the blocks of its deal and its result (here: its saved position is
    moved past them) learns the deal from the solver and reads the result from the chain's logs."""
    world = bridges.world
    client = bridges.client()
    bridge = bridges.bridge()
    job_id = bridges.run_job(client, "read back")
    wait_for(lambda: (job := bridge.job(job_id)) is not None and job.posted, 30)
    bridge.stop()
    bridges.provider()
    wait_phase(world.state_dir(world.net.providers[0]), Phase.SUBMITTED, timeout=60)
    store = JsonStore(bridge.store.root)
    store.set_meta(next_block=world.net.chain.w3.eth.block_number + 1)
    assert not (bridge.store.root / "deals").exists()  # it never saw the deal

    again = bridges.bridge()
    job = bridges.ended(again.store.root, job_id)
    assert job.phase is BridgePhase.DELIVERED, job.error
    assert "0x" + bytes(world.net.chain.call(client.functions.results(job_id))).hex() == (
        job.result_cid
    )


# -------------------------------------------------------------------------------- file inputs
#: An IPFS path nobody has (a raw block of bytes never added anywhere).
UNKNOWN = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def test_a_contract_job_reads_its_file_input_by_cid(bridges: Bridges) -> None:
    world = bridges.world
    bridges.provider(modules=(HASHFILE,))
    bridge = bridges.bridge(modules=(HASHFILE,))
    client = bridges.client()
    wallet = bridges.token.balance_of(bridges.user.address)
    picture = png(8, 8)
    inputs = [f"File={add(world, 'data.bin', DATA)}", f"Picture={add(world, 'p.png', picture)}"]
    job_id = bridges.run_job(client, "", module=HASHFILE, inputs=inputs)

    job = bridges.ended(bridge.store.root, job_id)
    assert job.phase is BridgePhase.DELIVERED, job.error
    assert job.deal is not None
    folder = result_folder(world, job.deal.deal_id)
    assert bytes(world.net.chain.call(client.functions.results(job_id))) == bytes(
        compute_cid(folder)
    )
    assert (folder / "outputs" / "sha256").read_text().split()[0] == (
        hashlib.sha256(DATA).hexdigest()
    )
    assert (folder / "outputs" / "picture.sha256").read_text().split()[0] == (
        hashlib.sha256(picture).hexdigest()
    )
    assert bridges.token.balance_of(bridges.user.address) == wallet - PRICE
    assert bridges.held() == 0


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda w: [f"File={UNKNOWN}"], "not found on IPFS"),
        (lambda w: [f"File={add(w, 'data.bin', DATA).split('/')[0]}"], "is a folder"),
        (lambda w: [f"File={add(w, 'data.bin', DATA)}/deeper"], "not found"),
        (lambda w: [f"File={add(w, 'big.bin', b'x' * (FILE_LIMIT + 1))}"], "at most 64 KiB"),
        (lambda w: ["File=@data.bin"], "names a local file"),
        (lambda w: [f"File={add(w, 'a', DATA)}", f"Picture={add(w, 'b.png', DATA)}"], "picture"),
    ],
    ids=["unknown", "folder", "through-a-file", "too-large", "local-path", "not-a-picture"],
)
def test_a_contract_job_with_a_bad_file_input_is_cancelled_unsigned(
    bridges: Bridges, make: Any, says: str
) -> None:
    world = bridges.world
    bridge = bridges.bridge(modules=(HASHFILE,))
    client = bridges.client()
    wallet = bridges.token.balance_of(bridges.user.address)
    inputs = make(world)
    job_id = bridges.run_job(client, "", module=HASHFILE, inputs=inputs)

    job = bridges.ended(bridge.store.root, job_id)
    assert job.phase is BridgePhase.CANCELLED
    assert says in (job.error or ""), job.error
    assert inputs[-1].split("=")[1][:20] in (job.error or "")  # it names the value
    assert job.offer is None  # nothing signed
    assert bridges.token.balance_of(bridges.user.address) == wallet
    assert bridges.held() == 0


@pytest.mark.slow
def test_a_contract_job_whose_input_is_gone_is_challenged_and_refunded_in_full(
    bridges: Bridges,
) -> None:
    """The input was there when the bridge checked it, and gone when the provider fetched it:
    the result that says so is challenged (even with --verify never), the mediator leaves it,
    and once the mediation times out the job is closed: the payee has the whole job cost back,
    the provider its collateral, unpaid."""
    world = bridges.world
    provider = world.net.providers[0]
    world.mediator()
    bridge = bridges.bridge(modules=(HASHFILE,))
    client = bridges.client()
    wallet = bridges.token.balance_of(bridges.user.address)
    provider_before = world.market.balance_of(provider.address)
    ref = add(world, "data.bin", DATA)
    job_id = bridges.run_job(client, "", module=HASHFILE, inputs=[f"File={ref}"])
    wait_for(lambda: (job := bridge.job(job_id)) is not None and job.posted, 30)
    remove(world, ref)
    bridges.provider(modules=(HASHFILE,), input_wait_s=1)

    wait_for(lambda: (job := bridge.job(job_id)) is not None and job.input_lost, 60)
    wait_for(
        lambda: any(
            r.phase is MediationPhase.UNRESOLVABLE
            for r in world.mediators[0].store.all("deals", MediationRecord)
        ),
        60,
    )
    world.advance(DEFAULT_MEDIATION_TIMEOUT + 1)
    job = bridges.ended(bridge.store.root, job_id)

    assert job.phase is BridgePhase.CLOSED
    assert job.audit is True
    assert "could not fetch an input" in (job.error or "")
    assert job.refund == JOB_COST
    assert bridges.token.balance_of(bridges.user.address) == wallet  # every token back
    assert bridges.held() == 0
    (record,) = records(world.state_dir(provider))
    assert (result_folder(world, record.deal_id) / "exitCode").read_text() == "123"
    assert world.market.balance_of(provider.address) == provider_before  # collateral, no pay
    wait_outcome(world.state_dir(provider), Outcome.MEDIATION_TIMED_OUT)
