"""``lilypad run`` (the job creator flow) and ``lilypad jobs`` (past jobs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from lilypad import modules
from lilypad.cli.module import INPUT_HELP, STRAY_ARGS, check_inputs, stage
from lilypad.cli.output import console, emit, err_console, note
from lilypad.errors import InputError
from lilypad.modules.files import precheck
from lilypad.verification import Verify

jobs_app = typer.Typer(help="Jobs you ran from this machine.", no_args_is_help=True)

_STEP_TEXT = {
    "deposit": "deposited {amount} tokens into the market",
    "posted": "offer posted ({job_offer_id:.18}…), waiting for a provider",
    "matched": "matched with provider {provider}",
    "deal": "deal {deal_id:.18}… on chain with {provider} (tx {tx:.18}…)",
    "running": "running on the provider",
    "result": "result submitted: {cid} (tx {tx:.18}…)",
    "downloading": "downloading and verifying {cid}",
    "download_retry": "download failed ({error}); trying again in {pause:g}s",
    "solver_retry": "{error}; trying again in {pause:g}s",
    "verified": "verified every block into {dest}",
    "symlinks_skipped": "the result holds {count} symlink(s), verified but not created (the "
    "first: {first})",
    "not_audited": "not audited this time (chance {probability:.0%})",
    "challenged": "result challenged ({reason}); mediator {mediator} re-runs the job",
    "mediating": "waiting for mediator {mediator} to rule",
    "input_lost": "the provider could not fetch an input: nobody is judged on it; your payment "
    "and fee come back when the mediation times out (chain time {deadline})",
    "upheld": "the mediator upheld the result: it is correct",
    "slashed": "the mediator found the result wrong: {refund} tokens (price and the provider's "
    "collateral) are yours; fetching the mediator's result",
    "agree": "both providers returned {cid}",
    "disagree": "the providers disagree ({cids}); both results are challenged",
    "alone": "no second provider in time: the result of {provider} is audited instead",
    "accepted": "result accepted on chain (tx {tx:.18}…)",
    "retry": "retrying (attempt {attempt}): {reason}",
}
#: The longest a job offer may wait for a provider (a week).
MAX_EXPIRES_IN_S = 7 * 86_400
#: The most seconds a job offer can give a provider (the offer's ``uint32``).
MAX_TIMEOUT_S = 2**32 - 1


def run(
    ref: str = typer.Argument(..., help="Module, e.g. sdxl:v0.9-lilypad1 or cowsay:v0.0.4."),
    inputs: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    network: str = typer.Option("local", "--network", "-n", help="Network profile."),
    max_price: str = typer.Option("10", "--max-price", help="Most you pay, in tokens."),
    timeout: int | None = typer.Option(
        None,
        "--timeout",
        help="Seconds a provider has for the result (default: the module's timeout plus 300; "
        "at least its timeout plus 60).",
    ),
    expires_in: int = typer.Option(
        300,
        "--expires-in",
        help="Seconds the offer waits for a provider.",
    ),
    mediators: list[str] = typer.Option(
        [], "--mediator", help="A mediator you trust (repeat); default: the network's."
    ),
    retries: int = typer.Option(
        0, "--retries", help="New offers after a provider fails (0 to 10)."
    ),
    verify: Verify = typer.Option(
        Verify.AUDIT,
        "--verify",
        case_sensitive=False,
        help="How the result is checked: audit (a mediator re-runs it at random, often enough "
        "that cheating cannot pay), always, never, or redundant (two providers).",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Deposit what is needed without asking."),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="Private key file (else $WEB3_PRIVATE_KEY)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    stray: list[str] = STRAY_ARGS,
) -> None:
    """Run a module on the network: offer, match, deal, result, verified download, accept."""
    from lilypad.chain.light import CreatorMarket, LightChain
    from lilypad.creator import JobRunner, RunOptions, Step
    from lilypad.errors import ChainError
    from lilypad.keys import load_signer
    from lilypad.network import load_network
    from lilypad.units import format_tokens, parse_tokens

    inputs = check_inputs(inputs, stray)
    module = modules.resolve(ref)
    precheck(module, inputs)  # bad input stops here, before anything is signed
    price = parse_tokens(max_price, "--max-price")
    _in_range("--expires-in", expires_in, 15, MAX_EXPIRES_IN_S)
    _in_range("--retries", retries, 0, 10)
    profile = load_network(network)
    spec = _stage(module, inputs, profile)  # files checked and added to the network's IPFS
    timeout_s = _job_timeout(timeout, spec)
    market_address, _ = profile.require_contracts()
    account = load_signer(key_file, role="the job creator")
    options = RunOptions(
        max_price=price,
        timeout_s=timeout_s,
        expires_in_s=expires_in,
        mediators=_trusted_mediators(mediators, profile),
        retries=retries,
        verify=verify,
    )
    chain = LightChain(profile.rpc_url)
    if chain.chain_id != profile.chain_id:
        chain.close()
        raise ChainError(
            f"the node at {profile.rpc_url} is chain {chain.chain_id}, "
            f"but network {network!r} is chain {profile.chain_id}"
        )
    market = CreatorMarket(chain, market_address)
    status = Status("starting", console=err_console)
    quiet = json_output

    def on_step(step: Step) -> None:
        text = _STEP_TEXT.get(step.name, step.name).format(**step.detail)
        status.update(escape(text))
        if not quiet:
            err_console.print(f"[green]✓[/] {escape(text)}", soft_wrap=True)

    runner = JobRunner(profile, account, market, on_step)
    try:
        if not quiet:
            note(
                f"running {spec.module} as {account.address} on {network!r} "
                f"(max price {format_tokens(price)})"
            )
        # Ask now, before the progress display; the runner deposits when it posts the offer
        # (other jobs of this account may have changed what is needed by then). The deposit
        # keeps a challenge's fee beside the price, so that an audit can always be paid.
        needed = runner.deposit_needed(price + runner.challenge_reserve(options.mediators))
        if needed:
            _check_wallet(market, account.address, needed)
            _consent(needed, yes, format_tokens)

        def fund(amount: int) -> None:
            _check_wallet(market, account.address, amount)
            if not (needed or yes):
                _consent(amount, yes, format_tokens)  # not asked yet: refuses without a terminal
            runner.deposit(amount)
            on_step(Step("deposit", {"amount": format_tokens(amount)}))

        runner.fund = fund
        with status if sys.stderr.isatty() and not quiet else _nothing():
            record = _run_interruptibly(runner, spec, options)
    finally:
        runner.close()
    emit(record.to_dict(), json_output, lambda: _summary(record))


def _stage(module: modules.ResolvedModule, inputs: list[str], profile: Any) -> modules.JobSpec:
    """The job spec, its file inputs added to the network's IPFS (the profile's API, which the
    providers fetch from) and checked there; a module without file inputs touches nothing."""
    import tempfile

    from lilypad.modules.files import has_file_inputs, has_local_files
    from lilypad.storage import open_storage

    if not has_file_inputs(module, inputs):
        return modules.render(module, inputs)
    if has_local_files(module, inputs) and not profile.ipfs_api_url:
        raise InputError(
            f"network {profile.name!r} names no IPFS API (ipfs_api_url) to add the local file "
            "inputs to",
            hint="add the file to an IPFS node the network's providers reach and pass "
            "ipfs://CID, or set ipfs_api_url in the network profile",
        )
    storage = open_storage(
        api=profile.ipfs_api_url, gateway=None if profile.ipfs_api_url else profile.gateway_url
    )
    try:
        with tempfile.TemporaryDirectory(prefix="lilypad-inputs-") as work:
            spec, _ = stage(module, inputs, Path(work), add=storage.add, storage=storage)
    finally:
        storage.close()
    return spec


def _job_timeout(timeout: int | None, spec: modules.JobSpec) -> int:
    """``--timeout``, or the module's default; never less than a provider needs (a deal that an
    honest provider cannot deliver in time would only hand its collateral to the job creator,
    so no provider's offer and no solver takes it)."""
    from lilypad.chain.offers import default_job_timeout, min_job_timeout

    least = min_job_timeout(spec.timeout_s)
    if timeout is None:
        return default_job_timeout(spec.timeout_s)
    _in_range("--timeout", timeout, 1, MAX_TIMEOUT_S)
    if timeout < least:
        raise InputError(
            f"--timeout {timeout} is less than {spec.module} needs: at least {least} seconds "
            f"(its timeout of {spec.timeout_s} s plus {least - spec.timeout_s} s to deliver)"
        )
    return timeout


