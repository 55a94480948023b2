"""LoRA and embedding inputs of sdxl:v1.1-lilypad1, checked from their safetensors headers before
anything is signed (exit 2), and again on a provider's verified fetch, in plain Python: no torch.

The files are written here byte by byte (8-byte header length, JSON header, zeroed data), so
every rule of the format and of SDXL's layout can be broken one at a time."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from lilypad import modules
from lilypad.errors import InvalidTunable
from lilypad.ml import lora
from lilypad.modules.files import check_content, file_inputs, stage_inputs
from lilypad.modules.tunables import Tunable
from lilypad.storage import LocalStorage, compute_cid
from resource_provider.inputs import UnacceptableInput, fetch_input
from tests.conftest import CliRunner

V11 = "sdxl:v1.1-lilypad1"
Shape = Sequence[int]


def safetensors(
    tensors: Mapping[str, tuple[str, Shape]], metadata: dict[str, str] | None = None
) -> bytes:
    """A valid safetensors file of zeroed tensors (name -> (dtype, shape))."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * lora.DTYPE_BYTES[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    return raw_file(header, offset)


def raw_file(header: object, data_bytes: int, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + bytes(data_bytes)


def one(
    dtype: str = "F16",
    shape: Sequence[object] = (1,),
    offsets: Sequence[object] = (0, 2),
    data: int = 2,
) -> bytes:
    """A file of one tensor ``a``, its header entry as given."""
    entry = {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}
    return raw_file({"a": entry}, data)


def pair(
    name: str, inputs: int, outputs: int, rank: int = 4, naming: str = "peft"
) -> dict[str, tuple[str, Shape]]:
    down, up = {
        "peft": (".lora_A.weight", ".lora_B.weight"),
        "kohya": (".lora_down.weight", ".lora_up.weight"),
        "old": (".lora.down.weight", ".lora.up.weight"),
    }[naming]
    found: dict[str, tuple[str, Shape]] = {
        name + down: ("F16", (rank, inputs)),
        name + up: ("F16", (outputs, rank)),
    }
    if naming == "kohya":
        found[name + ".alpha"] = ("F32", ())
    return found


def sdxl_lora(
    c1: int = 64, c2: int = 64, te1: int = 32, te2: int = 32, mlp: int = 37, cross: int = 0
) -> dict[str, tuple[str, Shape]]:
    """A LoRA of the tiny SDXL's shapes (the real SDXL: 640, 1280, 768, 1280, 3072)."""
    cross = cross or te1 + te2
    block = "unet.down_blocks.{}.attentions.0.transformer_blocks.0"
    tensors: dict[str, tuple[str, Shape]] = {}
    for level, width in ((1, c1), (2, c2)):
        prefix = block.format(level)
        tensors |= pair(f"{prefix}.attn1.to_q", width, width)
        tensors |= pair(f"{prefix}.attn2.to_k", cross, width)
        tensors |= pair(f"{prefix}.attn2.to_out.0", width, width)
        tensors |= pair(f"{prefix}.ff.net.0.proj", width, 8 * width)
        tensors |= pair(f"{prefix}.ff.net.2", 4 * width, width)
    tensors |= pair("unet.up_blocks.0.attentions.2.transformer_blocks.1.attn1.to_v", c2, c2)
    tensors |= pair("unet.mid_block.attentions.0.proj_in", c2, c2)
    tensors |= pair("text_encoder.encoder.layers.0.self_attn.q_proj", te1, te1)
    tensors |= pair("text_encoder.text_model.encoder.layers.1.mlp.fc1", te1, mlp)
    tensors |= pair("text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj", te2, te2)
    return tensors


KOHYA_SDXL = (
    pair("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 64, 64, naming="kohya")
    | pair("lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_k", 64, 64, naming="kohya")
    | pair("lora_unet_middle_block_1_transformer_blocks_1_ff_net_0_proj", 64, 512, naming="kohya")
    | pair("lora_unet_down_blocks_2_attentions_1_proj_out", 64, 64, naming="kohya")
    | pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32, 32, naming="kohya")
    | pair("lora_te1_text_model_encoder_layers_0_self_attn_out_proj", 32, 32, naming="kohya")
    | pair("lora_te2_text_model_encoder_layers_31_mlp_fc2", 37, 32, naming="kohya")
)
#: A LoRA for Stable Diffusion 1.5 as kohya writes it: one text encoder, attention in down_blocks.0.
SD15_KOHYA = pair(
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320, naming="kohya"
) | pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, naming="kohya")
EMBEDDING = {"clip_l": ("F32", (2, 32)), "clip_g": ("F32", (2, 32))}


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def stage(tmp_path: Path, *inputs: str, storage: LocalStorage | None = None) -> modules.JobSpec:
    module = modules.resolve(V11)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    staged = stage_inputs(module, list(inputs), add=compute_cid, workdir=work, storage=storage)
    return modules.render(module, staged.inputs)


