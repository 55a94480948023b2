"""ControlNet preprocessors: the conditioning image ("control map") made from an input image.

One entry point, :func:`control_map`: each :class:`Control` makes the kind of map its ControlNet
was trained on (per the models' cards), as RGB at the input's size. Canny, lineart and M-LSD's
stand-in are OpenCV algorithms; depth, normal, segmentation, pose and the HED edges (softedge,
scribble) run a network whose weights live in subfolders of the annotators' folder. The networks
run in float32, in eval mode, on :func:`lilypad.ml.determinism.device`; with the module's
:func:`lilypad.ml.determinism.configure` in force the same input gives the same bytes.

NOTE: controlnet-aux (the usual home of these preprocessors) imports torchvision, which has no
CPU-only Linux wheel matching this project's torch; HED is written here, shaped so that
lllyasviel/Annotators' ``ControlNetHED.pth`` loads, and the rest come from transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lilypad.errors import InferenceError, InvalidTunable
from lilypad.ml.job import Model

Array = np.ndarray[Any, Any]


class Control(StrEnum):
    CANNY = "canny"
    DEPTH = "depth"
    OPENPOSE = "openpose"
    SCRIBBLE = "scribble"
    LINEART = "lineart"
    SOFTEDGE = "softedge"
    MLSD = "mlsd"
    SEGMENTATION = "segmentation"
    NORMAL = "normal"


#: The annotators' folder under ``MODEL_DIR``; each network in its own subfolder of it.
ANNOTATORS_FOLDER = "annotators"
DEPTH_FOLDER = "dpt-hybrid-midas"
SEGMENTATION_FOLDER = "upernet-convnext-small"
POSE_FOLDER = "vitpose-base-simple"
HED_FOLDER = "hed"
HED_PTH = "ControlNetHED.pth"  # the real file, as published
HED_SAFETENSORS = "ControlNetHED.safetensors"  # the same state dict as safetensors (tiny)

DPT_HYBRID_MIDAS = Model(
    f"{ANNOTATORS_FOLDER}/{DEPTH_FOLDER}", "Intel/dpt-hybrid-midas", "annotators", pipeline=False
)
UPERNET_CONVNEXT_SMALL = Model(
    f"{ANNOTATORS_FOLDER}/{SEGMENTATION_FOLDER}",
    "openmmlab/upernet-convnext-small",
    "annotators",
    pipeline=False,
)
VITPOSE_BASE_SIMPLE = Model(
    f"{ANNOTATORS_FOLDER}/{POSE_FOLDER}",
    "usyd-community/vitpose-base-simple",
    "annotators",
    pipeline=False,
)
#: Only ``ControlNetHED.pth`` of this repository (it holds every annotator's weights).
CONTROLNET_HED = Model(
    f"{ANNOTATORS_FOLDER}/{HED_FOLDER}", "lllyasviel/Annotators", "annotators", pipeline=False
)
#: Every model a preprocessor reads, as :mod:`lilypad.ml.download` bakes them.
ANNOTATOR_MODELS = (DPT_HYBRID_MIDAS, UPERNET_CONVNEXT_SMALL, VITPOSE_BASE_SIMPLE, CONTROLNET_HED)


def download_files(model: Model, files: Sequence[str]) -> list[str]:
    """The files of an annotator's repository (``files``, as the Hub lists them) to bake: HED's
    one checkpoint, or a transformers model's configs and its weights (safetensors if the
    repository has them, else the ``.bin`` pickle).

    Raises:
        InferenceError: for a model that is not an annotator's, or a repository without them.
    """
    if model == CONTROLNET_HED:
        wanted = [HED_PTH]
    elif model in ANNOTATOR_MODELS:
        weights = "model.safetensors" if "model.safetensors" in files else "pytorch_model.bin"
        wanted = ["config.json", "preprocessor_config.json", weights]
    else:
        raise InferenceError(f"{model.hub_id} is not a preprocessor's model")
    missing = [name for name in wanted if name not in files]
    if missing:
        raise InferenceError(f"{model.hub_id} lacks {', '.join(missing)}")
    return wanted


#: The weights each control type reads (none: an OpenCV algorithm).
MODELS: dict[Control, Model | None] = {
    Control.CANNY: None,
    Control.DEPTH: DPT_HYBRID_MIDAS,
    Control.OPENPOSE: VITPOSE_BASE_SIMPLE,
    Control.SCRIBBLE: CONTROLNET_HED,
    Control.LINEART: None,
    Control.SOFTEDGE: CONTROLNET_HED,
    Control.MLSD: None,
    Control.SEGMENTATION: UPERNET_CONVNEXT_SMALL,
    Control.NORMAL: DPT_HYBRID_MIDAS,
}

#: Canny's hysteresis thresholds: ControlNet's defaults.
CANNY_LOW = 100
CANNY_HIGH = 200
#: The short side the HED and lineart recipes work at (ControlNet's ``detect_resolution``).
DETECT_RESOLUTION = 512
#: Lineart standard's blur and the intensity below which a pixel is not a line.
LINEART_SIGMA = 6.0
LINEART_THRESHOLD = 8
#: The sd-controlnet-normal recipe: relative depth below which a pixel is background (flat).
NORMAL_BACKGROUND = 0.4
#: LSD segments shorter than this fraction of the image's short side are dropped as noise.
MLSD_MIN_LENGTH = 0.03
#: A keypoint ViTPose scores below this is not drawn.
POSE_THRESHOLD = 0.3

# ADE20K's 150-class palette, as the segmentation ControlNet was trained on (class i: colour i).
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip

# OpenPose's 18 body keypoints, by the index of the COCO-17 keypoint each one is (the neck,
# which COCO lacks, is None: the shoulders' midpoint).
OPENPOSE_FROM_COCO: tuple[int | None, ...] = (
    0,  # nose
    None,  # neck
    6, 8, 10,  # right shoulder, elbow, wrist
    5, 7, 9,  # left shoulder, elbow, wrist
    12, 14, 16,  # right hip, knee, ankle
    11, 13, 15,  # left hip, knee, ankle
    2, 1, 4, 3,  # right eye, left eye, right ear, left ear
)  # fmt: skip
_COCO_SHOULDERS = (5, 6)
# OpenPose's limbs (pairs of OpenPose-18 indices) and its colour per limb and per joint.
OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
OPENPOSE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
_LIMB_DIM = 0.6  # limbs are drawn at 60% of their colour, joints at full


def control_map(control: Control | str, image: Image.Image, weights: Path) -> Image.Image:
    """The RGB control map of ``image`` for ``control``, at the image's size.

    Args:
        control: which preprocessor (a :class:`Control` or its value).
        image: the input, in any PIL mode (converted to RGB; transparency shows as white).
        weights: the annotators' folder (``$MODEL_DIR/annotators`` or the tiny weights'
            folder); only the network preprocessors read it.

    Raises:
        InvalidTunable: for an unknown control type.
        InferenceError: when the weights a network needs are not in ``weights``.
    """
    try:
        kind = Control(control)
    except ValueError:
        allowed = ", ".join(c.value for c in Control)
        raise InvalidTunable(
            f"unknown control type {control!r}; choose one of: {allowed}"
        ) from None
    rgb = rgb_array(image)
    made = _MAKERS[kind](rgb, weights)
    if made.shape[:2] != rgb.shape[:2]:  # a recipe's own working size, back to the image's
        import cv2

        made = cv2.resize(made, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    if made.ndim == 2:
        made = np.repeat(made[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(made, dtype=np.uint8))


def rgb_array(image: Image.Image) -> Array:
    """``image`` as an HxWx3 uint8 array, whatever its mode (palette, alpha, grey, 16-bit)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, (255, 255, 255))  # transparency shows as white
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode in ("I", "F") or image.mode.startswith("I;16"):
        grey = np.asarray(image, dtype=np.float64)
        low, high = float(grey.min()), float(grey.max())
        scaled = (grey - low) / (high - low or 1.0) * 255
        image = Image.fromarray(np.round(scaled).astype(np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# --- OpenCV algorithms -------------------------------------------------------------------------


def canny(rgb: Array) -> Array:
    """OpenCV's Canny edges (thresholds 100/200): white one-pixel edges on black."""
    import cv2

    return np.asarray(cv2.Canny(rgb, CANNY_LOW, CANNY_HIGH))


def _detect_size(height: int, width: int) -> tuple[int, int]:
    """ControlNet's working size: the short side scaled to 512, both sides multiples of 64."""
    k = DETECT_RESOLUTION / min(height, width)
    return max(64, round(height * k / 64) * 64), max(64, round(width * k / 64) * 64)


def _resized(rgb: Array, size: tuple[int, int]) -> Array:
    import cv2

    height, width = size
    if (height, width) == rgb.shape[:2]:
        return rgb
    shrink = height * width < rgb.shape[0] * rgb.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4
    return np.asarray(cv2.resize(rgb, (width, height), interpolation=interpolation))


def lineart(rgb: Array) -> Array:
    """ "Lineart standard", no network: how much darker each pixel is than its Gaussian-blurred
    surroundings (sigma 6), scaled so that the median line pixel is grey 127: white lines on
    black, at ControlNet's 512-pixel working size. NOTE: the darkness is the largest over the
    three channels, where the published recipe takes the smallest: that one sees only lines
    darker in every channel (black ink), so a blue line on white paper would vanish."""
    import cv2

    x = _resized(rgb, _detect_size(*rgb.shape[:2])).astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), LINEART_SIGMA)
    intensity = np.max(blurred - x, axis=2).clip(0, 255)
    lines = intensity[intensity > LINEART_THRESHOLD]
    scale = max(16.0, float(np.median(lines))) if lines.size else 16.0
    return np.asarray((intensity / scale * 127).clip(0, 255).astype(np.uint8))


