"""``lilypad run`` end to end against anvil, the solver, an embedded IPFS node and a provider
stand-in (a thread that plays the provider with the real chain, solver and IPFS APIs; the real
daemon is tested in tests/provider)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from lilypad import solver_api as api
from lilypad.chain.market import DealState, JobMarketClient
from lilypad.chain.offers import Deal, Machine, min_job_timeout, module_id
from lilypad.network import load_network, save_network
from lilypad.solver_api import SolverClient
from lilypad.storage import result_dir
from lilypad.storage.backends import KuboStorage
from lilypad.storage.node import EmbeddedNode
from resource_provider.executors import ProcessExecutor
from resource_provider.mediator import Mediator
from tests.conftest import CliResult, CliRunner
from tests.solver.conftest import ETH, Net, Server, SolverFactory

HAS = Machine(gpus=0, vram_mb=0, cpu_millis=4000, ram_mb=8192, disk_mb=10240)


@dataclass
class Stack:
    net: Net
    server: Server
    ipfs: EmbeddedNode


@pytest.fixture
def stack(
    net: Net, make_solver: SolverFactory, ipfs: EmbeddedNode, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    with Server(make_solver()) as server:
        net.save_profile(
            "test",
            solver_url=server.url,
            ipfs_api_url=ipfs.api_url,
            gateway_url=ipfs.gateway_url,
            accounts={"mediator": net.mediator.address},
        )
        monkeypatch.setenv("WEB3_PRIVATE_KEY", net.creators[0].key.hex())
        yield Stack(net, server, ipfs)


@pytest.fixture
def cli(cli: CliRunner) -> CliRunner:
    """`lilypad run` with ``--verify never`` unless a test chooses: the stand-in provider below
    runs no module, and no mediator is up to audit it (tests/creator tests the policies)."""

    def run(*args: str) -> CliResult:
        if args[:1] == ("run",) and "--verify" not in args:
            args = (*args, "--verify", "never")
        return cli(*args)

    return run


class StandInProvider(threading.Thread):
    """Takes one deal and answers it: writes a result folder, adds it to IPFS, submits the CID
    (or, with ``deliver=False``, never answers)."""

    def __init__(
        self,
        stack: Stack,
        account: LocalAccount,
        folder: Path,
        *,
        deliver: bool = True,
        exit_code: int = 0,
        gate: threading.Event | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.stack, self.account, self.folder = stack, account, folder
        self.deliver, self.exit_code, self.gate = deliver, exit_code, gate
        self.deal: Deal | None = None
        self.dealt = threading.Event()  # the deal is known: self.deal
        self.market = JobMarketClient(stack.net.chain, stack.net.deployment.market)
        self.done = threading.Event()
        net = stack.net
        self.offer = net.resource(
            account, module=module_id("cowsay:v0.0.4"), machine=HAS.encode(), price=3 * ETH
        )
        with httpx.Client(base_url=stack.server.url) as client:
            client.post(
                "/api/v1/resource_offers", json=self.offer.model_dump(mode="json")
            ).raise_for_status()

    def run(self) -> None:
        with (
            httpx.Client(base_url=self.stack.server.url, timeout=30) as client,
            client.stream(
                "GET", "/api/v1/events", params={"party": self.account.address}
            ) as response,
        ):
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line.removeprefix("data: "))
                if event["kind"] == "deal.created":
                    self.answer(Deal.model_validate(event["deal"]), client, event["job_offer_id"])
                    return

    def answer(self, deal: Deal, client: httpx.Client, job_offer_id: str) -> None:
        self.deal = deal
        self.dealt.set()
        if self.gate is not None:  # the test says when the result goes on chain
            assert self.gate.wait(60)
        spec = client.get(f"/api/v1/job_offers/{job_offer_id}").json()["offer"]["spec"]
        message = spec["tunables"]["Message"]
        (self.folder / "outputs").mkdir(parents=True)
        (self.folder / "outputs" / "cowsay.txt").write_text(f"< {message} >\n")
        (self.folder / "stdout").write_text(f"< {message} >\n")
        (self.folder / "stderr").write_text("" if self.exit_code == 0 else "boom: out of ideas\n")
        (self.folder / "exitCode").write_text(str(self.exit_code))
        if self.deliver:
            storage = KuboStorage(self.stack.ipfs.api_url)
            try:
                cid = storage.add(self.folder)
            finally:
                storage.close()
            self.market.submit_result(self.account, deal, bytes(cid))
        self.done.set()


def test_run_completes_a_job_and_saves_exactly_the_result(
    stack: Stack, cli: CliRunner, tmp_path: Path
) -> None:
    net = stack.net
    provider = StandInProvider(stack, net.providers[0], tmp_path / "result")
    provider.start()
    before = net.market.balance_of(net.providers[0].address)

    result = cli(
        "run",
        "cowsay:v0.0.4",
        "-i",
        "Message=hello from the test",
        "--network",
        "test",
        "--yes",
        "--json",
        "--max-price",
        "5",
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(record) >= {
        "module",
        "tunables",
        "job_offer_id",
        "deal_id",
        "result_cid",
        "output_dir",
        "gateway_url",
        "txs",
        "timings_ms",
    }
    assert record["module"] == "cowsay:v0.0.4"
    assert record["tunables"] == {"Message": "hello from the test"}
    out = Path(record["output_dir"])
    assert out.name == record["result_cid"]
    assert sorted(p.name for p in out.iterdir()) == ["exitCode", "outputs", "stderr", "stdout"]
    assert (out / "outputs" / "cowsay.txt").read_text() == "< hello from the test >\n"
    assert record["gateway_url"] == f"{stack.ipfs.gateway_url}/ipfs/{record['result_cid']}"
    assert net.market.deal_status(record["deal_id"]).state is DealState.NONE  # settled
    assert net.market.balance_of(net.providers[0].address) == before + 3 * ETH
    listed = json.loads(cli("jobs", "list", "--json").stdout)
    assert [j["state"] for j in listed] == ["accepted"]
    shown = cli("jobs", "show", record["deal_id"][:12])
    assert record["result_cid"] in shown.stdout


def test_a_read_waiting_for_a_jobs_next_log_line_answers_once_its_result_is_on_chain(
    stack: Stack, cli: CliRunner, tmp_path: Path
) -> None:
    """A read of a running job's log waits (long poll) for its next line. When the result
    lands instead, the read answers at once that the log has ended: the job creator, which
    takes its last lines before it goes on to the result, waited out the poll (2 s) on every
    job before."""
    net = stack.net
    gate = threading.Event()
    provider = StandInProvider(stack, net.providers[0], tmp_path / "result", gate=gate)
    provider.start()
    runs: list[CliResult] = []
    args = ("run", "cowsay:v0.0.4", "--network", "test", "--yes", "-i", "Message=hi")
    job = threading.Thread(target=lambda: runs.append(cli(*args)))
    job.start()
    assert provider.dealt.wait(60)
    assert provider.deal is not None
    pages: list[api.DealLogs] = []
    reader = provider.account

    deal_id = provider.deal.deal_id

    def sign(text: str) -> str:
        return "0x" + bytes(reader.sign_message(encode_defunct(text=text)).signature).hex()

    def read() -> None:
        with SolverClient(stack.server.url) as client:
            pages.append(client.deal_logs(deal_id, sign, after=0, wait=api.MAX_LOG_WAIT_S))

    waiting = threading.Thread(target=read)
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)  # the read waits at the solver now: no line will come
    assert not pages
    gate.set()  # the result goes on chain
    waiting.join(api.MAX_LOG_WAIT_S / 2)
    assert pages, "the read waited out its poll"
    assert pages[0].ended
    assert pages[0].lines == ()
    assert time.monotonic() - started < api.MAX_LOG_WAIT_S / 2
    job.join(120)
    assert runs[0].exit_code == 0, runs[0].stderr


def test_the_same_job_run_again_replaces_its_earlier_output_folder(
    stack: Stack, cli: CliRunner, tmp_path: Path
) -> None:
    """Same inputs, same CID, same folder: the second run must not fail at the download (after
    paying), and the folder must again hold exactly the CID's content."""
    args = ("run", "cowsay:v0.0.4", "-i", "Message=again", "--network", "test", "--yes", "--json")
    records = []
    for attempt in range(2):
        # a provider account each: a fresh event stream would replay the first deal to the first
        provider = StandInProvider(stack, stack.net.providers[attempt], tmp_path / f"r{attempt}")
        provider.start()
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        records.append(json.loads(result.stdout))
        out = Path(records[-1]["output_dir"])
        if attempt == 0:  # the user edits the saved result, and adds a file of their own
            (out / "outputs" / "cowsay.txt").write_text("edited")
            (out / "notes.txt").write_text("mine")
    first, second = records
    assert first["result_cid"] == second["result_cid"]
    assert first["deal_id"] != second["deal_id"]
    assert second["state"] == "accepted"
    out = Path(second["output_dir"])
    assert sorted(p.name for p in out.iterdir()) == ["exitCode", "outputs", "stderr", "stdout"]
    assert (out / "outputs" / "cowsay.txt").read_text() == "< again >\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # nothing left over


