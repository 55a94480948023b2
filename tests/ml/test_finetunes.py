"""sdxl:v1.1-lilypad1 on tiny weights: LoRAs, a textual-inversion embedding and weighted prompts,
and v1.0's bytes left as they were.

The LoRAs and the embedding are made here for the tiny SDXL (random low-rank matrices for every
attention projection of its UNet and text encoders), written as diffusers and as kohya name
them; a job reads them as a provider would hand them over."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lilypad.ml import lora, prompts, tiny
from tests.ml.conftest import CPU_CLASS, ModuleRun, ModuleRunner, published

V10, V11 = "sdxl:v1.0-lilypad1", "sdxl:v1.1-lilypad1"
#: Two sampler steps, no refiner: a job takes seconds on two CPU cores.
FAST = ["Steps=2", "Sampler=euler", "RefinerSwitch=0"]
FOX = "Prompt=a red fox"
#: sha256 of v1.0's image for FOX and FAST, as published, by CPU class (conftest.published). It
#: changes only if the tiny weights change (lilypad.ml.tiny.TINY_VERSION) or the pinned ml extra
#: does; v1.0 itself must not.
V10_FOX = {
    "*": "66549114f82a1e9f7038e0191db9a3efeecbeb8b7ccc8a8cd2c41d5850d1bfcb",
    "AVX2 AuthenticAMD": "4956f4369a74318e03507bba1b978d0c13520ec3a5eeb450b59e61abe8a45c99",
}


def _ok(done: ModuleRun) -> bytes:
    assert done.returncode == 0, done.stderr.decode()
    return done.files()["image-0.png"]


def _refused(done: ModuleRun) -> str:
    assert done.returncode == 2, done.stderr.decode()
    assert not list(done.outputs.iterdir())
    return done.stderr.decode().strip().splitlines()[-1]


def _linear_layers(tiny_weights_dir: Path) -> list[tuple[str, str, int, int]]:
    """(component, module path, in, out) of every attention projection of the tiny SDXL (the
    first text encoder's paths without ``text_model.``, as transformers 5 names them)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    path = tiny.ensure("sdxl-base", tiny_weights_dir)
    components = {
        "unet": UNet2DConditionModel.from_pretrained(path / "unet"),
        "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder"),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2"),
    }
    ends = (".to_q", ".to_k", ".to_v", ".to_out.0", "_proj")
    return [
        (component, name, module.in_features, module.out_features)
        for component, model in components.items()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(ends) and "attn" in name
    ]


def _kohya_name(component: str, path: str) -> str:
    """kohya's name of a layer: SDXL's original block names for the UNet, lora_te1_/lora_te2_."""
    if component != "unet":
        prefix = "lora_te1_" if component == "text_encoder" else "lora_te2_"
        return prefix + f"text_model.{path.removeprefix('text_model.')}".replace(".", "_")
    names = lora.sdxl_layers()
    canonical = names.diffusers[f"unet.{path}"]
    return next(
        name
        for name, layer in names.kohya.items()
        if layer == canonical and any(b in name for b in ("input_", "middle_", "output_"))
    )


def _make_lora(
    layers: list[tuple[str, str, int, int]], folder: Path, seed: int, kohya: bool = False
) -> Path:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for component, path, inputs, outputs in layers:
        down = torch.randn(4, inputs, generator=generator) * 0.3
        up = torch.randn(outputs, 4, generator=generator) * 0.3
        if kohya:
            name = _kohya_name(component, path)
            tensors |= {
                f"{name}.lora_down.weight": down,
                f"{name}.lora_up.weight": up,
                f"{name}.alpha": torch.tensor(4.0),  # alpha = rank: the same scale as diffusers'
            }
        else:
            name = f"{component}.{path}"
            tensors |= {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}
    target = folder / f"lora-{seed}{'-kohya' if kohya else ''}.safetensors"
    save_file(tensors, target)
    return target