def refused(tmp_path: Path, name: str, data: bytes, tunable: str = "Lora") -> str:
    path = write(tmp_path, name, data)
    with pytest.raises(InvalidTunable) as caught:
        stage(tmp_path, f"{tunable}=@{path}")
    assert f"{tunable}=@{path}" in caught.value.message
    return caught.value.message


# ------------------------------------------------------------------------------ accepted
@pytest.mark.parametrize(
    "tensors",
    [sdxl_lora(), sdxl_lora(640, 1280, 768, 1280, 3072), KOHYA_SDXL],
    ids=["tiny-diffusers", "real-sdxl-widths", "kohya-original-names"],
)
def test_sdxl_loras_are_accepted_and_committed_to(
    tmp_path: Path, tensors: dict[str, tuple[str, Shape]]
) -> None:
    path = write(tmp_path, "style.safetensors", safetensors(tensors, {"format": "pt"}))
    spec = stage(tmp_path, f"Lora=@{path}", "LoraScale=0.5")
    assert spec.tunables["Lora"].endswith("/style.safetensors")
    assert spec.env["LORA"] == "/inputs/Lora/style.safetensors"
    assert spec.env["LORA_SCALE"] == "0.5"


def test_the_widths_a_lora_fixes_are_reported(tmp_path: Path) -> None:
    data = safetensors(sdxl_lora(640, 1280, 768, 1280, 3072))
    found = lora.check_lora("x", lora.read_header("x", [data], len(data)))
    widths = {key: value for key, (value, _) in found.widths.items()}
    assert widths == {"C1": 640, "C2": 1280, "X": 2048, "W1": 768, "M1": 3072, "W2": 1280}
    assert all(layer.name.startswith(("unet.", "text_encoder")) for layer in found.layers)


def test_two_loras_and_an_embedding_in_one_job(tmp_path: Path) -> None:
    first = write(tmp_path, "a.safetensors", safetensors(sdxl_lora()))
    second = write(tmp_path, "b.safetensors", safetensors(KOHYA_SDXL))
    embedding = write(tmp_path, "token.safetensors", safetensors(EMBEDDING))
    spec = stage(
        tmp_path,
        f"Lora=@{first}",
        f"Lora2=@{second}",
        f"Embedding=@{embedding}",
        "EmbeddingToken=<my-style>",
        "Prompt=a fox, <my-style>",
    )
    assert (spec.env["LORA_2"], spec.env["EMBEDDING"]) == (
        "/inputs/Lora2/b.safetensors",
        "/inputs/Embedding/token.safetensors",
    )


# ------------------------------------------------------------------------------ refused
def test_an_sd15_lora_is_refused_before_signing_naming_the_value(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, "sd15.safetensors", safetensors(SD15_KOHYA))
    result = cli("module", "render", V11, "-i", f"Lora=@{path}")
    assert result.exit_code == 2, result.stderr
    assert f"Lora=@{path} is not an SDXL LoRA" in result.stderr
    assert "Stable Diffusion 1.x or 2.x" in result.stderr


def test_a_file_that_is_not_safetensors_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "style.safetensors", b"\x89PNG\r\n\x1a\n" + bytes(200))
    result = cli("module", "render", V11, "-i", f"Lora=@{path}")
    assert result.exit_code == 2, result.stderr
    assert "is not a safetensors file" in result.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"short", "shorter than a header"),
        (struct.pack("<Q", 10**12) + b"{}", "header of 1,000,000,000,000 bytes"),
        (raw_file({"a": 1}, 0, length=400), "header of 400 bytes"),
        (struct.pack("<Q", 4) + b"{no}", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not JSON"),
        (one(dtype="Q7"), "unknown dtype"),
        (one(shape=[-1]), "malformed shape"),
        (one(shape=[True]), "malformed shape"),
        (one(shape=[2], offsets=[2, 0], data=4), "malformed data_offsets"),
        (one(shape=[2]), "needs 4 bytes"),
        (raw_file({"a": {"dtype": "F16", "shape": [1]}}, 2), "is not {dtype, shape, data_offsets}"),
        (
            raw_file(
                {
                    "a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                    "b": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]},
                },
                6,
            ),
            "would overlap",
        ),
        (one(offsets=[2, 4], data=4), "leave a gap"),
        (one(data=9), "but 9 follow"),
        (raw_file({"__metadata__": {"a": 1}}, 0), "__metadata__ is not an object of strings"),
    ],
    ids=[
        "short", "huge-header", "header-past-end", "not-json", "not-an-object", "not-utf8",
        "dtype", "negative-shape", "bool-shape", "reversed-offsets",
        "wrong-size", "missing-field", "overlap", "gap", "trailing-bytes", "metadata",
    ],
)  # fmt: skip
def test_every_rule_of_the_format_is_checked(tmp_path: Path, data: bytes, message: str) -> None:
    assert message in refused(tmp_path, "bad.safetensors", data)


