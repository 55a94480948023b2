"""Every token amount the CLI takes goes through :func:`lilypad.units.parse_tokens`: one that no
offer or deal can carry (over ``uint96``, or even over ``uint256`` base units) is a clean exit 2
naming the option and the value, before any key is read or any node is called."""

from __future__ import annotations

import pytest

from lilypad.network import NetworkProfile, save_network
from lilypad.units import UINT96_MAX, format_tokens
from tests.conftest import CliRunner

ADDRESS = "0x" + "ab" * 20
#: One base unit more than a uint96 holds, in tokens.
OVER_UINT96 = format_tokens(UINT96_MAX + 1)
#: More base units than even a uint256 holds (2**256 is about 1.16e77).
OVER_UINT256 = "1" + "0" * 60


@pytest.fixture
def profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile naming contracts and a solver that nothing listens for, and no key: the amount
    is refused before anything is reached."""
    monkeypatch.delenv("WEB3_PRIVATE_KEY", raising=False)
    save_network(
        NetworkProfile(
            name="test",
            chain_id=31337,
            rpc_url="http://127.0.0.1:9",
            token=ADDRESS,
            market=ADDRESS,
            solver_url="http://127.0.0.1:9",
        )
    )


COMMANDS = {
    "--max-price": ("run", "cowsay:v0.0.4", "--network", "test", "--yes", "--max-price"),
    "--price": ("resource-provider", "--network", "test", "--price"),
    "--collateral": ("resource-provider", "--network", "test", "--collateral"),
    "--min-collateral": ("chain", "deploy", "--rpc-url", "http://127.0.0.1:9", "--min-collateral"),
    "--fee": ("chain", "register", "mediator", ADDRESS, "--network", "test", "--fee"),
}


@pytest.mark.parametrize("amount", [OVER_UINT96, OVER_UINT256])
@pytest.mark.parametrize("option", sorted(COMMANDS))
def test_an_amount_no_contract_can_hold_is_exit_2_naming_it(
    profile: None, cli: CliRunner, option: str, amount: str
) -> None:
    result = cli(*COMMANDS[option], amount)
    said = " ".join(result.stderr.split())
    assert result.exit_code == 2, result.stderr
    assert f"{option} {amount!r} is more than the most allowed, {format_tokens(UINT96_MAX)}" in said
    assert "Internal error" not in said
    assert "Traceback" not in said


@pytest.mark.parametrize("option", sorted(COMMANDS))
def test_the_largest_amount_is_not_refused_as_too_large(
    profile: None, cli: CliRunner, option: str
) -> None:
    """The bound is exact: the most a uint96 holds gets past the amount check (and fails later,
    on the key or the unreachable node, as it should here)."""
    result = cli(*COMMANDS[option], format_tokens(UINT96_MAX))
    assert "most allowed" not in result.stderr
    # the next check refused it: no key here, or (a provider) no mediator in the profile
    assert "no private key" in result.stderr or "no mediator to trust" in result.stderr
