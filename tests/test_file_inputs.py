"""File tunables: manifests, the forms of ``-i Name=...``, the spec's commitment to the bytes, and
every bad input refused (exit 2) before anything is signed, added or paid."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lilypad import modules
from lilypad.errors import InvalidManifest, InvalidTunable
from lilypad.jobs import rerender
from lilypad.modules.files import file_inputs, stage_inputs
from lilypad.modules.tunables import Tunable
from lilypad.storage import LocalStorage, compute_cid
from tests.conftest import CliRunner

MANIFEST = """
name = "picture"
description = "reads a picture and a file"
image = "lilypad/picture:test"
entrypoint = ["python", "picture.py"]
version = "v1"

[[tunables]]
name = "Image"
type = "image"
env = "IMAGE"
description = "A picture"
max_pixels = 10000
max_bytes = 200000
formats = ["png", "webp"]

[[tunables]]
name = "Extra"
type = "file"
env = "EXTRA"
optional = true
file_name = "extra.bin"
max_bytes = 1000
description = "Any file"

[[tunables]]
name = "Steps"
type = "int"
env = "STEPS"
default = 3
min = 1
max = 9
description = "Steps"
"""
# A module that writes the sha256 of its picture and the path it read it from.
ENTRYPOINT = """
import hashlib, os
path = os.environ["IMAGE"]
digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
out = os.environ["LILYPAD_OUTPUTS_DIR"]
open(os.path.join(out, "seen.txt"), "w").write(f"{digest} {path} {os.environ.get('EXTRA', '-')}")
print("seen.txt")
"""


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "picture"
    folder.mkdir()
    (folder / "lilypad_module.toml").write_text(MANIFEST)
    (folder / "picture.py").write_text(ENTRYPOINT)
    return folder


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "photo one.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def stage(module_dir: Path, *inputs: str, storage: LocalStorage | None = None) -> modules.JobSpec:
    module = modules.resolve(str(module_dir))
    work = module_dir.parent / "work"
    work.mkdir(exist_ok=True)
    staged = stage_inputs(module, list(inputs), add=compute_cid, workdir=work, storage=storage)
    return modules.render(module, staged.inputs)


# ------------------------------------------------------------------------------ manifests
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "image", "default": "bafkqaaa"}, "no default"),
        ({"type": "string", "max_bytes": 10}, "max_bytes need type file or image"),
        ({"type": "int", "optional": True}, "optional need type file or image"),
        ({"type": "file", "max_pixels": 10}, "max_pixels need type image"),
        ({"type": "file", "formats": ["png"]}, "formats need type image"),
        ({"type": "image", "formats": ["gif"]}, "formats"),
        ({"type": "file", "file_name": "../x"}, "not allowed as a name"),
    ],
)
def test_manifests_with_impossible_file_tunables_are_refused(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Tunable.model_validate({"name": "In", "env": "IN", "description": "x", **fields})


def test_a_manifest_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "lilypad_module.toml").write_text(
        MANIFEST.replace("max_pixels = 10000", 'max_pixels = 10000\ndefault = "bafkqaaa"')
    )
    with pytest.raises(InvalidManifest, match=r"lilypad_module\.toml"):
        modules.resolve(str(tmp_path))


# ------------------------------------------------------------------------------- values
CID_V0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"


@pytest.mark.parametrize(
    "raw",
    [
        f"ipfs://{CID_V0}/photo%20one.png",
        f"/ipfs/{CID_V0}/photo one.png",
        f"{CID_V0}/photo one.png",
    ],
)
def test_every_ipfs_form_becomes_one_canonical_path(module_dir: Path, raw: str) -> None:
    spec = stage(module_dir, f"Image={raw}")
    v1 = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert spec.tunables["Image"] == f"{v1}/photo one.png"
    assert spec.env["IMAGE"] == "/inputs/Image/photo one.png"


def test_a_bare_cid_is_mounted_under_the_tunables_file_name(module_dir: Path) -> None:
    spec = stage(module_dir, "Image=bafkqaaa", "Extra=bafkqaaa")
    assert spec.env["IMAGE"] == "/inputs/Image/image"
    assert spec.env["EXTRA"] == "/inputs/Extra/extra.bin"


def test_an_optional_file_left_out_sets_no_variable(module_dir: Path, picture: Path) -> None:
    spec = stage(module_dir, f"Image=@{picture}")
    assert "EXTRA" not in spec.env
    assert "Extra" not in spec.tunables
    assert [f.name for f in file_inputs(spec)] == ["Image"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not-a-cid", "not an IPFS file"),
        ("bafkqaaa/../etc/passwd", "not allowed as a name"),
        ("bafkqaaa//x", "empty segment"),
        ("bafkqaaa/a\\b", "not allowed as a name"),
        ("bafkqaaa/x\n", "control character"),
    ],
)
def test_malformed_references_are_refused(module_dir: Path, raw: str, message: str) -> None:
    with pytest.raises(InvalidTunable, match=message):
        stage(module_dir, f"Image={raw}")


def test_the_spec_commits_to_the_bytes(module_dir: Path, picture: Path, tmp_path: Path) -> None:
    first = stage(module_dir, f"Image=@{picture}")
    assert stage(module_dir, f"Image=@{picture}").spec_hash == first.spec_hash
    other = tmp_path / "other" / picture.name
    other.parent.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 31)).save(other)  # one pixel value differs
    second = stage(module_dir, f"Image=@{other}")
    assert second.spec_hash != first.spec_hash
    assert second.env == first.env  # same name, same mount: only the CID tells them apart
    assert str(picture) not in first.to_json()  # never a local path


def test_a_local_file_is_added_wrapped_in_a_folder(module_dir: Path, picture: Path) -> None:
    storage = LocalStorage(module_dir.parent / "repo")
    module = modules.resolve(str(module_dir))
    staged = stage_inputs(module, [f"Image=@{picture}"], add=storage.add, workdir=module_dir.parent)
    ref = staged.refs["Image"]
    folder, name = ref.split("/")
    assert name == "photo one.png"
    assert storage.stat(ref).size == picture.stat().st_size
    assert b"".join(storage.cat(ref)) == picture.read_bytes()
    assert folder in {str(c) for c in storage.pins()}  # pinned where providers fetch it
    wrap = module_dir.parent / "wrapped"
    wrap.mkdir()
    (wrap / name).write_bytes(picture.read_bytes())
    assert str(compute_cid(wrap)) == folder  # what `ipfs add -w` gives


def test_a_spec_with_files_renders_the_same_on_a_provider(module_dir: Path, picture: Path) -> None:
    spec = stage(module_dir, f"Image=@{picture}", "Steps=5")
    assert rerender(spec).spec_hash == spec.spec_hash


# ----------------------------------------------------------------------------- bad files
def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a size (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def truncated_png() -> bytes:
    """A real PNG cut off in its image data."""
    import io
    import random

    noise = random.Random(1).randbytes(60 * 60 * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (60, 60), noise).save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b"hello"), "not a picture"),
        (lambda p: Image.new("RGB", (200, 100)).save(p, format="PNG"), "20,000 pixels"),
        (lambda p: Image.new("RGB", (20, 10)).save(p, format="JPEG"), "not a picture"),
        (lambda p: p.write_bytes(png_header(50_000, 50_000)), "pixels"),
        (lambda p: p.write_bytes(truncated_png()), "could not be decoded"),
        (lambda p: p.write_bytes(b"\x00" * 300_000), r"at most 195\.3 KiB"),
    ],
    ids=["missing", "folder", "text", "too-many-pixels", "jpeg", "bomb", "truncated", "big"],
)
def test_bad_local_files_are_refused_naming_the_input(
    module_dir: Path, tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "input.png"
    make(path)  # type: ignore[operator]
    with pytest.raises(InvalidTunable, match=message) as caught:
        stage(module_dir, f"Image=@{path}")
    assert f"Image=@{path}" in caught.value.message


def test_other_inputs_are_checked_before_any_file_is_read(module_dir: Path) -> None:
    with pytest.raises(InvalidTunable, match="Steps=12 is out of range"):
        stage(module_dir, "Image=@/no/such/file.png", "Steps=12")
    with pytest.raises(InvalidTunable, match="needs Image"):
        stage(module_dir, "Steps=2")


def test_a_webp_and_a_symlink_to_a_file_are_fine(module_dir: Path, tmp_path: Path) -> None:
    webp = tmp_path / "p.webp"
    Image.new("RGB", (30, 30), (1, 2, 3)).save(webp, lossless=True)
    link = tmp_path / "link.webp"
    link.symlink_to(webp)
    assert stage(module_dir, f"Image=@{link}").tunables["Image"].endswith("/link.webp")


# ------------------------------------------------------------------------ already on IPFS
def test_ipfs_inputs_are_checked_where_they_are(
    module_dir: Path, picture: Path, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "repo")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "photo.png").write_bytes(picture.read_bytes())
    (folder / "note.txt").write_bytes(b"not a picture")
    root = storage.add(folder)
    assert stage(module_dir, f"Image=ipfs://{root}/photo.png", storage=storage).env["IMAGE"] == (
        "/inputs/Image/photo.png"
    )
    cases = {
        f"ipfs://{root}": "is a folder; Image needs a file in it",
        f"{root}/note.txt": "not a picture",
        f"{root}/missing.png": "not found on IPFS",
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy": "not found on IPFS",
    }
    for raw, message in cases.items():
        with pytest.raises(InvalidTunable, match=message):
            stage(module_dir, f"Image={raw}", storage=storage)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(InvalidTunable, match="Extra takes at most 1000 bytes"):
        stage(module_dir, f"Image={root}/photo.png", f"Extra={storage.add(big)}", storage=storage)


# ------------------------------------------------------------------------------------ CLI
def test_module_render_shows_the_cid_and_adds_nothing(
    cli: CliRunner, module_dir: Path, picture: Path
) -> None:
    result = cli("module", "render", str(module_dir), "-i", f"Image=@{picture}", "--json")
    assert result.exit_code == 0, result.stderr
    spec = json.loads(result.stdout)
    assert spec["tunables"]["Image"].endswith("/photo one.png")
    assert f"ipfs://{spec['tunables']['Image']}" in result.stderr
    assert LocalStorage(Path.home() / "data" / "ipfs").pins() == []


def test_cli_bad_inputs_exit_2(cli: CliRunner, module_dir: Path, tmp_path: Path) -> None:
    for given, message in [
        ("Image=@/no/such.png", "no such file"),
        (f"Image=@{tmp_path}", "is a folder"),
        ("Image=@", "give a file after the @"),
        ("Image=nope", "not an IPFS file"),
    ]:
        result = cli("module", "render", str(module_dir), "-i", given)
        assert result.exit_code == 2, (given, result.stderr)
        assert message in result.stderr


def test_module_show_describes_file_tunables(cli: CliRunner, module_dir: Path) -> None:
    shown = json.loads(cli("module", "show", str(module_dir), "--json").stdout)
    image = next(t for t in shown["tunables"] if t["name"] == "Image")
    assert image["max_bytes"] == 200000
    assert image["max_pixels"] == 10000
    assert image["formats"] == ["png", "webp"]
    assert image["required"] is True
    human = cli("module", "show", str(module_dir)).stdout
    assert "/inputs/Image/<file name>" in human
    assert "optional" in human


def test_module_run_mounts_local_and_ipfs_files(
    cli: CliRunner, module_dir: Path, picture: Path, tmp_path: Path
) -> None:
    import hashlib

    digest = hashlib.sha256(picture.read_bytes()).hexdigest()
    out = tmp_path / "out"
    result = cli(
        "module", "run", str(module_dir), "-i", f"Image=@{picture}", "-o", str(out),
        "--executor", "process",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "outputs" / "seen.txt").read_text() == f"{digest} /inputs/Image/photo one.png -"
    # by CID, from this machine's embedded IPFS store
    cid = LocalStorage(Path.home() / "data" / "ipfs").add(picture)
    extra = tmp_path / "extra"
    extra.write_bytes(b"extra")
    extra_cid = LocalStorage(Path.home() / "data" / "ipfs").add(extra)
    result = cli(
        "module", "run", str(module_dir), "-i", f"Image=ipfs://{cid}", "-i", f"Extra={extra_cid}",
        "-o", str(out), "--executor", "process",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    seen = (out / "outputs" / "seen.txt").read_text()
    assert seen == f"{digest} /inputs/Image/image /inputs/Extra/extra.bin"
    unknown = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    result = cli("module", "run", str(module_dir), "-i", f"Image={unknown}", "-o", str(out))
    assert result.exit_code == 2
    assert unknown in result.stderr
