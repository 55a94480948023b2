"""Every bad input to `lilypad run` is a clean exit 2 naming the value, before anything is signed
or paid (finding 10 of the trust review: these ended in "Internal error" or in a reverting
deposit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import CliRunner
from tests.creator.conftest import Creator

RUN = ("run", "cowsay:v0.0.4", "--network", "test", "--yes")


@pytest.fixture
def profile(creator: Creator, monkeypatch: pytest.MonkeyPatch) -> None:
    creator.world.profile()
    monkeypatch.setenv("WEB3_PRIVATE_KEY", creator.account.key.hex())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--max-price", "1e40"), "--max-price '1e40' is not a number of tokens"),
        (("--max-price", "1e999999999"), "is not a number of tokens"),
        (("--max-price", "1_0"), "is not a number of tokens"),
        (("--max-price", "79228162515"), "is more than the most allowed"),
        (("--timeout", "4294967296"), "--timeout 4294967296 is out of range"),
        (("--timeout", "59"), "at least 120 seconds"),  # cowsay: 60 s + 60 s to deliver
        (("--expires-in", str(2**64)), f"--expires-in {2**64} is out of range"),
        (("--expires-in", "14"), "--expires-in 14 is out of range: from 15 to 604,800"),
        (("--retries", "11"), "--retries 11 is out of range: from 0 to 10"),
        (("--mediator", "nope"), "--mediator 'nope' is not an Ethereum address"),
        (("--verify", "sometimes"), "sometimes"),
    ],
)
def test_bad_options_are_exit_2_naming_the_value(
    profile: None, cli: CliRunner, args: tuple[str, ...], says: str
) -> None:
    result = cli(*RUN, *args)
    assert result.exit_code == 2, result.stderr
    assert says in " ".join(result.stderr.split()), result.stderr
    assert "Internal error" not in result.stderr
    assert json.loads(cli("jobs", "list", "--json").stdout) == []  # nothing was posted


@pytest.mark.parametrize("ref", [" cowsay:v0.0.4", "cowsay:v0.0.4\n", "cow\tsay:v0.0.4"])
def test_a_module_reference_with_stray_whitespace_is_refused(
    profile: None, cli: CliRunner, ref: str
) -> None:
    result = cli("run", ref, "--network", "test", "--yes")
    assert result.exit_code == 2, result.stderr
    assert "whitespace or control characters" in result.stderr


def test_a_price_the_wallet_cannot_pay_is_refused_before_any_transaction(
    profile: None, creator: Creator, cli: CliRunner
) -> None:
    market = creator.world.market
    address = creator.account.address
    before = market.balance_of(address), market.token.balance_of(address)
    result = cli(*RUN, "--max-price", "1000000")
    assert result.exit_code == 2, result.stderr
    assert "the wallet of" in result.stderr
    assert (market.balance_of(address), market.token.balance_of(address)) == before


IMG2IMG = ("run", "sdxl-img2img:v1.0-lilypad1", "--network", "test", "--yes")
UNKNOWN_CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def _pins(creator: Creator) -> set[str]:
    from lilypad.storage import KuboStorage

    storage = KuboStorage(creator.world.ipfs.api_url)
    try:
        return {str(cid) for cid in storage.pins()}
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("make", "value", "says"),
    [
        (None, "@{dir}/missing.png", "no such file"),
        (None, "@{dir}", "is a folder"),
        ("text", "@{dir}/note.png", "is not a picture Image can take"),
        (None, f"ipfs://{UNKNOWN_CID}", "not found on IPFS"),
        ("folder", "ipfs://{folder}", "is a folder; Image needs a file in it"),
        (None, "not-a-cid", "is not an IPFS file"),
    ],
    ids=["missing", "directory", "not-an-image", "unknown-cid", "cid-of-a-folder", "malformed"],
)
def test_bad_file_inputs_are_exit_2_before_anything_is_signed(
    profile: None,
    creator: Creator,
    cli: CliRunner,
    tmp_path: Path,
    make: str | None,
    value: str,
    says: str,
) -> None:
    from lilypad.storage import KuboStorage

    (tmp_path / "note.png").write_text("no picture")
    folder = ""
    if make == "folder":
        (tmp_path / "tree").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "tree" / "a.png")
        storage = KuboStorage(creator.world.ipfs.api_url)
        folder = str(storage.add(tmp_path / "tree"))
        storage.close()
    market, address = creator.world.market, creator.account.address
    before = market.balance_of(address), market.token.balance_of(address), _pins(creator)
    result = cli(*IMG2IMG, "-i", "Image=" + value.format(dir=tmp_path, folder=folder))
    assert result.exit_code == 2, result.stderr
    assert says in " ".join(result.stderr.split()), result.stderr
    assert json.loads(cli("jobs", "list", "--json").stdout) == []  # nothing was posted
    after = market.balance_of(address), market.token.balance_of(address), _pins(creator)
    assert after == before  # nothing deposited, nothing added to the network's IPFS


def test_a_typo_in_another_input_costs_no_upload(
    profile: None, creator: Creator, cli: CliRunner, tmp_path: Path
) -> None:
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.png")
    before = _pins(creator)
    result = cli(*IMG2IMG, "-i", f"Image=@{tmp_path / 'photo.png'}", "-i", "Strength=2")
    assert result.exit_code == 2, result.stderr
    assert "Strength=2" in result.stderr
    assert _pins(creator) == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            (),
            "Steps=1 with Strength=0.5 runs none; "
            "allowed: Strength at least 1 at Steps=1 or Steps=2 at Strength=0.5",
        ),
        (
            ("-i", "Steps=3", "-i", "Strength=0.3"),
            "allowed: Strength at least 0.334 at Steps=3 or Steps=4 at Strength=0.3",
        ),
    ],
)
def test_a_picture_with_steps_and_strength_that_run_no_step_is_refused_before_paying(
    profile: None,
    creator: Creator,
    cli: CliRunner,
    tmp_path: Path,
    args: tuple[str, ...],
    says: str,
) -> None:
    """SDXL Turbo runs the last int(Steps x Strength) steps from a picture: at its defaults (one
    step, Strength 0.5) that is none, which the module could only refuse after the deal."""
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.png")
    turbo = ("run", "sdxl-turbo:v1.1-lilypad1", "--network", "test", "--yes")
    market, address = creator.world.market, creator.account.address
    before = market.balance_of(address), _pins(creator)
    result = cli(*turbo, "-i", f"Image=@{tmp_path / 'photo.png'}", *args)
    assert result.exit_code == 2, result.stderr
    assert says in " ".join(result.stderr.split()), result.stderr
    assert (market.balance_of(address), _pins(creator)) == before
    assert json.loads(cli("jobs", "list", "--json").stdout) == []
