"""Network profiles: which chain, contracts and services a node or client talks to.

A profile is a TOML file ``<config dir>/networks/<name>.toml``; the config dir is
``$LILYPAD_CONFIG_DIR`` or ``~/.config/lilypad``. ``lilypad chain up`` / ``lilypad chain deploy``
write one; the solver, provider and job-creator flows read it with :func:`load_network`.
A profile holds no secrets: private keys come from the environment of the process that signs.

Lilypad's own variables override the profile fields they mean the same as, when set and not empty
(the variable wins over the file; :data:`ENV_FIELDS`): ``WEB3_RPC_URL``, ``WEB3_CHAIN_ID``,
``SERVICE_SOLVER`` (the solver's address), ``SERVICE_MEDIATORS`` (mediator addresses, comma
separated) and ``IPFS_CONNECT`` (a multiaddr of a Kubo RPC API). The profile's
:attr:`NetworkProfile.overrides` names those applied; they are never written back to the file.

Example ``local.toml``::

    name = "local"
    chain_id = 31337
    rpc_url = "http://127.0.0.1:8545"
    token = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    market = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
    job_creator = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
    deployed_block = 1
    solver_url = "http://127.0.0.1:8080"

    [accounts]
    solver = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lilypad.chain.offers import Address
from lilypad.errors import ChainError, ConfigError, UnknownNetwork
from lilypad.fsutil import write_atomic

if TYPE_CHECKING:  # web3: imported by connect(), not by every user of a profile
    from lilypad.chain.client import Chain
    from lilypad.chain.job_creator import JobCreatorClient
    from lilypad.chain.market import JobMarketClient, TokenClient

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class NetworkProfile(BaseModel):
    """Everything needed to reach one network.

    Attributes:
        name: The profile's name (lowercase letters, digits, ``-``, ``_``).
        chain_id: The chain id; a node that reports another is refused.
        rpc_url: The chain's JSON-RPC URL.
        token: The ERC-20 prices and collateral are paid in.
        market: The JobMarket contract.
        job_creator: The JobCreator contract (contract-submitted jobs).
        deployed_block: The block the contracts were deployed in; event followers start there.
        solver_url: The solver's HTTP API.
        ipfs_api_url: The Kubo RPC API results are added to and fetched from.
        gateway_url: The HTTP gateway links to results point at.
        accounts: Well-known public addresses by role (``solver``, ``mediator``...).
        overrides: The environment variables that replaced fields of the file (never saved).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    chain_id: Annotated[int, Field(gt=0)]
    rpc_url: str
    token: Address | None = None
    market: Address | None = None
    job_creator: Address | None = None
    deployed_block: Annotated[int, Field(ge=0)] = 0
    solver_url: str | None = None
    ipfs_api_url: str | None = None
    gateway_url: str | None = None
    accounts: dict[str, Address] = Field(default_factory=dict)
    overrides: tuple[str, ...] = Field((), exclude=True)

    def require_contracts(self) -> tuple[str, str]:
        """The market and token addresses, or a clear error if the profile has none."""
        if self.market is None or self.token is None:
            raise ConfigError(
                f"network {self.name!r} has no contract addresses",
                hint=f"deploy with: lilypad chain deploy --rpc-url {self.rpc_url} "
                f"--network {self.name}",
            )
        return self.market, self.token


def config_dir() -> Path:
    """``$LILYPAD_CONFIG_DIR``, or ``~/.config/lilypad``."""
    env = os.environ.get("LILYPAD_CONFIG_DIR")
    return Path(env) if env else Path.home() / ".config" / "lilypad"


def networks_dir() -> Path:
    """Where profiles are stored."""
    return config_dir() / "networks"


def network_path(name: str) -> Path:
    """The file of profile ``name`` (which need not exist)."""
    _check_name(name)
    return networks_dir() / f"{name}.toml"


