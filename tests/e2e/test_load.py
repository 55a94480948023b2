"""Load: three providers and thirty `lilypad run` at once, from one job creator. Every job
completes exactly once, and no token is created or lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lilypad.localnet import key_file
from lilypad.storage import CID
from tests.e2e.conftest import Up, chain_events, escrow, holdings, logs, provider_deals

NETWORK = "load"
JOBS = 30
PROVIDERS = ("provider", "provider-2", "provider-3")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_providers_take_thirty_jobs_at_once_each_exactly_once(network_up: Up) -> None:
    profile = network_up(
        NETWORK, "--providers", "3", "--executor", "process", "--port-offset", "3100"
    )
    before = holdings(profile)
    key = str(key_file(NETWORK, "job_creator"))
    command = [sys.executable, "-m", "lilypad", "run", "cowsay:v0.0.4", "--network", NETWORK]
    # --verify never: this test counts deals and payments (tests/creator covers the audits)
    command += ["--key-file", key, "--yes", "--json", "--verify", "never"]
    runs = [
        subprocess.Popen(
            [*command, "-i", f"Message=job number {i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for i in range(JOBS)
    ]
    records = []
    try:
        for i, run in enumerate(runs):
            stdout, stderr = run.communicate(timeout=600)
            assert run.returncode == 0, f"job {i}: {stderr}" + logs(NETWORK)
            records.append(json.loads(stdout))
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
            run.communicate()

    # every job got its own result
    for i, record in enumerate(records):
        assert record["state"] == "accepted"
        text = (Path(record["output_dir"]) / "outputs" / "cowsay.txt").read_text()
        assert f"job number {i}" in text
    assert len({r["deal_id"] for r in records}) == JOBS

    # on chain: one deal per job, one result per deal, each accepted; nothing timed out
    created = chain_events(profile, "DealCreated")
    submitted = chain_events(profile, "ResultSubmitted")
    accepted = chain_events(profile, "ResultAccepted")
    failed = chain_events(profile, "ResultChallenged", "DealTimedOut")
    assert Counter(e.args["dealId"] for e in created) == Counter(r["deal_id"] for r in records)
    assert sorted(e.args["dealId"] for e in submitted) == sorted(r["deal_id"] for r in records)
    assert len(accepted) == JOBS
    assert failed == []
    for event in submitted:
        record = next(r for r in records if r["deal_id"] == event.args["dealId"])
        cid = CID.parse(bytes.fromhex(event.args["resultCid"].removeprefix("0x")))
        assert str(cid) == record["result_cid"]

    # the work was shared, and no provider ran a job twice
    addresses = {profile.accounts[role]: role for role in PROVIDERS}
    by_provider = Counter(addresses[r["provider"]] for r in records)
    assert set(by_provider) == set(PROVIDERS), by_provider
    for role in PROVIDERS:
        deals = provider_deals(NETWORK, profile.accounts[role])
        ran = [d for d in deals if d["runs"]]
        assert len(ran) == by_provider[role]
        assert all(d["runs"] == 1 for d in ran)

    # balances conserve: what the job creator paid, the providers got, and no escrow is left
    after = holdings(profile)
    paid = sum(int(r["price"]) for r in records)
    assert before["job_creator"] - after["job_creator"] == paid
    for role in PROVIDERS:
        earned = sum(int(r["price"]) for r in records if r["provider"] == profile.accounts[role])
        assert after[role] - before[role] == earned
    assert sum(after.values()) == sum(before.values())
    assert escrow(profile) == 0
