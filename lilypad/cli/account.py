"""``lilypad account``: what an account holds, and moving tokens into and out of the market.

Where each number comes from:

* wallet tokens, ether for gas and the market deposit (``JobMarket.balanceOf``: deposited, not
  yet in a deal): the chain;
* what open offers commit (a job offer its max price, a resource offer its collateral, until it
  makes a deal or ends): the solver, the only one that knows which signed offers are open
  (``GET /api/v1/accounts/{address}``);
* deals: the chain, not the solver. The market's ``DealCreated`` events name both parties, so
  every deal counts whichever solver made it, and ``dealState`` says which are still open; a
  solver that is down, behind, or lying cannot hide one.

What is free to withdraw is the deposit minus what open offers commit and minus the mediation
fee of each open deal of yours that may still be challenged (``challengeResult`` takes the fee
from the deposit; ``lilypad run`` keeps it there for an audit). Withdrawing more makes the
market refuse those deals (``InsufficientBalance``): the solver then rejects the job offers at
fault and puts the providers' offers back in its book, so nothing is lost but the jobs do not
run; ``withdraw`` refuses it unless ``--force``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from lilypad.cli.keyopt import WEB3_KEY_OPTION
from lilypad.cli.output import console, emit, note
from lilypad.errors import ConfigError, InputError, SolverError

if TYPE_CHECKING:
    from lilypad.chain.crypto import Signer
    from lilypad.chain.light import CreatorMarket, PartyDeal
    from lilypad.network import NetworkProfile

app = typer.Typer(
    help="Your account: wallet, market deposit, what your offers and deals hold.",
    invoke_without_command=True,
    no_args_is_help=False,
)

#: The most a market balance holds (``JobMarket.Account.balance`` is a ``uint104``).
BALANCE_MAX = 2**104 - 1
#: Seconds to wait for the solver's answer before saying it cannot be reached.
SOLVER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _Given:
    """The group's options (``lilypad account --network N deposit 5``), for the subcommands."""

    network: str | None
    key_file: Path | None
    json_output: bool
    web3_key: str | None = None


def _network_option() -> Any:
    return typer.Option(None, "--network", "-n", help="Network profile (default: local).")


def _key_option() -> Any:
    return typer.Option(None, "--key-file", help="Private key file (else $WEB3_PRIVATE_KEY).")


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print as JSON (amounts in tokens, as strings).")


# ------------------------------------------------------------------------------- holdings
@dataclass(frozen=True)
class Holdings:
    """What one account holds, read from the chain and the solver at one moment.

    Attributes:
        job_offers, resource_offers: What open offers commit (None: the solver cannot say,
            ``solver_problem`` says why).
        escrow: Payments of open deals where the account is the job creator (with the
            mediation fee of a challenged one): out of the deposit until the deal ends.
        collateral: Collateral of open deals where the account is the provider.
        challenge_reserve: Mediation fees of the account's open deals that it may still
            challenge: kept in the deposit.
    """

    address: str
    wallet: int
    gas: int
    deposit: int
    job_offers: int | None
    resource_offers: int | None
    solver_problem: str | None
    escrow: int
    collateral: int
    challenge_reserve: int
    deals: tuple[PartyDeal, ...]

    @property
    def committed(self) -> int | None:
        if self.job_offers is None or self.resource_offers is None:
            return None
        return self.job_offers + self.resource_offers

    @property
    def free(self) -> int | None:
        """What can leave the market without underfunding an open offer or a challenge."""
        if self.committed is None:
            return None
        return max(0, self.deposit - self.committed - self.challenge_reserve)

    def to_dict(self) -> dict[str, Any]:
        from lilypad.units import format_tokens as tokens

        def maybe(units: int | None) -> str | None:
            return None if units is None else tokens(units)

        return {
            "address": self.address,
            "wallet": tokens(self.wallet),
            "gas_eth": tokens(self.gas),
            "deposit": tokens(self.deposit),
            "committed_by_job_offers": maybe(self.job_offers),
            "committed_by_resource_offers": maybe(self.resource_offers),
            "solver_error": self.solver_problem,
            "challenge_reserve": tokens(self.challenge_reserve),
            "free": maybe(self.free),
            "escrow": tokens(self.escrow),
            "collateral_locked": tokens(self.collateral),
            "deals_source": "chain",
            "open_deals": [_deal_dict(self.address, d) for d in self.deals],
        }


def _deal_dict(address: str, found: PartyDeal) -> dict[str, Any]:
    from lilypad.units import format_tokens as tokens

    deal = found.deal
    return {
        "deal_id": deal.deal_id,
        "role": _role(address, found),
        "state": found.status.state.name.lower(),
        "deadline": found.status.deadline,
        "price": tokens(deal.price),
        "collateral": tokens(deal.collateral),
        "mediation_fee": tokens(deal.mediation_fee),
        "job_creator": deal.job_creator,
        "provider": deal.provider,
    }


