"""What the provider daemon adds on top of running jobs: the market round trip per job.

Run: ``.venv/bin/python bench/provider.py [--jobs N] [--slots K]``. Starts anvil, a solver
(uvicorn in a thread), an embedded IPFS node and one provider daemon (process executor, cowsay),
then measures, in the same run:

* **baseline**: the N job specs run one after another with the bare executor and added to IPFS
  (what a provider must do at the least);
* **daemon**: N job offers posted at once; the time until every result is on chain (offer, match,
  deal, spec fetch and re-render, run, IPFS add, submitResult), with K job slots.

It prints both and their ratio (daemon / baseline); with K > 1 slots the ratio can fall below the
serial baseline's.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from lilypad import modules
from lilypad.chain import Chain, JobMarketClient, JobOffer, Machine, deploy, setup_dev_accounts
from lilypad.chain.anvil import Anvil, free_port
from lilypad.chain.offers import module_id, spec_digest
from lilypad.jobs import JobSubmission
from lilypad.storage.backends import KuboStorage
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.node import EmbeddedNode
from resource_provider.daemon import ProviderConfig, ResourceProvider
from resource_provider.executors import Job, ProcessExecutor
from resource_provider.machine import Hardware
from resource_provider.state import DealRecord, JsonStore, Phase
from solver.app import create_app
from solver.service import Solver, SolverConfig
from solver.store import Store

ETH = 10**18
MODULE = "cowsay:v0.0.4"


def baseline(specs: list[modules.JobSpec], root: Path, ipfs: str) -> float:
    executor, storage = ProcessExecutor(), KuboStorage(ipfs)
    module = modules.resolve(MODULE)
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        executor.run(Job.of(module, spec, root / f"base-{i}"))
        storage.add(root / f"base-{i}")
    storage.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    with Anvil() as node, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chain = Chain(node.rpc_url)
        owner, solver_key, mediator, provider, creator = node.accounts[:5]
        deployment = deploy(chain, owner)
        setup_dev_accounts(
            chain,
            deployment,
            owner,
            solvers=[solver_key.address],
            mediators=[mediator.address],
            funded=[provider.address, creator.address],
        )
        market = JobMarketClient(chain, deployment.market)
        market.deposit(provider, 1000 * ETH)
        market.deposit(creator, 1000 * ETH)
        service = Solver(
            Store(f"sqlite:///{root / 'solver.db'}"),
            market,
            solver_key,
            SolverConfig(start_block=deployment.block, poll_interval=0.1, rate=1000, burst=1000),
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
        )
        service.start()
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        ipfs = EmbeddedNode(Blockstore(root / "ipfs"), api="127.0.0.1:0", gateway="127.0.0.1:0")
        ipfs.start()

        specs = [modules.render(MODULE, [f"Message=job {i}"]) for i in range(args.jobs)]
        base = baseline(specs, root, ipfs.api_url)

        from lilypad.solver_api import SolverClient

        state = root / "provider"
        daemon = ResourceProvider(
            account=provider,
            market=JobMarketClient(chain, deployment.market),
            solver=SolverClient(url),
            storage=KuboStorage(ipfs.api_url),
            executor=ProcessExecutor(),
            hardware=Hardware((), 4, 8192, 20480),
            state_dir=state,
            config=ProviderConfig(
                modules=(MODULE,),
                price=ETH,
                collateral=ETH,
                mediators=(mediator.address,),
                max_concurrent=args.slots,
                poll_interval_s=0.1,
                start_block=deployment.block,
            ),
        )
        daemon.start()
        time.sleep(1.0)  # the provider lists its offers
        start = time.perf_counter()
        with httpx.Client(base_url=url, timeout=30) as client:
            for i, spec in enumerate(specs):
                offer = JobOffer(
                    job_creator=creator.address,
                    module=module_id(spec.module),
                    spec_hash=spec_digest(spec.spec_hash),
                    machine=Machine(cpu_millis=500, ram_mb=256, disk_mb=103).encode(),
                    max_price=2 * ETH,
                    timeout=600,
                    mediators=(mediator.address,),
                    expiry=int(time.time()) + 3600,
                    nonce=i + 1,
                )
                signature = offer.sign(creator, chain.chain_id, market.address)
                body = JobSubmission(offer=offer, signature=signature, spec=spec)
                client.post("/api/v1/job_offers", json=body.model_dump(mode="json"))
        store = JsonStore(state)
        while sum(1 for r in store.all("deals", DealRecord) if r.phase is Phase.SUBMITTED) < len(
            specs
        ):
            time.sleep(0.05)
        took = time.perf_counter() - start
        daemon.stop()
        server.should_exit = True
        service.stop()
        ipfs.stop()
        print(f"jobs: {len(specs)}, provider slots: {args.slots}")
        print(
            f"baseline (executor + IPFS add, serial): {base:.2f} s, {base / len(specs):.3f} s/job"
        )
        print(
            f"daemon (offer to result on chain):      {took:.2f} s, {took / len(specs):.3f} s/job"
        )
        print(f"ratio daemon / baseline: {took / base:.2f}")


if __name__ == "__main__":
    main()
