"""Read-only JSON-RPC calls: CPU per call and calls/s, through web3.py and through the lean path
(:meth:`lilypad.chain.client.Chain.view` and ``block_number``) the services use for them.

Run: ``.venv/bin/python bench/rpc.py [--calls 300]``. A fresh anvil, the contracts deployed;
each call is made ``--calls`` times in a row from one thread. CPU is this process's only
(anvil's is the same for both paths).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from lilypad.chain.anvil import Anvil
from lilypad.chain.client import Chain
from lilypad.chain.deployment import deploy
from lilypad.chain.market import JobMarketClient


def measure(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(ms of CPU per call, calls per second)."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - cpu) / calls * 1e3, calls / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls of each kind")
    args = parser.parse_args()
    with Anvil() as node:
        chain = Chain(node.rpc_url)
        owner = node.accounts[0]
        market = JobMarketClient(chain, deploy(chain, owner).market)
        fns = market.contract.functions
        who = owner.address
        rows: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            (
                "eth_blockNumber",
                lambda: chain.rpc("block number", lambda: chain.w3.eth.block_number),
                chain.block_number,
            ),
            (
                "eth_call nonceUsed",
                lambda: chain.call(fns.nonceUsed(who, 7)),
                lambda: market.nonce_used(who, 7),
            ),
            (
                "eth_call balanceOf",
                lambda: chain.call(fns.balanceOf(who)),
                lambda: market.balance_of(who),
            ),
        ]
        print(f"{'call':<20}{'web3 ms CPU':>12}{'lean ms CPU':>12}{'web3 /s':>9}{'lean /s':>9}")
        for name, web3_path, lean_path in rows:
            assert web3_path() == lean_path()
            (web3_ms, web3_rate), (lean_ms, lean_rate) = (
                measure(web3_path, args.calls),
                measure(lean_path, args.calls),
            )
            print(f"{name:<20}{web3_ms:12.2f}{lean_ms:12.2f}{web3_rate:9.0f}{lean_rate:9.0f}")


if __name__ == "__main__":
    main()