def mlsd(rgb: Array) -> Array:
    """Straight line segments, white on black: OpenCV's LSD detector standing in for the M-LSD
    network (the same kind of map: straight lines only, no curves or texture)."""
    import cv2

    height, width = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = cv2.createLineSegmentDetector().detect(grey)[0]
    canvas = np.zeros((height, width), dtype=np.uint8)
    if found is None:
        return canvas
    shortest = max(4.0, MLSD_MIN_LENGTH * min(height, width))
    thickness = max(1, round(min(height, width) / DETECT_RESOLUTION))
    for x1, y1, x2, y2 in found.reshape(-1, 4).tolist():
        if math.hypot(x2 - x1, y2 - y1) >= shortest:
            ends = (round(x1), round(y1)), (round(x2), round(y2))
            cv2.line(canvas, ends[0], ends[1], 255, thickness, lineType=cv2.LINE_8)
    return canvas


# --- networks ----------------------------------------------------------------------------------


def _folder(weights: Path, name: str, control: Control) -> Path:
    folder = weights / name
    if not folder.is_dir():
        raise InferenceError(
            f"the {control} preprocessor's weights are not in {folder}",
            hint="bake them into the image (python -m lilypad.ml.download) or use tiny weights",
        )
    return folder


def _networks(folder: Path, processor_class: Any, network_class: Any) -> tuple[Any, Any]:
    """A transformers image processor and network from ``folder``; a warm worker loads them
    once (:func:`lilypad.ml.predictor.load_once`)."""
    from lilypad.ml import predictor

    key = ("annotator", network_class.__qualname__, str(folder))
    return predictor.load_once(
        key,
        lambda: (
            processor_class.from_pretrained(folder),
            network_class.from_pretrained(folder),
        ),
    )


