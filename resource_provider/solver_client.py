"""The solver's HTTP API as the daemons use it (see :mod:`solver.app` for the routes).

This is the boundary where httpx errors become :class:`~lilypad.errors.SolverError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from lilypad.chain.offers import SignedResourceOffer
from lilypad.errors import SolverError
from lilypad.jobs import JobSubmission, cancel_message
from lilypad.tls import verify_for

TIMEOUT_S = 10.0


class SolverRefused(SolverError):
    """The solver answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SolverEvent:
    """One server-sent event: its sequence number, kind (``deal.created``) and payload."""

    seq: int
    kind: str
    data: dict[str, Any]


class SolverClient:
    """Calls of one solver at ``url``."""

    def __init__(self, url: str, timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify_for(self.url))

    def close(self) -> None:
        self._http.close()

    def post_resource_offer(self, signed: SignedResourceOffer) -> str:
        """List a signed resource offer; returns its id."""
        body = self._request("POST", "/api/v1/resource_offers", json=signed.model_dump(mode="json"))
        return str(body["id"])

    def cancel_resource_offer(self, offer_id: str, signer: LocalAccount) -> None:
        """Withdraw a pending offer of ``signer``."""
        signed = signer.sign_message(encode_defunct(text=cancel_message(offer_id)))
        signature = "0x" + bytes(signed.signature).hex()
        self._request(
            "POST", f"/api/v1/resource_offers/{offer_id}/cancel", json={"signature": signature}
        )

    def resource_offer(self, offer_id: str) -> dict[str, Any]:
        """A resource offer's state at the solver."""
        return self._request("GET", f"/api/v1/resource_offers/{offer_id}")

    def post_job_offer(self, submission: JobSubmission) -> str:
        """Submit a signed job offer with its spec; returns its id."""
        body = self._request("POST", "/api/v1/job_offers", json=submission.model_dump(mode="json"))
        return str(body["id"])

    def job_offer(self, offer_id: str) -> dict[str, Any]:
        """A job offer's state and, once matched, its deal."""
        return self._request("GET", f"/api/v1/job_offers/{offer_id}")

    def job_submission(self, job_offer_id: str) -> JobSubmission:
        """The signed job offer and spec a deal's ``job_offer_hash`` names."""
        body = self.job_offer(job_offer_id)
        try:
            return JobSubmission.model_validate(body["offer"])
        except (KeyError, ValueError) as exc:
            raise SolverError(
                f"the solver's job offer {job_offer_id} is malformed: {str(exc).splitlines()[0]}"
            ) from None

    def events(self, party: str, after: int, read_timeout: float = 30.0) -> Iterator[SolverEvent]:
        """Server-sent events naming ``party`` after sequence number ``after``, as they come.

        Ends (returns) when the connection drops; the caller reconnects with the last ``seq``.
        """
        params: dict[str, str | int] = {"party": party, "after": after}
        timeout = httpx.Timeout(TIMEOUT_S, read=read_timeout)
        try:
            with self._http.stream(
                "GET", "/api/v1/events", params=params, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    raise SolverRefused(
                        f"solver {self.url} refused the event stream ({response.status_code})",
                        response.status_code,
                    )
                yield from _parse_sse(response.iter_lines())
        except httpx.HTTPError as exc:
            raise SolverError(f"event stream of {self.url} broke: {exc}") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SolverError(
                f"cannot reach the solver at {self.url}: {exc}",
                hint="is `lilypad solver` running, and is solver_url in the network profile right?",
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.status_code >= 400:
            error = body.get("error", response.reason_phrase) if isinstance(body, dict) else body
            raise SolverRefused(
                f"solver: {method} {path} -> {response.status_code}: {error}",
                response.status_code,
            )
        if not isinstance(body, dict):
            raise SolverError(f"solver: {method} {path} answered {type(body).__name__}, not JSON")
        return body


def _parse_sse(lines: Iterator[str]) -> Iterator[SolverEvent]:
    """Events of a ``text/event-stream`` (comments and keep-alives skipped)."""
    seq, kind, data = 0, "message", ""
    for line in lines:
        if not line:
            if data:
                try:
                    payload = json.loads(data)
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    yield SolverEvent(seq, kind, payload)
            seq, kind, data = 0, "message", ""
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id" and value.isdigit():
            seq = int(value)
        elif field == "event":
            kind = value
        elif field == "data":
            data = f"{data}\n{value}" if data else value