def test_duplicate_tensor_names_are_refused() -> None:
    entry = '{"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}'
    text = f'{{"a": {entry}, "a": {entry}}}'.encode()
    data = struct.pack("<Q", len(text)) + text + bytes(2)
    with pytest.raises(InvalidTunable, match="the name 'a' appears twice"):
        lora.read_header("x", [data], len(data))


def _without(tensors: dict[str, tuple[str, Shape]], ending: str) -> dict[str, tuple[str, Shape]]:
    name = next(n for n in tensors if n.endswith(ending))
    return {k: v for k, v in tensors.items() if k != name}


DOWN_2, MID = "unet.down_blocks.2.attentions.0", "unet.mid_block.attentions.0"
MIXED = sdxl_lora() | pair("lora_te1_text_model_encoder_layers_0_mlp_fc2", 37, 32, naming="kohya")
WRONG_WIDTH = sdxl_lora() | pair(
    "unet.down_blocks.1.attentions.1.transformer_blocks.1.attn1.to_k", 32, 32
)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({}, "holds no tensors"),
        (SD15_KOHYA, "lora_te_"),
        (
            pair("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 320, 320),
            "SDXL has no attention in down_blocks.0",
        ),
        (pair("unet.up_blocks.3.attentions.0.proj_in", 320, 320), "no up_blocks.3"),
        (pair(f"{DOWN_2}.transformer_blocks.10.attn1.to_q", 64, 64), "no layer of SDXL"),
        (pair("text_encoder.text_model.encoder.layers.12.mlp.fc1", 32, 37), "no layer of SDXL"),
        (pair("text_encoder_2.encoder.layers.0.mlp.fc1", 32, 37), "text_encoder_2.text_model."),
        (pair("lora_unet_input_blocks_1_0_in_layers_2", 32, 32, naming="kohya"), "(LoCon)"),
        (
            sdxl_lora() | {f"{MID}.proj_in.lora_magnitude_vector": ("F16", (64,))},
            "DoRA",
        ),
        ({"lora_unet_input_blocks_4_1_proj_in.hada_w1_a": ("F16", (4, 64))}, "LoHa or LoKr"),
        (_without(sdxl_lora(), "proj_in.lora_B.weight"), "has no up (lora_B) half"),
        (_without(sdxl_lora(), "fc1.lora_A.weight"), "has no down (lora_A) half"),
        (MIXED, "mixes kohya names"),
        (
            pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 32, 32, naming="kohya")
            | pair("lora_te2_text_model_encoder_layers_0_mlp_fc1", 32, 37, naming="kohya"),
            "no self_attn.out_proj",
        ),
        (
            pair("unet.mid_block.attentions.0.proj_in", 64, 64)
            | pair("unet.mid_block.attentions.0.proj_in", 64, 64, naming="old"),
            "appears twice",
        ),
        (WRONG_WIDTH, "gives channels of UNet level 1 = 32, but"),
        (sdxl_lora(cross=96), "its cross-attention takes 96 features, but its text encoders"),
        (pair("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", 64, 100), "8 x C2"),
        (
            {
                "unet.mid_block.attentions.0.proj_in.lora_A.weight": ("F16", (4, 320, 1, 1)),
                "unet.mid_block.attentions.0.proj_in.lora_B.weight": ("F16", (320, 4, 1, 1)),
            },
            "a convolution: SDXL's layer is linear",
        ),
        (
            {
                "unet.mid_block.attentions.0.proj_in.lora_A.weight": ("F16", (4, 64)),
                "unet.mid_block.attentions.0.proj_in.lora_B.weight": ("F16", (64, 8)),
            },
            "the down half has rank 4, the up half 8",
        ),
        (
            {
                "unet.mid_block.attentions.0.proj_in.lora_A.weight": ("I32", (4, 64)),
                "unet.mid_block.attentions.0.proj_in.lora_B.weight": ("F16", (64, 4)),
            },
            "is I32",
        ),
        (
            pair("lora_unet_middle_block_1_proj_in", 64, 64, naming="kohya")
            | {"lora_unet_middle_block_1_proj_in.alpha": ("F32", (2,))},
            "is not one number",
        ),
    ],
    ids=[
        "empty", "sd15-kohya", "sd15-down-blocks-0", "sd15-up-blocks-3", "too-deep",
        "text-encoder-too-deep", "text-encoder-2-flat", "locon", "dora", "loha", "missing-up",
        "missing-down", "mixed", "kohya-attention", "twice", "inconsistent-width",
        "cross-attention", "ff-width", "conv-proj-in", "rank", "int-weights", "alpha",
    ],
)  # fmt: skip
def test_a_lora_that_does_not_fit_sdxl_is_refused_with_its_reason(
    tmp_path: Path, tensors: dict[str, tuple[str, Shape]], message: str
) -> None:
    text = refused(tmp_path, "style.safetensors", safetensors(tensors))
    assert message in text


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"emb_params": ("F32", (2, 768))}, "Stable Diffusion 1.x/2.x"),
        ({"clip_l": ("F32", (2, 768))}, "Stable Diffusion 1.x/2.x"),
        (EMBEDDING | {"extra": ("F32", (1,))}, "expected exactly clip_l and clip_g"),
        (
            {"clip_l": ("F32", (2, 32)), "clip_g": ("F32", (3, 32))},
            "clip_l has 2 vectors, clip_g 3",
        ),
        ({"clip_l": ("F32", (76, 32)), "clip_g": ("F32", (76, 32))}, "at most 75"),
        ({"clip_l": ("F32", (32,)), "clip_g": ("F32", (2, 32))}, "expected a float matrix"),
        ({"clip_l": ("I8", (2, 32)), "clip_g": ("F32", (2, 32))}, "expected a float matrix"),
    ],
    ids=["a1111-sd15", "one-encoder", "extra", "vectors", "too-many", "not-a-matrix", "ints"],
)
def test_an_embedding_that_is_not_sdxls_is_refused(
    tmp_path: Path, tensors: dict[str, tuple[str, Shape]], message: str
) -> None:
    assert message in refused(tmp_path, "token.safetensors", safetensors(tensors), "Embedding")