def _run(network: Any, **inputs: Any) -> Any:
    import torch

    from lilypad.ml import determinism

    device = determinism.device()
    network = network.to(device=device, dtype=torch.float32).eval()
    with torch.no_grad():
        return network(**{k: v.to(device=device, dtype=torch.float32) for k, v in inputs.items()})


def _depth(rgb: Array, weights: Path, control: Control) -> Array:
    """MiDaS' relative inverse depth (DPT-Hybrid) at the model's own resolution, float32."""
    from transformers import DPTForDepthEstimation, DPTImageProcessorPil

    folder = _folder(weights, DEPTH_FOLDER, control)
    processor, network = _networks(folder, DPTImageProcessorPil, DPTForDepthEstimation)
    pixels = processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    predicted = _run(network, pixel_values=pixels).predicted_depth
    return np.asarray(predicted[0].float().cpu().numpy(), dtype=np.float32)


def _to_image_size(values: Array, rgb: Array, *, linear: bool = False) -> Array:
    import cv2

    height, width = rgb.shape[:2]
    interpolation = cv2.INTER_LINEAR if linear else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(values, (width, height), interpolation=interpolation))


def depth(rgb: Array, weights: Path) -> Array:
    """DPT-Hybrid MiDaS depth, near bright and far dark, stretched to 0..255 grey."""
    relative = _to_image_size(_depth(rgb, weights, Control.DEPTH), rgb).astype(np.float64)
    relative -= relative.min()
    relative /= relative.max() or 1.0
    return np.asarray(np.round(relative * 255).astype(np.uint8))