def list_networks() -> list[str]:
    """Names of the stored profiles, sorted."""
    folder = networks_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_network(name: str, *, environ: bool = True) -> NetworkProfile:
    """Read profile ``name``, with Lilypad's variables applied over it (see the module docstring).

    Args:
        name: The profile's name.
        environ: Apply ``WEB3_RPC_URL`` and the others; False to read the file alone (what a
            command that rewrites the profile starts from).

    Raises:
        UnknownNetwork: No such profile; the message names the closest one.
        ConfigError: The file is not a valid profile, or a variable's value is malformed.
    """
    path = network_path(name)
    if not path.is_file():
        known = list_networks()
        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else (f"known: {', '.join(known)}" if known else "create one with: lilypad chain up")
        )
        raise UnknownNetwork(f"unknown network {name!r}", hint=hint)
    try:
        data = tomllib.loads(path.read_text())
        profile = NetworkProfile.model_validate(data)
    except (tomllib.TOMLDecodeError, ValidationError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"network profile {path} is invalid: {first}") from exc
    return apply_environment(profile) if environ else profile


# ------------------------------------------------------------------ Lilypad's variables
#: Lilypad's variables and the profile field each one overrides.
ENV_FIELDS = {
    "WEB3_RPC_URL": "rpc_url",
    "WEB3_CHAIN_ID": "chain_id",
    "SERVICE_SOLVER": "accounts.solver",
    "SERVICE_MEDIATORS": "accounts.mediator*",
    "IPFS_CONNECT": "ipfs_api_url",
}
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def apply_environment(
    profile: NetworkProfile, environ: dict[str, str] | None = None
) -> NetworkProfile:
    """``profile`` with the variables of :data:`ENV_FIELDS` that are set (not empty) applied.

    Raises:
        ConfigError: a value is malformed; the message names the variable and what it takes.
    """
    env = os.environ if environ is None else environ
    given = {name: env[name].strip() for name in ENV_FIELDS if env.get(name, "").strip()}
    if not given:
        return profile
    update: dict[str, object] = {"overrides": tuple(given)}
    accounts = dict(profile.accounts)
    if "WEB3_RPC_URL" in given:
        update["rpc_url"] = _rpc_url(given["WEB3_RPC_URL"])
    if "WEB3_CHAIN_ID" in given:
        update["chain_id"] = _chain_id(given["WEB3_CHAIN_ID"])
    if "SERVICE_SOLVER" in given:
        accounts["solver"] = _address("SERVICE_SOLVER", given["SERVICE_SOLVER"])
    if "SERVICE_MEDIATORS" in given:
        accounts = {k: v for k, v in accounts.items() if not k.startswith("mediator")}
        for i, address in enumerate(_addresses("SERVICE_MEDIATORS", given["SERVICE_MEDIATORS"])):
            accounts["mediator" if i == 0 else f"mediator-{i + 1}"] = address
    if "IPFS_CONNECT" in given:
        update["ipfs_api_url"] = multiaddr_to_url(given["IPFS_CONNECT"])
    update["accounts"] = accounts
    return profile.model_copy(update=update)


def _rpc_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"WEB3_RPC_URL {value!r} is not a chain RPC URL: use http(s):// or ws(s):// and a "
            "host, e.g. http://127.0.0.1:8545"
        )
    return value


def _chain_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) == 0:
        raise ConfigError(
            f"WEB3_CHAIN_ID {value!r} is not a chain id: use a positive whole number in "
            "decimal, e.g. 31337"
        )
    return int(value)


def _address(variable: str, value: str) -> str:
    from lilypad.chain.crypto import is_address, to_checksum_address

    if not is_address(value):
        raise ConfigError(
            f"{variable} {value!r} is not an Ethereum address: use 0x and 40 hex digits (mixed "
            "case only with a valid EIP-55 checksum)"
        )
    return str(to_checksum_address(value))


