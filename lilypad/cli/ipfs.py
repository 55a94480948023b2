"""``lilypad ipfs``: add, serve, get, cat and pin content, with kubo-identical CIDs."""

from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from lilypad.cli.output import console, emit, note, show_warnings, state
from lilypad.errors import InputError

if TYPE_CHECKING:  # the storage stack loads with the first ipfs command, not with every command
    from lilypad.storage.backends import Storage, StorageSettings
    from lilypad.storage.blockstore import Blockstore
    from lilypad.storage.client import GatewayClient, KuboClient

app = typer.Typer(
    help="Add, serve, fetch and pin IPFS content (CIDs identical to kubo's).",
    no_args_is_help=True,
)
pin_app = typer.Typer(help="Pin content so garbage collection keeps it.", no_args_is_help=True)
app.add_typer(pin_app, name="pin")

API_HELP = "A Kubo RPC API (kubo or `lilypad ipfs serve`); default LILYPAD_IPFS_API, else local."
GATEWAY_HELP = "Fetch from this trustless gateway (every block verified)."


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print as JSON.")


def _api_option() -> Any:
    return typer.Option(None, "--api", help=API_HELP)


def _settings() -> StorageSettings:
    from lilypad.storage.backends import StorageSettings

    return StorageSettings()


@app.command()
def add(
    path: Path = typer.Argument(..., help="File or directory to add."),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Add a directory tree."),
    only_hash: bool = typer.Option(
        False, "-n", "--only-hash", help="Only compute the CID; store nothing."
    ),
    cid_version: int = typer.Option(1, "--cid-version", help="CID version: 1 (default) or 0."),
    raw_leaves: bool | None = typer.Option(
        None,
        "--raw-leaves/--no-raw-leaves",
        help="Raw leaf blocks (default: on for CIDv1, off for CIDv0, as kubo).",
        show_default=False,
    ),
    chunk_size: int = typer.Option(262_144, "--chunk-size", help="Bytes per chunk (kubo size-N)."),
    hidden: bool = typer.Option(
        False, "-H", "--hidden", help="Include files whose names start with '.' (as kubo -H)."
    ),
    pin: bool = typer.Option(True, "--pin/--no-pin", help="Pin what is added."),
    quiet: bool = typer.Option(False, "-Q", "--quieter", help="Print only the root CID."),
    api: str | None = _api_option(),
    json_output: bool = _json_option(),
) -> None:
    """Add a file or directory; prints the CIDs as `ipfs add` does (root last).

    Default import profile: the network's (CIDv1, raw leaves, 256 KiB chunks, balanced DAG with
    174 links per node). `--cid-version 0` gives kubo's default CIDs (Qm...).
    """
    from lilypad.storage.blockstore import Blockstore
    from lilypad.storage.cid import CID
    from lilypad.storage.client import KuboClient
    from lilypad.storage.importer import AddedEntry, Importer, ImportProfile

    profile = ImportProfile(
        cid_version=cid_version,
        raw_leaves=cid_version == 1 if raw_leaves is None else raw_leaves,
        chunk_size=chunk_size,
    )
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir() and not recursive:
        raise InputError(f"{path} is a directory; use -r to add a directory tree")
    api = api or _settings().ipfs_api
    if api:
        with KuboClient(api, _settings().ipfs_timeout) as client:
            raw = client.add(path, profile, pin=pin, only_hash=only_hash, hidden=hidden)
        entries = [AddedEntry(e["Name"], CID.parse(e["Hash"]), int(e.get("Size", 0))) for e in raw]
    else:
        entries = []
        if only_hash:
            Importer(None, profile).add_path(path, hidden=hidden, on_entry=entries.append)
        else:
            store = Blockstore(_settings().repo())
            with store.lock():
                with store.writer() as sink:
                    Importer(sink, profile).add_path(path, hidden=hidden, on_entry=entries.append)
                if pin:
                    store.pin(entries[-1].cid, check=False)  # every block was just stored
    data = [{"name": e.path, "cid": str(e.cid), "size": e.size} for e in entries]

    def human() -> None:
        for entry in entries[-1:] if quiet else entries:
            print(str(entry.cid) if quiet else f"added {entry.cid} {entry.path}")

    emit(data[-1:] if quiet else data, json_output, human)