def normal(rgb: Array, weights: Path) -> Array:
    """A normal map derived from the DPT depth, the recipe of lllyasviel/sd-controlnet-normal's
    card (not the NormalBae network of ControlNet 1.1): the depth's Sobel gradients are x and y,
    zero where the relative depth is under 0.4 (background), z is the constant 2*pi, and the
    unit vector is mapped from -1..1 to 0..255 per channel."""
    import cv2

    raw = _depth(rgb, weights, Control.NORMAL)
    relative = raw - raw.min()
    relative /= relative.max() or 1.0
    background = relative < NORMAL_BACKGROUND
    x = cv2.Sobel(raw, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(raw, cv2.CV_32F, 0, 1, ksize=3)
    x[background] = 0
    y[background] = 0
    z = np.full_like(x, 2 * np.pi)
    vectors = np.stack([x, y, z], axis=2).astype(np.float32)
    vectors = vectors / np.sqrt(np.sum(vectors**2, axis=2, keepdims=True))
    mapped = (vectors * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
    return _to_image_size(mapped, rgb)


def segmentation(rgb: Array, weights: Path) -> Array:
    """UperNet-ConvNeXt's ADE20K classes per pixel (logits upsampled to the image, argmax),
    painted with the ADE20K palette."""
    import torch
    from transformers import SegformerImageProcessorPil, UperNetForSemanticSegmentation

    folder = _folder(weights, SEGMENTATION_FOLDER, Control.SEGMENTATION)
    processor, network = _networks(
        folder, SegformerImageProcessorPil, UperNetForSemanticSegmentation
    )
    pixels = processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    logits = _run(network, pixel_values=pixels).logits
    with torch.no_grad():
        up = torch.nn.functional.interpolate(
            logits, size=rgb.shape[:2], mode="bilinear", align_corners=False
        )
        classes = up[0].argmax(dim=0).cpu().numpy()
    palette = np.asarray(ADE20K_PALETTE, dtype=np.uint8)
    return np.asarray(palette[classes % len(palette)])


def openpose_keypoints(
    coco: Sequence[Sequence[float]], scores: Sequence[float], threshold: float = POSE_THRESHOLD
) -> list[tuple[float, float] | None]:
    """COCO-17 keypoints (x, y per keypoint) and their scores as OpenPose's 18: reordered, a
    keypoint scored under ``threshold`` None, the neck the shoulders' midpoint when both are."""
    found = [
        (float(x), float(y)) if score >= threshold else None
        for (x, y), score in zip(coco, scores, strict=True)
    ]
    left, right = (found[i] for i in _COCO_SHOULDERS)
    neck = None
    if left is not None and right is not None:
        neck = ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2)
    return [neck if i is None else found[i] for i in OPENPOSE_FROM_COCO]


def draw_openpose(keypoints: Sequence[tuple[float, float] | None], size: tuple[int, int]) -> Array:
    """OpenPose-18 keypoints (pixels) drawn as OpenPose draws a body on black: each limb an
    ellipse in its colour at 60%, each joint a disc in its colour; ``size`` is (height, width).
    The stick width is OpenPose's 4 pixels at a 512-pixel short side, scaled."""
    import cv2

    height, width = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    stick = max(1, round(4 * min(height, width) / DETECT_RESOLUTION))
    for (a, b), colour in zip(OPENPOSE_LIMBS, OPENPOSE_COLOURS, strict=False):
        start, end = keypoints[a], keypoints[b]
        if start is None or end is None:
            continue
        centre = (int((start[0] + end[0]) / 2), int((start[1] + end[1]) / 2))
        length = math.hypot(end[0] - start[0], end[1] - start[1])
        angle = int(math.degrees(math.atan2(start[1] - end[1], start[0] - end[0])))
        polygon = np.asarray(
            cv2.ellipse2Poly(centre, (int(length / 2), stick), angle, 0, 360, 1), dtype=np.int32
        )
        cv2.fillConvexPoly(canvas, polygon, [int(c * _LIMB_DIM) for c in colour])
    for point, colour in zip(keypoints, OPENPOSE_COLOURS, strict=True):
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), stick, colour, thickness=-1)
    return canvas


