"""File inputs: tunables of type ``file`` and ``image``, from the command line to a job's mount.

A job spec holds a file input as a canonical IPFS path (``<CIDv1>`` or ``<CIDv1>/<path>``), never
a local path, so ``spec_hash`` commits to the exact bytes. The job finds the file read-only at
``/inputs/<tunable>/<file name>``, the path its env variable names (:func:`file_inputs`).

On the way in (:func:`stage_inputs`), every form of ``-i Name=VALUE`` becomes such a path, each
checked before anything is signed or paid:

* ``@photo.png``: a local file, checked (a regular file, its size, an image's format and pixels,
  decoded in full) and added wrapped in a folder (as ``ipfs add -w``), so that its name travels
  with it: ``<folder CID>/photo.png``;
* ``https://…/photo.png``: downloaded (at most the tunable's size), then as a local file;
* ``ipfs://CID[/path]``, ``/ipfs/CID[/path]`` or a bare ``CID[/path]``: already on IPFS; with a
  storage to ask, checked to exist and to be a file of the allowed size (an image is fetched,
  every block verified, and decoded).

What a file must hold is checked by :func:`check_content`, here before signing and on the
provider after its verified fetch: a picture is decoded with Pillow (its size read first, so a
decompression bomb is refused without being decoded); a ``.safetensors`` tunable
(``safetensors = "lora-sdxl"`` or ``"embedding-sdxl"``) has its header read and checked, in plain
Python, against the format and the model's architecture (:mod:`lilypad.ml.lora` says exactly
what is checked); an IPFS input of that kind is checked from its first blocks only.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from lilypad.errors import BlockNotFound, ContentTooLarge, InvalidTunable, StorageError
from lilypad.modules.tunables import (
    ImageFormat,
    SafetensorsKind,
    Tunable,
    TunableType,
    _check_segment,
    _size,
    parse_inputs,
)

if TYPE_CHECKING:
    from lilypad.ml.lora import TensorInfo
    from lilypad.modules import JobSpec, ResolvedModule
    from lilypad.modules.tunables import TunableValue
    from lilypad.storage import CID, Storage

#: A CID that stands in for a file input while the other tunables are checked (the empty file).
PLACEHOLDER = "bafkqaaa"
#: Pillow's names of the formats an image tunable may accept.
_PIL_FORMATS = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP"}
#: Seconds a download of an ``https://`` input may stall.
HTTP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FileInput:
    """One file a job reads.

    Attributes:
        name: The tunable's name (``Image``).
        tunable: The tunable (its limits: ``byte_limit``, ``pixel_limit``, ``image_formats``).
        ref: The canonical IPFS path of the file: ``<CID>`` or ``<CID>/<path>``.
        mount: Where the job finds it: ``/inputs/<name>/<file name>``.
    """

    name: str
    tunable: Tunable
    ref: str
    mount: str


def file_inputs(spec: JobSpec, module: ResolvedModule | None = None) -> list[FileInput]:
    """The files ``spec``'s job reads, in manifest order (none for a module without file
    tunables; an optional file left out is not listed)."""
    from lilypad.modules import resolve

    module = module or resolve(spec.module)
    found = []
    for tunable in module.spec.tunables:
        if tunable.is_file and tunable.name in spec.tunables:
            ref = str(spec.tunables[tunable.name])
            found.append(FileInput(tunable.name, tunable, ref, tunable.mount_path(ref)))
    return found


def check_file(tunable: Tunable, label: str, path: Path) -> tuple[int, int] | None:
    """Check the file at ``path`` against ``tunable``: its size, then its content
    (:func:`check_content`); returns a picture's width and height.

    Raises:
        InvalidTunable: naming ``label`` (``Image=@photo.png``), what is wrong and what is allowed.
    """
    check_size(tunable, label, path.stat().st_size)
    return check_content(tunable, label, path)


def check_size(tunable: Tunable, label: str, size: int) -> None:
    """Refuse a file of ``size`` bytes over ``tunable``'s ``max_bytes``.

    Raises:
        InvalidTunable: naming ``label``, the size and the limit.
    """
    if size > tunable.byte_limit:
        raise InvalidTunable(
            f"{label} is {_size(size)}; {tunable.name} takes at most {_size(tunable.byte_limit)}"
        )


def check_content(tunable: Tunable, label: str, path: Path) -> tuple[int, int] | None:
    """Check that the file at ``path`` holds what ``tunable`` takes: a picture is decoded in
    full (:func:`check_image`; its width and height are returned), a ``.safetensors`` file's
    header is checked (:func:`check_safetensors`); any other file may hold anything.

    The job creator's CLI runs this before anything is signed, and a provider or mediator after
    its verified fetch, so both reach the same verdict on the same bytes.

    Raises:
        InvalidTunable: naming ``label``, what is wrong and what is allowed.
    """
    if tunable.type is TunableType.IMAGE:
        _, width, height = check_image(tunable, label, path)
        return width, height
    if tunable.safetensors is not None:
        from lilypad.ml import lora  # plain Python: no ml extra needed

        check_safetensors(tunable.safetensors, label, lora.read_file_header(label, path))
    return None


def check_safetensors(kind: SafetensorsKind, label: str, tensors: Mapping[str, TensorInfo]) -> None:
    """Check the tensors of a ``.safetensors`` header (:func:`lilypad.ml.lora.read_header`)
    against what ``kind`` must hold.

    Raises:
        InvalidTunable: naming ``label`` and the tensors that do not fit.
    """
    from lilypad.ml import lora

    if kind is SafetensorsKind.LORA_SDXL:
        lora.check_lora(label, tensors)
    else:
        lora.check_embedding(label, tensors)


def check_image(tunable: Tunable, label: str, path: Path) -> tuple[str, int, int]:
    """Decode the picture at ``path`` in full; returns its format (``png``), width and height.

    Raises:
        InvalidTunable: not a picture in an allowed format, over the pixel limit, or damaged.
    """
    from PIL import Image, UnidentifiedImageError

    allowed = tunable.describe_allowed()
    formats = [_PIL_FORMATS[f] for f in tunable.image_formats]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=formats) as picture:
                width, height = picture.size
                if width * height > tunable.pixel_limit:
                    raise InvalidTunable(
                        f"{label} is {width}x{height}, {width * height:,} pixels; "
                        f"{tunable.name} takes at most {tunable.pixel_limit:,}"
                    )
                found = str(picture.format).lower()
                picture.load()
    except UnidentifiedImageError:
        raise InvalidTunable(
            f"{label} is not a picture {tunable.name} can take: {allowed}"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise InvalidTunable(f"{label} could not be decoded ({exc}); expected {allowed}") from None
    return found, width, height


# ------------------------------------------------------------------------------- staging
@dataclass
class StagedInputs:
    """``-i`` inputs with every file as a canonical IPFS path, ready for :func:`render`.

    Attributes:
        inputs: ``KEY=VALUE`` strings for :func:`lilypad.modules.render`.
        local: Tunable name -> the local file behind it (``@file`` and downloads): a local run
            mounts these directly.
        refs: Tunable name -> the IPFS path each file input became, for people.
    """

    inputs: list[str]
    local: dict[str, Path] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


def _file_tunables(module: ResolvedModule) -> dict[str, Tunable]:
    """Every name (and alias) of ``module``'s file tunables."""
    found: dict[str, Tunable] = {}
    for tunable in module.spec.tunables:
        if tunable.is_file:
            for name in (tunable.name, *tunable.aliases):
                found[name] = tunable
    return found


