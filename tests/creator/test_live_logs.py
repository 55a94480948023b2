"""Live progress and logs: the provider relays a running job's stderr lines and progress through
the solver to the job creator, in order and before the result; only the deal's job creator and
provider read them; the relay is bounded in rate and size, and never changes the job or its CID."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from lilypad import solver_api as api
from lilypad.modules import render
from lilypad.solver_api import LogBatch, SolverClient
from lilypad.storage import compute_cid
from lilypad.verification import Verify
from resource_provider.executors import ProcessExecutor, Sandbox
from resource_provider.runner import execute_job
from solver.store import LogBounds
from tests.creator.conftest import Creator
from tests.provider.conftest import World, wait_for
from tests.solver.conftest import Server, SolverFactory

LINES = ["loading", "step 1/3", "image: step 2/3", "image: step 3/3"]

MANIFEST = """
name = "fixture-progress"
description = "prints progress lines on stderr, the rest once a file appears"
version = "local"
image = "lilypad-test/progress:local"
entrypoint = ["/bin/sh", "main.sh"]
timeout_s = 60
machine = { gpus = 0, cpus = 0.5, ram_gb = 0.25, disk_gb = 0.01 }
"""

SCRIPT = """
printf 'loading\\n' >&2
printf 'step 1/3\\n' >&2
n=0
while [ ! -e '{go}' ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
printf 'image: step 2/3\\n' >&2
printf 'image: step 3/3\\n' >&2
printf 'done\\n' > "$LILYPAD_OUTPUTS_DIR/result.txt"
"""


def unsandboxed() -> ProcessExecutor:
    """A process executor whose jobs see the host's files: the module waits for ``go``, which
    the test makes once it has seen the first lines (the sandbox would hide it)."""
    return ProcessExecutor(sandbox=Sandbox.NONE)


def progress_module(folder: Path, go: Path) -> str:
    """A module that prints :data:`LINES`, the last two once ``go`` exists."""
    folder.mkdir(parents=True)
    (folder / "lilypad_module.toml").write_text(MANIFEST)
    (folder / "main.sh").write_text(SCRIPT.format(go=go))
    return f"{folder}:local"


def sign(account: LocalAccount, text: str) -> str:
    return "0x" + bytes(account.sign_message(encode_defunct(text=text)).signature).hex()


def logs_of(creator: Creator) -> list[str]:
    return [step.detail["text"] for step in creator.steps if step.name == "log"]


def test_the_job_creator_sees_lines_and_progress_live_and_before_the_result(
    world: World, creator: Creator, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    module = progress_module(tmp_path / "progress", go)
    world.provider(executor=unsandboxed(), modules=(module,))
    job = creator.start(render(module, []), Verify.NEVER)
    # the job waits for ``go``: the line is seen while it runs
    wait_for(lambda: "step 1/3" in logs_of(creator), 60)
    assert not creator.saw("result")
    go.touch()
    record = job.result()
    assert record.state == "accepted"
    names = [step.name for step in creator.steps]
    assert logs_of(creator) == LINES
    last_log = max(i for i, name in enumerate(names) if name in ("log", "progress"))
    assert last_log < names.index("result")
    progress = [step.detail for step in creator.steps if step.name == "progress"]
    assert progress[-1] == {"done": 3, "total": 3, "label": "image"}
    assert (Path(record.output_dir or "") / "stderr").read_text().splitlines() == LINES


def test_only_the_deals_parties_read_its_logs_with_a_fresh_signature(
    world: World, creator: Creator, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    go.touch()
    module = progress_module(tmp_path / "progress", go)
    provider = world.net.providers[0]
    world.provider(provider, executor=unsandboxed(), modules=(module,))
    record = creator.run(render(module, []), Verify.NEVER)
    deal_id = str(record.deal_id)
    with SolverClient(world.server.url) as client:
        for reader in (creator.account, provider):  # the job creator and the provider
            page = client.deal_logs(deal_id, lambda text, r=reader: sign(r, text))
            assert [line.text for line in page.lines] == LINES
            assert [line.seq for line in page.lines] == [1, 2, 3, 4]
            assert page.ended
            assert page.dropped == 0
        later = client.deal_logs(deal_id, lambda text: sign(provider, text), after=2)
        assert [line.text for line in later.lines] == LINES[2:]
        stranger = world.net.creators[1]
        with pytest.raises(api.NotAllowed, match="neither its job creator nor its provider"):
            client.deal_logs(deal_id, lambda text: sign(stranger, text))
    path = f"/api/v1/deals/{deal_id}/logs"
    with httpx.Client(base_url=world.server.url, timeout=10) as http:
        assert http.get(path).status_code == 401
        stale = int(time.time()) - 3600
        headers = {
            api.TIMESTAMP_HEADER: str(stale),
            api.SIGNATURE_HEADER: sign(creator.account, api.log_read_message(deal_id, stale)),
        }
        answer = http.get(path, headers=headers)
        assert answer.status_code == 401, answer.text
        assert "sign again now" in answer.json()["error"]
        # a batch not signed by the deal's provider (here: its job creator) is refused
        batch = LogBatch(from_seq=5, lines=("forged",), signature="")
        forged = batch.model_copy(
            update={"signature": sign(creator.account, api.log_batch_message(deal_id, batch))}
        )
        answer = http.post(path, json=forged.model_dump(mode="json"))
        assert answer.status_code == 403, answer.text


def test_a_provider_over_the_log_rate_gets_429_and_its_job_keeps_its_cid(
    make_solver: SolverFactory, world: World, creator: Creator, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    go.touch()
    module = progress_module(tmp_path / "progress", go)
    local = tmp_path / "local-run"
    execute_job(unsandboxed(), render(module, []), local)
    without_logs = compute_cid(local)
    with Server(make_solver(log_rate=0.01, log_burst=1)) as server:
        strict = World(world.net, server, world.ipfs, tmp_path / "strict")
        try:
            provider = world.net.providers[0]
            strict.provider(provider, executor=unsandboxed(), modules=(module,), log_interval_s=0.0)
            creator.world = strict
            record = creator.run(render(module, []), Verify.NEVER)
            assert record.state == "accepted"
            assert record.result_cid == str(without_logs)
            deal_id = str(record.deal_id)
            batch = LogBatch(from_seq=100, lines=("one more",), signature="")
            signed = batch.model_copy(
                update={"signature": sign(provider, api.log_batch_message(deal_id, batch))}
            )
            with httpx.Client(base_url=server.url, timeout=10) as http:
                path = f"/api/v1/deals/{deal_id}/logs"
                answers = [http.post(path, json=signed.model_dump(mode="json")) for _ in range(2)]
            assert answers[-1].status_code == 429, answers[-1].text
            assert int(answers[-1].headers["Retry-After"]) >= 1
        finally:
            for daemon in strict.providers:
                daemon.stop()


def test_the_solver_keeps_at_most_its_bound_of_lines_and_counts_the_rest(
    make_solver: SolverFactory, world: World, creator: Creator, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    go.touch()
    module = progress_module(tmp_path / "progress", go)
    with Server(make_solver(log_bounds=LogBounds(lines=2))) as server:
        bounded = World(world.net, server, world.ipfs, tmp_path / "bounded")
        try:
            bounded.provider(executor=unsandboxed(), modules=(module,))
            creator.world = bounded
            record = creator.run(render(module, []), Verify.NEVER)
            with SolverClient(server.url) as client:
                page = client.deal_logs(
                    str(record.deal_id), lambda text: sign(creator.account, text)
                )
        finally:
            for daemon in bounded.providers:
                daemon.stop()
    assert [line.text for line in page.lines] == LINES[:2]
    assert page.dropped == 2
    assert page.progress == api.LogProgress(done=3, total=3, label="image")  # kept all along


def test_a_job_completes_when_the_solver_goes_down_while_it_runs(
    world: World, creator: Creator, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    module = progress_module(tmp_path / "progress", go)
    world.provider(executor=unsandboxed(), modules=(module,))
    job = creator.start(render(module, []), Verify.NEVER)
    wait_for(lambda: "step 1/3" in logs_of(creator), 60)
    world.server.__exit__()  # the solver goes down while the job runs and relays its lines
    go.touch()
    record = job.result(120)
    assert record.state == "accepted"
    assert (Path(record.output_dir or "") / "stderr").read_text().splitlines() == LINES


class _SlowSolver:
    """A solver whose log read hangs until released (a client-side unit test: no server)."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def deal_logs(self, deal_id: str, sign: object, *, after: int, wait: float) -> api.DealLogs:
        self.entered.set()
        self.release.wait(10)
        line = api.LogLine(seq=after + 1, text="late")
        return api.DealLogs(
            deal_id=deal_id,
            state=api.DealState.CREATED,
            lines=(line,),
            progress=None,
            dropped=0,
            ended=True,
        )


def test_a_log_read_still_in_flight_hands_on_nothing_after_finish() -> None:
    from lilypad.creator._solver import LogFollower

    slow, steps = _SlowSolver(), []
    follower = LogFollower(slow, "0x" + "ab" * 32, lambda _: "0x", steps.append)  # type: ignore[arg-type]
    assert slow.entered.wait(5)
    follower.finish(timeout=0.1)  # the job's result is shown after this
    slow.release.set()
    follower._thread.join(5)
    assert steps == []  # the late line did not come after the result
