"""Gas per job on a real anvil: every transaction of every party, in steady state.

Run: ``.venv/bin/python bench/gas.py [--batch N]``. Starts anvil, deploys, warms every account up
(deposits made, nonce words and balances already non-zero — what a running network looks like),
then measures

* the happy path one deal per transaction: createDeal + submitResult + acceptResult;
* the happy path batched as a busy solver and provider send it: createDeals of N deals, one
  provider's submitResults of N results, each job creator's acceptResult;
* the mediation path, the payment-claim path and each timeout;
* deposits, reported apart (made once, reused by every deal).

The trust checks ``createDeal`` makes (the provider's minimum delivery time, the minimum collateral
and multiple, at most 16 mediators) and the final states the rare endings keep (``Refunded``,
``Upheld``, ``MediationExpired``) are included.

Lilypad's own on-chain lifecycle costs about 1,770,000 gas per job; the target is 150,000. The
last line is ``gas per job: N`` for the batched happy path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from lilypad.chain import (
    Chain,
    Deal,
    JobMarketClient,
    JobOffer,
    Machine,
    ResourceOffer,
    SignedJobOffer,
    SignedResourceOffer,
    deploy,
    module_id,
    setup_dev_accounts,
)
from lilypad.chain.anvil import Anvil

LILYPAD_REFERENCE = 1_770_000
CID = bytes.fromhex("01551220") + keccak(b"outputs")
ETH = 10**18


class Bench:
    def __init__(self, chain: Chain, market: JobMarketClient, accounts: list[LocalAccount]):
        self.chain, self.market = chain, market
        self.owner, self.solver, self.mediator = accounts[:3]
        self.nonces: dict[str, int] = {}
        self.expiry = int(time.time()) + 10 * 86400

    def pair(
        self, jc: LocalAccount, provider: LocalAccount
    ) -> tuple[SignedJobOffer, SignedResourceOffer]:
        chain_id, address = self.chain.chain_id, self.market.address
        jo = JobOffer(
            job_creator=jc.address,
            module=module_id("sdxl:v0.9-lilypad1"),
            spec_hash="0x" + keccak(b"spec").hex(),
            machine=Machine(gpus=1, vram_mb=12 * 1024, cpu_millis=4000, ram_mb=16384).encode(),
            max_price=ETH,
            timeout=900,
            mediators=(self.mediator.address,),
            expiry=self.expiry,
            nonce=self._nonce(jc),
        )
        ro = ResourceOffer(
            provider=provider.address,
            machine=Machine(gpus=1, vram_mb=24 * 1024, cpu_millis=16000, ram_mb=65536).encode(),
            price=ETH // 2,
            collateral=5 * ETH,  # the least the market takes at this price (10x by default)
            min_timeout=900,  # the provider's delivery time, checked against the job's timeout
            mediators=(self.mediator.address,),
            expiry=self.expiry,
            nonce=self._nonce(provider),
        )
        return (
            SignedJobOffer(offer=jo, signature=jo.sign(jc, chain_id, address)),
            SignedResourceOffer(offer=ro, signature=ro.sign(provider, chain_id, address)),
        )

    def _nonce(self, account: LocalAccount) -> int:
        self.nonces[account.address] = self.nonces.get(account.address, 0) + 1
        return self.nonces[account.address]

    def deal(self, jc: LocalAccount, provider: LocalAccount) -> tuple[Deal, int]:
        job, resource = self.pair(jc, provider)
        deals, receipt = self.market.create_deals(self.solver, [(job, resource)])
        return deals[0], receipt.gas_used

    def single(self, jc: LocalAccount, provider: LocalAccount) -> dict[str, int]:
        job, resource = self.pair(jc, provider)
        fn = self.market.contract.functions.createDeal(
            job.offer.as_tuple(),
            bytes.fromhex(job.signature[2:]),
            resource.offer.as_tuple(),
            bytes.fromhex(resource.signature[2:]),
        )
        receipt = self.chain.transact(fn, self.solver)
        deal = self.market.deals_in(receipt)[0]
        return {
            "createDeal": receipt.gas_used,
            "submitResult": self.market.submit_result(provider, deal, CID).gas_used,
            "acceptResult": self.market.accept_result(jc, deal).gas_used,
        }

    def batched(self, jcs: list[LocalAccount], provider: LocalAccount) -> dict[str, float]:
        deals, created = self.market.create_deals(
            self.solver, [self.pair(jc, provider) for jc in jcs]
        )
        submitted = self.market.submit_results(provider, [(d, CID) for d in deals])
        accepted = [
            self.market.accept_result(jc, d).gas_used for jc, d in zip(jcs, deals, strict=True)
        ]
        n = len(jcs)
        return {
            f"createDeals ({n} deals) / {n}": created.gas_used / n,
            f"submitResults ({n} results) / {n}": submitted.gas_used / n,
            "acceptResult": sum(accepted) / n,
        }


def advance(chain: Chain, seconds: int) -> None:
    chain.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def table(title: str, rows: dict[str, float]) -> float:
    total = sum(rows.values())
    print(f"\n{title}")
    for name, gas in rows.items():
        print(f"  {name:<34} {gas:>10,.0f}")
    print(f"  {'total':<34} {total:>10,.0f}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch", type=int, default=10, help="deals per createDeals / submitResults"
    )
    args = parser.parse_args()

    with Anvil() as anvil:
        chain = Chain(anvil.rpc_url)
        dev = anvil.accounts
        owner = dev[0]
        deployment = deploy(chain, owner)
        market = JobMarketClient(chain, deployment.market)
        provider = dev[3]
        jcs = [Account.from_key(keccak(text=f"bench job creator {i}")) for i in range(args.batch)]
        for jc in jcs:
            chain.w3.provider.make_request("anvil_setBalance", [jc.address, hex(10 * ETH)])  # type: ignore[arg-type]
        setup_dev_accounts(
            chain,
            deployment,
            owner,
            solvers=[dev[1].address],
            mediators=[dev[2].address],
            funded=[provider.address, *(jc.address for jc in jcs)],
        )
        bench = Bench(chain, market, dev)

        deposits: dict[str, float] = {}
        for account in (provider, *jcs):
            approve = market.token.approve(account, market.address, 1000 * ETH).gas_used
            deposit = chain.transact(
                market.contract.functions.deposit(1000 * ETH), account
            ).gas_used
            deposits.setdefault("approve (once per account)", approve)
            deposits.setdefault("deposit (once per account)", deposit)

        # Warm-up: every account's nonce word and balance slot non-zero, as on a running network.
        bench.single(jcs[0], provider)
        bench.batched(jcs, provider)
        warm, _ = bench.deal(jcs[1], provider)
        market.submit_result(provider, warm, CID)
        market.challenge_result(jcs[1], warm)
        market.resolve_mediation(bench.mediator, warm, provider_wins=True, result_cid=CID)

        single = table(
            "happy path, one deal per transaction (steady state)", bench.single(jcs[0], provider)
        )
        batched = table(
            f"happy path, batched as a busy solver/provider sends it "
            f"(per job, batch of {args.batch})",
            bench.batched(jcs, provider),
        )
        table("deposits (reported apart, not per job)", deposits)

        deal, create = bench.deal(jcs[1], provider)
        submit = market.submit_result(provider, deal, CID).gas_used
        challenge = market.challenge_result(jcs[1], deal).gas_used
        resolve = market.resolve_mediation(
            bench.mediator, deal, provider_wins=False, result_cid=CID
        ).gas_used
        table(
            "mediation path",
            {"createDeal": create, "submitResult": submit, "challengeResult": challenge,
             "resolveMediation": resolve},
        )  # fmt: skip

        other: dict[str, float] = {}
        window, mediation = market.windows()
        for name, run in _timeouts(bench, market, jcs[2], provider, window, mediation).items():
            other[name] = run()
        table("other settlements (each alone, after createDeal/submitResult)", other)

        print(f"\nunbatched gas per job: {single:,.0f}")
        print(
            f"Lilypad's lifecycle: ~{LILYPAD_REFERENCE:,}; ratio {LILYPAD_REFERENCE / batched:.1f}x"
        )
        print(f"gas per job: {round(batched)}")


def _timeouts(
    bench: Bench, market: JobMarketClient, jc: LocalAccount, provider: LocalAccount, window: int,
    mediation: int,
) -> dict[str, Callable[[], float]]:  # fmt: skip
    chain = bench.chain

    def claim() -> float:
        deal, _ = bench.deal(jc, provider)
        market.submit_result(provider, deal, CID)
        advance(chain, window + 1)
        return market.claim_payment(provider, deal).gas_used

    def judgement() -> float:
        deal, _ = bench.deal(jc, provider)
        market.submit_result(provider, deal, CID)
        advance(chain, window + 1)
        return market.timeout_judgement(bench.owner, deal).gas_used

    def result() -> float:
        deal, _ = bench.deal(jc, provider)
        advance(chain, 901)
        return market.timeout_result(bench.owner, deal).gas_used

    def mediate() -> float:
        deal, _ = bench.deal(jc, provider)
        market.submit_result(provider, deal, CID)
        market.challenge_result(jc, deal)
        advance(chain, mediation + 1)
        return market.timeout_mediation(bench.owner, deal).gas_used

    return {
        "claimPayment": claim,
        "timeoutJudgement": judgement,
        "timeoutResult": result,
        "timeoutMediation": mediate,
    }


if __name__ == "__main__":
    main()