def _role(address: str, found: PartyDeal) -> str:
    mine = address.lower()
    roles = [
        role
        for role, party in (
            ("job creator", found.deal.job_creator),
            ("provider", found.deal.provider),
        )
        if party.lower() == mine
    ]
    return " and ".join(roles)


def read_holdings(profile: NetworkProfile, market: CreatorMarket, address: str) -> Holdings:
    """What ``address`` holds on ``profile``'s network now (see the module docstring)."""
    from lilypad.chain.light import DealState

    # Commitments before the deposit: a deal made between the two reads lowers the deposit by
    # its price and the commitments by the whole max price, so this order never over-counts
    # what is free.
    job_offers, resource_offers, problem = _committed(profile, address)
    wallet = market.wallet_balance(address)
    deposit = market.balance_of(address)
    gas = market.chain.balance(address)
    now = market.chain.block_timestamp()
    mine = address.lower()
    escrow = collateral = reserve = 0
    open_deals = []
    for found in market.deals_of(address, profile.deployed_block):
        deal, state = found.deal, found.status.state
        if state.is_terminal():
            continue
        open_deals.append(found)
        if deal.job_creator.lower() == mine:
            challenged = state is DealState.CHALLENGED
            escrow += deal.price + (deal.mediation_fee if challenged else 0)
            # Created: a result may still come and be challenged; Submitted: until the window ends
            if not challenged and found.status.deadline >= now:
                reserve += deal.mediation_fee
        if deal.provider.lower() == mine:
            collateral += deal.collateral
    return Holdings(
        address=address,
        wallet=wallet,
        gas=gas,
        deposit=deposit,
        job_offers=job_offers,
        resource_offers=resource_offers,
        solver_problem=problem,
        escrow=escrow,
        collateral=collateral,
        challenge_reserve=reserve,
        deals=tuple(open_deals),
    )


def _committed(profile: NetworkProfile, address: str) -> tuple[int | None, int | None, str | None]:
    """What the solver says open offers commit, or why it cannot say."""
    from lilypad.solver_api import SolverClient

    if not profile.solver_url:
        return None, None, f"network {profile.name!r} names no solver (solver_url)"
    try:
        with SolverClient(profile.solver_url, timeout=SOLVER_TIMEOUT_S) as client:
            account = client.account(address)
    except SolverError as exc:
        return None, None, f"the solver at {profile.solver_url} cannot say: {exc.message}"
    return account.committed_by_job_offers, account.committed_by_resource_offers, None


# ------------------------------------------------------------------------------ connecting
@contextlib.contextmanager
def _market(network: str) -> Iterator[tuple[NetworkProfile, CreatorMarket]]:
    """The network's profile and its market on a light chain client (closed afterwards)."""
    from lilypad.chain.light import CreatorMarket, LightChain
    from lilypad.network import chain_mismatch, load_network, overrides_note

    profile = load_network(network)
    line = overrides_note(profile)
    if line:
        note(line)
    market_address, _ = profile.require_contracts()
    chain = LightChain(profile.rpc_url)
    try:
        if chain.chain_id != profile.chain_id:
            raise chain_mismatch(profile, chain.chain_id)
        yield profile, CreatorMarket(chain, market_address)
    finally:
        chain.close()


def _given(ctx: typer.Context) -> _Given:
    found = ctx.find_object(_Given)
    return found if found is not None else _Given(None, None, False)


def _signer(key_file: Path | None, web3_key: str | None = None) -> Signer:
    """The account's key (one from the command line with a warning, never the key)."""
    from lilypad.cli import keyopt

    return keyopt.signer(key_file, web3_key, "this account")


# -------------------------------------------------------------------------------- commands
@app.callback()
def account(
    ctx: typer.Context,
    network: str | None = _network_option(),
    key_file: Path | None = _key_option(),
    web3_key: str | None = WEB3_KEY_OPTION,
    address: str | None = typer.Option(
        None, "--address", help="Look at this account (no key needed) instead of your own."
    ),
    json_output: bool = _json_option(),
) -> None:
    """Your wallet, market deposit, open offers and deals, and what is free to withdraw."""
    ctx.obj = _Given(network, key_file, json_output, web3_key)
    if ctx.invoked_subcommand is not None:
        if address is not None:
            raise InputError(
                f"--address is for looking at an account; `{ctx.invoked_subcommand}` signs, "
                "with --key-file FILE or $WEB3_PRIVATE_KEY"
            )
        return
    who = _looked_at(address, key_file, web3_key)
    with _market(network or "local") as (profile, market):
        holdings = read_holdings(profile, market, who)
    data = {"network": profile.name, **holdings.to_dict()}
    emit(data, json_output, lambda: _print_holdings(profile.name, holdings))