def _addresses(variable: str, value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ConfigError(
            f"{variable} {value!r} has an empty entry: give addresses separated by commas"
        )
    return list(dict.fromkeys(_address(variable, item) for item in items))


def multiaddr_to_url(value: str, variable: str = "IPFS_CONNECT") -> str:
    """The Kubo RPC URL a multiaddr names: ``/ip4/127.0.0.1/tcp/5001`` is
    ``http://127.0.0.1:5001``, ``/dns4/host/tcp/443/https`` is ``https://host:443``.

    Only what maps onto an HTTP URL is taken: ``/ip4``, ``/ip6``, ``/dns``, ``/dns4`` or ``/dns6``
    with a host, then ``/tcp/PORT``, then optionally ``/http`` or ``/https``.

    Raises:
        ConfigError: anything else (``/udp``, ``/p2p``, ``/unix``, a bad address or port...).
    """
    parts = value.split("/")
    allowed = (
        "/ip4/A.B.C.D/tcp/PORT, /ip6/ADDR/tcp/PORT or /dns4/HOST/tcp/PORT, optionally ending in "
        "/http or /https"
    )
    if len(parts) not in (5, 6) or parts[0] != "" or parts[3] != "tcp":
        raise ConfigError(f"{variable} {value!r} is not a multiaddr of an HTTP API: use {allowed}")
    _, proto, host, _, port_text, *scheme = parts
    if scheme and scheme[0] not in ("http", "https"):
        raise ConfigError(
            f"{variable} {value!r} ends in /{scheme[0]}: only /http or /https map to a URL"
        )
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ConfigError(f"{variable} {value!r} has TCP port {port_text!r}: use 1 to 65535")
    if proto in ("ip4", "ip6"):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or address.version != int(proto[-1]):
            raise ConfigError(f"{variable} {value!r}: {host!r} is not an {proto} address")
        host = f"[{host}]" if proto == "ip6" else host
    elif proto in ("dns", "dns4", "dns6"):
        labels = host.rstrip(".").split(".")
        if not host or not all(_HOST_LABEL.match(label) for label in labels):
            raise ConfigError(f"{variable} {value!r}: {host!r} is not a host name")
    else:
        raise ConfigError(f"{variable} {value!r} starts with /{proto}: use {allowed}")
    return f"{scheme[0] if scheme else 'http'}://{host}:{int(port_text)}"


def overrides_note(profile: NetworkProfile) -> str | None:
    """One line naming the variables applied over ``profile`` (what the CLI prints on stderr),
    or None when there are none."""
    if not profile.overrides:
        return None
    applied = ", ".join(f"{name} ({ENV_FIELDS[name]})" for name in profile.overrides)
    return f"network {profile.name!r}: from the environment, over the profile: {applied}"


def chain_mismatch(profile: NetworkProfile, actual: int) -> Exception:
    """The error for a node on chain ``actual`` where ``profile`` says another; it names
    ``WEB3_CHAIN_ID`` when that variable set the expected id."""
    if "WEB3_CHAIN_ID" in profile.overrides:
        return ConfigError(
            f"WEB3_CHAIN_ID {profile.chain_id} disagrees with the node at {profile.rpc_url}, "
            f"which is chain {actual}; nothing was signed",
            hint=f"set WEB3_CHAIN_ID={actual}, or unset it to use network {profile.name!r}'s",
        )
    return ChainError(
        f"the node at {profile.rpc_url} is chain {actual}, "
        f"but network {profile.name!r} is chain {profile.chain_id}"
    )


def save_network(profile: NetworkProfile) -> Path:
    """Write ``profile`` to its file (replacing it atomically); returns the path."""
    path = network_path(profile.name)
    write_atomic(path, tomli_w.dumps(profile.model_dump(mode="json", exclude_none=True)))
    return path


def _check_name(name: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise ConfigError(
            f"network name {name!r} is not allowed: use lowercase letters, digits, '-' and '_'"
        )


@dataclass(frozen=True)
class Connection:
    """A network's chain and contracts, ready to call."""

    profile: NetworkProfile
    chain: Chain
    market: JobMarketClient
    token: TokenClient
    job_creator: JobCreatorClient | None


def connect(network: NetworkProfile | str, *, request_timeout: float = 30.0) -> Connection:
    """Open the chain of a network (a profile or its name) and its contracts.

    Raises:
        UnknownNetwork: No profile by that name.
        ConfigError: The profile has no contract addresses.
        ChainUnavailable: The node cannot be reached.
        ChainError: The node is on another chain than the profile says.
    """
    from lilypad.chain.client import Chain
    from lilypad.chain.job_creator import JobCreatorClient
    from lilypad.chain.market import JobMarketClient, TokenClient

    profile = load_network(network) if isinstance(network, str) else network
    market, token = profile.require_contracts()
    chain = Chain(profile.rpc_url, request_timeout=request_timeout)
    if chain.chain_id != profile.chain_id:
        raise chain_mismatch(profile, chain.chain_id)
    job_creator = JobCreatorClient(chain, profile.job_creator) if profile.job_creator else None
    return Connection(
        profile, chain, JobMarketClient(chain, market), TokenClient(chain, token), job_creator
    )