def test_a_lora_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    tunable = modules.resolve(V11).spec.tunables
    embedding = next(t for t in tunable if t.name == "Embedding")
    big = safetensors({"clip_l": ("F32", (75, 2048)), "clip_g": ("F32", (75, 2048))})
    assert len(big) > embedding.byte_limit
    assert "Embedding takes at most 1 MiB" in refused(tmp_path, "big.safetensors", big, "Embedding")


def test_the_safetensors_field_needs_a_file_tunable() -> None:
    for kind in ("string", "image"):
        with pytest.raises(ValueError, match="safetensors needs type file"):
            Tunable.model_validate(
                {
                    "name": "In",
                    "env": "IN",
                    "description": "x",
                    "type": kind,
                    "safetensors": "lora-sdxl",
                }
            )
    with pytest.raises(ValueError, match="safetensors"):
        Tunable.model_validate(
            {
                "name": "In",
                "env": "IN",
                "description": "x",
                "type": "file",
                "safetensors": "lora-sd15",
            }
        )


# ------------------------------------------------------------------- by CID, and on a provider
def test_ipfs_inputs_are_checked_from_their_header(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    # a LoRA of several blocks: only its first are read
    big = sdxl_lora() | pair("unet.mid_block.attentions.0.proj_out", 64, 64, rank=8192)
    good = storage.add(write(tmp_path, "good.safetensors", safetensors(big)))
    bad = storage.add(write(tmp_path, "sd15.safetensors", safetensors(SD15_KOHYA)))
    text = storage.add(write(tmp_path, "notes.txt", b"not a LoRA at all, just some words"))
    assert stage(tmp_path, f"Lora=ipfs://{good}", storage=storage).tunables["Lora"] == str(
        good.v1()
    )
    for cid, message in [(bad, "lora_te_"), (text, "not a safetensors file")]:
        with pytest.raises(InvalidTunable, match=message):
            stage(tmp_path, f"Lora={cid}", storage=storage)


def test_a_provider_refuses_a_lora_it_fetched_that_does_not_fit(tmp_path: Path) -> None:
    # NOTE: the job creator's check is skipped here (render with the CID alone), as a job
    # creator that does not use this CLI could; the provider's verified fetch checks the bytes.
    storage = LocalStorage(tmp_path / "repo")
    module = modules.resolve(V11)
    bad = storage.add(write(tmp_path, "sd15.safetensors", safetensors(SD15_KOHYA)))
    good = storage.add(write(tmp_path, "style.safetensors", safetensors(sdxl_lora())))
    cache = tmp_path / "cache"
    (item,) = file_inputs(modules.render(module, [f"Lora={good}"]), module)
    fetched = fetch_input(storage, item, cache)
    check_content(item.tunable, "Lora", fetched)  # what the provider ran on it
    (item,) = file_inputs(modules.render(module, [f"Lora={bad}"]), module)
    with pytest.raises(UnacceptableInput, match=r"is not an SDXL LoRA.*lora_te_"):
        fetch_input(storage, item, cache)
