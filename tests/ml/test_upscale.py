"""The upscale module (module/upscale, lilypad/ml/upscale.py): both models at both scales on tiny
weights, the tiling, the RRDBNet loader against Real-ESRGAN's published layout, and a picture
too large for its Scale refused before anything is signed and by the job itself."""

from __future__ import annotations

import inspect
import io
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lilypad.errors import InferenceError, InvalidManifest, InvalidTunable
from lilypad.ml import tiny, tiny_upscale, upscale
from lilypad.modules import check_scaled_size, resolve
from lilypad.modules.manifest import load_manifest
from tests.conftest import CliRunner
from tests.ml.conftest import ModuleRun, ModuleRunner

REF = "upscale:v1.0-lilypad1"
CASES = [("realesrgan", 2), ("realesrgan", 4), ("sd-x4", 2), ("sd-x4", 4)]


def _picture(width: int, height: int) -> np.ndarray:
    """A picture with structure everywhere (so that a tile misplaced or a seam shows)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """61x45: odd sides (the x2 model's even padding, SD x4's multiple of 8), over one tiny tile."""
    path = tmp_path_factory.mktemp("pictures") / "odd.png"
    Image.fromarray(_picture(61, 45)).save(path)
    return path


@pytest.fixture(scope="module")
def too_large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1100x600: 4400 pixels wide at Scale 4 (over 4096), 2200 at Scale 2 (allowed)."""
    path = tmp_path_factory.mktemp("pictures") / "wide.png"
    Image.new("RGB", (1100, 600), (90, 120, 200)).save(path)
    return path


def _ok(done: ModuleRun) -> bytes:
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"image-0.png\n"
    assert [p.name for p in done.outputs.iterdir()] == ["image-0.png"]
    return (done.outputs / "image-0.png").read_bytes()


# --- the module ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "scale"), CASES)
def test_each_model_and_scale_gives_the_same_png_exactly_scale_times_the_picture(
    run_module: ModuleRunner, odd: Path, model: str, scale: int
) -> None:
    inputs = [f"Model={model}", f"Scale={scale}"]
    done = run_module(REF, inputs, files={"Image": odd})
    picture = Image.open(io.BytesIO(_ok(done)))
    picture.load()
    assert (picture.format, picture.mode, picture.size) == ("PNG", "RGB", (61 * scale, 45 * scale))
    log = done.stderr.decode()
    assert "tiny weights: random" in log
    assert ("tile 4/4" if model == "realesrgan" else "tile 6/6") in log  # tiled, in tiny mode
    if model == "sd-x4":
        assert "4 steps instead of 75" in log
        assert ("resized by half" in log) is (scale == 2)
    again = run_module(REF, inputs, files={"Image": odd})
    assert (_ok(again), again.stderr) == (_ok(done), done.stderr)


def test_the_sd_x4_seed_changes_the_picture(run_module: ModuleRunner, odd: Path) -> None:
    fast = ["Model=sd-x4", "Scale=4", "Steps=1"]
    one, other = (run_module(REF, [*fast, f"Seed={seed}"], files={"Image": odd}) for seed in (0, 7))
    assert _ok(one) != _ok(other)


def test_a_picture_too_large_for_its_scale_is_exit_2_in_the_job(
    run_module: ModuleRunner, too_large: Path
) -> None:
    # a spec made by other means than `lilypad run` reaches the job, which refuses it itself
    done = run_module(REF, ["Scale=4"], files={"Image": too_large})
    assert done.returncode == 2, done.stderr.decode()
    assert done.stderr.decode().strip().splitlines()[-1] == (
        "error: IMAGE is 1100x600: at SCALE=4 the result would be 4400x2400, over 4096 a side; "
        "allowed: a picture at most 1024 a side at SCALE=4, or SCALE=2"
    )
    assert not list(done.outputs.iterdir())


# --- a picture too large for its Scale, before anything is signed -------------------------------


def test_a_picture_too_large_for_its_scale_is_refused_before_anything_is_signed(
    cli: CliRunner, too_large: Path, tmp_path: Path
) -> None:
    from lilypad.network import networks_dir

    # a network whose chain and IPFS node are not there: a refusal that reached either (adding
    # the file, signing, paying) would fail differently, with exit 1
    networks_dir().mkdir(parents=True, exist_ok=True)
    (networks_dir() / "nowhere.toml").write_text(
        'name = "nowhere"\nchain_id = 31337\nrpc_url = "http://127.0.0.1:9"\n'
        'ipfs_api_url = "http://127.0.0.1:9"\n'
    )
    run = ("run", REF, "--network", "nowhere", "--yes", "-i", f"Image=@{too_large}")
    refused = cli(*run, "-i", "Scale=4")
    assert refused.exit_code == 2, refused.stderr
    assert " ".join(refused.stderr.split()) == (
        f"Error: Image=@{too_large} is 1100x600: at Scale=4 the result would be 4400x2400, and "
        f"{REF} makes results at most 4096 pixels a side; allowed: a picture at most 1024 "
        "pixels a side at Scale=4 or Scale=2 for this one"
    )
    # at Scale 2 it passes every check and goes on to the IPFS node, which is not there
    allowed = cli(*run, "-i", "Scale=2")
    assert allowed.exit_code == 1, allowed.stderr
    assert "ipfs add: cannot connect" in allowed.stderr


