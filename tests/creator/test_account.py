"""``lilypad account``, ``account deposit`` and ``account withdraw`` through the real CLI, against
anvil with the market, a real solver (uvicorn in a thread) and signed offers posted to it.

What matters to a user: the numbers are the chain's and the solver's, a deposit and a
withdrawal move exactly what was asked, and the default never takes funds an open offer (or a
possible challenge) relies on; a forced one warns, and the offer it left short then fails to
match rather than anything being lost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lilypad.chain.anvil import free_port
from tests.conftest import CliResult, CliRunner
from tests.solver.conftest import ETH, Net, Server, SolverFactory, wait_for

MEDIATION_FEE = "0.1"  # the dev deployment's fee (lilypad.chain.deployment)


@pytest.fixture
def solver(
    net: Net, make_solver: SolverFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    """The ``test`` profile naming a running solver; the first creator's key in the env."""
    with Server(make_solver()) as server:
        net.save_profile("test", solver_url=server.url, accounts={"mediator": net.mediator.address})
        monkeypatch.setenv("WEB3_PRIVATE_KEY", net.creators[0].key.hex())
        yield server


def run(cli: CliRunner, *args: str) -> CliResult:
    return cli("account", *args, "--network", "test")


def shown(cli: CliRunner, *args: str) -> dict[str, Any]:
    result = run(cli, *args, "--json")
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def post(server: Server, route: str, body: Any) -> str:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post(f"/api/v1/{route}", json=body.model_dump(mode="json"))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job_offer(server: Server, net: Net) -> str:
    """An open job offer of the first creator, max price 10."""
    return post(server, "job_offers", net.job())


