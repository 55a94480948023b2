"""The image-editing modules (sdxl-img2img, sdxl-inpainting, sdxl-outpainting), run as their
entrypoints on tiny weights with real picture files, and the picture rules they share
(lilypad/ml/edit.py)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lilypad.errors import InvalidTunable
from lilypad.ml import edit
from lilypad.modules import render
from tests.ml.conftest import ModuleRun, ModuleRunner

IMG2IMG = "sdxl-img2img:v1.0-lilypad1"
INPAINTING = "sdxl-inpainting:v1.0-lilypad1"
OUTPAINTING = "sdxl-outpainting:v1.0-lilypad1"
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
    def run(*inputs: str, image: str = "odd") -> ModuleRun:
        return run_module(
            IMG2IMG, ["Prompt=a tiger", *FAST, *inputs], files={"Image": files[image]}
        )

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
    def run(*inputs: str, mask: str = "mask") -> ModuleRun:
        given = {"Image": files["square"], "Mask": files[mask]}
        return run_module(INPAINTING, ["Prompt=a cat", *FAST, *inputs], files=given)

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
    def run(*inputs: str) -> ModuleRun:
        return run_module(
            OUTPAINTING, ["Prompt=a field", *FAST, *inputs], files={"Image": files["small"]}
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