def has_file_inputs(module: ResolvedModule, inputs: Sequence[str]) -> bool:
    """Whether any of ``inputs`` gives a file tunable."""
    files = _file_tunables(module)
    return any(key in files for key, _ in parse_inputs(inputs))


def has_local_files(module: ResolvedModule, inputs: Sequence[str]) -> bool:
    """Whether any of ``inputs`` gives a file tunable a local file or a web address."""
    files = _file_tunables(module)
    return any(key in files and _is_local(raw) for key, raw in parse_inputs(inputs))


def precheck(module: ResolvedModule, inputs: Sequence[str]) -> dict[str, TunableValue]:
    """Validate every input but the contents of local files (which :func:`stage_inputs` reads):
    unknown keys, bad values, a missing required tunable, a malformed CID. Returns every
    tunable's value (a local file's: :data:`PLACEHOLDER`).

    Raises:
        InvalidTunable: as :func:`lilypad.modules.validate_inputs`.
    """
    from lilypad.modules import validate_inputs

    files = _file_tunables(module)
    return validate_inputs(
        module,
        [
            f"{key}={PLACEHOLDER}" if key in files and _is_local(raw) else f"{key}={raw}"
            for key, raw in parse_inputs(inputs)
        ],
    )


def stage_inputs(
    module: ResolvedModule,
    inputs: Sequence[str],
    *,
    add: Callable[[Path], CID],
    workdir: Path,
    storage: Storage | None = None,
) -> StagedInputs:
    """Turn the file inputs among ``inputs`` into IPFS paths, checking each first.

    Every other tunable is validated before any file is read, downloaded or added, so a typo
    costs nothing; a picture too large for the manifest's ``scaled_size`` is refused before it
    is added (:func:`lilypad.modules.check_scaled_size`).

    Args:
        module: The module the inputs are for.
        inputs: Raw ``KEY=VALUE`` strings.
        add: Adds a folder to IPFS (or computes its CID: ``compute_cid``) and returns its CID.
        workdir: A folder for downloads and the wrapping folders; it must outlive the job of a
            local run (the downloaded files are mounted from there).
        storage: Where ``ipfs://`` inputs are checked to exist; None: not checked.

    Raises:
        InvalidTunable: any input that is unknown, malformed or not an allowed file.
        StorageError: the IPFS node could not be asked.
    """
    from lilypad.modules import check_scaled_size

    files = _file_tunables(module)
    pairs = parse_inputs(inputs)
    values = precheck(module, inputs)  # every tunable but the files' contents, first
    pending = [(i, files[key], key, raw) for i, (key, raw) in enumerate(pairs) if key in files]
    staged = StagedInputs([f"{key}={raw}" for key, raw in pairs])
    for index, tunable, key, raw in pending:
        label = f"{key}={raw}"
        size = None
        if _is_url(raw):
            local = _fetch_url(tunable, label, raw, workdir)
            size = check_file(tunable, label, local)
        elif _is_local(raw):
            local = _local(raw)
            size = _check_local(tunable, label, local)
        if _is_local(raw):
            if size is not None:
                check_scaled_size(module, values, tunable.name, label, size)
            ref = _add_wrapped(local, tunable, label, add, workdir)
            staged.local[tunable.name] = local
        else:
            ref = str(tunable.parse(raw, key))
            if storage is not None:
                size = check_remote(tunable, label, ref, storage, workdir)
                if size is not None:
                    check_scaled_size(module, values, tunable.name, label, size)
        staged.inputs[index] = f"{key}={ref}"
        staged.refs[tunable.name] = ref
    return staged


