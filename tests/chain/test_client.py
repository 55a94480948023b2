"""The chain client: revert decoding, unreachable nodes, concurrent nonces, offers, artifacts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from lilypad.chain import Chain, JobOffer, Machine, load_artifact, module_id, spec_digest
from lilypad.chain.abi import decode_revert
from lilypad.chain.anvil import free_port
from lilypad.chain.market import TokenClient
from lilypad.chain.offers import min_job_timeout
from lilypad.errors import ChainError, ChainUnavailable, ConfigError
from tests.chain.conftest import Env

ARTIFACTS = Path(__file__).resolve().parents[2] / "lilypad" / "chain" / "artifacts"


def test_custom_errors_decode_with_their_arguments() -> None:
    data = keccak(text="NonceUsed(address,uint256)")[:4] + encode(
        ["address", "uint256"], ["0x" + "11" * 20, 7]
    )
    name, details = decode_revert("0x" + data.hex())
    assert name == "NonceUsed"
    assert details == {"signer": "0x" + "11" * 20, "nonce": 7}
    reason = bytes.fromhex("08c379a0") + encode(["string"], ["no"])
    assert decode_revert(reason) == ("Error", {"reason": "no"})
    assert decode_revert("0xdeadbeef")[0] == "unknown"
    assert decode_revert(None) == ("unknown", {})


def test_an_unreachable_node_is_a_clear_error() -> None:
    chain = Chain(f"http://127.0.0.1:{free_port()}", request_timeout=2)
    with pytest.raises(ChainUnavailable, match="cannot reach the chain"):
        _ = chain.chain_id


def test_concurrent_transactions_of_one_sender_get_distinct_nonces(env: Env) -> None:
    recipients = [Account.create().address for _ in range(12)]

    def send(to: str) -> int:
        return env.token.transfer(env.jc, to, 1).block_number

    with ThreadPoolExecutor(max_workers=6) as pool:
        blocks = list(pool.map(send, recipients))
    assert len(set(blocks)) == len(recipients)
    assert all(env.token.balance_of(r) == 1 for r in recipients)


def test_a_nonce_taken_outside_the_client_is_retried_with_a_fresh_one(env: Env) -> None:
    env.token.transfer(env.jc, env.stranger.address, 1)
    before = env.token.balance_of(env.stranger.address)
    # Another program sends from the same account; our counted nonce is now stale.
    tx = {
        "to": env.stranger.address,
        "value": 1,
        "gas": 21000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 1,
        "nonce": env.chain.w3.eth.get_transaction_count(env.jc.address),
        "chainId": env.chain.chain_id,
    }
    env.chain.w3.eth.send_raw_transaction(env.jc.sign_transaction(tx).raw_transaction)
    env.token.transfer(env.jc, env.stranger.address, 1)
    assert env.token.balance_of(env.stranger.address) == before + 1


def test_two_programs_sending_from_one_account_at_once_both_land(env: Env) -> None:
    """Each `lilypad run` has its own client: identical transfers from one account at once all
    get mined, none is lost to a nonce clash."""
    recipient = Account.create().address

    def send(_: int) -> None:
        client = Chain(env.chain.rpc_url)  # a nonce manager of its own, as in another process
        TokenClient(client, env.deployment.token).transfer(env.jc, recipient, 1)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(send, range(6)))
    assert env.token.balance_of(recipient) == 6


def test_machine_lanes_round_trip_and_compare() -> None:
    needs = Machine.from_requirements(gpus=1, vram_gb=12, cpus=4, ram_gb=16, disk_gb=30.5)
    assert needs == Machine(gpus=1, vram_mb=12288, cpu_millis=4000, ram_mb=16384, disk_mb=31232)
    assert Machine.decode(needs.encode()) == needs
    assert needs.satisfies(needs)
    assert not needs.model_copy(update={"ram_mb": 16383}).satisfies(needs)


def test_spec_hash_and_module_id() -> None:
    digest = "57af1c156c010509439b5f05142785ada923b3cd17952c53ce95a5442d5a1e7c"
    assert spec_digest(f"sha256:{digest}") == "0x" + digest
    for bad in ("sha1:" + digest, "sha256:abc", "sha256:" + "zz" * 32):
        with pytest.raises(ConfigError, match="spec hash"):
            spec_digest(bad)
    assert module_id("sdxl:v0.9-lilypad1") == "0x" + keccak(text="sdxl:v0.9-lilypad1").hex()


def test_offers_validate_their_fields() -> None:
    fields = {
        "job_creator": "0x" + "ab" * 20,
        "module": module_id("cowsay:v0.0.4"),
        "spec_hash": "0x" + "00" * 32,
        "max_price": 1,
        "timeout": 60,
        "mediators": (),
        "expiry": 1,
        "nonce": 1,
    }
    offer = JobOffer.model_validate(fields)
    assert offer.job_creator == to_checksum_address("0x" + "ab" * 20)
    assert JobOffer.model_validate_json(offer.model_dump_json()) == offer
    with pytest.raises(ValueError, match="not an Ethereum address"):
        JobOffer.model_validate(fields | {"job_creator": "0x1234"})
    with pytest.raises(ValueError, match="32-byte"):
        JobOffer.model_validate(fields | {"spec_hash": "0x12"})
    with pytest.raises(ValueError, match="less than 79228162514264337593543950336"):
        JobOffer.model_validate(fields | {"max_price": 2**96})


def test_signature_recovers_the_signer() -> None:
    account = Account.create()
    offer = JobOffer(
        job_creator=account.address,
        module=module_id("cowsay:v0.0.4"),
        spec_hash="0x" + "00" * 32,
        max_price=1,
        timeout=60,
        mediators=(),
        expiry=1,
        nonce=1,
    )
    market = "0x" + "cd" * 20
    signature = offer.sign(account, 31337, market)
    assert offer.signer(signature, 31337, market) == account.address
    assert offer.signer(signature, 31338, market) != account.address
    assert offer.signer("0xzz", 31337, market) is None


def test_shipped_artifacts_have_abi_and_bytecode() -> None:
    for name in ("LilypadToken", "JobMarket", "JobCreator", "ExampleClient"):
        artifact = load_artifact(name)
        assert artifact.bytecode.startswith("0x6")
        assert len(artifact.bytecode) > 1000
        assert any(e["type"] == "function" for e in artifact.abi)
        saved = json.loads((ARTIFACTS / f"{name}.json").read_text())
        assert saved["compiler"].startswith("solc 0.8.30")
    with pytest.raises(ChainError, match="no contract artifact"):
        load_artifact("Nope")


def test_a_job_offer_commits_to_the_rendered_spec() -> None:
    from lilypad import modules

    spec = modules.render("sdxl:v0.9-lilypad1", ["Seed=24"])
    offer = JobOffer.for_spec(
        spec,
        job_creator="0x" + "ab" * 20,
        max_price=10**18,
        mediators=["0x" + "cd" * 20],
        expiry=2**40,
        nonce=3,
    )
    assert offer.module == module_id("sdxl:v0.9-lilypad1")
    assert offer.spec_hash == "0x" + spec.spec_hash.removeprefix("sha256:")
    assert Machine.decode(offer.machine).gpus == spec.machine.gpus
    assert Machine.decode(offer.machine).vram_mb == int(spec.machine.vram_gb * 1024)
    assert offer.timeout == spec.timeout_s + 300  # default_job_timeout
    assert offer.timeout >= min_job_timeout(spec.timeout_s)
    other = modules.render("sdxl:v0.9-lilypad1", ["Seed=25"])
    assert (
        JobOffer.for_spec(
            other,
            job_creator="0x" + "ab" * 20,
            max_price=10**18,
            mediators=["0x" + "cd" * 20],
            expiry=2**40,
            nonce=3,
        ).struct_hash()
        != offer.struct_hash()
    )


def test_view_calls_ask_the_node_for_its_chain_id_once(env: Env) -> None:
    """web3 checks the chain id before every ``eth_call``: the node is asked for it once per
    connection, not once per call (each view of the solver and the providers was two requests)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    methods: list[str] = []
    upstream = httpx.Client()

    class Counting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            sent = json.loads(body)
            methods.extend(c["method"] for c in (sent if isinstance(sent, list) else [sent]))
            answer = upstream.post(
                env.chain.rpc_url, content=body, headers={"Content-Type": "application/json"}
            )
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *_: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        chain = Chain(f"http://127.0.0.1:{proxy.server_port}")
        token = TokenClient(chain, env.token.address)
        balances = [token.balance_of(env.jc.address) for _ in range(5)]
        assert balances == [env.token.balance_of(env.jc.address)] * 5
        assert methods.count("eth_call") == 5
        assert methods.count("eth_chainId") <= 1
    finally:
        proxy.shutdown()
        proxy.server_close()
        upstream.close()