def _looked_at(address: str | None, key_file: Path | None, web3_key: str | None) -> str:
    from lilypad.chain.crypto import is_address, to_checksum_address

    if address is None:
        try:
            return _signer(key_file, web3_key).address
        except ConfigError as exc:
            raise ConfigError(
                exc.message, hint="or pass --address 0x... to look at any account"
            ) from None
    if key_file is not None or web3_key is not None:
        raise InputError("give --address or a key (--key-file, --web3-private-key), not both")
    if not is_address(address):
        raise InputError(
            f"--address {address!r} is not an Ethereum address (0x and 40 hex digits, mixed "
            "case only with a valid EIP-55 checksum)"
        )
    return to_checksum_address(address)


@app.command()
def deposit(
    ctx: typer.Context,
    amount: str = typer.Argument(..., help="Tokens to move from your wallet into the market."),
    network: str | None = _network_option(),
    key_file: Path | None = _key_option(),
    web3_key: str | None = WEB3_KEY_OPTION,
    yes: bool = typer.Option(False, "--yes", "-y", help="Deposit without asking."),
    json_output: bool = _json_option(),
) -> None:
    """Move tokens from your wallet into your market deposit (approve, then deposit)."""
    from lilypad.units import format_tokens, parse_tokens

    given = _given(ctx)
    units = parse_tokens(amount, "AMOUNT", maximum=BALANCE_MAX)
    signer = _signer(key_file or given.key_file, web3_key or given.web3_key)
    with _market(network or given.network or "local") as (profile, market):
        held = market.wallet_balance(signer.address)
        if units > held:
            raise InputError(
                f"cannot deposit {format_tokens(units)} tokens: the wallet of {signer.address} "
                f"holds {format_tokens(held)}",
                hint="fund the wallet, or deposit less",
            )
        _check_gas(market, signer.address)
        _consent(f"Deposit {format_tokens(units)} tokens into the market on {profile.name!r}?", yes)
        # Under the runner's lock: an approval sets the allowance (it does not add to it), so
        # one between another process's approval and its deposit would make that deposit fail.
        from lilypad.creator import account_lock

        with account_lock(signer.address):
            approval = market.approve(signer, units)
            receipt = market.deposit(signer, units)
        after = market.balance_of(signer.address)
    data = {
        "network": profile.name,
        "address": signer.address,
        "deposited": format_tokens(units),
        "deposit": format_tokens(after),
        "txs": {"approve": approval.tx_hash if approval else None, "deposit": receipt.tx_hash},
    }
    emit(data, json_output or given.json_output, lambda: _print_moved("deposited", data))


@app.command()
def withdraw(
    ctx: typer.Context,
    amount: str = typer.Argument(
        ..., help="Tokens to take back to your wallet, or `all` (what is free)."
    ),
    network: str | None = _network_option(),
    key_file: Path | None = _key_option(),
    web3_key: str | None = WEB3_KEY_OPTION,
    force: bool = typer.Option(
        False,
        "--force",
        help="Take funds your open offers rely on too (those offers then fail to match).",
    ),
    json_output: bool = _json_option(),
) -> None:
    """Move tokens from your market deposit back to your wallet (never what open offers need)."""
    from lilypad.units import format_tokens

    given = _given(ctx)
    asked = amount.strip().lower()
    units = None if asked == "all" else _parse_amount(amount)
    signer = _signer(key_file or given.key_file, web3_key or given.web3_key)
    with _market(network or given.network or "local") as (profile, market):
        _check_gas(market, signer.address)
        from lilypad.creator import account_lock

        with account_lock(signer.address):
            holdings = read_holdings(profile, market, signer.address)
            units = _withdrawal(units, holdings, force)
            receipt = market.withdraw(signer, units)
        after = market.balance_of(signer.address)
    data = {
        "network": profile.name,
        "address": signer.address,
        "withdrawn": format_tokens(units),
        "deposit": format_tokens(after),
        "forced": force,
        "txs": {"withdraw": receipt.tx_hash},
    }
    emit(data, json_output or given.json_output, lambda: _print_moved("withdrew", data))


def _parse_amount(text: str) -> int:
    from lilypad.units import parse_tokens

    try:
        return parse_tokens(text, "AMOUNT", maximum=BALANCE_MAX)
    except InputError as exc:
        raise InputError(f"{exc.message}, or `all`") from None


