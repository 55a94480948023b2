"""The ControlNet modules (sd15-controlnet, sdxl-controlnet), run as their entrypoints on tiny
weights with real picture files, and their sampling path against diffusers' ControlNet
pipelines (lilypad/ml/control.py)."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lilypad.ml import control, determinism, edit, tiny, tiny_control
from lilypad.ml.annotators import Control
from lilypad.modules import resolve
from tests.conftest import CliRunner
from tests.ml.conftest import ModuleRun, ModuleRunner

SD15, SDXL = "sd15-controlnet:v1.0-lilypad1", "sdxl-controlnet:v1.0-lilypad1"
#: The plain base models, as the ControlNet modules sample them (SDXL: without the refiner).
PLAIN = {SD15: ("sd15:v1.0-lilypad1", []), SDXL: ("sdxl:v1.0-lilypad1", ["RefinerSwitch=0"])}
#: Four euler steps per job (tiny mode's most): tiny weights on two CPU cores.
FAST = ["Steps=4", "Sampler=euler", "Prompt=a red fox", "Seed=5"]
ONE_STEP = ["Steps=1", *FAST[1:]]


def _picture(width: int, height: int) -> np.ndarray:
    """A picture with edges everywhere (a checkerboard over gradients), so Canny finds some."""
    y, x = np.mgrid[0:height, 0:width]
    board = ((x // 8 + y // 8) % 2 * 255).astype(np.uint8)
    return np.stack([board, x * 255 // width, y * 255 // height], -1).astype(np.uint8)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _distance(a: bytes, b: bytes) -> float:
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


def _ok(done: ModuleRun) -> dict[str, bytes]:
    assert done.returncode == 0, done.stderr.decode()
    return done.files()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("controls")
    pictures = {"odd": _picture(56, 40), "square": _picture(64, 64)}
    # a control map as a user would give one with Preprocess=false: white lines on black
    lines = np.zeros((40, 56, 3), np.uint8)
    lines[10, 4:52] = lines[4:36, 28] = 255
    pictures["map"] = lines
    paths = {}
    for name, array in pictures.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(array).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def canny(run_module: ModuleRunner, files: dict[str, Path]) -> dict[str, dict[str, bytes]]:
    """Each module on the square picture with canny: the runs several tests compare."""
    return {
        ref: _ok(run_module(ref, FAST, files={"Image": files["square"]})) for ref in (SD15, SDXL)
    }


@pytest.mark.parametrize("ref", [SD15, SDXL])
@pytest.mark.parametrize("preprocess", [True, False])
def test_each_module_writes_the_image_and_its_control_map_at_the_pictures_size(
    run_module: ModuleRunner, files: dict[str, Path], ref: str, preprocess: bool
) -> None:
    picture = files["odd"] if preprocess else files["map"]
    done = run_module(
        ref, [*FAST, f"Preprocess={str(preprocess).lower()}"], files={"Image": picture}
    )
    out = _ok(done)
    assert sorted(out) == ["control-canny.png", "image-0.png"]
    assert done.stdout.decode().split() == ["control-canny.png", "image-0.png"]
    size = edit.fit(56, 40, edit.TINY_BOUNDS)
    assert size == (56, 40)
    for name in out:
        image = Image.open(io.BytesIO(out[name]))
        image.load()
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", size)
    control_map = _pixels(out["control-canny.png"])
    if preprocess:  # Canny's edges: white on black
        assert set(np.unique(control_map)) == {0, 255}
        assert 0 < control_map.mean() < 128
    else:  # the picture itself, untouched
        assert (control_map == np.asarray(Image.open(picture).convert("RGB"))).all()
    assert b"ControlNet canny, scale 1, start 0, end 1: steps 1..4 of 4" in done.stderr


@pytest.mark.parametrize("ref", [SD15, SDXL])
def test_the_same_inputs_give_the_same_bytes(
    run_module: ModuleRunner,
    files: dict[str, Path],
    canny: dict[str, dict[str, bytes]],
    ref: str,
) -> None:
    again = _ok(run_module(ref, FAST, files={"Image": files["square"]}))
    assert again == canny[ref]


@pytest.mark.parametrize("ref", [SD15, SDXL])
def test_control_scale_0_is_the_plain_model_and_1_is_not(
    run_module: ModuleRunner,
    files: dict[str, Path],
    canny: dict[str, dict[str, bytes]],
    ref: str,
) -> None:
    plain_ref, plain_inputs = PLAIN[ref]
    plain = _ok(run_module(plain_ref, [*FAST, *plain_inputs]))["image-0.png"]
    off = _ok(run_module(ref, [*FAST, "ControlScale=0"], files={"Image": files["square"]}))
    assert off["image-0.png"] == plain  # the same 64x64 image of the same seed, byte for byte
    assert _distance(canny[ref]["image-0.png"], plain) > 2.0  # beyond the verification tolerance


def test_a_control_window_changes_the_image(
    run_module: ModuleRunner, files: dict[str, Path], canny: dict[str, dict[str, bytes]]
) -> None:
    late = run_module(SD15, [*FAST, "ControlStart=0.5"], files={"Image": files["square"]})
    out = _ok(late)
    assert b"start 0.5, end 1: steps 3..4 of 4" in late.stderr
    assert out["image-0.png"] != canny[SD15]["image-0.png"]
    assert out["control-canny.png"] == canny[SD15]["control-canny.png"]


def test_an_unknown_control_is_exit_2_naming_it_and_the_choices(cli: CliRunner) -> None:
    done = cli("module", "render", SD15, "-i", "Control=cany", "-i", "Image=" + _CID)
    assert done.exit_code == 2
    assert "Control='cany'" in done.stderr
    assert "canny" in done.stderr
    # a control type SD 1.5 has and SDXL does not
    done = cli("module", "render", SDXL, "-i", "Control=lineart", "-i", "Image=" + _CID)
    assert done.exit_code == 2
    assert "Control='lineart'" in done.stderr
    assert "scribble" in done.stderr


#: Any canonical file reference (the render checks its form; nothing is fetched).
_CID = "bafkreifgherkxgd6o6niy2cz6mi7a3dcb6rpp22uooqkv63j7ircwv75h4"


@pytest.mark.parametrize("ref", [SD15, SDXL])
def test_a_start_after_the_end_is_exit_2_before_anything_is_signed(
    cli: CliRunner, ref: str
) -> None:
    done = cli("module", "render", ref, "-i", "ControlStart=0.8", "-i", "ControlEnd=0.2",
               "-i", "Image=" + _CID)  # fmt: skip
    assert done.exit_code == 2, done.stderr
    assert "ControlStart=0.8 is after ControlEnd=0.2" in done.stderr
    assert cli("module", "render", ref, "-i", "ControlStart=0.5", "-i", "ControlEnd=0.5",
               "-i", "Image=" + _CID).exit_code == 0  # fmt: skip


def test_the_manifests_offer_the_control_types_of_each_base(cli: CliRunner) -> None:
    for ref, controls in ((SD15, tiny_control.SD15_CONTROLS), (SDXL, tiny_control.SDXL_CONTROLS)):
        module = resolve(ref)
        choices = next(t.choices for t in module.spec.tunables if t.name == "Control")
        assert tuple(choices or ()) == tuple(c.value for c in controls)
        assert set(choices or ()) == set(control.MODULES[module.name].controls)
        assert module.spec.verification.tolerance == 2.0
        shown = cli("module", "show", ref)
        assert ", ".join(choices or ()) in shown.stdout.replace("\n", " ")
    assert len(tiny_control.SD15_CONTROLS) == 9


@pytest.mark.parametrize("kind", [c for c in Control if c is not Control.CANNY])
def test_every_sd15_control_type_runs(
    run_module: ModuleRunner, files: dict[str, Path], kind: Control
) -> None:
    out = _ok(run_module(SD15, [*ONE_STEP, f"Control={kind}"], files={"Image": files["odd"]}))
    assert sorted(out) == [f"control-{kind}.png", "image-0.png"]
    assert Image.open(io.BytesIO(out[f"control-{kind}.png"])).size == (56, 40)


# --- the step window -----------------------------------------------------------------------------


def test_the_window_is_diffusers_controlnet_keep() -> None:
    for steps in (1, 4, 7, 25):
        for start, end in ((0, 1), (0.5, 1), (0, 0.5), (0.2, 0.7), (0.3, 0.3)):
            keep = [1.0 - float(i / steps < start or (i + 1) / steps > end) for i in range(steps)]
            assert control.controlled_steps(steps, start, end) == [k == 1.0 for k in keep]


def test_an_evaluation_belongs_to_the_step_whose_noise_it_is_made_at() -> None:
    window = control.ControlWindow(
        None,
        None,
        torch.tensor([3.0, 2.0, 1.0, 0.0]),
        0.0,
        1.0,  # type: ignore[arg-type]
    )
    at = {3.0: 0, 2.5: 0, 2.0: 1, 1.5: 1, 1.0: 2, 0.4: 2}  # heun's correction at 2.0: step 1
    assert {s: window.step_of(torch.tensor(s, dtype=torch.float32)) for s in at} == at


# --- against diffusers' ControlNet pipelines -----------------------------------------------------


@pytest.fixture(scope="module")
def control_image() -> Image.Image:
    return Image.fromarray(_picture(64, 64))


def _settings(**fields: Any) -> Any:
    from lilypad.ml.settings import ImageSettings

    base = {"prompt": "a red fox", "negative_prompt": "blurry", "seed": 3, "steps": 4}
    return ImageSettings(
        **{**base, "width": 64, "height": 64, "guidance_scale": 7.0, "sampler": "euler", **fields}
    )


#: Windows of the 4-step equivalence runs and, for each, the window starting a step off (the
#: last step, at the smallest noise, changes the latents too little to tell).
WINDOWS = [
    ((0.0, 1.0, 1.0), (0.25, 1.0)),
    ((0.5, 1.0, 1.5), (0.25, 1.0)),
    ((0.25, 0.75, 1.0), (0.5, 0.75)),
]


@pytest.mark.parametrize(("window", "one_step_off"), WINDOWS)
def test_the_sd15_path_is_diffusers_controlnet_pipeline(
    tiny_weights_dir: Path,
    control_image: Image.Image,
    window: tuple[float, float, float],
    one_step_off: tuple[float, float],
) -> None:
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
    )

    from lilypad.ml import sd

    determinism.configure()
    start, end, scale = window
    pipe = sd.load(StableDiffusionPipeline, tiny.ensure("sd15", tiny_weights_dir))
    net = control.load_controlnet(tiny.ensure("controlnet-sd15", tiny_weights_dir) / "canny")
    s = _settings()
    c = control.ControlSettings(Control.CANNY, scale, start, end)
    ours = control.sd15_latents(pipe, net, control_image, s, c)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    # diffusers scales given latents by its init_noise_sigma (sigma_max); ours by sqrt(1+s^2)
    sigma_max = float(euler.sigmas.max())
    noise = torch.randn((1, 4, 8, 8), generator=determinism.generator(s.seed))
    parts = {**pipe.components, "scheduler": euler, "requires_safety_checker": False}
    with torch.inference_mode():
        theirs = StableDiffusionControlNetPipeline(**parts, controlnet=net)(
            prompt=s.prompt, negative_prompt=s.negative_prompt, image=control_image,
            num_inference_steps=s.steps, guidance_scale=7.0, height=64, width=64,
            controlnet_conditioning_scale=scale, control_guidance_start=start,
            control_guidance_end=end,
            latents=noise * math.sqrt(1 + sigma_max**2) / sigma_max, output_type="latent",
        ).images  # fmt: skip
    # NOTE: equal but for float32 rounding (ours computes in the variance-exploding form),
    # which the random tiny UNet amplifies under guidance 7 most in its uncontrolled steps
    # (a few 1e-3 after 4 steps); a window one step off, or no control, is far outside that
    torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2)
    for other in (replace(c, start=one_step_off[0], end=one_step_off[1]), replace(c, scale=0.0)):
        assert not torch.allclose(
            control.sd15_latents(pipe, net, control_image, s, other), theirs, atol=5e-2
        ), other


def test_the_sdxl_path_is_diffusers_sdxl_controlnet_pipeline(
    tiny_weights_dir: Path, control_image: Image.Image
) -> None:
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )

    from lilypad.ml import sdxl

    determinism.configure()
    pipe = sdxl.load(StableDiffusionXLPipeline, tiny.ensure("sdxl-base", tiny_weights_dir))
    net = control.load_controlnet(tiny.ensure("controlnet-sdxl", tiny_weights_dir) / "canny")
    s = _settings()
    c = control.ControlSettings(Control.CANNY, 1.0, 0.0, 0.5)
    ours = control.sdxl_latents(pipe, net, control_image, s, c)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    sigma_max = float(euler.sigmas.max())
    noise = torch.randn((1, 4, 8, 8), generator=determinism.generator(s.seed))
    with torch.inference_mode():
        theirs = StableDiffusionXLControlNetPipeline(
            **{**pipe.components, "scheduler": euler}, controlnet=net
        )(
            prompt=s.prompt, negative_prompt=s.negative_prompt, image=control_image,
            num_inference_steps=s.steps, guidance_scale=7.0, height=64, width=64,
            control_guidance_start=0.0, control_guidance_end=0.5,
            latents=noise * math.sqrt(1 + sigma_max**2) / sigma_max, output_type="latent",
        ).images  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2)
