"""A contract-submitted job: ExampleClient -> JobCreator -> bridge -> solver -> provider ->
result on chain -> deliverResult -> the client's callback with the CID."""

from __future__ import annotations

from lilypad.chain.market import JobCreatorClient, JobMarketClient, TokenClient
from lilypad.storage import compute_cid
from resource_provider.bridge import BridgeConfig, BridgeJob, BridgePhase, JobCreatorBridge
from resource_provider.solver_client import SolverClient
from resource_provider.state import Phase
from tests.provider.conftest import ETH, World, records, wait_for

JOB_COST = ETH  # the deployment's default job cost
PRICE = ETH // 2


def test_contract_job_gets_its_callback_with_the_cid(world: World) -> None:
    net = world.net
    provider, user = net.providers[0], net.creators[2]
    world.provider(provider, price=PRICE)
    job_creator = JobCreatorClient(net.chain, net.deployment.job_creator)
    bridge = JobCreatorBridge(
        account=net.owner,  # the deployment's bridge
        market=JobMarketClient(net.chain, net.deployment.market),
        job_creator=job_creator,
        solver=SolverClient(world.server.url),
        state_dir=world.tmp / "bridge",
        config=BridgeConfig(
            mediators=(net.mediator.address,), poll_interval_s=0.2, start_block=net.deployment.block
        ),
    )
    bridge.start()
    try:
        client_address, _ = net.chain.deploy("ExampleClient", job_creator.address, sender=net.owner)
        client = net.chain.contract("ExampleClient", client_address)
        token = TokenClient(net.chain, net.deployment.token)
        wallet_before = token.balance_of(user.address)
        token.approve(user, client_address, JOB_COST)
        net.chain.transact(
            client.functions.runJob("cowsay:v0.0.4", ["Message=from a contract"]), user
        )
        job_id = int(net.chain.call(job_creator.contract.functions.jobCount()))

        def outcome() -> tuple[bytes, str | None] | None:
            result = bytes(net.chain.call(client.functions.results(job_id)))
            job = bridge.store.get("jobs", str(job_id), BridgeJob)
            cancelled = job is not None and job.phase is BridgePhase.CANCELLED
            return (result, job.error if job else None) if result or cancelled else None

        result, error = wait_for(outcome, 60)
        assert result, f"the bridge gave up: {error}"
        # The bridge accepts as soon as it delivers, so the provider's deal may already be settled.
        (record,) = wait_for(
            lambda: (
                [
                    r
                    for r in records(world.state_dir(provider))
                    if r.phase in (Phase.SUBMITTED, Phase.SETTLED)
                ]
                or None
            ),
            60,
        )
        folder = world.state_dir(provider) / "results" / record.deal_id
        assert result == bytes(compute_cid(folder))
        assert "from a contract" in (folder / "outputs" / "cowsay.txt").read_text()
        deal_id = "0x" + bytes(net.chain.call(client.functions.deals(job_id))).hex()
        assert deal_id == record.deal_id
        # The user paid the job cost and got the change back; the provider was paid on acceptance.
        assert token.balance_of(user.address) == wallet_before - PRICE
        assert job_creator.job(job_id)[3] is False  # closed
    finally:
        bridge.stop()
