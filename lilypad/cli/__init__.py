"""The ``lilypad`` command line.

Only this package prints. Every command raises :class:`~lilypad.errors.LilypadError` on failure;
:func:`main` turns it into one red line and an exit code (2 for bad input, 1 for a failure), with
the traceback only under ``--debug``.
"""

from __future__ import annotations

import gc
import platform
import sys

import typer
from rich.markup import escape

from lilypad import __version__
from lilypad.cli import account as account_cli
from lilypad.cli import chain as chain_cli
from lilypad.cli import ipfs as ipfs_cli
from lilypad.cli import module as module_cli
from lilypad.cli import module_run as module_run_cli
from lilypad.cli import network as network_cli
from lilypad.cli import provider as provider_cli
from lilypad.cli import providers as providers_cli
from lilypad.cli import run as run_cli
from lilypad.cli import serve as serve_cli
from lilypad.cli import solver as solver_cli
from lilypad.cli.output import console, emit, err_console, state
from lilypad.errors import LilypadError

app = typer.Typer(
    name="lilypad",
    help="Run deterministic AI jobs on a decentralized compute network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# `module run` / `module build` (the runtime) live in their own file: module_run imports module
# for the shared options, so the two are joined here rather than in either.
module_cli.app.command("run")(module_run_cli.run)
module_cli.app.command("build")(module_run_cli.build)
app.add_typer(module_cli.app, name="module")
app.command("solver")(solver_cli.solver)
app.command("resource-provider")(provider_cli.resource_provider)
app.command("mediator")(provider_cli.mediator)
app.command("jobcreator")(provider_cli.jobcreator)
app.command("run")(run_cli.run)
app.add_typer(run_cli.jobs_app, name="jobs")
app.command("serve")(serve_cli.serve)
app.add_typer(account_cli.app, name="account")
app.add_typer(network_cli.app, name="network")
app.add_typer(chain_cli.app, name="chain")
app.add_typer(ipfs_cli.app, name="ipfs")
app.add_typer(providers_cli.app, name="providers")


def _print_version(asked: bool) -> None:
    if asked:
        console.print(f"lilypad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    json_output: bool = typer.Option(
        False, "--json", help="Print data as JSON (same as --json on the command)."
    ),
    _version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Show the version and exit (`lilypad version` says more).",
    ),
) -> None:
    state.debug = debug
    state.json = json_output


@app.command()
def version(
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show the version of lilypad and of the Python it runs on."""
    data = {
        "version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    emit(
        data,
        json_output,
        lambda: console.print(
            f"lilypad {__version__} (Python {data['python']}, {data['platform']})"
        ),
    )


def main() -> None:
    """Entry point of the ``lilypad`` console script and ``python -m lilypad``."""
    try:
        invoke()
    finally:
        # The interpreter's exit would visit every object of the ~1,000 modules a command
        # imports (0.3-0.6 s of each `lilypad run`); frozen, they are left to the OS.
        gc.freeze()


def invoke() -> None:
    """Run the CLI on ``sys.argv``; exits with the command's code (2 for bad input).

    :func:`main` without its exit-time shortcut: tests call this in-process.
    """
    try:
        app()
    except LilypadError as exc:
        if state.debug:
            err_console.print_exception()
        err_console.print(f"[bold red]Error:[/] {escape(exc.message)}", soft_wrap=True)
        if exc.hint:
            err_console.print(f"  {escape(exc.hint)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
    except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
        if state.debug:
            raise
        err_console.print(
            f"[bold red]Internal error:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True
        )
        err_console.print("  Run again with --debug for the traceback, and please report it.")
        sys.exit(1)