def check_remote(
    tunable: Tunable, label: str, ref: str, storage: Storage, workdir: Path
) -> tuple[int, int] | None:
    """Check that the IPFS path ``ref`` is a file ``tunable`` can take: it exists, it is a file
    (not a folder or a symlink), of the allowed size; an image is fetched (verified) and decoded
    (its width and height are returned), a ``.safetensors`` file's header read (verified) and
    checked.

    Raises:
        InvalidTunable: it is not there, or not such a file.
        StorageError: the node could not be asked.
    """
    try:
        entry = storage.stat(ref)
    except BlockNotFound as exc:
        raise InvalidTunable(
            f"{label}: not found on IPFS ({exc.message})",
            hint="add it first (lilypad ipfs add FILE), or give the file as @path",
        ) from None
    except StorageError as exc:
        if "is not a directory" in exc.message or "no entry" in exc.message:
            raise InvalidTunable(f"{label}: {exc.message}") from None
        raise
    if entry.kind == "directory":
        raise InvalidTunable(
            f"{label} is a folder; {tunable.name} needs a file in it, as {ref}/<file name>"
        )
    if entry.kind != "file":
        raise InvalidTunable(f"{label} is a {entry.kind}; {tunable.name} needs a file")
    check_size(tunable, label, entry.size)
    if tunable.safetensors is not None:
        from lilypad.ml import lora

        # NOTE: the header only, from the file's first blocks (each verified): a LoRA may be
        # a gigabyte, and what follows the header is checked by its offsets against the size.
        tensors = lora.read_header(label, storage.cat(ref), entry.size)
        check_safetensors(tunable.safetensors, label, tensors)
        return None
    if tunable.type is TunableType.IMAGE:
        with tempfile.TemporaryDirectory(prefix="check-", dir=workdir) as tmp:
            target = Path(tmp) / "file"
            try:
                storage.get(ref, target, max_bytes=tunable.byte_limit)
            except ContentTooLarge:
                raise InvalidTunable(
                    f"{label} holds more than the {_size(tunable.byte_limit)} {tunable.name} takes"
                ) from None
            _, width, height = check_image(tunable, label, target)
            return width, height
    return None