def test_bad_input_stops_before_anything_is_posted(stack: Stack, cli: CliRunner) -> None:
    result = cli("run", "cowsay:v0.0.4", "-i", "Mesage=hi", "--network", "test", "--yes")
    assert result.exit_code == 2
    assert "Message" in result.stderr
    assert json.loads(cli("jobs", "list", "--json").stdout) == []


def test_missing_key_is_a_clear_error(
    stack: Stack, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEB3_PRIVATE_KEY")
    result = cli("run", "cowsay:v0.0.4", "--network", "test", "--yes")
    assert result.exit_code == 2
    assert "WEB3_PRIVATE_KEY" in result.stderr


@pytest.mark.slow
def test_provider_that_never_delivers_is_timed_out_and_refunded(
    stack: Stack, cli: CliRunner, tmp_path: Path
) -> None:
    net = stack.net
    provider = StandInProvider(stack, net.providers[1], tmp_path / "result", deliver=False)
    provider.start()
    creator = net.creators[0].address
    before = net.market.balance_of(creator)
    # A live chain makes blocks all the time; the dev chain only on transactions, and a deadline
    # can only be seen to pass in a new block. Once the deal is made, time runs fast (the
    # shortest timeout the solver takes is the module's 60 s plus a margin).
    stop = threading.Event()

    def produce_blocks() -> None:
        with httpx.Client(base_url=stack.server.url) as client:
            while not stop.wait(1):
                dealt = bool(client.get("/api/v1/deals").json())
                net.advance(30 if dealt else 0)

    threading.Thread(target=produce_blocks, daemon=True).start()
    try:
        result = cli(
            "run",
            "cowsay:v0.0.4",
            "--network",
            "test",
            "--yes",
            "--timeout",
            str(min_job_timeout(60)),
            "--max-price",
            "5",
        )
    finally:
        stop.set()
    assert result.exit_code == 1
    assert "timed out" in result.stderr
    assert "refunded" in result.stderr
    # the price came back, and the provider's collateral went to the job creator
    assert net.market.balance_of(creator) == before + provider.offer.offer.collateral


@pytest.mark.slow
def test_no_provider_means_the_offer_is_withdrawn(stack: Stack, cli: CliRunner) -> None:
    result = cli("run", "cowsay:v0.0.4", "--network", "test", "--yes", "--expires-in", "15")
    assert result.exit_code == 1
    assert "no provider took the job" in result.stderr
    assert [j["state"] for j in json.loads(cli("jobs", "list", "--json").stdout)] == ["cancelled"]


def test_deposit_is_topped_up_only_with_consent(
    stack: Stack, cli: CliRunner, tmp_path: Path
) -> None:
    net = stack.net
    creator = net.creators[0].address
    before = net.market.balance_of(creator)
    refused = cli("run", "cowsay:v0.0.4", "--network", "test", "--max-price", "150")
    assert refused.exit_code == 2
    assert "--yes" in refused.stderr
    assert net.market.balance_of(creator) == before
    StandInProvider(stack, net.providers[0], tmp_path / "result").start()
    done = cli("run", "cowsay:v0.0.4", "--network", "test", "--max-price", "150", "--yes", "--json")
    assert done.exit_code == 0, done.stderr
    # topped up to 150 and a mediation fee (so that a challenge can be paid), then 3 paid
    fee = net.market.mediator(net.mediator.address)[1]
    assert net.market.balance_of(creator) == 150 * ETH + fee - 3 * ETH


class LyingIPFS(threading.Thread):
    """A Kubo RPC endpoint that answers every block request with the wrong bytes."""

    def __init__(self) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = b"these are not the bytes you are looking for"
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(daemon=True)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_result_that_fails_verification_is_challenged(
    stack: Stack, cli: CliRunner, tmp_path: Path
) -> None:
    """Bytes that do not hash to the CID are challenged at once (whatever the policy), and never
    saved as the result. Here every download lies, the mediator's correct result's too."""
    net = stack.net
    liar = LyingIPFS()
    liar.start()
    mediator = Mediator(
        account=net.mediator,
        market=JobMarketClient(net.chain, net.deployment.market),
        solver=SolverClient(stack.server.url),
        storage=KuboStorage(stack.ipfs.api_url),
        executor=ProcessExecutor(),
        state_dir=tmp_path / "mediator",
        start_block=net.deployment.block,
        poll_interval_s=0.2,
    )
    mediator.start()
    try:
        profile = load_network("test")
        save_network(profile.model_copy(update={"ipfs_api_url": liar.url}))
        StandInProvider(stack, net.providers[0], tmp_path / "result").start()
        result = cli("run", "cowsay:v0.0.4", "--network", "test", "--yes", "--max-price", "5")
    finally:
        liar.stop()
        mediator.stop()
    assert result.exit_code == 1
    assert "challenged" in result.stderr, result.stderr
    assert "no verified result could be fetched" in result.stderr, result.stderr
    record = json.loads(cli("jobs", "list", "--json").stdout)[-1]
    assert record["audited"]
    # the stand-in's result is not cowsay's: the mediator ruled against it
    assert record["state"] == "provider_slashed"
    assert net.market.deal_status(record["deal_id"]).state is DealState.REFUNDED
    # nothing was saved as if it were the result
    assert record["output_dir"] is None
    assert not result_dir(record["result_cid"]).exists()


@pytest.mark.slow
def test_ctrl_c_withdraws_a_pending_offer(stack: Stack) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "lilypad", "run", "cowsay:v0.0.4", "--network", "test", "--yes"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # no provider: the offer waits, and we interrupt it
        seen.append(line)
        if "offer posted" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 130
    assert "withdrawn" in rest, "".join(seen) + rest
    with httpx.Client(base_url=stack.server.url) as client:
        deals = client.get("/api/v1/deals").json()
        assert deals == []
    records = json.loads(
        subprocess.run(
            [sys.executable, "-m", "lilypad", "jobs", "list", "--json"],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ.copy(),
        ).stdout
    )
    assert [r["state"] for r in records] == ["cancelled"]
    with httpx.Client(base_url=stack.server.url) as client:
        offer = client.get(f"/api/v1/job_offers/{records[0]['job_offer_id']}").json()
        assert offer["state"] == "cancelled"  # withdrawn at the solver, not just locally


def test_a_module_that_failed_on_the_provider_is_reported(
    stack: Stack, cli: CliRunner, tmp_path: Path
) -> None:
    StandInProvider(stack, stack.net.providers[0], tmp_path / "result", exit_code=3).start()
    result = cli("run", "cowsay:v0.0.4", "--network", "test", "--yes", "--max-price", "5")
    assert result.exit_code == 1
    assert "exited with 3" in result.stderr
    assert "boom: out of ideas" in result.stderr
    record = json.loads(cli("jobs", "list", "--json").stdout)[-1]
    assert record["state"] == "module_failed"
    assert (Path(record["output_dir"]) / "exitCode").read_text() == "3"  # the logs are kept