def test_the_scaled_size_rule_reads_the_scale_and_the_choices() -> None:
    module = resolve(REF)
    check_scaled_size(module, {"Scale": 4}, "Image", "Image=x", (1024, 1024))
    check_scaled_size(module, {"Scale": 2}, "Image", "Image=x", (2048, 100))
    with pytest.raises(InvalidTunable, match=r"2049x100: at Scale=2 .* 4098x200"):
        check_scaled_size(module, {"Scale": 2}, "Image", "Image=x", (2049, 100))
    with pytest.raises(InvalidTunable) as refused:
        check_scaled_size(module, {"Scale": 4}, "Image", "Image=x", (100, 3000))
    assert str(refused.value).endswith("at most 1024 pixels a side at Scale=4")  # 2 is no help


def test_a_manifest_scaled_size_must_name_an_image_and_an_int(tmp_path: Path) -> None:
    manifest = (
        Path(__file__).parents[2] / "module" / "upscale" / "lilypad_module.toml"
    ).read_text()
    bad = manifest.replace('scale = "Scale"', 'scale = "Model"')
    (tmp_path / "lilypad_module.toml").write_text(bad)
    with pytest.raises(
        InvalidManifest, match=r"scaled_size.scale: 'Model' is string; it names an int"
    ):
        load_manifest(tmp_path)