@app.command()
def serve(
    api: str = typer.Option("127.0.0.1:5001", "--api", help="HOST:PORT for the Kubo RPC API."),
    gateway: str = typer.Option("127.0.0.1:8080", "--gateway", help="HOST:PORT for the gateway."),
    pinning_token: str | None = typer.Option(
        None,
        "--pinning-token",
        envvar="LILYPAD_NODE_PINNING_TOKEN",
        help="Also serve the Pinning Service API (/pins) for this bearer token.",
    ),
) -> None:
    """Run the embedded IPFS node: gateway + Kubo RPC over the local repository."""
    from lilypad.storage.blockstore import Blockstore
    from lilypad.storage.node import EmbeddedNode

    repo = _settings().repo()
    node = EmbeddedNode(Blockstore(repo), api=api, gateway=gateway, pinning_token=pinning_token)
    note(f"repository   {repo}")
    note(f"Kubo RPC API {node.api_url}/api/v0")
    note(f"gateway      {node.gateway_url}/ipfs/<CID>")
    if pinning_token:
        note(f"pinning API  {node.api_url}/pins")
    note("Press Ctrl+C to stop.")
    node.run()
    note("stopped")


def _storage(api: str | None, gateway: str | None, timeout: float | None = None) -> Storage:
    from lilypad.storage.backends import open_storage

    _check_source(api, gateway, timeout)
    settings = _settings()
    if timeout is not None:
        settings.ipfs_timeout = timeout
    settings.pinning_endpoint = None  # NOTE: fetching never needs the pinning service.
    return open_storage(settings, api=api, gateway=gateway)


def _check_source(api: str | None, gateway: str | None, timeout: float | None) -> None:
    """The options that name where content is read from: at most one source, a real timeout."""
    if api and gateway:
        raise InputError("give either --api or --gateway, not both")
    if timeout is not None and timeout <= 0:
        raise InputError(f"--timeout {timeout:g} must be a positive number of seconds")


def _timeout_option() -> Any:
    return typer.Option(
        None, "--timeout", help="Seconds to wait for content (default LILYPAD_IPFS_TIMEOUT, 30)."
    )


