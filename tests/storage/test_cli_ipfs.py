"""`lilypad ipfs ...` as a user runs it: output, files written, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from lilypad.storage import compute_cid
from lilypad.storage.importer import ImportProfile
from lilypad.storage.node import EmbeddedNode
from tests.conftest import CliRunner
from tests.storage.conftest import run_js, write_tree

TREE: dict[str, bytes | None] = {
    "result/out.txt": b"output\n",
    "result/.hidden": b"dot",
    "result/sub/empty": None,
}


def test_add_get_cat_pin_gc_round_trip(cli: CliRunner, tmp_path: Path) -> None:
    root = write_tree(tmp_path, TREE) / "result"
    added = cli("ipfs", "add", "-r", str(root))
    assert added.exit_code == 0, added.stderr
    lines = added.stdout.splitlines()
    assert lines[-1].endswith(" result")
    cid = lines[-1].split()[1]
    assert "result/.hidden" not in added.stdout  # kubo leaves dotfiles out unless -H

    quiet = cli("ipfs", "add", "-r", "-H", "-Q", str(root))
    assert quiet.stdout.strip() == str(compute_cid(root))  # -H: every file, as the API adds

    out = tmp_path / "fetched"
    got = cli("ipfs", "get", cid, "-o", str(out))
    assert got.exit_code == 0, got.stderr
    assert (out / "out.txt").read_bytes() == b"output\n"
    assert (out / "sub" / "empty").is_dir()
    assert cli("ipfs", "cat", f"{cid}/out.txt").stdout == "output\n"

    pins = cli("ipfs", "pin", "ls", "--json")
    assert cid in json.loads(pins.stdout)
    assert cli("ipfs", "pin", "rm", cid).exit_code == 0
    assert cid not in cli("ipfs", "pin", "ls").stdout
    assert "removed" in cli("ipfs", "gc").stdout
    gone = cli("ipfs", "cat", f"{cid}/out.txt")
    assert gone.exit_code == 1
    assert "not found" in gone.stderr


def test_add_options_match_kubo_flags(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4000)
    v0 = cli("ipfs", "add", "-Q", "--only-hash", "--cid-version", "0", str(path))
    assert v0.stdout.strip() == str(compute_cid(path, ImportProfile.kubo(0)))
    small = cli("ipfs", "add", "-Q", "-n", "--chunk-size", "1000", "--no-raw-leaves", str(path))
    profile = ImportProfile(chunk_size=1000, raw_leaves=False)
    assert small.stdout.strip() == str(compute_cid(path, profile))
    listed = cli("ipfs", "pin", "ls", "--json")
    assert json.loads(listed.stdout) == []  # --only-hash stored and pinned nothing


def test_bad_input_exits_2_with_one_clear_line(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    cases = {
        ("ipfs", "add", str(tmp_path / "dir")): "is a directory; use -r",
        ("ipfs", "add", str(tmp_path / "missing")): "no such file or directory",
        ("ipfs", "add", "--chunk-size", "0", str(tmp_path)): "chunk size 0 is out of range",
        ("ipfs", "get", "Qm-not-a-cid"): "'Qm-not-a-cid' is not a valid CID",
        ("ipfs", "cat", "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy/../x"): "'..'",
        (
            "ipfs",
            "get",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "--timeout",
            "-1",
        ): "--timeout",
        ("ipfs", "serve", "--api", "nonsense"): "is not HOST:PORT",
        (
            "ipfs",
            "get",
            "--api",
            "ftp://x",
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        ): "not an http(s) URL",
    }
    for args, message in cases.items():
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_unknown_cid_is_a_failure_not_a_hang(cli: CliRunner, node: EmbeddedNode) -> None:
    unknown = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    for flag, url in (("--gateway", node.gateway_url), ("--api", node.api_url)):
        result = cli("ipfs", "get", unknown, flag, url, "--timeout", "2")
        assert result.exit_code == 1
        assert unknown in result.stderr
        assert "not" in result.stderr


def test_commands_against_a_running_node(
    cli: CliRunner, node: EmbeddedNode, tmp_path: Path
) -> None:
    root = write_tree(tmp_path, TREE) / "result"
    added = cli("ipfs", "add", "-r", "-H", "-Q", "--api", node.api_url, str(root))
    assert added.exit_code == 0, added.stderr
    cid = added.stdout.strip()
    assert cid == str(compute_cid(root))
    assert cid in cli("ipfs", "pin", "ls", "--api", node.api_url).stdout
    out = tmp_path / "from-gateway"
    assert cli("ipfs", "get", cid, "--gateway", node.gateway_url, "-o", str(out)).exit_code == 0
    assert (out / ".hidden").read_bytes() == b"dot"
    unreachable = cli("ipfs", "pin", "ls", "--api", "http://127.0.0.1:9")
    assert unreachable.exit_code == 1
    assert "cannot connect to http://127.0.0.1:9" in unreachable.stderr


CAR_TREE: dict[str, bytes | None] = {
    "result/out.txt": b"output\n",
    "result/frames/ünï.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 5000,  # several blocks
    "result/sub/empty": None,
}


def test_dag_export_writes_a_car_that_ipfs_car_unpacks(cli: CliRunner, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "in", CAR_TREE) / "result"
    cid = cli("ipfs", "add", "-r", "-Q", str(root)).stdout.strip()
    car = tmp_path / "result.car"
    exported = cli("ipfs", "dag", "export", cid, "-o", str(car))
    assert exported.exit_code == 0, exported.stderr
    unpacked = tmp_path / "unpacked"
    run_js("node_modules/.bin/ipfs-car", "unpack", str(car), "--output", str(unpacked))
    assert _tree(unpacked) == _tree(root)


def test_dag_import_takes_a_car_written_by_ipfs_car(cli: CliRunner, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "in", CAR_TREE) / "result"
    car = tmp_path / "packed.car"
    run_js("node_modules/.bin/ipfs-car", "pack", str(root), "--output", str(car))
    imported = cli("ipfs", "dag", "import", str(car), "--json")
    assert imported.exit_code == 0, imported.stderr
    (cid,) = json.loads(imported.stdout)["roots"]
    assert cid in json.loads(cli("ipfs", "pin", "ls", "--json").stdout)
    one = tmp_path / "one.png"
    got = cli("ipfs", "get", f"{cid}/frames/ünï.png", "-o", str(one))  # ipfs-car: no wrapping
    assert got.exit_code == 0, got.stderr
    assert one.read_bytes() == CAR_TREE["result/frames/ünï.png"]


def test_dag_import_of_a_bad_car_stores_nothing(cli: CliRunner, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "in", CAR_TREE) / "result"
    cid = cli("ipfs", "add", "-r", "-Q", str(root)).stdout.strip()
    car = tmp_path / "result.car"
    cli("ipfs", "dag", "export", cid, "-o", str(car))
    data = car.read_bytes()
    assert cli("ipfs", "pin", "rm", cid).exit_code == 0
    cli("ipfs", "gc")
    cut = tmp_path / "cut.car"
    cut.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.car"
    flipped.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    for bad, why in ((cut, "truncated"), (flipped, "does not match its CID")):
        refused = cli("ipfs", "dag", "import", str(bad))
        assert refused.exit_code == 1
        assert why in refused.stderr
        assert "nothing was imported" in refused.stderr
        assert cli("ipfs", "cat", f"{cid}/out.txt").exit_code == 1  # no block of it was kept
    assert cli("ipfs", "dag", "import", str(tmp_path / "nope.car")).exit_code == 2


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }
