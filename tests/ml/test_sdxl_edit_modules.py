"""The image-editing modules (sdxl-img2img, sdxl-inpainting, sdxl-outpainting), run as their
entrypoints on tiny weights with real picture files, and the picture rules they share
(lilypad/ml/edit.py)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lilypad.errors import InferenceError, InvalidTunable
from lilypad.ml import edit
from lilypad.modules import render, resolve
from tests.conftest import CliRunner
from tests.ml.conftest import CPU_CLASS, ModuleRun, ModuleRunner, published

IMG2IMG = "sdxl-img2img:v1.0-lilypad1"
INPAINTING = "sdxl-inpainting:v1.0-lilypad1"
OUTPAINTING = "sdxl-outpainting:v1.0-lilypad1"
#: The versions that read weighted prompts.
WEIGHTED = {
    name: f"{name}:v1.1-lilypad1"
    for name in ("sdxl-img2img", "sdxl-inpainting", "sdxl-outpainting")
}
#: One or two sampler steps per job: tiny weights on two CPU cores.
FAST = ["Steps=2", "Sampler=euler"]


def _picture(width: int, height: int) -> np.ndarray:
    """A picture with structure everywhere (so that any kept or changed pixel shows)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], -1).astype(np.uint8)


def _save(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / name
    Image.fromarray(array).save(path)
    return path


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _distance(a: bytes, b: bytes) -> float:
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 4:28] = 255
    mask[20:24, 4:28] = 128  # the threshold: still repaints
    mask[24:28, 4:28] = 127  # just under it: kept
    whole = io.BytesIO()
    Image.fromarray(_picture(64, 64)).save(whole, format="PNG")
    (folder / "broken.png").write_bytes(whole.getvalue()[:200])  # cut short
    return {
        "odd": _save(folder, "odd.png", _picture(61, 45)),
        "square": _save(folder, "square.png", _picture(64, 64)),
        "small": _save(folder, "small.png", _picture(32, 24)),
        "mask": _save(folder, "mask.png", mask),
        "broken": folder / "broken.png",
    }


def _ok(done: ModuleRun) -> dict[str, bytes]:
    assert done.returncode == 0, done.stderr.decode()
    return done.files()


# --- image to image ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def img2img(run_module: ModuleRunner, files: dict[str, Path]) -> ModuleRunner:
    def run(
        *inputs: str, image: str = "odd", ref: str = IMG2IMG, prompt: str = "a tiger"
    ) -> ModuleRun:
        return run_module(ref, [f"Prompt={prompt}", *FAST, *inputs], files={"Image": files[image]})

    return run


@pytest.fixture(scope="module")
def first_img2img(img2img: ModuleRunner) -> ModuleRun:
    done = img2img("Strength=1")
    _ok(done)
    return done


def test_img2img_works_at_the_picture_size_rounded_to_multiples_of_8(
    first_img2img: ModuleRun,
) -> None:
    assert first_img2img.stdout == b"image-0.png\n"
    image = Image.open(io.BytesIO(first_img2img.files()["image-0.png"]))
    assert (image.format, image.size, image.info) == ("PNG", (64, 48), {})
    stderr = first_img2img.stderr.decode()
    assert "64x48 instead of 696x512, 2 steps instead of 2" in stderr
    assert "picture 61x45, worked at 64x48" in stderr


def test_img2img_same_inputs_give_identical_bytes(
    img2img: ModuleRunner, first_img2img: ModuleRun
) -> None:
    again = img2img("Strength=1")
    assert again.files() == first_img2img.files()
    assert (again.stdout, again.stderr) == (first_img2img.stdout, first_img2img.stderr)


def test_img2img_strength_changes_the_result(
    img2img: ModuleRunner, first_img2img: ModuleRun
) -> None:
    kept = img2img("Strength=0")  # no step: the picture through the VAE and back
    assert b"Strength 0 selects no step" in kept.stderr
    light = img2img("Strength=0.5")  # the last of the 2 steps, at the smallest noise level
    assert b"the last 1 of 2 steps, from the noised picture" in light.stderr
    results = {_ok(run)["image-0.png"] for run in (kept, light, first_img2img)}
    assert len(results) == 3


def test_img2img_a_low_strength_stays_close_to_the_picture(tiny_weights_dir: Path) -> None:
    # NOTE: in latent space: the tiny VAE is random, so its decoded pixels say nothing of this.
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from lilypad.ml import sdxl, tiny
    from lilypad.ml.settings import ImageSettings

    pipe = sdxl.load(StableDiffusionXLImg2ImgPipeline, tiny.ensure("sdxl-base", tiny_weights_dir))
    picture = Image.fromarray(_picture(64, 48))
    job = ImageSettings(prompt="a tiger", seed=0, steps=4, width=64, height=48, guidance_scale=7)
    with torch.inference_mode():
        latents = sdxl.encode(pipe, pipe.image_processor.preprocess(picture, height=48, width=64))
        moved = []
        for strength in (0, 0.25, 0.5, 0.75, 1):
            out = sdxl.sample_from(pipe, replace(job, strength=strength), latents)
            moved.append(float((out - latents).abs().mean()))
    assert moved[0] == 0
    assert moved == sorted(moved)
    assert moved[1] < moved[-1] / 100  # one step from the smallest noise level: barely moved


# --- inpainting ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inpainting(run_module: ModuleRunner, files: dict[str, Path]) -> ModuleRunner:
    def run(
        *inputs: str, mask: str = "mask", ref: str = INPAINTING, prompt: str = "a cat"
    ) -> ModuleRun:
        given = {"Image": files["square"], "Mask": files[mask]}
        return run_module(ref, [f"Prompt={prompt}", *FAST, *inputs], files=given)

    return run


@pytest.fixture(scope="module")
def first_inpainting(inpainting: ModuleRunner) -> ModuleRun:
    done = inpainting()
    _ok(done)
    return done


def test_inpainting_keeps_every_pixel_outside_the_mask(
    first_inpainting: ModuleRun, files: dict[str, Path]
) -> None:
    assert first_inpainting.stdout == b"image-0.png\nmask.png\n"
    out = first_inpainting.files()
    repaint = _pixels(out["mask.png"])[..., 0] == 255
    result, original = _pixels(out["image-0.png"]), _picture(64, 64).astype(int)
    assert result.shape == (64, 64, 3)
    assert (result[~repaint] == original[~repaint]).all()
    assert (np.abs(result[repaint] - original[repaint]).sum(-1) > 0).mean() > 0.9


def test_inpainting_resizes_another_mask_size_by_nearest_pixel_and_thresholds_at_128(
    first_inpainting: ModuleRun,
) -> None:
    used = _pixels(first_inpainting.files()["mask.png"])
    assert set(np.unique(used)) == {0, 255}
    expected = np.zeros((64, 64), bool)
    expected[16:48, 8:56] = True  # rows 8..24 of the 32x32 mask (up to 128), doubled
    assert (used[..., 0] == 255).tolist() == expected.tolist()
    assert b"mask 32x32 resized to 64x64 (nearest)" in first_inpainting.stderr
    assert b"the mask repaints 37.5% of the picture" in first_inpainting.stderr


def test_inpainting_same_inputs_give_identical_bytes_and_strength_changes_them(
    inpainting: ModuleRunner, first_inpainting: ModuleRun
) -> None:
    again = inpainting()
    assert again.files() == first_inpainting.files()
    assert again.stderr == first_inpainting.stderr
    fresh = _ok(inpainting("Strength=1"))
    assert fresh["image-0.png"] != first_inpainting.files()["image-0.png"]
    assert fresh["mask.png"] == first_inpainting.files()["mask.png"]


def test_inpainting_mask_that_does_not_decode_is_exit_2_naming_it(
    inpainting: ModuleRunner,
) -> None:
    done = inpainting(mask="broken")
    assert done.returncode == 2
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("error: MASK=broken.png could not be decoded"), last
    assert not list(done.outputs.iterdir())


# --- outpainting ---------------------------------------------------------------------------------

BORDERS = ["Left=8", "Right=24", "Top=0", "Bottom=16", "Overlap=8"]


@pytest.fixture(scope="module")
def outpainting(run_module: ModuleRunner, files: dict[str, Path]) -> ModuleRunner:
    def run(*inputs: str, ref: str = OUTPAINTING, prompt: str = "a field") -> ModuleRun:
        return run_module(
            ref, [f"Prompt={prompt}", *FAST, *inputs], files={"Image": files["small"]}
        )

    return run


@pytest.fixture(scope="module")
def first_outpainting(outpainting: ModuleRunner) -> ModuleRun:
    done = outpainting(*BORDERS)
    _ok(done)
    return done


def test_outpainting_grows_the_picture_by_the_borders_and_keeps_it(
    first_outpainting: ModuleRun,
) -> None:
    out = first_outpainting.files()
    result, mask = _pixels(out["image-0.png"]), _pixels(out["mask.png"])[..., 0]
    assert result.shape == (24 + 0 + 16, 32 + 8 + 24, 3)  # height, width
    picture = _picture(32, 24).astype(int)
    # The picture sits at (8, 0); the overlap band (8 pixels in from each side with a border:
    # left, right and bottom) is repainted and faded in, the rest is the picture's own.
    assert (result[0:16, 16:32] == picture[0:16, 8:24]).all()
    repaint = np.ones((40, 64), bool)
    repaint[0:16, 16:32] = False
    assert (mask == 255).tolist() == repaint.tolist()
    stretched = np.repeat(picture[-1:], 16, axis=0)  # the border's start: the edge stretched
    assert (result[24:, 8:40] != stretched).any(-1).mean() > 0.9
    assert b"canvas 64x40: the picture at (8, 0)" in first_outpainting.stderr


def test_outpainting_same_inputs_give_identical_bytes(
    outpainting: ModuleRunner, first_outpainting: ModuleRun
) -> None:
    again = outpainting(*BORDERS)
    assert again.files() == first_outpainting.files()
    assert again.stderr == first_outpainting.stderr


def test_outpainting_a_canvas_over_2048_is_scaled_to_fit(outpainting: ModuleRunner) -> None:
    done = outpainting("Left=1024", "Right=1024")
    assert done.returncode == 0, done.stderr
    assert b"a 2080x280 canvas is over 2048 a side: picture, borders and overlap scaled" in (
        done.stderr
    )
    picture, borders, _overlap = edit.fit_canvas(
        (32, 24), edit.Borders(1024, 1024, 128, 128), 8, 2048
    )
    assert picture[0] + borders.left + borders.right <= 2048 + 3 * 8
    assert borders.left == borders.right  # proportions kept


def test_outpainting_with_every_border_0_is_refused_before_signing() -> None:
    zero = ["Image=bafkqaaa", "Left=0", "Right=0", "Top=0", "Bottom=0"]
    with pytest.raises(InvalidTunable, match="at least one of Left, Right, Top, Bottom"):
        render("sdxl-outpainting:v1.0-lilypad1", zero)
    render("sdxl-outpainting:v1.0-lilypad1", [*zero[:-1], "Bottom=8"])


def test_the_manifests_check_ranges_before_a_job_runs() -> None:
    image = "Image=bafkreiackhxsus5j4vgoc5bibm4kltknmher4qkwzqs44ak3szabmzivbi"
    with pytest.raises(InvalidTunable, match=r"Strength=1\.5 is out of range"):
        render(IMG2IMG, [image, "Strength=1.5"])
    with pytest.raises(InvalidTunable, match=r"Left=12 is out of range.*multiple of 8"):
        render(OUTPAINTING, [image, "Left=12"])
    with pytest.raises(InvalidTunable, match="needs Mask"):
        render(INPAINTING, [image])


# --- weighted prompts: the v1.1 versions ---------------------------------------------------------

#: Each module's first job (its fixture, on v1.0): the module, the word after "a" in its prompt,
#: the other inputs.
FIRST_JOBS = {
    "img2img": ("sdxl-img2img", "tiger", ["Strength=1"]),
    "inpainting": ("sdxl-inpainting", "cat", []),
    "outpainting": ("sdxl-outpainting", "field", BORDERS),
}


#: sha256 of stdout, stderr and each output (name, then bytes, by name) of each first job, on
#: v1.0, computed once from the code before v1.1 existed (commit 2a84a90), on x86-64 with this
#: project's pinned torch. NOTE: CPU float kernels differ between CPU
#: classes, so each digest is recorded per class (conftest.published): should a class disagree,
#: record its digest from that commit's code, never from the code under test. The
#: "AVX2 AuthenticAMD" digests are 2cf8402's code (the last commit CI passed before warm
#: workers) run on an AMD EPYC without AVX-512; HEAD gave the same there.
PUBLISHED = {
    "img2img": {
        "*": "b1246e6ff13ff24972f5acfd86a690b15e0d7d27532d36b463500271f57781d7",
        "AVX2 AuthenticAMD": "344f7dc7cddbfd60cab1e6aa9c0afd6aad862d560867b891477b89c3b1df95b6",
    },
    "inpainting": {
        "*": "137090bc46d53ddacb941ceaeec0d1074bc2625dc176b459ac5fab86e100460b",
        "AVX2 AuthenticAMD": "0594013b0eaafcda7e735039338780785c0ae205851b3a7c402308bc07b79805",
    },
    "outpainting": {
        "*": "46b81a9a6763cfd7a7d0c5aa5a09bdaf2f78e96835b1f69cce156e98df339c3f",
        "AVX2 AuthenticAMD": "a1113eaad3eb82793a8ad7fa33803e5f55621a1b0ab228a21126997a5370e641",
    },
}


@pytest.mark.parametrize("job", list(PUBLISHED))
def test_v1_0_keeps_its_published_bytes(request: pytest.FixtureRequest, job: str) -> None:
    done: ModuleRun = request.getfixturevalue(f"first_{job}")
    digest = hashlib.sha256(done.stdout + done.stderr)
    for name, data in done.files().items():
        digest.update(name.encode() + data)
    assert digest.hexdigest() == published(PUBLISHED[job]), CPU_CLASS


@pytest.mark.parametrize("job", list(FIRST_JOBS))
def test_v1_1_reads_prompt_weights_and_a_weight_of_1_changes_nothing(
    request: pytest.FixtureRequest, job: str
) -> None:
    run: ModuleRunner = request.getfixturevalue(job)
    published = request.getfixturevalue(f"first_{job}").files()
    name, word, inputs = FIRST_JOBS[job]
    # v1.0's own bytes for the plain prompt: v1.1 reads a plain prompt as diffusers does, to the
    # bit, and (word:1.0) is the word itself
    same = _ok(run(*inputs, ref=WEIGHTED[name], prompt=f"a ({word}:1.0)"))
    assert same == published
    heavier = _ok(run(*inputs, ref=WEIGHTED[name], prompt=f"a ({word}:1.5)"))
    assert heavier["image-0.png"] != published["image-0.png"]
    assert heavier.keys() == published.keys()
    if "mask.png" in published:  # the weight changes what is repainted, not where
        assert heavier["mask.png"] == published["mask.png"]
        keep = _pixels(published["mask.png"])[..., 0] == 0
        assert (_pixels(heavier["image-0.png"])[keep] == _pixels(same["image-0.png"])[keep]).all()


def test_v1_1_reads_the_negative_prompt_with_weights(img2img: ModuleRunner) -> None:
    # read as text, "(blurry:1.0)" would differ from "blurry"; other weights work as in Prompt
    published = _ok(img2img("Strength=1", "NegativePrompt=blurry"))
    v11 = WEIGHTED["sdxl-img2img"]
    assert _ok(img2img("Strength=1", "NegativePrompt=(blurry:1.0)", ref=v11)) == published


def test_v1_1_reads_a_prompt_past_77_tokens_to_its_end(img2img: ModuleRunner) -> None:
    # "a photo of a cat," is 6 tokens of the tiny vocabulary: the last word is the 121st; the
    # negative prompt, one chunk, is padded to the prompt's two
    v11, long, negative = WEIGHTED["sdxl-img2img"], "a photo of a cat, " * 20, "(blurry:1.2)"
    ends = [
        img2img("Strength=1", f"NegativePrompt={negative}", ref=v11, prompt=long + end)
        for end in ("red", "green")
    ]
    assert _ok(ends[0])["image-0.png"] != _ok(ends[1])["image-0.png"]


def test_v1_1_versions_are_v1_0_with_weighted_prompts(cli: CliRunner) -> None:
    for name, ref in WEIGHTED.items():
        old, new = resolve(f"{name}:v1.0-lilypad1").spec, resolve(ref).spec
        script = old.entrypoint[1]
        assert (old.entrypoint, new.entrypoint) == (("python", script), ("python", script, "1.1"))
        assert new.image == f"lilypad/{ref}"
        described = {t.name: t.description for t in new.tunables}
        assert "(word:1.4)" in described["Prompt"]
        assert "weights as in Prompt" in described["NegativePrompt"]
        # the rest as v1.0: the same tunables, limits and defaults
        assert [t.model_dump(exclude={"description"}) for t in new.tunables] == [
            t.model_dump(exclude={"description"}) for t in old.tunables
        ]
        fixed = ("machine", "tiny_models", "at_least_one", "verification", "timeout_s", "env")
        assert new.model_dump(include=set(fixed)) == old.model_dump(include=set(fixed))
        shown = cli("module", "show", name, "--json")
        assert json.loads(shown.stdout)["version"] == "v1.1-lilypad1"  # the newest


def test_an_editing_entrypoint_refuses_an_unknown_version() -> None:
    assert edit.reads_weights([]) is False
    assert edit.reads_weights(["1.0"]) is False
    assert edit.reads_weights(["1.1"]) is True
    for args in (["1.2"], ["1.1", "weighted"]):
        with pytest.raises(InferenceError, match=r"takes one version, 1\.0 or 1\.1"):
            edit.reads_weights(args)


# --- the picture rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "worked"),
    [
        ((1024, 1024), (1024, 1024)),
        ((1000, 750), (1000, 752)),  # each side to the nearest multiple of 8
        ((61, 45), (696, 512)),  # shorter side up to 512, aspect kept
        ((4000, 3000), (2048, 1536)),  # longer side down to 2048
        ((100, 1000), (208, 2048)),  # too narrow for both: the longer side wins
        ((4000, 10), (2048, 8)),  # at least 8
    ],
)
def test_fit_keeps_sdxl_sizes_and_the_aspect(
    size: tuple[int, int], worked: tuple[int, int]
) -> None:
    assert edit.fit(*size, edit.SDXL_BOUNDS) == worked


def test_pictures_are_oriented_and_flattened_to_rgb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotated = Image.fromarray(_picture(40, 24))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: shown turned 90 degrees clockwise
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    monkeypatch.setenv("IMAGE", str(tmp_path / "rotated.jpg"))
    assert edit.read_image("IMAGE").size == (24, 40)

    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    clear.save(tmp_path / "clear.png")
    monkeypatch.setenv("IMAGE", str(tmp_path / "clear.png"))
    monkeypatch.setenv("MASK", str(tmp_path / "clear.png"))
    assert edit.read_image("IMAGE").getpixel((0, 0)) == (255, 255, 255)  # over white
    assert edit.read_mask("MASK").getpixel((0, 0)) == 0  # over black: kept

    deep = Image.fromarray(np.full((8, 8), 0x8000, np.uint16))  # a 16-bit grayscale PNG
    deep.save(tmp_path / "deep.png")
    monkeypatch.setenv("IMAGE", str(tmp_path / "deep.png"))
    assert edit.read_image("IMAGE").getpixel((0, 0)) == (128, 128, 128)


def test_missing_or_unknown_files_are_input_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGE", raising=False)
    with pytest.raises(InvalidTunable, match="IMAGE is not set"):
        edit.read_image("IMAGE")
    monkeypatch.setenv("IMAGE", str(tmp_path / "gone.png"))
    with pytest.raises(InvalidTunable, match="no such file"):
        edit.read_image("IMAGE")
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.gif")
    monkeypatch.setenv("IMAGE", str(tmp_path / "picture.gif"))
    with pytest.raises(InvalidTunable, match=r"IMAGE=picture\.gif is not a PNG, JPEG or WebP"):
        edit.read_image("IMAGE")
    assert InvalidTunable.exit_code == 2


def test_outpaint_canvas_stretches_the_edges_and_fades_across_the_overlap() -> None:
    picture = Image.fromarray(_picture(16, 8))
    canvas, mask, blend = edit.outpaint_canvas(picture, edit.Borders(8, 0, 0, 0), overlap=4)
    pixels = np.asarray(canvas)
    assert canvas.size == (24, 8)
    assert (pixels[:, :8] == pixels[:, 8:9]).all()  # the left border: the edge column stretched
    assert (pixels[:, 8:] == _picture(16, 8)).all()
    assert np.asarray(mask)[0].tolist() == [255] * 12 + [0] * 12
    assert np.asarray(blend)[0].tolist() == [255] * 8 + [223, 159, 96, 32] + [0] * 12


def test_tiny_mode_scales_picture_borders_and_overlap_alike() -> None:
    borders = edit.Borders(128, 128, 0, 64)
    # A canvas of 320x112, scaled by 0.2 to 64x16.
    assert edit.fit_canvas((64, 48), borders, 8, 64) == ((16, 8), edit.Borders(24, 24, 0, 8), 1)
    small = edit.Borders(8, 24, 0, 16)
    assert edit.fit_canvas((32, 24), small, 8, 64) == ((32, 24), small, 8)  # 64x40 fits already
