"""The job creator's web3-free client (lilypad.chain.light) on a real anvil, beside web3's."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lilypad.chain.abi import CONTRACT_NAMES, load_artifact
from lilypad.chain.crypto import Signer, selector
from lilypad.chain.light import CreatorMarket, DealState, LightChain
from lilypad.errors import ChainError, ChainUnavailable, ContractReverted
from tests.chain.conftest import DEPOSIT, ETH, Env

#: anvil's first public test key (the "test test ... junk" mnemonic).
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


@pytest.fixture
def light(env: Env) -> Iterator[CreatorMarket]:
    chain = LightChain(env.chain.rpc_url)
    yield CreatorMarket(chain, env.market.address)
    chain.close()


def _abi_signatures() -> set[str]:
    from lilypad.chain.abi import _abi_type

    names = set()
    for name in CONTRACT_NAMES:
        for entry in load_artifact(name).abi:
            if entry["type"] == "function":
                names.add(f"{entry['name']}({','.join(_abi_type(i) for i in entry['inputs'])})")
    return names


def test_every_call_the_light_market_makes_is_in_the_shipped_abi() -> None:
    """Its selectors are written as text; a changed contract must fail here, not on chain."""
    import inspect

    import lilypad.chain.light as light

    source = inspect.getsource(light)
    used = {
        "token()",
        "balanceOf(address)",
        "dealState(bytes32)",
        "allowance(address,address)",
        "approve(address,uint256)",
        "deposit(uint256)",
    } | {f"{name}({light._DEAL})" for name in ("acceptResult", "challengeResult", "timeoutResult")}
    for signature in used:
        assert signature.split("(")[0] in source
        assert signature in _abi_signatures(), signature
    assert selector("deposit(uint256)").hex() == "b6b55f25"


def test_views_agree_with_the_web3_client(env: Env, light: CreatorMarket) -> None:
    assert light.chain.chain_id == env.chain.chain_id
    assert light.token == env.deployment.token
    assert light.balance_of(env.jc.address) == env.market.balance_of(env.jc.address) == DEPOSIT
    deal = env.submitted()
    assert light.deal_status(deal.deal_id) == env.market.deal_status(deal.deal_id)
    assert light.deal_status(deal.deal_id).state is DealState.SUBMITTED
    assert abs(light.chain.block_timestamp("pending") - env.now()) <= 2


def test_a_job_creator_deposits_and_accepts_with_a_bare_key(env: Env, light: CreatorMarket) -> None:
    signer = Signer(bytes(env.jc.key))
    before = env.token.balance_of(env.jc.address)
    receipt = light.deposit(signer, 3 * ETH)  # approves first: the allowance is spent
    assert receipt.gas_used > 0
    assert receipt.tx_hash.startswith("0x")
    assert env.market.balance_of(env.jc.address) == DEPOSIT + 3 * ETH
    assert env.token.balance_of(env.jc.address) == before - 3 * ETH
    deal = env.submitted()
    provider_before = env.market.balance_of(env.provider.address)
    light.accept_result(signer, deal)
    assert env.market.deal_status(deal.deal_id).state is DealState.NONE
    paid = env.market.balance_of(env.provider.address) - provider_before
    assert paid == deal.price + deal.collateral


def test_an_eth_account_sender_works_too(env: Env, light: CreatorMarket) -> None:
    deal = env.submitted()
    light.challenge_result(env.jc, deal)
    assert env.market.deal_status(deal.deal_id).state is DealState.CHALLENGED


def test_reverts_name_the_contracts_error(env: Env, light: CreatorMarket) -> None:
    deal = env.deal()  # created, no result yet
    with pytest.raises(ContractReverted) as caught:
        light.accept_result(Signer(bytes(env.jc.key)), deal)
    assert caught.value.error == env_error(env, deal)
    assert "acceptResult reverted with" in str(caught.value)
    with pytest.raises(ContractReverted, match="ERC20InsufficientBalance"):
        light.deposit(Signer(bytes(env.stranger.key)), 10**9 * ETH)


def env_error(env: Env, deal: object) -> str:
    """The error the web3 client names for the same call."""
    try:
        env.market.accept_result(env.jc, deal)  # type: ignore[arg-type]
    except ContractReverted as exc:
        return exc.error
    raise AssertionError("acceptResult of an unsubmitted deal did not revert")


def test_an_unreachable_or_wrong_node_is_a_clear_error() -> None:
    with pytest.raises(ChainUnavailable, match=r"cannot reach the chain at http://127\.0\.0\.1:9"):
        _ = LightChain("http://127.0.0.1:9").chain_id
    with subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            port = server.stdout.readline().split("port ")[1].split()[0]
            with pytest.raises(ChainError, match="not JSON-RPC"):
                _ = LightChain(f"http://127.0.0.1:{port}").chain_id
        finally:
            server.terminate()


def test_two_programs_sending_from_one_account_at_once_all_land(env: Env) -> None:
    """Each `lilypad run` reads the pending nonce itself; clashes are re-signed, none is lost."""
    signer = Signer(bytes(env.jc.key))
    env.token.approve(env.jc, env.market.address, 10**30)

    def deposit(_: int) -> None:
        chain = LightChain(env.chain.rpc_url)  # its own connection, as in another process
        try:
            CreatorMarket(chain, env.market.address).deposit(signer, ETH)
        finally:
            chain.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(deposit, range(6)))
    assert env.market.balance_of(env.jc.address) == DEPOSIT + 6 * ETH
    env.chain.nonces.reset()


def test_a_chain_without_a_base_fee_gets_legacy_transactions() -> None:
    """Before London there is no base fee and no typed transaction: the light client signs an
    EIP-155 one, priced at eth_gasPrice."""
    from lilypad.chain.anvil import find_anvil, free_port

    port = free_port()
    with subprocess.Popen(
        [find_anvil(), "--hardfork", "berlin", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as node:
        chain = LightChain(f"http://127.0.0.1:{port}")
        try:
            for _ in range(100):
                try:
                    chain.batch("start", [("eth_chainId", [])])
                    break
                except ChainUnavailable:
                    time.sleep(0.1)
            sender = Signer.from_key(ANVIL_KEY_0)
            receipt = chain.send("transfer", "0x" + "5f" * 20, b"", sender)
            tx = chain.request("tx", "eth_getTransactionByHash", [receipt.tx_hash])
            assert int(tx["type"], 16) == 0
            assert int(tx["gasPrice"], 16) == int(chain.request("p", "eth_gasPrice", []), 16)
            assert int(tx["v"], 16) in (35 + 2 * chain.chain_id, 36 + 2 * chain.chain_id)
        finally:
            chain.close()
            node.terminate()
