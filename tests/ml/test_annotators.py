"""The ControlNet preprocessors on a drawn picture, with the tiny networks."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lilypad.errors import InferenceError, InvalidTunable
from lilypad.ml import annotators, tiny
from lilypad.ml.annotators import Control, control_map

SIZE = (96, 72)  # width, height: not square, not a multiple of 64
NETWORKS = {Control.DEPTH, Control.NORMAL, Control.SEGMENTATION, Control.OPENPOSE}
NETWORKS |= {Control.SOFTEDGE, Control.SCRIBBLE}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.ensure("annotators", tmp_path_factory.mktemp("tiny"))


def picture() -> Image.Image:
    """A black square, a long straight blue line, a red ring and a stick figure on white."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 30, 30), fill="black")
    draw.line((40, 60, 90, 10), fill=(0, 0, 255), width=2)
    draw.ellipse((8, 40, 30, 62), outline=(255, 0, 0), width=2)
    draw.ellipse((62, 36, 70, 44), outline="black", width=1)  # the figure's head
    draw.line((66, 44, 66, 56), fill="black")  # body, arms, legs
    draw.line((60, 48, 72, 48), fill="black")
    draw.line((66, 56, 61, 66), fill="black")
    draw.line((66, 56, 71, 66), fill="black")
    return image


def _bytes(image: Image.Image) -> bytes:
    return image.tobytes()


@pytest.mark.parametrize("control", list(Control))
def test_every_control_is_an_rgb_map_at_the_image_size_and_deterministic(
    control: Control, weights: Path
) -> None:
    first = control_map(control, picture(), weights)
    again = control_map(control.value, picture(), weights)
    assert (first.mode, first.size) == ("RGB", SIZE)
    assert _bytes(first) == _bytes(again)
    assert np.asarray(first).any(), f"{control}: a blank map of a picture with structure"


def test_the_enum_is_the_issue_s_list() -> None:
    assert [c.value for c in Control] == [
        "canny", "depth", "openpose", "scribble", "lineart", "softedge", "mlsd",
        "segmentation", "normal",
    ]  # fmt: skip
    assert set(annotators.MODELS) == set(Control)
    assert {c for c, m in annotators.MODELS.items() if m is not None} == NETWORKS


def test_an_unknown_control_is_refused_by_name(weights: Path) -> None:
    with pytest.raises(InvalidTunable, match=r"'sketch'.*canny, depth"):
        control_map("sketch", picture(), weights)


@pytest.mark.parametrize("control", sorted(NETWORKS))
def test_a_network_without_its_weights_fails_naming_the_folder(
    control: Control, tmp_path: Path
) -> None:
    with pytest.raises(InferenceError, match=re.escape(str(tmp_path))):
        control_map(control, picture(), tmp_path)


