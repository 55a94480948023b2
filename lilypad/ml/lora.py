"""Fine-tunes of SDXL: LoRAs and textual-inversion embeddings, checked and applied.

Two halves. The checks (:func:`read_header`, :func:`check_lora`, :func:`check_embedding`) are
plain Python: :func:`lilypad.modules.files.check_content` runs them on the job creator's machine
before anything is signed, and on the provider after the verified fetch, without the ``ml``
extra. The job runs them again against the weights it loaded (:func:`apply_loras`,
:func:`load_embedding`), then lets diffusers load the file.

What a ``.safetensors`` file must be (the format of huggingface/safetensors): 8 bytes, the
header's length N as a little-endian unsigned 64-bit integer; N bytes of UTF-8 JSON, an object
mapping each tensor's name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (and an
optional ``"__metadata__"`` of strings); then the tensors' bytes. Checked: N is sane, the JSON
is an object without duplicate names, every dtype is known, every shape a list of non-negative
integers, and the offsets tile the rest of the file exactly (in order, no gap, no overlap, each
tensor ``prod(shape) * itemsize`` bytes, the last ending where the file ends).

What an SDXL LoRA must be (:func:`check_lora`):

* **names**, strictly: every tensor adapts one layer that SDXL's base model has, named as
  diffusers/PEFT write it (``unet.<module>.lora_A.weight`` / ``.lora_B.weight``, the older
  ``.lora.down.weight`` / ``.lora.up.weight`` and ``.lora_linear_layer.*``; text encoders as
  ``text_encoder.[text_model.]`` and ``text_encoder_2.text_model.``) or as kohya's sd-scripts
  write it (``lora_unet_<module>`` in SDXL's original ``input_blocks`` / ``middle_block`` /
  ``output_blocks`` names or in diffusers' names, ``lora_te1_`` and ``lora_te2_``, each with
  ``.lora_down.weight``, ``.lora_up.weight`` and an optional ``.alpha``; a kohya text encoder
  whose ``q/k/v_proj`` are adapted has an ``out_proj`` adapted too, as sd-scripts writes them,
  or diffusers cannot read it). The layers: in the UNet's transformer blocks, ``proj_in``,
  ``proj_out``, the attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of
  ``attn1`` and ``attn2``) and the feed-forward (``ff.net.0.proj``, ``ff.net.2``), at the
  indices SDXL has (attention in ``down_blocks`` 1 and 2, ``mid_block``, ``up_blocks`` 0 and 1;
  2 and 10 transformer blocks deep); in the text encoders, each layer's ``q/k/v/out_proj`` and
  ``mlp.fc1/fc2`` (12 layers in the first, 32 in the second). Every layer has both halves; one
  file uses one naming. Refused with a reason: Stable Diffusion 1.x/2.x names (``lora_te_``,
  attention in ``down_blocks.0`` or an ``up_blocks.3``), convolution layers (LoCon), DoRA, LoHa
  and LoKr.
* **shapes**, by rank and consistency, not by size (lilypad's tiny SDXL is narrower than the
  real one, and a provider runs either): each half is a matrix (``[rank, in]``, ``[out, rank]``;
  SD 1.x's 1x1-convolution ``proj_in`` is refused), both halves of a layer have the same rank,
  ``alpha`` is one number, and the widths agree across the file as they do in SDXL: every layer
  of one UNet level has the same channel count C (``ff.net.0.proj`` gives 8C, ``ff.net.2``
  takes 4C; ``up_blocks.0`` and the middle block are ``down_blocks.2``'s level, ``up_blocks.1``
  is ``down_blocks.1``'s), every ``attn2.to_k``/``to_v`` takes the same cross-attention width,
  each text encoder has one width and one MLP width, and where both encoders and the
  cross-attention appear, the cross-attention width is the sum of the two encoders' (SDXL
  attends to both hidden states, concatenated: 768 + 1280 = 2048).

The widths found (:class:`LoraWidths`) are compared, in the job, with the weights loaded: the
real SDXL has C = 640 and 1280, cross-attention 2048, encoders 768/3072 and 1280/5120.

An SDXL embedding (:func:`check_embedding`) holds exactly two matrices, ``clip_l`` (the first
text encoder's) and ``clip_g`` (the second's), with the same number of vectors (1 to 75, what
one 77-token chunk holds between its start and end tokens).

LoRAs are applied unfused, with diffusers' PEFT backend (``load_lora_weights`` and
``set_adapters``), so that the scale is exact and several LoRAs mix; the refiner gets none (a
LoRA for the base does not fit the refiner's UNet). An embedding is loaded into both text
encoders of the base and into the refiner's (``clip_g``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lilypad.errors import InvalidTunable

#: The reference implementation's limit on the header's length.
MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
#: What LoRA and embedding weights may be stored as.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
#: Most vectors one embedding may have: a prompt chunk's 77 tokens less the start and end.
MAX_EMBEDDING_VECTORS = 75


@dataclass(frozen=True)
class TensorInfo:
    """One tensor in a safetensors header."""

    dtype: str
    shape: tuple[int, ...]


# ------------------------------------------------------------------------------ safetensors
def read_header(label: str, chunks: Iterable[bytes], size: int) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file of ``size`` bytes whose bytes ``chunks`` yields (only
    as many are read as the header takes), every rule of the format checked.

    Raises:
        InvalidTunable: naming ``label``, when the bytes are not a safetensors file.
    """
    stream = _Chunks(chunks)
    head = stream.take(8)
    if len(head) < 8:
        raise _not_safetensors(label, f"it is {size} bytes long, shorter than a header")
    (length,) = struct.unpack("<Q", head)
    if length < 2 or length > MAX_HEADER_BYTES or length > size - 8:
        raise _not_safetensors(
            label, f"its first 8 bytes give a header of {length:,} bytes in a {size:,}-byte file"
        )
    raw = stream.take(length)
    if len(raw) < length:
        raise _not_safetensors(label, "the file ends inside its header")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _not_safetensors(label, f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _not_safetensors(label, "its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _not_safetensors(label, "its __metadata__ is not an object of strings")
    tensors = {name: _tensor(label, name, entry) for name, entry in header.items()}
    _check_offsets(label, header, size - 8 - length)
    return {name: info for name, (info, _) in tensors.items()}


def read_file_header(label: str, path: Path) -> dict[str, TensorInfo]:
    """:func:`read_header` of the file at ``path``."""
    with open(path, "rb") as stream:
        return read_header(label, iter(lambda: stream.read(1 << 16), b""), path.stat().st_size)


class _Chunks:
    """Byte chunks read by count: ``take(n)`` gives the next ``n`` bytes (fewer at the end)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._left = b""

    def take(self, count: int) -> bytes:
        parts, have = [self._left], len(self._left)
        while have < count:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._left = data[count:]
        return data[:count]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the name {key!r} appears twice")
        found[key] = value
    return found


def _tensor(label: str, name: str, entry: Any) -> tuple[TensorInfo, tuple[int, int]]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _not_safetensors(label, f"tensor {name!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise _not_safetensors(label, f"tensor {name!r} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise _not_safetensors(label, f"tensor {name!r} has a malformed shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(n) for n in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _not_safetensors(label, f"tensor {name!r} has malformed data_offsets {offsets!r}")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise _not_safetensors(
            label,
            f"tensor {name!r} ({dtype} {shape}) needs {math.prod(shape) * DTYPE_BYTES[dtype]:,} "
            f"bytes, its data_offsets give {offsets[1] - offsets[0]:,}",
        )
    return TensorInfo(dtype, tuple(shape)), (offsets[0], offsets[1])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_offsets(label: str, header: Mapping[str, Any], data_bytes: int) -> None:
    """The tensors' bytes tile the data exactly, as the format requires."""
    spans = sorted((tuple(e["data_offsets"]), name) for name, e in header.items())
    position = 0
    for (begin, end), name in spans:
        if begin != position:
            what = "overlap" if begin < position else "leave a gap"
            raise _not_safetensors(label, f"the data of tensor {name!r} would {what}")
        position = end
    if position != data_bytes:
        raise _not_safetensors(
            label, f"its tensors take {position:,} bytes but {data_bytes:,} follow the header"
        )


def _not_safetensors(label: str, reason: str) -> InvalidTunable:
    return InvalidTunable(f"{label} is not a safetensors file: {reason}")


# ------------------------------------------------------------------------- the SDXL layout
@dataclass(frozen=True)
class Layer:
    """A layer a LoRA may adapt: its canonical name and its (in, out) widths, each a named
    width of the model times a factor."""

    name: str
    inputs: tuple[str, int]
    outputs: tuple[str, int]

    @property
    def component(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def path(self) -> str:
        """The module's path inside its component (``down_blocks.1.attentions.0...``)."""
        return self.name.split(".", 1)[1]


#: The widths a LoRA's shapes fix, by name (real SDXL in brackets).
WIDTHS = {
    "C1": "channels of UNet level 1 [640]",
    "C2": "channels of UNet level 2 [1280]",
    "X": "cross-attention width [2048]",
    "W1": "hidden width of text_encoder [768]",
    "M1": "MLP width of text_encoder [3072]",
    "W2": "hidden width of text_encoder_2 [1280]",
    "M2": "MLP width of text_encoder_2 [5120]",
}
#: SDXL's UNet blocks with attention: (diffusers prefix, original prefix, level, depth).
_ATTENTION_BLOCKS = (
    *((f"down_blocks.1.attentions.{i}", f"input_blocks.{4 + i}.1", "C1", 2) for i in range(2)),
    *((f"down_blocks.2.attentions.{i}", f"input_blocks.{7 + i}.1", "C2", 10) for i in range(2)),
    ("mid_block.attentions.0", "middle_block.1", "C2", 10),
    *((f"up_blocks.0.attentions.{i}", f"output_blocks.{i}.1", "C2", 10) for i in range(3)),
    *((f"up_blocks.1.attentions.{i}", f"output_blocks.{3 + i}.1", "C1", 2) for i in range(3)),
)
#: SDXL's text encoders: (component, kohya prefix, width, MLP width, layers).
_TEXT_ENCODERS = (
    ("text_encoder", "lora_te1_", "W1", "M1", 12),
    ("text_encoder_2", "lora_te2_", "W2", "M2", 32),
)


def _transformer_layers(level: str) -> Iterator[tuple[str, tuple[str, int], tuple[str, int]]]:
    """The linear layers of one transformer block at ``level``: (path, in, out)."""
    width = (level, 1)
    for attention in ("attn1", "attn2"):
        cross = ("X", 1) if attention == "attn2" else width
        yield f"{attention}.to_q", width, width
        yield f"{attention}.to_k", cross, width
        yield f"{attention}.to_v", cross, width
        yield f"{attention}.to_out.0", width, width
    yield "ff.net.0.proj", width, (level, 8)  # GEGLU: two halves of 4C
    yield "ff.net.2", (level, 4), width


@dataclass(frozen=True)
class _Names:
    """Every spelling of every SDXL layer, by naming: ``diffusers`` and ``kohya``."""

    diffusers: dict[str, Layer]
    kohya: dict[str, Layer]


@cache
def sdxl_layers() -> _Names:
    """The layers of SDXL's base model a LoRA may adapt, under each name a file may use."""
    diffusers: dict[str, Layer] = {}
    kohya: dict[str, Layer] = {}
    for prefix, original, level, depth in _ATTENTION_BLOCKS:
        width = (level, 1)
        inner = [("proj_in", width, width), ("proj_out", width, width)]
        for block in range(depth):
            inner += [
                (f"transformer_blocks.{block}.{path}", i, o)
                for path, i, o in _transformer_layers(level)
            ]
        for path, inputs, outputs in inner:
            layer = Layer(f"unet.{prefix}.{path}", inputs, outputs)
            diffusers[layer.name] = layer
            kohya["lora_unet_" + f"{prefix}.{path}".replace(".", "_")] = layer
            kohya["lora_unet_" + f"{original}.{path}".replace(".", "_")] = layer
    for component, kohya_prefix, hidden_key, mlp_key, depth in _TEXT_ENCODERS:
        hidden, mlp = (hidden_key, 1), (mlp_key, 1)
        for index in range(depth):
            paths = [(f"self_attn.{p}_proj", hidden, hidden) for p in "qkv"]
            paths += [
                ("self_attn.out_proj", hidden, hidden),
                ("mlp.fc1", hidden, mlp),
                ("mlp.fc2", mlp, hidden),
            ]
            for path, inputs, outputs in paths:
                module = f"encoder.layers.{index}.{path}"
                layer = Layer(f"{component}.{module}", inputs, outputs)
                # NOTE: the second encoder only under text_model. (diffusers strips it for the
                # first, which transformers 5 flattened, but not for the second, which keeps it)
                if component == "text_encoder":
                    diffusers[layer.name] = layer
                diffusers[f"{component}.text_model.{module}"] = layer
                kohya[kohya_prefix + f"text_model.{module}".replace(".", "_")] = layer
    return _Names(diffusers, kohya)


#: The endings of a LoRA's tensor names: (naming, ending, which half).
_ENDINGS = (
    ("kohya", ".lora_down.weight", "down"),
    ("kohya", ".lora_up.weight", "up"),
    ("kohya", ".alpha", "alpha"),
    ("diffusers", ".lora_A.weight", "down"),
    ("diffusers", ".lora_B.weight", "up"),
    ("diffusers", ".lora.down.weight", "down"),
    ("diffusers", ".lora.up.weight", "up"),
    ("diffusers", ".lora_linear_layer.down.weight", "down"),
    ("diffusers", ".lora_linear_layer.up.weight", "up"),
)


# ---------------------------------------------------------------------------------- LoRAs
@dataclass(frozen=True)
class LoraWidths:
    """What an SDXL LoRA's shapes say of the model it was made for.

    Attributes:
        layers: The canonical names of the layers it adapts (``unet.down_blocks.1...``).
        widths: Each width its shapes fix (:data:`WIDTHS`), with the first layer that fixed it.
    """

    layers: tuple[Layer, ...]
    widths: dict[str, tuple[int, str]]


def check_lora(label: str, tensors: Mapping[str, TensorInfo]) -> LoraWidths:
    """Check that ``tensors`` (:func:`read_header`) are an SDXL LoRA (module docstring).

    Raises:
        InvalidTunable: naming ``label`` and the first tensors that do not fit.
    """
    halves, naming = _halves(label, tensors)
    if not halves:
        raise _not_lora(label, "it holds no tensors")
    if naming == "kohya":
        _check_kohya_attention(label, halves)
    widths: dict[str, tuple[int, str]] = {}
    for layer, parts in halves.items():
        if "down" not in parts or "up" not in parts:
            missing = "down (lora_A)" if "down" not in parts else "up (lora_B)"
            raise _not_lora(label, f"layer {layer.name} has no {missing} half")
        down, up = tensors[parts["down"]], tensors[parts["up"]]
        for name in (parts["down"], parts["up"]):
            _float(label, name, tensors[name])
            if len(tensors[name].shape) != 2:
                hint = " (a convolution: SDXL's layer is linear)" if tensors[name].shape else ""
                raise _not_lora(
                    label, f"{name} has shape {list(tensors[name].shape)}, not a matrix{hint}"
                )
        if down.shape[0] != up.shape[1] or down.shape[0] == 0:
            raise _not_lora(
                label,
                f"layer {layer.name}: the down half has rank {down.shape[0]}, "
                f"the up half {up.shape[1]}",
            )
        if "alpha" in parts:
            alpha = tensors[parts["alpha"]]
            _float(label, parts["alpha"], alpha)
            if math.prod(alpha.shape) != 1 or len(alpha.shape) > 1:
                raise _not_lora(label, f"{parts['alpha']} is not one number")
        _fix(label, widths, layer, layer.inputs, down.shape[1])
        _fix(label, widths, layer, layer.outputs, up.shape[0])
    if all(w in widths for w in ("X", "W1", "W2")):
        cross, first, second = widths["X"][0], widths["W1"][0], widths["W2"][0]
        if cross != first + second:
            raise _not_lora(
                label,
                f"its cross-attention takes {cross} features, but its text encoders are {first} "
                f"and {second} wide (SDXL attends to both: {first + second})",
            )
    return LoraWidths(tuple(halves), widths)


def _halves(
    label: str, tensors: Mapping[str, TensorInfo]
) -> tuple[dict[Layer, dict[str, str]], str | None]:
    """Each layer adapted, with the tensor name of each of its halves; and the naming used."""
    names = sdxl_layers()
    found: dict[Layer, dict[str, str]] = {}
    unknown: list[str] = []
    namings: set[str] = set()
    for name in tensors:
        match = _match(names, name)
        if match is None:
            unknown.append(name)
            continue
        naming, layer, half = match
        namings.add(naming)
        if half in found.setdefault(layer, {}):
            raise _not_lora(
                label, f"layer {layer.name} appears twice ({found[layer][half]} and {name})"
            )
        found[layer][half] = name
    if unknown:
        raise _not_lora(label, _why_unknown(unknown))
    if len(namings) > 1:
        raise _not_lora(label, "it mixes kohya names (lora_unet_...) and diffusers names")
    return found, next(iter(namings), None)


def _check_kohya_attention(label: str, halves: Mapping[Layer, object]) -> None:
    """A kohya text encoder whose self-attention is adapted has its ``out_proj`` adapted too, as
    sd-scripts always writes it: diffusers tells kohya's text-encoder format by that layer, and
    without it refuses the file or drops its ``q/k/v_proj`` halves unsaid."""
    for component in ("text_encoder", "text_encoder_2"):
        paths = [layer.path for layer in halves if layer.component == component]
        attention = [p for p in paths if p.endswith(("q_proj", "k_proj", "v_proj"))]
        if attention and not any(p.endswith("out_proj") for p in paths):
            raise _not_lora(
                label,
                f"it adapts {component}'s {attention[0]} but no self_attn.out_proj of it; "
                "kohya LoRAs adapt all four attention projections (diffusers cannot read one "
                "that does not)",
            )


def _match(names: _Names, tensor: str) -> tuple[str, Layer, str] | None:
    for naming, ending, half in _ENDINGS:
        if tensor.endswith(ending):
            table = names.kohya if naming == "kohya" else names.diffusers
            layer = table.get(tensor[: -len(ending)])
            if layer is not None:
                return naming, layer, half
    return None


def _why_unknown(unknown: Sequence[str]) -> str:
    """Why the tensor names in ``unknown`` are not layers of an SDXL LoRA: the most telling
    reason any of them gives, naming that tensor."""
    reasons = (
        (
            ("lora_te_",),
            "a LoRA for a model with one text encoder (Stable Diffusion 1.x or 2.x); SDXL "
            "LoRAs name lora_te1_ and lora_te2_",
        ),
        (
            ("down_blocks_0_attentions", "up_blocks_3"),
            "a LoRA for Stable Diffusion 1.x or 2.x: SDXL has no attention in down_blocks.0 "
            "and no up_blocks.3",
        ),
        (
            ("text_encoder_2_encoder_",),
            "the second text encoder's layers are named text_encoder_2.text_model.encoder...",
        ),
        (("dora_scale", "lora_magnitude_vector"), "a DoRA (weight-decomposed LoRA): not supported"),
        (("hada_", "lokr_"), "a LyCORIS LoHa or LoKr, not a LoRA"),
        (
            (
                "resnets",
                "in_layers",
                "out_layers",
                "emb_layers",
                "skip_connection",
                "conv",
                "samplers",
            ),
            "it adapts convolution layers (LoCon), which is not supported: only the transformer "
            "blocks' and text encoders' linear layers",
        ),
    )
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    for marks, reason in reasons:
        for name in unknown:
            if any(mark in name.replace(".", "_") for mark in marks):
                return f"tensor {name!r}{more}: {reason}"
    return f"tensor {unknown[0]!r}{more}: no layer of SDXL's UNet or text encoders has that name"


def _float(label: str, name: str, info: TensorInfo) -> None:
    if info.dtype not in FLOAT_DTYPES:
        raise _not_lora(
            label, f"{name} is {info.dtype}; expected {', '.join(sorted(FLOAT_DTYPES))}"
        )


def _fix(
    label: str,
    widths: dict[str, tuple[int, str]],
    layer: Layer,
    width: tuple[str, int],
    features: int,
) -> None:
    """Record that ``layer`` says ``width`` (a named width times a factor) is ``features``."""
    key, factor = width
    scaled = f"{factor} x " if factor != 1 else ""
    if features % factor or features == 0:
        raise _not_lora(
            label, f"layer {layer.name} has {features} features where SDXL has {scaled}{key}"
        )
    value = features // factor
    if key not in widths:
        widths[key] = (value, layer.name)
    elif widths[key][0] != value:
        seen, first = widths[key]
        raise _not_lora(
            label,
            f"layer {layer.name} gives {WIDTHS[key].split(' [')[0]} = {value}, but {first} "
            f"gives {seen}: not one SDXL model",
        )


def _not_lora(label: str, reason: str) -> InvalidTunable:
    return InvalidTunable(
        f"{label} is not an SDXL LoRA: {reason}",
        hint="give a LoRA trained for SDXL 1.0 base, in diffusers or kohya format",
    )


# ----------------------------------------------------------------------------- embeddings
@dataclass(frozen=True)
class EmbeddingShape:
    """An SDXL embedding: how many vectors, and the two text encoders' widths."""

    vectors: int
    clip_l: int
    clip_g: int


def check_embedding(label: str, tensors: Mapping[str, TensorInfo]) -> EmbeddingShape:
    """Check that ``tensors`` are an SDXL textual-inversion embedding (module docstring).

    Raises:
        InvalidTunable: naming ``label`` and what does not fit.
    """
    names = set(tensors)
    if names != {"clip_l", "clip_g"}:
        if names & {"emb_params", "string_to_param"} or len(names) == 1:
            reason = (
                "it holds one text encoder's vectors, as Stable Diffusion 1.x/2.x embeddings "
                "do; SDXL's hold clip_l and clip_g"
            )
        else:
            listed = ", ".join(sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
            reason = f"it holds {listed or 'nothing'}; expected exactly clip_l and clip_g"
        raise InvalidTunable(f"{label} is not an SDXL embedding: {reason}")
    for name in ("clip_l", "clip_g"):
        info = tensors[name]
        if info.dtype not in FLOAT_DTYPES or len(info.shape) != 2 or 0 in info.shape:
            raise InvalidTunable(
                f"{label} is not an SDXL embedding: {name} is {info.dtype} {list(info.shape)}; "
                "expected a float matrix [vectors, width]"
            )
    count = tensors["clip_l"].shape[0]
    if tensors["clip_g"].shape[0] != count:
        raise InvalidTunable(
            f"{label} is not an SDXL embedding: clip_l has {count} vectors, clip_g "
            f"{tensors['clip_g'].shape[0]}"
        )
    if count > MAX_EMBEDDING_VECTORS:
        raise InvalidTunable(
            f"{label} has {count} vectors; an embedding may have at most {MAX_EMBEDDING_VECTORS}"
        )
    return EmbeddingShape(count, tensors["clip_l"].shape[1], tensors["clip_g"].shape[1])


# --------------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class LoraFile:
    """One LoRA a job applies: its file, scale, and the variable that named it (for messages)."""

    path: Path
    scale: float
    variable: str

    @property
    def label(self) -> str:
        return f"{self.variable}={self.path}"


def apply_loras(pipe: Any, loras: Sequence[LoraFile], log: Callable[[str], None]) -> None:
    """Load ``loras`` into ``pipe`` (UNet and text encoders) as adapters at their scales.

    Raises:
        InvalidTunable: a LoRA that does not fit the weights loaded (another width or depth:
            a LoRA for the real SDXL on tiny weights, say).
    """
    if not loras:
        return
    from lilypad.ml import predictor

    predictor.mark_changed(pipe)  # adapters stay in it: a warm worker loads it afresh next job
    names = []
    for index, lora in enumerate(loras):
        widths = check_lora(lora.label, read_file_header(lora.label, lora.path))
        _check_fits(pipe, lora.label, widths)
        name = f"lora{index + 1}"
        try:
            pipe.load_lora_weights(str(lora.path), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, IndexError) as exc:  # diffusers/peft refuse
            raise InvalidTunable(f"{lora.label} could not be loaded: {exc}") from None
        names.append(name)
        log(f"LoRA {lora.variable}: {len(widths.layers)} layers at scale {lora.scale:g}")
    pipe.set_adapters(names, [lora.scale for lora in loras])


def _model_widths(pipe: Any) -> dict[str, int]:
    unet, first, second = pipe.unet.config, pipe.text_encoder.config, pipe.text_encoder_2.config
    return {
        "C1": unet.block_out_channels[1],
        "C2": unet.block_out_channels[2],
        "X": unet.cross_attention_dim,
        "W1": first.hidden_size,
        "M1": first.intermediate_size,
        "W2": second.hidden_size,
        "M2": second.intermediate_size,
    }


def _check_fits(pipe: Any, label: str, found: LoraWidths) -> None:
    model = _model_widths(pipe)
    for key, (value, source) in sorted(found.widths.items()):
        if model[key] != value:
            raise InvalidTunable(
                f"{label} was made for a model whose {WIDTHS[key].split(' [')[0]} is {value} "
                f"(from {source}); these weights have {model[key]}",
                hint="with tiny weights, give a LoRA made for the tiny SDXL",
            )
    for layer in found.layers:
        if _module(getattr(pipe, layer.component), layer.path) is None:
            raise InvalidTunable(f"{label} adapts {layer.name}, which these weights do not have")


def _module(component: Any, path: str) -> Any:
    """The module at ``path`` in a UNet or text encoder (``text_model.`` where it has one)."""
    for candidate in (path, f"text_model.{path}"):
        try:
            return component.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def load_embedding(
    pipes: Sequence[Any], variable: str, path: Path, token: str, log: Callable[[str], None]
) -> None:
    """Add ``token`` to the tokenizers of ``pipes`` (the base, and a refiner) with the vectors of
    the embedding at ``path``: ``clip_l`` for ``text_encoder``, ``clip_g`` for ``text_encoder_2``.

    Raises:
        InvalidTunable: the embedding does not fit the weights, or the token is one the
            tokenizer already has.
    """
    from safetensors.torch import load_file

    label = f"{variable}={path}"
    shape = check_embedding(label, read_file_header(label, path))
    vectors = load_file(path)
    from lilypad.ml import predictor

    for pipe in pipes:
        predictor.mark_changed(pipe)  # its tokenizers keep the token: loaded afresh next job
        for encoder, tokenizer, key, width in (
            (pipe.text_encoder, pipe.tokenizer, "clip_l", shape.clip_l),
            (pipe.text_encoder_2, pipe.tokenizer_2, "clip_g", shape.clip_g),
        ):
            if encoder is None:
                continue  # the refiner has no first text encoder
            if encoder.config.hidden_size != width:
                raise InvalidTunable(
                    f"{label}: its {key} vectors are {width} wide; this text encoder is "
                    f"{encoder.config.hidden_size}"
                )
            if token in tokenizer.get_vocab():
                raise InvalidTunable(
                    f"EmbeddingToken={token!r} is a word the tokenizer already has; choose a "
                    "new one, e.g. <my-style>"
                )
            pipe.load_textual_inversion(
                vectors[key], token=token, text_encoder=encoder, tokenizer=tokenizer
            )
    log(f"embedding {token}: {shape.vectors} vector{'s' if shape.vectors > 1 else ''}")