def _withdrawal(asked: int | None, holdings: Holdings, force: bool) -> int:
    """How much to withdraw: ``asked`` (None: all that is free, or with ``force`` the whole
    deposit), refused when more than the deposit or, without ``force``, than is free."""
    from lilypad.units import format_tokens as tokens

    deposit = holdings.deposit
    if asked is not None and asked > deposit:
        raise InputError(
            f"cannot withdraw {tokens(asked)} tokens: the market deposit of {holdings.address} "
            f"is {tokens(deposit)}"
        )
    free = holdings.free
    if not force and free is None:
        raise SolverError(
            f"cannot tell what your open offers rely on: {holdings.solver_problem}",
            hint="try again when the solver answers, or pass --force to withdraw anyway",
        )
    amount = asked if asked is not None else (deposit if force else free)
    assert amount is not None
    if amount == 0:
        raise InputError(f"nothing is free to withdraw: {_held_back(holdings)}")
    if free is None or amount > free:
        if not force:
            raise InputError(
                f"cannot withdraw {tokens(amount)} tokens: {tokens(free or 0)} of the deposit is "
                f"free; {_held_back(holdings)}",
                hint="withdraw all takes what is free; --force takes the rest too, and those "
                "offers then fail to match",
            )
        note(f"[bold yellow]warning:[/] {escape(_forced_warning(amount, holdings))}")
    return amount


def _held_back(h: Holdings) -> str:
    from lilypad.units import format_tokens as tokens

    parts = [f"the deposit is {tokens(h.deposit)}"]
    if h.job_offers:
        parts.append(f"open job offers commit {tokens(h.job_offers)}")
    if h.resource_offers:
        parts.append(f"open resource offers commit {tokens(h.resource_offers)}")
    if h.challenge_reserve:
        parts.append(f"{tokens(h.challenge_reserve)} pays a challenge of your open deals")
    return ", ".join(parts)


def _forced_warning(amount: int, h: Holdings) -> str:
    from lilypad.units import format_tokens as tokens

    if h.free is None:
        return (
            f"withdrawing {tokens(amount)} tokens without knowing what your open offers commit "
            f"({h.solver_problem}); any offer it leaves short fails to match"
        )
    return (
        f"withdrawing {tokens(amount)} tokens, {tokens(amount - h.free)} more than is free: "
        "open offers it leaves short fail to match (the market refuses their deals), and a "
        "challenge of an open deal needs its fee deposited again"
    )


def _check_gas(market: CreatorMarket, address: str) -> None:
    """Refuse a transaction the wallet cannot pay gas for (the node would only refuse it)."""
    if market.chain.balance(address) == 0:
        raise InputError(
            f"the wallet of {address} holds no ETH to pay for gas", hint="send it some ETH first"
        )


def _consent(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError("no terminal to ask for consent; rerun with --yes")
    if not typer.confirm(question):
        raise InputError("nothing was deposited")


# -------------------------------------------------------------------------------- printing
def _print_holdings(network: str, h: Holdings) -> None:
    from lilypad.units import format_tokens as tokens

    def maybe(units: int | None) -> str:
        return "unknown" if units is None else tokens(units)

    console.print(f"account [bold]{h.address}[/] on network {escape(repr(network))}")
    rows = [
        ("wallet", tokens(h.wallet), f"tokens; {_eth(h.gas)} ETH for gas"),
        ("market deposit", tokens(h.deposit), "deposited, not in a deal"),
        ("  open job offers", maybe(h.job_offers), "what they may still take (the solver's count)"),
        ("  open resource offers", maybe(h.resource_offers), "collateral they may still take"),
        ("  challenge reserve", tokens(h.challenge_reserve), "fees to challenge your open deals"),
        ("free to withdraw", maybe(h.free), ""),
        ("in escrow", tokens(h.escrow), "your payments in open deals (from the chain)"),
        ("collateral locked", tokens(h.collateral), "yours as a provider, in open deals"),
    ]
    table = Table(box=None, show_header=False)
    for name, value, meaning in rows:
        table.add_row(name, value, meaning)
    console.print(table)
    if h.solver_problem:
        note(f"[yellow]the solver could not be asked:[/] {escape(h.solver_problem)}")
    if h.deals:
        deals = Table("deal", "role", "state", "price", "collateral", box=None)
        for found in h.deals:
            d = _deal_dict(h.address, found)
            deals.add_row(
                d["deal_id"][:18] + "…", d["role"], d["state"], d["price"], d["collateral"]
            )
        console.print(deals)


def _eth(wei: int) -> str:
    """Ether for people: six decimals are plenty to judge the gas left (JSON has every wei)."""
    from lilypad.units import format_tokens

    return format_tokens(wei - wei % 10**12)


def _print_moved(verb: str, data: dict[str, Any]) -> None:
    amount = data.get("deposited") or data.get("withdrawn")
    console.print(
        f"{verb} {amount} tokens for {data['address']}; market deposit now {data['deposit']}"
    )
    for name, tx in data["txs"].items():
        if tx:
            console.print(f"  {name} tx {tx}", soft_wrap=True)