def test_the_manifest_says_what_the_code_does() -> None:
    from diffusers import StableDiffusionUpscalePipeline

    spec = resolve(REF).spec
    tunables = {t.name: t for t in spec.tunables}
    assert tunables["Scale"].choices == upscale.SCALES
    assert tunables["Model"].choices == upscale.MODELS
    assert spec.scaled_size is not None
    assert spec.scaled_size.max_side == upscale.MAX_SIDE
    assert tunables["Image"].pixel_limit == (upscale.MAX_SIDE // 2) ** 2
    # the SD x4 defaults are its pipeline's own
    call = inspect.signature(StableDiffusionUpscalePipeline.__call__).parameters
    for name, parameter in (
        ("Steps", "num_inference_steps"),
        ("GuidanceScale", "guidance_scale"),
        ("NoiseLevel", "noise_level"),
    ):
        assert tunables[name].default == call[parameter].default, name
    assert tunables["NoiseLevel"].max == upscale.MAX_NOISE_LEVEL
    init = inspect.signature(StableDiffusionUpscalePipeline.__init__).parameters
    assert init["max_noise_level"].default == upscale.MAX_NOISE_LEVEL
    assert set(spec.tiny_models) == {upscale.REALESRGAN.tiny, upscale.SD_X4_UPSCALER.tiny}


# --- RRDBNet and its tiles ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_nets(tiny_weights_dir: Path) -> dict[int, upscale.RRDBNet]:
    folder = tiny.ensure("realesrgan", tiny_weights_dir)
    return {
        scale: upscale.load_rrdbnet(folder / upscale.realesrgan_file(scale, tiny=True))
        for scale in upscale.SCALES
    }


def _quiet(done: int, total: int) -> None:
    pass


@pytest.mark.parametrize("scale", upscale.SCALES)
def test_tiles_padded_by_the_networks_context_equal_one_pass(
    tiny_nets: dict[int, upscale.RRDBNet], scale: int
) -> None:
    net = tiny_nets[scale]
    picture = torch.from_numpy(_picture(70, 53)).permute(2, 0, 1)[None].float() / 255
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        picture = (picture + 0.2 * torch.rand(picture.shape)).clamp(0, 1)
    whole = upscale.run_rrdbnet(net, picture, None, _quiet)
    assert whole.shape[2:] == (53 * scale, 70 * scale)
    pad = upscale.context(net.shape)
    tiled = upscale.run_rrdbnet(net, picture, upscale.Tiles(size=16, margin=pad), _quiet)
    # equal up to float32 rounding (the convolutions sum in another order on another size)
    assert (tiled - whole).abs().max().item() < 1e-5
    seams = upscale.run_rrdbnet(net, picture, upscale.Tiles(size=16, margin=0), _quiet)
    assert (seams - whole).abs().max().item() > 1e-3  # no context: the tile edges show


def test_the_real_models_need_more_context_than_a_tile_pad_gives() -> None:
    # what the README says: with the real 23 blocks, a 32-pixel pad does not cover the
    # network's reach, so a tile's edge may differ slightly from a one-pass result
    assert upscale.context(upscale.RRDBShape(scale=4)) == 349
    assert upscale.context(upscale.RRDBShape(scale=2)) == 699
    assert (upscale.REALESRGAN_TILE, upscale.REALESRGAN_PAD) == (512, 32)


PUBLISHED_KEYS = {
    # Real-ESRGAN's RRDBNet (basicsr's rrdbnet_arch), as RealESRGAN_x4plus.pth names them
    "conv_first.weight": (64, 3, 3, 3),
    "body.0.rdb1.conv1.weight": (32, 64, 3, 3),
    "body.0.rdb1.conv5.weight": (64, 192, 3, 3),
    "body.1.rdb3.conv4.bias": (32,),
    "conv_body.weight": (64, 64, 3, 3),
    "conv_up1.weight": (64, 64, 3, 3),
    "conv_up2.weight": (64, 64, 3, 3),
    "conv_hr.weight": (64, 64, 3, 3),
    "conv_last.weight": (3, 64, 3, 3),
}


@pytest.mark.parametrize("scale", upscale.SCALES)
def test_a_real_shaped_pth_with_params_ema_loads(tmp_path: Path, scale: int) -> None:
    real = upscale.RRDBShape(scale=scale, blocks=2)  # the real width, two of its 23 blocks
    state = upscale.RRDBNet(real).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    first = (64, 3 if scale == 4 else 12, 3, 3)  # x2plus reads RGB pixel-unshuffled by 2
    assert shapes == {**shapes, **PUBLISHED_KEYS, "conv_first.weight": first}
    path = tmp_path / upscale.realesrgan_file(scale)
    torch.save({"params_ema": state}, path)  # the release files' layout
    net = upscale.load_rrdbnet(path)
    assert net.shape == real
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_the_tiny_weights_are_rrdbnets_of_the_published_layout(
    tiny_nets: dict[int, upscale.RRDBNet], tiny_weights_dir: Path
) -> None:
    from safetensors.torch import load_file

    folder = tiny.ensure("realesrgan", tiny_weights_dir)
    for scale, net in tiny_nets.items():
        assert net.shape == upscale.RRDBShape(scale=scale, **tiny_upscale.TINY_RRDB)
        keys = set(load_file(folder / upscale.realesrgan_file(scale, tiny=True)))
        published = set(upscale.RRDBNet(upscale.RRDBShape(scale=scale)).state_dict())
        # every published key but those of blocks 1..22
        assert keys == {k for k in published if not k.startswith("body.") or "body.0." in k}


class _NotWeights:
    pass


def test_a_wrong_file_is_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    state = upscale.RRDBNet(upscale.RRDBShape(scale=4, width=8, growth=4, blocks=1)).state_dict()
    up2, hr = "conv_up2.weight", "conv_hr.bias"
    cases = {
        "missing.pth": ({k: v for k, v in state.items() if k != up2}, f"no {up2}"),
        "extra.pth": ({**state, "conv_up3.weight": state[up2]}, "an unknown key conv_up3.weight"),
        "shape.pth": ({**state, hr: torch.zeros(9)}, rf"{hr} of shape \(9,\), expected \(8,\)"),
        "other.pth": (
            {"weight": torch.zeros(3)},
            "not a Real-ESRGAN RRDBNet: it has no conv_first",
        ),
        "x1.pth": ({**state, "conv_first.weight": torch.zeros(8, 48, 3, 3)}, "reads 48 channels"),
    }
    for name, (content, says) in cases.items():
        torch.save({"params_ema": content}, tmp_path / name)
        with pytest.raises(InferenceError, match=says):
            upscale.load_rrdbnet(tmp_path / name)
    (tmp_path / "noise.pth").write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(InferenceError, match=r"noise\.pth is not a PyTorch weights file"):
        upscale.load_rrdbnet(tmp_path / "noise.pth")
    # a pickle of any object: weights_only refuses to build it
    (tmp_path / "pickle.pth").write_bytes(pickle.dumps(_NotWeights()))
    with pytest.raises(InferenceError, match=r"pickle\.pth is not a PyTorch weights file"):
        upscale.load_rrdbnet(tmp_path / "pickle.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(InferenceError, match=r"list\.pth holds no state_dict of tensors"):
        upscale.load_rrdbnet(tmp_path / "list.pth")


# --- SD x4 tiles ---------------------------------------------------------------------------------


def test_overlapping_tiles_cover_the_side_and_their_weights_blend_to_one() -> None:
    tiles = upscale.Tiles(size=128, margin=32)
    assert upscale.overlapping_spans(120, tiles) == [(0, 120)]
    spans = upscale.overlapping_spans(1024, tiles)
    assert (spans[0], spans[-1]) == ((0, 128), (896, 1024))
    assert all(b[0] <= a[1] - 32 for a, b in itertools.pairwise(spans))
    # two neighbours overlapping by exactly the band: their ramps add up to 1 across it
    band = 4 * tiles.margin
    left = upscale.feather(512, band, False, True)
    right = upscale.feather(512, band, True, False)
    np.testing.assert_allclose(left[-band:] + right[:band], 1.0, rtol=1e-6)
    assert min(left.min(), right.min()) > 0