def _grey(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    assert (array[..., 0] == array[..., 1]).all()
    assert (array[..., 1] == array[..., 2]).all()
    return array[..., 0]


def test_canny_finds_the_square_s_edges_and_nothing_inside_it() -> None:
    edges = _grey(control_map(Control.CANNY, picture(), Path("/nonexistent")))
    assert set(np.unique(edges)) == {0, 255}
    assert edges[7:32, 7:10].any()
    assert edges[7:32, 29:32].any()
    assert not edges[14:25, 14:25].any()  # the flat inside
    assert not edges[:, :4].any()  # the flat margin


def test_mlsd_finds_the_straight_line_and_not_the_flat_margin() -> None:
    lines = _grey(control_map(Control.MLSD, picture(), Path("/nonexistent")))
    along = [(round(40 + t * 50), round(60 - t * 50)) for t in np.linspace(0.1, 0.9, 9)]
    for x, y in along:  # within two pixels of the drawn line
        assert lines[y - 2 : y + 3, x - 2 : x + 3].any(), (x, y)
    assert not lines[:, :4].any()


def test_mlsd_ignores_specks_that_canny_marks() -> None:
    specks = np.random.default_rng(0).random((128, 128)) > 0.97
    image = Image.fromarray(np.where(specks, 0, 255).astype(np.uint8)).convert("RGB")
    assert np.asarray(control_map(Control.CANNY, image, Path("/nonexistent"))).any()
    assert not np.asarray(control_map(Control.MLSD, image, Path("/nonexistent"))).any()


def test_lineart_marks_the_drawn_lines_white_on_black() -> None:
    lines = _grey(control_map(Control.LINEART, picture(), Path("/nonexistent")))
    assert lines[58:62, 42:46].max() > 64  # on the blue line
    assert lines[2:5, 40:90].max() < 16  # flat white paper
    assert lines.mean() < 64  # mostly black


def test_segmentation_paints_palette_colours_only(weights: Path) -> None:
    painted = np.asarray(control_map(Control.SEGMENTATION, picture(), weights))
    colours = {tuple(int(c) for c in px) for px in painted.reshape(-1, 3)}
    assert colours <= set(annotators.ADE20K_PALETTE)
    assert len(annotators.ADE20K_PALETTE) == 150  # (140, 140, 140) twice: classes 6 and 48


def test_depth_is_grey_stretched_to_the_full_range(weights: Path) -> None:
    depth = _grey(control_map(Control.DEPTH, picture(), weights))
    assert (depth.min(), depth.max()) == (0, 255)


def test_normal_points_out_of_the_screen_on_the_background(weights: Path) -> None:
    normals = np.asarray(control_map(Control.NORMAL, picture(), weights)).astype(int)
    # the background is flat: x = y = 0, z = 1, mapped to (127.5, 127.5, 255)
    flat = (abs(normals[..., 0] - 127) <= 1) & (abs(normals[..., 1] - 127) <= 1)
    assert flat.any()
    assert (normals[..., 2][flat] >= 254).all()


def test_scribble_is_black_and_white_strokes(weights: Path) -> None:
    strokes = _grey(control_map(Control.SCRIBBLE, picture(), weights))
    assert set(np.unique(strokes)) <= {0, 255}


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "L", "1", "CMYK", "I;16", "I", "F"])
def test_any_image_mode_is_converted(mode: str, weights: Path) -> None:
    image = picture()
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.new("L", SIZE, 128))
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 200)
    else:
        image = image.convert(mode)
    assert image.mode == mode
    for control in (Control.CANNY, Control.SOFTEDGE):
        made = control_map(control, image, weights)
        assert (made.mode, made.size) == ("RGB", SIZE)
    assert np.asarray(control_map(Control.CANNY, image, weights)).any()


def test_transparency_shows_as_white() -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (annotators.rgb_array(clear) == 255).all()


def test_coco_keypoints_become_openpose_18() -> None:
    coco = [(float(i), float(10 * i)) for i in range(17)]  # keypoint i at (i, 10 i)
    scores = [1.0] * 17
    scores[9] = 0.1  # the left wrist, unsure
    pose = annotators.openpose_keypoints(coco, scores, threshold=0.3)
    assert len(pose) == 18
    assert pose[0] == (0.0, 0.0)  # nose
    assert pose[1] == (5.5, 55.0)  # neck: between the shoulders (5 and 6)
    assert pose[2] == (6.0, 60.0)
    assert pose[5] == (5.0, 50.0)
    assert pose[4] == (10.0, 100.0)  # right wrist
    assert pose[7] is None  # left wrist: scored under the threshold
    assert pose[8] == (12.0, 120.0)
    assert pose[11] == (11.0, 110.0)
    assert pose[10] == (16.0, 160.0)
    assert pose[13] == (15.0, 150.0)
    assert pose[14:] == [(2.0, 20.0), (1.0, 10.0), (4.0, 40.0), (3.0, 30.0)]  # eyes, ears


