"""Network profiles: which chain, contracts and services a node or client talks to.

A profile is a TOML file ``<config dir>/networks/<name>.toml``; the config dir is
``$LILYPAD_CONFIG_DIR`` or ``~/.config/lilypad``. ``lilypad chain up`` / ``lilypad chain deploy``
write one; the solver, provider and job-creator flows read it with :func:`load_network`.
A profile holds no secrets: private keys come from the environment of the process that signs.

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
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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


def load_network(name: str) -> NetworkProfile:
    """Read profile ``name``.

    Raises:
        UnknownNetwork: No such profile; the message names the closest one.
        ConfigError: The file is not a valid profile.
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
        return NetworkProfile.model_validate(data)
    except (tomllib.TOMLDecodeError, ValidationError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"network profile {path} is invalid: {first}") from exc


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
        raise ChainError(
            f"the node at {profile.rpc_url} is chain {chain.chain_id}, "
            f"but network {profile.name!r} is chain {profile.chain_id}"
        )
    job_creator = JobCreatorClient(chain, profile.job_creator) if profile.job_creator else None
    return Connection(
        profile, chain, JobMarketClient(chain, market), TokenClient(chain, token), job_creator
    )