def _in_range(option: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InputError(f"{option} {value} is out of range: from {low:,} to {high:,}")


def _trusted_mediators(given: list[str], profile: Any) -> tuple[str, ...]:
    from lilypad.chain.crypto import is_address, to_checksum_address
    from lilypad.chain.offers import MAX_MEDIATORS

    for address in given:
        if not is_address(address):
            raise InputError(
                f"--mediator {address!r} is not an Ethereum address (0x and 40 hex digits, "
                "mixed case only with a valid EIP-55 checksum)"
            )
    trusted = tuple(dict.fromkeys(to_checksum_address(a) for a in given)) or tuple(
        address for role, address in sorted(profile.accounts.items()) if role.startswith("mediator")
    )
    if not trusted:
        raise InputError(f"network {profile.name!r} names no mediator; pass --mediator ADDRESS")
    if len(trusted) > MAX_MEDIATORS:
        raise InputError(f"{len(trusted)} mediators given; an offer names at most {MAX_MEDIATORS}")
    return trusted


def _check_wallet(market: Any, address: str, amount: int) -> None:
    """Refuse a deposit the wallet cannot pay (it would only revert, at a gas cost)."""
    from lilypad.units import format_tokens

    held = market.wallet_balance(address)
    if held < amount:
        raise InputError(
            f"the deposit this job needs is {format_tokens(amount)} tokens, but the wallet of "
            f"{address} holds {format_tokens(held)}",
            hint="lower --max-price, or fund the wallet",
        )


def _run_interruptibly(runner: Any, spec: modules.JobSpec, options: Any) -> Any:
    from lilypad.creator import JobRecord

    try:
        return runner.run(spec, options)
    except KeyboardInterrupt:
        records = [r for r in _records() if r.module == spec.module]
        last: JobRecord | None = records[-1] if records else None
        if last is not None and last.deal_id is None:
            runner.cancel(last)
            note("Interrupted: the job offer was withdrawn; no funds moved.")
        elif last is not None:
            note(
                f"Interrupted: deal {last.deal_id} stays on chain. If the provider delivers, "
                "the result is yours to fetch with `lilypad ipfs get`; if not, anyone can time "
                "the deal out after its deadline and your payment is refunded."
            )
        raise


def _records() -> list[Any]:
    from lilypad.creator import load_records

    return load_records()


class _nothing:  # noqa: N801 - a context manager standing in for a status display
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def _consent(needed: int, yes: bool, fmt: Any) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(
            f"your market deposit is {fmt(needed)} tokens short for this job; "
            "rerun with --yes to deposit it"
        )
    if not typer.confirm(f"Deposit {fmt(needed)} tokens into the market for this job?"):
        raise InputError("no deposit made; the job was not posted")


def _summary(record: Any) -> None:
    lines = [
        f"\n[bold]Job complete[/] {escape(record.module)}",
        f"  CID        {record.mediator_cid or record.result_cid}",
        f"  deal       {record.deal_id}  (provider {record.provider})",
        f"  verified   {escape(_verdict(record))}",
        f"  outputs    {escape(record.output_dir or '')}",
        f"  IPFS link  {escape(record.gateway_url or '')}",
        f"\nOpen the results:\n\n    open {escape(record.output_dir or '')}\n",
    ]
    for line in lines:
        console.print(line, soft_wrap=True)  # paths and links stay on one line


def _verdict(record: Any) -> str:
    """How the result was checked, in words."""
    from lilypad.creator import JobState

    if record.state is JobState.PROVIDER_SLASHED:
        return (
            f"the mediator found the provider's result {record.result_cid} wrong; this is the "
            "mediator's result, and the price and the provider's collateral were paid to you"
        )
    if record.state is JobState.UPHELD:
        return "audited: a mediator re-ran the job and upheld the result"
    if record.twin:
        return "by redundancy: two providers returned the same result"
    if record.audit_probability is not None:
        return f"not audited this time (chance {record.audit_probability:.0%}); block by block"
    return "block by block against its CID (--verify never)"


@jobs_app.command("list")
def jobs_list(json_output: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Jobs run from this machine, oldest first."""
    records = _records()
    table = Table("job offer", "module", "state", "result CID", box=None)
    for r in records:
        table.add_row((r.job_offer_id or "")[:14] + "…", r.module, r.state, r.result_cid or "")
    emit([r.to_dict() for r in records], json_output, lambda: console.print(table))


@jobs_app.command("show")
def jobs_show(
    job_id: str = typer.Argument(..., help="A job offer or deal id (a unique prefix is enough)."),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Everything recorded about one job."""
    from lilypad.creator import find_record

    record = find_record(job_id)
    data = record.to_dict()

    def human() -> None:
        for key in sorted(data):
            console.print(f"  {key:<14} {escape(str(data[key]))}", soft_wrap=True)

    emit(data, json_output, human)