def test_no_neck_without_both_shoulders() -> None:
    scores = [1.0] * 17
    scores[6] = 0.0
    pose = annotators.openpose_keypoints([(1.0, 1.0)] * 17, scores)
    assert pose[1] is None
    assert pose[2] is None


def test_openpose_draws_limbs_and_joints_in_their_colours() -> None:
    pose: list[tuple[float, float] | None] = [None] * 18
    pose[1], pose[2] = (100.0, 100.0), (200.0, 100.0)  # neck, right shoulder
    drawn = np.asarray(annotators.draw_openpose(pose, (256, 300)))
    assert drawn.shape == (256, 300, 3)
    assert tuple(drawn[100, 150]) == (153, 0, 0)  # the neck-shoulder limb: red at 60%
    assert tuple(drawn[100, 100]) == (255, 85, 0)  # the neck's joint colour
    assert tuple(drawn[100, 200]) == (255, 170, 0)  # the right shoulder's
    assert not drawn[200:].any()  # nothing else


def test_hed_loads_the_published_pth_format(weights: Path, tmp_path: Path) -> None:
    """ControlNetHED.pth is a torch pickle of fp16 tensors with these names; the same weights
    from it give the same map as from safetensors."""
    from safetensors.torch import load_file, save_file

    state = {
        k: v.half() for k, v in load_file(weights / "hed" / annotators.HED_SAFETENSORS).items()
    }
    (tmp_path / "pth" / "hed").mkdir(parents=True)
    torch.save(state, tmp_path / "pth" / "hed" / annotators.HED_PTH)
    (tmp_path / "safetensors" / "hed").mkdir(parents=True)
    save_file(state, tmp_path / "safetensors" / "hed" / annotators.HED_SAFETENSORS)
    from_pth = control_map(Control.SOFTEDGE, picture(), tmp_path / "pth")
    assert _bytes(from_pth) == _bytes(
        control_map(Control.SOFTEDGE, picture(), tmp_path / "safetensors")
    )
    assert _bytes(from_pth) != _bytes(control_map(Control.SOFTEDGE, picture(), weights))  # fp16


def test_hed_has_the_published_layer_names_and_shapes() -> None:
    network = annotators.hed_network(widths=(64, 128, 256, 512, 512))
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert shapes["norm"] == (1, 3, 1, 1)
    assert shapes["block1.convs.0.weight"] == (64, 3, 3, 3)
    assert shapes["block3.convs.2.weight"] == (256, 256, 3, 3)
    assert shapes["block5.projection.weight"] == (1, 512, 1, 1)
    assert "block2.convs.2.weight" not in shapes  # two convolutions in the first two blocks
    assert len(shapes) == 1 + 2 * (2 + 2 + 3 + 3 + 3) + 2 * 5
    assert math.isclose(sum(v.numel() for v in network.parameters()), 14_710_464, rel_tol=0.01)


def test_download_picks_the_weights_a_preprocessor_reads() -> None:
    listed = ["README.md", "config.json", "preprocessor_config.json", "pytorch_model.bin"]
    assert annotators.download_files(annotators.DPT_HYBRID_MIDAS, listed) == [
        "config.json", "preprocessor_config.json", "pytorch_model.bin",
    ]  # fmt: skip
    listed.append("model.safetensors")
    assert annotators.download_files(annotators.VITPOSE_BASE_SIMPLE, listed)[-1] == (
        "model.safetensors"
    )
    hed = ["ControlNetHED.pth", "body_pose_model.pth", "sk_model.pth"]
    assert annotators.download_files(annotators.CONTROLNET_HED, hed) == ["ControlNetHED.pth"]
    with pytest.raises(InferenceError, match=r"lacks ControlNetHED\.pth"):
        annotators.download_files(annotators.CONTROLNET_HED, hed[1:])
    assert {m.folder.split("/")[0] for m in annotators.ANNOTATOR_MODELS} == {"annotators"}
