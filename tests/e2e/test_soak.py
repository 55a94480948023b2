"""Soak: a thousand jobs through one solver, from SDK clients reused for every job, on four
providers of four slots each. Every deal is settled exactly once, no token is created or lost,
and once the network is warm neither the services' memory nor the client's threads and open
files grow with the jobs."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lilypad.client import Client, Result
from lilypad.localnet import key_file, status
from tests.e2e.conftest import (
    Up,
    chain_events,
    escrow,
    holdings,
    lilypad,
    logs,
    provider_deals,
)

NETWORK = "soak"
MODULE = "cowsay:v0.0.4"
JOBS = 1000
#: Jobs before the first measure: the services' caches and pools are full by then (the
#: solver's recent events for its streams, solver.stream.RECENT, hold about 220 jobs').
WARM = 300
AT_ONCE = 16
PROVIDERS = ("provider", "provider-2", "provider-3", "provider-4")
#: The job creators: the network's own, and dev accounts the four providers leave unused.
CREATORS = ("job_creator", "provider-5", "provider-6", "provider-7")
#: What each creator deposits once, in tokens: more than its jobs' max prices (10 each) and
#: the challenge reserve, so that no job tops the deposit up.
DEPOSIT = "4000"
#: How much a service's resident memory may grow from the warm network to the end (700 jobs):
#: a leak of a job's offer, deal or event (a few KB each, times 700) stays below it only if it
#: is far smaller than one job; allocator noise and caches filled late stay below it too.
GROWTH_MB = 24
#: The most anvil may hold at any time (its peak was ~560 MB in a 1,000-job soak).
ANVIL_MB = 1024


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_a_thousand_jobs_settle_once_each_and_nothing_grows(network_up: Up) -> None:
    profile = network_up(
        NETWORK, "--providers", str(len(PROVIDERS)), "--slots", "4", "--executor", "process",
        "--port-offset", "3600",
    )  # fmt: skip
    for role in CREATORS:
        key = str(key_file(NETWORK, role))
        done = lilypad("account", "deposit", DEPOSIT, "--network", NETWORK, "--key-file", key,
                       "--yes")  # fmt: skip
        assert done.returncode == 0, done.stderr
    before = holdings(profile)
    # deposit=False: a job that found its deposit short would fail, not top it up
    clients = [Client(NETWORK, key_file=key_file(NETWORK, r), deposit=False) for r in CREATORS]

    def job(index: int) -> Result:
        client = clients[index % len(clients)]
        return client.run(MODULE, Message=f"soak job {index}", verify="never")

    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(job, range(WARM)))
        warm, threads, files = service_memory(), client_threads(), open_files()
        samples = [warm]
        for start in range(WARM, JOBS, 100):
            results += list(pool.map(job, range(start, min(start + 100, JOBS))))
            samples.append(service_memory())
        end = samples[-1]
        for name in warm:
            print(f"{name} MB every 100 jobs from {WARM}:", [round(x[name]) for x in samples])
        # the last jobs' log followers wind down once their long polls return (2 s)
        for _ in range(200):
            if len(client_threads()) <= len(threads) and open_files() <= files:
                break
            time.sleep(0.1)
        threads_end, files_end = client_threads(), open_files()

    # nothing grows with the jobs; anvil (the dev chain, not ours) keeps its newest states in
    # memory and moves older ones to disk: a saw tooth (~200 -> ~560 -> ~150 MB here), bounded
    chain = [round(sample.pop("chain")) for sample in samples]
    assert max(chain) < ANVIL_MB, chain
    grown = {name: round(end[name] - warm[name], 1) for name in warm if name != "chain"}
    print(f"client threads {len(threads)} -> {len(threads_end)}, open files {files} -> {files_end}")
    assert all(growth < GROWTH_MB for growth in grown.values()), grown
    # the last jobs' event readers may still be winding down (at most one a job in flight);
    # one left behind by each job would be hundreds
    assert len(threads_end) <= len(threads) + AT_ONCE, sorted(t.name for t in threads_end)
    assert files_end <= files + 2

    # every job got its own result
    for index, result in enumerate(results):
        assert result.state == "accepted", result
        text = (result.output_dir / "outputs" / "cowsay.txt").read_text()
        assert f"soak job {index}" in text
    deals = Counter(result.deal_id for result in results)
    assert len(deals) == JOBS

    # on chain: one deal per job, one result per deal, each accepted; nothing failed
    created = chain_events(profile, "DealCreated")
    assert Counter(e.args["dealId"] for e in created) == deals
    submitted = chain_events(profile, "ResultSubmitted")
    assert Counter(e.args["dealId"] for e in submitted) == deals
    accepted = chain_events(profile, "ResultAccepted")
    assert Counter(e.args["dealId"] for e in accepted) == deals
    assert chain_events(profile, "ResultChallenged", "DealTimedOut") == []

    # every provider took a share, and ran each of its jobs once
    roles = {profile.accounts[role]: role for role in PROVIDERS}
    by_provider = Counter(roles[result.provider] for result in results)
    assert set(by_provider) == set(PROVIDERS), by_provider
    for role in PROVIDERS:
        ran = [d for d in provider_deals(NETWORK, profile.accounts[role]) if d["runs"]]
        assert len(ran) == by_provider[role]
        assert all(d["runs"] == 1 for d in ran)

    # tokens conserve: what each creator paid its providers got, and no escrow is left
    after = holdings(profile)
    paid = Counter[str]()
    for index, result in enumerate(results):
        paid[CREATORS[index % len(CREATORS)]] += int(result.record.price or 0)
    for role in CREATORS:
        assert before[role] - after[role] == paid[role], role
    for role in PROVIDERS:
        earned = sum(int(r.record.price or 0) for r in results
                     if r.provider == profile.accounts[role])  # fmt: skip
        assert after[role] - before[role] == earned, role
    assert sum(after.values()) == sum(before.values())
    assert escrow(profile) == 0, logs(NETWORK)


def service_memory() -> dict[str, float]:
    """Resident MB of each of the network's services (as ``lilypad network status`` finds them)."""
    out = {}
    for service in status(NETWORK, None):
        status_lines = Path(f"/proc/{service['pid']}/status").read_text().splitlines()
        [rss] = [line.split()[1] for line in status_lines if line.startswith("VmRSS:")]
        out[service["service"]] = int(rss) / 1024
    return out


def client_threads() -> list[threading.Thread]:
    """The SDK's own threads in this process: event-stream readers, log followers, jobs (the
    rest of the suite's threads in this process come and go by themselves)."""
    names = ("solver-events", "creator-logs", "lilypad-job-")
    return [t for t in threading.enumerate() if t.name.startswith(names)]


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))