def offer_state(server: Server, offer_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        data: dict[str, Any] = client.get(f"/api/v1/job_offers/{offer_id}").json()
    return data


def deposit_of(net: Net, index: int = 0) -> int:
    return net.market.balance_of(net.creators[index].address)


def test_account_shows_wallet_deposit_and_what_an_open_offer_commits(
    cli: CliRunner, net: Net, solver: Server
) -> None:
    data = shown(cli)
    assert data["address"] == net.creators[0].address
    assert (data["wallet"], data["deposit"], data["free"]) == ("900", "100", "100")
    assert data["committed_by_job_offers"] == "0"
    assert data["solver_error"] is None
    assert float(data["gas_eth"]) > 0
    assert data["open_deals"] == []

    job_offer(solver, net)
    data = shown(cli)
    assert data["committed_by_job_offers"] == "10"
    assert (data["deposit"], data["free"]) == ("100", "90")
    human = run(cli)
    assert human.exit_code == 0
    assert "free to withdraw" in human.stdout
    assert "90" in human.stdout


def test_withdraw_that_would_underfund_an_open_offer_is_refused(
    cli: CliRunner, net: Net, solver: Server
) -> None:
    job_offer(solver, net)
    for asked in ("95", "100"):
        refused = run(cli, "withdraw", asked)
        assert refused.exit_code == 2, refused.stderr
        assert f"cannot withdraw {asked} tokens" in refused.stderr
        assert "90 of the deposit is free" in refused.stderr
        assert "open job offers commit 10" in refused.stderr
    over = run(cli, "withdraw", "101", "--force")
    assert over.exit_code == 2
    assert "deposit of" in over.stderr
    assert "is 100" in over.stderr
    assert deposit_of(net) == 100 * ETH  # nothing moved


def test_withdraw_all_takes_what_is_free_and_the_offer_still_makes_its_deal(
    cli: CliRunner, net: Net, solver: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    offer_id = job_offer(solver, net)
    data = shown(cli, "withdraw", "all")
    assert (data["withdrawn"], data["deposit"], data["forced"]) == ("90", "10", False)
    receipt = net.chain.w3.eth.get_transaction_receipt(data["txs"]["withdraw"])
    assert receipt["status"] == 1
    assert deposit_of(net) == 10 * ETH
    assert net.market.token.balance_of(net.creators[0].address) == 990 * ETH

    post(solver, "resource_offers", net.resource())  # price 5: the offer left backed matches
    wait_for(lambda: offer_state(solver, offer_id)["state"] == "dealt", 30)
    data = shown(cli)
    assert [d["state"] for d in data["open_deals"]] == ["created"]
    assert (data["escrow"], data["deposit"], data["committed_by_job_offers"]) == ("5", "5", "0")
    # the deal's challenge fee stays: an audit of the result must still be payable
    assert data["challenge_reserve"] == MEDIATION_FEE
    assert data["free"] == "4.9"
    assert data["deals_source"] == "chain"
    refused = run(cli, "withdraw", "5")
    assert refused.exit_code == 2
    assert "0.1 pays a challenge" in refused.stderr

    # anyone's account, without its key: the provider's collateral is locked in the deal
    monkeypatch.delenv("WEB3_PRIVATE_KEY")
    provider = shown(cli, "--address", net.providers[0].address)
    assert provider["collateral_locked"] == "50"
    assert provider["escrow"] == "0"
    assert provider["open_deals"][0]["role"] == "provider"


def test_forced_withdraw_warns_and_the_offer_it_left_short_fails_to_match(
    cli: CliRunner, net: Net, solver: Server
) -> None:
    offer_id = job_offer(solver, net)
    forced = run(cli, "withdraw", "96", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert "warning" in forced.stderr
    assert "fail to match" in forced.stderr
    assert deposit_of(net) == 4 * ETH

    post(solver, "resource_offers", net.resource())  # price 5, more than the 4 left
    rejected = wait_for(lambda: offer_state(solver, offer_id)["state"] == "rejected", 30)
    assert rejected
    assert deposit_of(net) == 4 * ETH  # the market refused the deal; nothing was taken


def test_without_the_solver_the_account_says_so_and_withdraw_refuses(
    cli: CliRunner, net: Net, solver: Server
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    net.save_profile("test", solver_url=dead, accounts={"mediator": net.mediator.address})
    data = shown(cli)
    assert data["deposit"] == "100"
    assert data["wallet"] == "900"
    assert data["free"] is None
    assert dead in data["solver_error"]
    human = run(cli)
    assert human.exit_code == 0
    assert "unknown" in human.stdout
    assert dead in human.stderr

    refused = run(cli, "withdraw", "1")
    assert refused.exit_code == 1
    assert "cannot tell what your open offers" in refused.stderr
    assert "--force" in refused.stderr
    assert deposit_of(net) == 100 * ETH
    forced = run(cli, "withdraw", "1", "--force")
    assert forced.exit_code == 0
    assert "warning" in forced.stderr
    assert deposit_of(net) == 99 * ETH


def test_deposit_moves_tokens_into_the_market_with_consent(
    cli: CliRunner, net: Net, solver: Server
) -> None:
    asked = run(cli, "deposit", "5")  # no terminal here, no --yes: nothing is signed
    assert asked.exit_code == 2
    assert "--yes" in asked.stderr
    over = run(cli, "deposit", "900.5", "--yes")
    assert over.exit_code == 2
    assert "900.5" in over.stderr
    assert "holds 900" in over.stderr
    assert deposit_of(net) == 100 * ETH

    data = shown(cli, "deposit", "5.5", "--yes")
    assert (data["deposited"], data["deposit"]) == ("5.5", "105.5")
    assert data["txs"]["approve"] is not None  # the dev accounts start with no allowance
    for tx in data["txs"].values():
        assert net.chain.w3.eth.get_transaction_receipt(tx)["status"] == 1
    assert deposit_of(net) == 105 * ETH + ETH // 2
    assert net.market.token.balance_of(net.creators[0].address) == 894 * ETH + ETH // 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("withdraw", "lots"), ["'lots'", "or `all`"]),
        (("withdraw", "0"), ["'0'", "more than 0"]),
        (("deposit", "1e3", "--yes"), ["'1e3'", "not a number"]),
        (("--address", "0x1234"), ["'0x1234'", "not an Ethereum address"]),
        (("--address", "0x" + "ab" * 20, "deposit", "1"), ["--address", "signs"]),
    ],
)
def test_bad_input_is_exit_2_naming_the_value(
    cli: CliRunner, net: Net, solver: Server, args: tuple[str, ...], words: list[str]
) -> None:
    result = cli("account", *args, "--network", "test")
    assert result.exit_code == 2, result.stderr
    for word in words:
        assert word in result.stderr
    assert deposit_of(net) == 100 * ETH