def openpose(rgb: Array, weights: Path) -> Array:
    """ViTPose's COCO keypoints of one person, the whole image as that person's box (no person
    detector), drawn as an OpenPose-18 skeleton on black."""
    from transformers import VitPoseForPoseEstimation, VitPoseImageProcessorPil

    folder = _folder(weights, POSE_FOLDER, Control.OPENPOSE)
    processor, network = _networks(folder, VitPoseImageProcessorPil, VitPoseForPoseEstimation)
    height, width = rgb.shape[:2]
    boxes = [[[0.0, 0.0, float(width), float(height)]]]
    pixels = processor(images=Image.fromarray(rgb), boxes=boxes, return_tensors="pt")
    outputs = _run(network, pixel_values=pixels["pixel_values"])
    person = processor.post_process_pose_estimation(outputs, boxes=boxes)[0][0]
    keypoints = openpose_keypoints(
        person["keypoints"].cpu().tolist(), person["scores"].cpu().tolist()
    )
    return draw_openpose(keypoints, (height, width))


def hed_network(state: dict[str, Any] | None = None, widths: Sequence[int] = ()) -> Any:
    """ControlNet's HED network (lllyasviel/Annotators ``ControlNetHED.pth``): a learned RGB
    offset (``norm``), then five blocks of 3x3 convolutions (2, 2, 3, 3, 3 of them; 64, 128,
    256, 512, 512 channels, each block after the first starting with a 2x2 max-pool), each
    block projecting its features to one edge channel. The widths come from ``state`` when
    given (so the tiny weights load as the real ones do), else from ``widths``."""
    import torch
    from torch import nn

    if state is not None:
        widths = [state[f"block{i}.projection.weight"].shape[1] for i in range(1, 6)]
    if len(widths) != 5:
        raise InferenceError(f"HED has five blocks; got widths {list(widths)}")
    network = nn.Module()
    network.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
    channels = 3
    for number, (width, convs) in enumerate(zip(widths, (2, 2, 3, 3, 3), strict=True), 1):
        block = nn.Module()
        layers = [
            nn.Conv2d(channels if i == 0 else width, width, 3, padding=1) for i in range(convs)
        ]
        block.convs = nn.Sequential(*layers)
        block.projection = nn.Conv2d(width, 1, 1)
        setattr(network, f"block{number}", block)
        channels = width
    if state is not None:
        network.load_state_dict(state)
    return network


