"""Prometheus metrics of a daemon, served as text on ``GET /metrics`` from a small HTTP port.

Each daemon owns its :class:`Metrics` (its own registry), so several daemons in one process
(tests, ``lilypad network up``) never mix their numbers.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Seconds buckets for job durations: cowsay takes milliseconds, a video minutes.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """The provider's counters. Earnings are in the token's smallest unit (wei)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_run = Counter(
            "lilypad_jobs_run", "Jobs this provider ran to the end", ["module"], registry=r
        )
        self.jobs_failed = Counter(
            "lilypad_jobs_failed",
            "Jobs that ended without a usable result (module failure, refusal, executor error)",
            ["reason"],
            registry=r,
        )
        self.job_duration = Histogram(
            "lilypad_job_duration_seconds",
            "Wall time of a job in the executor",
            ["module"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.results_submitted = Counter(
            "lilypad_results_submitted", "Result CIDs submitted on chain", registry=r
        )
        self.earnings = Counter(
            "lilypad_earnings_wei", "Price of deals paid to this provider, in wei", registry=r
        )
        self.slashed = Counter(
            "lilypad_collateral_slashed_wei", "Collateral lost to timeouts or mediation", registry=r
        )
        self.mediations = Counter(
            "lilypad_mediations", "Mediations resolved", ["provider_wins"], registry=r
        )
        self.active = Gauge("lilypad_jobs_active", "Deals being worked on now", registry=r)
        self.warm_hits = Counter(
            "lilypad_warm_hits",
            "Jobs served by a warm worker that had served one before",
            registry=r,
        )
        self.warm_loads = Counter(
            "lilypad_warm_loads", "Warm workers started (each loads its module once)", registry=r
        )
        self.warm_evictions = Counter(
            "lilypad_warm_evictions",
            "Warm workers ended: idle, count (room for another), memory (over the budget), died, "
            "timed_out, output_limit",
            ["reason"],
            registry=r,
        )
        self.warm_workers = Gauge("lilypad_warm_workers", "Warm workers alive now", registry=r)
        self.warm_memory = Gauge(
            "lilypad_warm_memory_bytes",
            "Resident memory of the warm workers, measured after their last job",
            registry=r,
        )
        self.open_offers = Gauge(
            "lilypad_open_offers", "Resource offers waiting at the solver", registry=r
        )


class MetricsServer:
    """Serves ``metrics`` on ``host:port`` (port 0 picks a free one) in a daemon thread."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server: WSGIServer
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