@app.command()
def get(
    cid: str = typer.Argument(..., help="The CID to download, or CID/path inside a directory."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Where to save (default ./CID, or the path's last name)."
    ),
    api: str | None = _api_option(),
    gateway: str | None = typer.Option(None, "--gateway", help=GATEWAY_HELP),
    timeout: float | None = _timeout_option(),
    json_output: bool = _json_option(),
) -> None:
    """Download a file or directory, verifying every block against its CID.

    Symlinks in it are verified but not created (they could point anywhere on this machine);
    each one left out is listed on stderr.
    """
    from lilypad.storage import dag

    root, subpath = dag.parse_ipfs_path(cid)
    names = dag.split_path(subpath)
    target = "/".join([str(root), *names])
    dest = output or Path(names[-1] if names else str(root))
    skipped: list[dag.SkippedSymlink] = []
    with show_warnings("lilypad.storage"), closing(_storage(api, gateway, timeout)) as storage:
        saved = storage.get(target, dest, on_symlink=skipped.append)
    data = {
        "cid": target,
        "path": str(saved),
        "skipped_symlinks": [{"path": s.path, "target": s.target} for s in skipped],
    }
    emit(
        data, json_output, lambda: console.print(f"saved {escape(target)} to {escape(str(saved))}")
    )
    if skipped and not (json_output or state.json):
        count = f"{len(skipped)} symlink{'s' if len(skipped) > 1 else ''}"
        note(f"[yellow]warning:[/] skipped {count}; downloads do not create symlinks:")
        for link in skipped:  # names and targets come from the content: shown escaped
            note(f"  {escape(_printable(link.path))} -> {escape(repr(link.target))}")


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so content cannot drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@app.command()
def cat(
    path: str = typer.Argument(..., help="CID or CID/path inside a directory."),
    api: str | None = _api_option(),
    gateway: str | None = typer.Option(None, "--gateway", help=GATEWAY_HELP),
    timeout: float | None = _timeout_option(),
) -> None:
    """Write a file's bytes to stdout, verified block by block."""
    from lilypad.storage import dag

    dag.parse_ipfs_path(path)  # refuse a bad CID or path before any network traffic
    binary = getattr(sys.stdout, "buffer", None)  # NOTE: absent when stdout is captured text
    with closing(_storage(api, gateway, timeout)) as storage:
        for chunk in storage.cat(path):
            if binary is not None:
                binary.write(chunk)
            else:
                sys.stdout.write(chunk.decode(errors="replace"))
    sys.stdout.flush()


@app.command()
def gc() -> None:
    """Delete every block of the local repository that no pin holds."""
    from lilypad.storage.blockstore import Blockstore

    removed = Blockstore(_settings().repo()).gc()
    console.print(f"removed {removed} unpinned blocks")


def _pin_target(api: str | None, service: str | None) -> Storage:
    if service:
        from lilypad.storage.backends import LocalStorage, RemotePinning
        from lilypad.storage.client import PinningServiceClient

        settings = _settings()
        token = settings.pinning_token.get_secret_value() if settings.pinning_token else ""
        client = PinningServiceClient(service, token, settings.ipfs_timeout)
        return RemotePinning(LocalStorage(settings.repo()), client)
    return _storage(api, None)


def _service_option() -> Any:
    return typer.Option(
        None,
        "--service",
        help="An IPFS Pinning Service API endpoint (token from LILYPAD_PINNING_TOKEN).",
        envvar="LILYPAD_PINNING_ENDPOINT",
        show_envvar=False,
    )


@pin_app.command("add")
def pin_add(
    cid: str = typer.Argument(..., help="The CID to pin (recursively)."),
    api: str | None = _api_option(),
    service: str | None = _service_option(),
) -> None:
    """Pin a CID and its whole DAG."""
    from lilypad.storage.cid import CID

    root = CID.parse(cid)
    with closing(_pin_target(api, service)) as storage:
        storage.pin(root)
    console.print(f"pinned {root} recursively")


@pin_app.command("rm")
def pin_rm(
    cid: str = typer.Argument(..., help="The CID to unpin."),
    api: str | None = _api_option(),
    service: str | None = _service_option(),
) -> None:
    """Remove a pin (the blocks go at the next `lilypad ipfs gc`)."""
    from lilypad.storage.cid import CID

    root = CID.parse(cid)
    with closing(_pin_target(api, service)) as storage:
        storage.unpin(root)
    console.print(f"unpinned {root}")


@pin_app.command("ls")
def pin_ls(
    api: str | None = _api_option(),
    service: str | None = _service_option(),
    json_output: bool = _json_option(),
) -> None:
    """List pinned CIDs."""
    with closing(_pin_target(api, service)) as storage:
        pins = [str(c) for c in storage.pins()]

    def human() -> None:
        for pinned in pins:
            print(pinned)

    emit(pins, json_output, human)


# --- CAR files -----------------------------------------------------------------------------------

dag_app = typer.Typer(
    help="Move content as CAR files, the archive every IPFS tool reads and writes.",
    no_args_is_help=True,
)
app.add_typer(dag_app, name="dag")


@dag_app.command("export")
def dag_export(
    cid: str = typer.Argument(..., help="The root CID of the DAG to export."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write the CAR to this file (default: stdout)."
    ),
    api: str | None = _api_option(),
    gateway: str | None = typer.Option(None, "--gateway", help=GATEWAY_HELP),
    timeout: float | None = _timeout_option(),
) -> None:
    """Write the whole DAG under CID as a CARv1 (as `ipfs dag export`), every block verified.

    From the local repository unless --api or --gateway names a node to read the blocks from.
    A file given with -o appears only once complete.
    """
    from lilypad.storage.car import car_stream
    from lilypad.storage.cid import CID

    root = CID.parse(cid)
    with closing(_block_source(api, gateway, timeout)) as source:
        if output is None:
            binary = getattr(sys.stdout, "buffer", None)
            if binary is None:
                raise InputError("a CAR is binary: give -o FILE when stdout is not a byte stream")
            for chunk in car_stream(source, root):
                binary.write(chunk)
            binary.flush()
            return
        size = _write_complete(output, car_stream(source, root))
    note(f"exported {root} to {escape(str(output))} ({size} bytes)")


@dag_app.command("import")
def dag_import(
    path: Path = typer.Argument(..., help="A CARv1 file (as `ipfs dag export` writes it)."),
    pin_roots: bool = typer.Option(True, "--pin-roots/--no-pin-roots", help="Pin the roots."),
    json_output: bool = _json_option(),
) -> None:
    """Add the blocks of a CAR file to the local repository, each checked against its CID.

    All or nothing: a block that does not match its CID, or a file that ends inside a block,
    stores nothing. Each root is pinned (with its whole DAG, which must then be in the CAR or
    already in the repository).
    """
    from lilypad.errors import StorageError
    from lilypad.storage.blockstore import Blockstore
    from lilypad.storage.car import MAX_SECTION, import_car

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    store = Blockstore(_settings().repo())
    with path.open("rb") as handle, store.lock():
        chunks = iter(lambda: handle.read(1024 * 1024), b"")
        try:
            with store.writer() as sink:
                imported = import_car(sink, chunks, limit=MAX_SECTION)
        except StorageError as exc:
            raise StorageError(f"{path}: {exc}; nothing was imported") from None
        unpinned: dict[str, str] = {}
        for root in imported.roots if pin_roots else []:
            try:
                store.pin(root)
            except StorageError as exc:
                unpinned[str(root)] = str(exc)
    data = {
        "roots": [str(r) for r in imported.roots],
        "blocks": imported.blocks,
        "pinned": pin_roots and not unpinned,
        "pin_errors": unpinned,
    }

    def human() -> None:
        for root in imported.roots:
            text = str(root)
            state_ = "not pinned" if text in unpinned or not pin_roots else "pinned"
            print(f"root {text} {state_}")
        note(f"{imported.blocks} blocks imported from {escape(str(path))}")
        for text, why in unpinned.items():
            note(f"[yellow]warning:[/] root {text} is not pinned: {escape(why)}")

    emit(data, json_output, human)
    if unpinned:
        raise typer.Exit(1)


def _block_source(
    api: str | None, gateway: str | None, timeout: float | None
) -> Blockstore | KuboClient | GatewayClient:
    """Where ``dag export`` reads verified blocks: a Kubo API, a gateway, or the local store."""
    from lilypad.storage.blockstore import Blockstore
    from lilypad.storage.client import GatewayClient, KuboClient

    _check_source(api, gateway, timeout)
    wait = timeout or _settings().ipfs_timeout
    if api:
        return KuboClient(api, wait)
    if gateway:
        return GatewayClient(gateway, wait)
    return Blockstore(_settings().repo())


def _write_complete(dest: Path, chunks: Any) -> int:
    """Write ``chunks`` to ``dest``, which appears only once complete (and fsynced)."""
    from lilypad.fsutil import atomic_writer

    if dest.is_dir():
        raise InputError(f"{dest} is a directory; give a file name for the CAR")
    size = 0
    with atomic_writer(dest) as out:
        for chunk in chunks:
            out.write(chunk)
            size += len(chunk)
    return size