@pytest.fixture(scope="module")
def files(tiny_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("finetunes")
    layers = _linear_layers(tiny_weights_dir)
    real = folder / "real-sdxl.safetensors"  # one layer at the real SDXL's width
    block = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file(
        {
            f"{block}.lora_A.weight": torch.zeros(4, 640),
            f"{block}.lora_B.weight": torch.zeros(640, 4),
        },
        real,
    )
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    save_file({"clip_l": vectors, "clip_g": vectors * 2}, folder / "style.safetensors")
    changed = vectors.clone()
    changed[1] = -changed[1]  # the second vector only
    save_file({"clip_l": changed, "clip_g": changed * 2}, folder / "style-changed.safetensors")
    return {
        "lora": _make_lora(layers, folder, 1),
        "kohya": _make_lora(layers, folder, 1, kohya=True),
        "other": _make_lora(layers, folder, 2),
        "real": real,
        "embedding": folder / "style.safetensors",
        "changed": folder / "style-changed.safetensors",
    }


@pytest.fixture(scope="module")
def plain(run_module: ModuleRunner) -> bytes:
    """v1.1 without fine-tunes, for a prompt without weights."""
    return _ok(run_module(V11, [FOX, *FAST]))


# --------------------------------------------------------------------------- published bytes
def test_v1_0_is_unchanged_and_v1_1_reads_a_plain_prompt_as_it_does(
    run_module: ModuleRunner, plain: bytes
) -> None:
    v10 = _ok(run_module(V10, [FOX, *FAST]))
    assert hashlib.sha256(v10).hexdigest() == published(V10_FOX), CPU_CLASS
    assert plain == v10  # compel's encoding of a plain prompt is diffusers' own, to the bit


# ------------------------------------------------------------------------------------- LoRAs
def test_a_lora_applies_at_its_scale(
    run_module: ModuleRunner, files: dict[str, Path], plain: bytes
) -> None:
    at = {
        scale: run_module(V11, [FOX, *FAST, f"LoraScale={scale}"], files={"Lora": files["lora"]})
        for scale in ("0", "0.8")
    }
    assert _ok(at["0"]) == plain
    assert _ok(at["0.8"]) != plain
    assert b"LoRA LORA: 152 layers at scale 0.8" in at["0.8"].stderr
    # the same LoRA under kohya's names (SDXL's original block names), and as the second LoRA
    kohya = run_module(V11, [FOX, *FAST], files={"Lora": files["kohya"]})
    assert _ok(kohya) == _ok(at["0.8"])
    second = run_module(V11, [FOX, *FAST], files={"Lora2": files["lora"]})
    assert _ok(second) == _ok(at["0.8"])


def test_two_loras_mix(run_module: ModuleRunner, files: dict[str, Path]) -> None:
    one = _ok(run_module(V11, [FOX, *FAST], files={"Lora": files["lora"]}))
    both = run_module(V11, [FOX, *FAST], files={"Lora": files["lora"], "Lora2": files["other"]})
    assert _ok(both) != one
    assert b"LoRA LORA_2: 152 layers" in both.stderr


def test_a_lora_for_the_real_sdxl_on_tiny_weights_is_exit_2(
    run_module: ModuleRunner, files: dict[str, Path]
) -> None:
    last = _refused(run_module(V11, [FOX, *FAST], files={"Lora": files["real"]}))
    assert last.startswith(f"error: LORA={files['real']} was made for a model whose")
    assert "channels of UNet level 1 is 640" in last
    assert "these weights have 64" in last


# -------------------------------------------------------------------------------- embeddings
def test_an_embedding_stands_for_its_token_with_every_vector(
    run_module: ModuleRunner, files: dict[str, Path]
) -> None:
    inputs = ["Prompt=a photo of <my-style>", "EmbeddingToken=<my-style>", *FAST[:2]]
    refined = [*inputs, "RefinerSwitch=0.5"]  # the refiner reads the token too (clip_g)
    done = run_module(V11, refined, files={"Embedding": files["embedding"]})
    with_embedding = _ok(done)
    assert b"embedding <my-style>: 2 vectors" in done.stderr
    changed = _ok(run_module(V11, refined, files={"Embedding": files["changed"]}))
    assert changed != with_embedding  # the second vector is read: the token expands to both
    without = _ok(run_module(V11, refined))
    assert without != with_embedding


def test_an_embedding_token_the_tokenizer_has_is_exit_2(
    run_module: ModuleRunner, files: dict[str, Path]
) -> None:
    done = run_module(
        V11, [FOX, *FAST, "EmbeddingToken=<|endoftext|>"], files={"Embedding": files["embedding"]}
    )
    assert "EmbeddingToken='<|endoftext|>' is a word the tokenizer already has" in _refused(done)


# ----------------------------------------------------------------------------- prompt syntax
def test_weights_of_one_change_nothing_and_others_do(
    run_module: ModuleRunner, plain: bytes
) -> None:
    assert _ok(run_module(V11, ["Prompt=a (red:1.0) fox", *FAST])) == plain
    assert _ok(run_module(V11, ["Prompt=a (red:1.5) fox", *FAST])) != plain


def test_blends_mix_prompts_by_weight(run_module: ModuleRunner, plain: bytes) -> None:
    blend = 'Prompt=("a red fox", "a blue bird").blend({}, {})'
    assert _ok(run_module(V11, [blend.format(1, 0), *FAST])) == plain
    assert _ok(run_module(V11, [blend.format(0.5, 0.5), *FAST])) != plain


def test_a_prompt_past_77_tokens_is_read_to_its_end(run_module: ModuleRunner) -> None:
    # "a photo of a cat," is 6 tokens of the tiny vocabulary: 20 of them are 120, the last
    # word the 121st
    long = "a photo of a cat, " * 20
    ends = {
        version: [
            _ok(run_module(version, [f"Prompt={long}{end}", *FAST])) for end in ("red", "green")
        ]
        for version in (V10, V11)
    }
    assert ends[V11][0] != ends[V11][1]  # the change after token 77 shows
    assert ends[V10][0] == ends[V10][1]  # v1.0 cuts at 77 tokens, as diffusers does


# ------------------------------------------------------------------------ the syntax itself
@pytest.mark.parametrize(
    ("prompt", "fragments"),
    [
        ("red fox", [("red fox", 1.0)]),
        ("(red:1.0) fox", [("red fox", 1.0)]),
        ("(red:1.5) fox", [("red", 1.5), (" fox", 1.0)]),
        ("(red) [fox]", [("red", 1.1), (" ", 1.0), ("fox", 1 / 1.1)]),
        ("((red))", [("red", 1.1 * 1.1)]),
        ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
        (r"\(red\) \[fox\] \\", [("(red) [fox] \\", 1.0)]),
        ("a (red fox", [("a ", 1.0), ("red fox", 1.1)]),
        ("a ) b ] c", [("a ) b ] c", 1.0)]),
        ("x:y (z : 2 )", [("x:y ", 1.0), ("z ", 2.0)]),
        ("(red:-1)", [("red", 0.0)]),
        ("[a:b:0.5]", [("a:b:0.5", 1 / 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_the_a1111_emphasis_syntax(prompt: str, fragments: list[tuple[str, float]]) -> None:
    parsed = [(f.text, f.weight) for f in prompts.parse(prompt)]
    assert [text for text, _ in parsed] == [text for text, _ in fragments]
    assert [weight for _, weight in parsed] == pytest.approx([w for _, w in fragments])


def test_a_blend_is_the_whole_prompt_or_text() -> None:
    blend = prompts.parse_prompt('("a (red:2) fox", "a \\"bird\\"").blend(0.7, 0.3)')
    assert blend.weights == (0.7, 0.3)
    assert [prompts.plain_text(p) for p in blend.prompts] == ["a red fox", 'a "bird"']
    assert blend.prompts[0][1] == prompts.Fragment("red", 2.0)
    for text in ('("a", "b").blend(1)', '("a", "b").blend(0, 0)', 'x ("a", "b").blend(1, 1)'):
        assert len(prompts.parse_prompt(text).prompts) == 1  # not a blend: text