def _is_local(raw: str) -> bool:
    return raw.startswith("@") or _is_url(raw)


def _is_url(raw: str) -> bool:
    return raw.lower().startswith(("https://", "http://"))


def _local(raw: str) -> Path:
    return Path(raw[1:]).expanduser()


def _check_local(tunable: Tunable, label: str, path: Path) -> tuple[int, int] | None:
    if str(path) in ("", "."):
        raise InvalidTunable(f"{label}: give a file after the @, as @path/to/photo.png")
    try:
        st = path.stat()  # a symlink to a file is that file
    except FileNotFoundError:
        raise InvalidTunable(f"{label}: no such file ({path.absolute()})") from None
    except OSError as exc:
        raise InvalidTunable(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidTunable(
            f"{label} is a folder; {tunable.name} needs one file: {tunable.describe_allowed()}"
        )
    if not stat.S_ISREG(st.st_mode):
        raise InvalidTunable(f"{label} is not a regular file; {tunable.name} needs one")
    if not os.access(path, os.R_OK):
        raise InvalidTunable(f"{label}: {path} is not readable by this user")
    return check_file(tunable, label, path)


def _add_wrapped(
    local: Path, tunable: Tunable, label: str, add: Callable[[Path], CID], workdir: Path
) -> str:
    """Add ``local`` wrapped in a folder (``ipfs add -w``): ``<folder CID>/<file name>``."""
    name = local.name
    _check_segment(name, label)
    folder = Path(tempfile.mkdtemp(prefix="wrap-", dir=workdir))
    try:
        try:
            os.link(local.resolve(), folder / name)  # no copy where the file system allows
        except OSError:
            shutil.copyfile(local, folder / name)
        return f"{add(folder).v1()}/{name}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fetch_url(tunable: Tunable, label: str, url: str, workdir: Path) -> Path:
    """Download ``url`` into ``workdir`` (at most the tunable's size), named as its path ends."""
    import httpx

    name = (
        unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or tunable.file_name or tunable.name.lower()
    )
    _check_segment(name, label)
    folder = Path(tempfile.mkdtemp(prefix="download-", dir=workdir))
    target = folder / name
    limit = tunable.byte_limit
    try:
        with httpx.stream("GET", url, timeout=HTTP_TIMEOUT_S, follow_redirects=True) as response:
            if response.status_code != 200:
                raise InvalidTunable(f"{label}: the server answered HTTP {response.status_code}")
            written = 0
            with open(target, "wb") as out:
                for chunk in response.iter_bytes():
                    written += len(chunk)
                    if written > limit:
                        raise InvalidTunable(
                            f"{label} holds more than the {_size(limit)} {tunable.name} takes"
                        )
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise InvalidTunable(f"{label} could not be downloaded: {exc}") from None
    return target