def _hed_edges(network: Any, pixels: Any) -> Any:
    """The five projections, upsampled to the input, averaged, through a sigmoid (0..1)."""
    import torch
    from torch.nn import functional

    h = pixels - network.norm
    projections = []
    for number in range(1, 6):
        block = getattr(network, f"block{number}")
        if number > 1:
            h = functional.max_pool2d(h, kernel_size=2, stride=2)
        for conv in block.convs:
            h = functional.relu(conv(h))
        projection = block.projection(h)
        projections.append(
            functional.interpolate(
                projection, size=pixels.shape[2:], mode="bilinear", align_corners=False
            )
        )
    return torch.sigmoid(torch.cat(projections, dim=1).mean(dim=1))


def _hed_state(weights: Path, control: Control) -> dict[str, Any]:
    folder = _folder(weights, HED_FOLDER, control)
    if (folder / HED_SAFETENSORS).is_file():
        from safetensors.torch import load_file

        return dict(load_file(folder / HED_SAFETENSORS))
    if (folder / HED_PTH).is_file():
        import torch

        return dict(torch.load(folder / HED_PTH, map_location="cpu", weights_only=True))
    raise InferenceError(f"neither {HED_SAFETENSORS} nor {HED_PTH} is in {folder}")


def hed(rgb: Array, weights: Path, control: Control = Control.SOFTEDGE) -> Array:
    """HED soft edges (0..255 grey, bright on edges) at ControlNet's 512-pixel working size."""
    import torch

    from lilypad.ml import determinism, predictor

    network = predictor.load_once(
        ("annotator", "hed", str(_folder(weights, HED_FOLDER, control)), str(determinism.device())),
        lambda: hed_network(_hed_state(weights, control)).to(
            device=determinism.device(), dtype=torch.float32
        ).eval(),
    )  # fmt: skip
    x = _resized(rgb, _detect_size(*rgb.shape[:2]))
    pixels = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]  # 0..255, RGB
    with torch.no_grad():
        edges = _hed_edges(network, pixels.to(determinism.device()))[0].cpu().numpy()
    return np.asarray((edges.astype(np.float64) * 255).clip(0, 255).astype(np.uint8))


def _thin(edges: Array, threshold: int, sigma: float) -> Array:
    """Non-maximum suppression: after a Gaussian blur, keep the pixels that are the largest of
    their line through the 3x3 neighbourhood in one of four directions, and above ``threshold``."""
    import cv2

    blurred = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), sigma)
    kept = np.zeros_like(blurred)
    directions = (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )  # fmt: skip
    for direction in directions:
        ridge = cv2.dilate(blurred, np.asarray(direction, dtype=np.uint8)) == blurred
        kept[ridge] = blurred[ridge]
    return np.where(kept > threshold, 255, 0).astype(np.uint8)


def scribble(rgb: Array, weights: Path) -> Array:
    """ControlNet's scribble from HED: the soft edges at the image's size, thinned (non-maximum
    suppression over a sigma-3 blur, kept above 127), blurred again (sigma 3), and every pixel
    above 4 made white: bold white strokes on black, as a hand scribble."""
    import cv2

    edges = _to_image_size(hed(rgb, weights, Control.SCRIBBLE), rgb, linear=True)
    thinned = _thin(edges, 127, 3.0)
    bold = cv2.GaussianBlur(thinned, (0, 0), 3.0)
    return np.where(bold > 4, 255, 0).astype(np.uint8)


_MAKERS: dict[Control, Callable[[Array, Path], Array]] = {
    Control.CANNY: lambda rgb, _weights: canny(rgb),
    Control.DEPTH: depth,
    Control.OPENPOSE: openpose,
    Control.SCRIBBLE: scribble,
    Control.LINEART: lambda rgb, _weights: lineart(rgb),
    Control.SOFTEDGE: hed,
    Control.MLSD: lambda rgb, _weights: mlsd(rgb),
    Control.SEGMENTATION: segmentation,
    Control.NORMAL: normal,
}
