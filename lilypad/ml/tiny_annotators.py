"""Tiny random weights of the ControlNet preprocessors' networks (``tiny.ensure("annotators")``).

Each network is its real architecture at a fraction of the width, saved in the subfolder
:mod:`lilypad.ml.annotators` reads, in the format the real weights come in there (transformers
folders; HED's state dict, as safetensors), with image processors that work at tiny sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lilypad.ml import annotators as ann

_SIZE = 64  # the processors' input size (real: 384 DPT, 512 UperNet, 256x192 ViTPose)
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def _outputs(**stages: list[Any]) -> dict[str, Any]:
    """A backbone's ``out_features``/``out_indices`` (accepted by its config's ``__init__``,
    though not in its typed signature)."""
    return stages


def _dpt_hybrid(directory: Path) -> None:
    """DPT-Hybrid (Intel/dpt-hybrid-midas): a BiT ResNet stem feeding a ViT, four reassembled
    levels fused into a depth head."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    backbone = BitConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 32],
        depths=[1, 1, 1],
        layer_type="bottleneck",
        global_padding="SAME",
        num_groups=4,
        embedding_dynamic_padding=True,
        **_outputs(out_features=["stage1", "stage2", "stage3"]),
    )
    config = DPTConfig(
        is_hybrid=True,
        backbone_config=backbone,
        backbone_featmap_shape=[1, 32, _SIZE // 16, _SIZE // 16],
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=_SIZE,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_in_index=-1,
        use_auxiliary_head=False,
    )
    DPTForDepthEstimation(config).save_pretrained(directory, safe_serialization=True)
    processor = DPTImageProcessorPil(
        size={"height": _SIZE, "width": _SIZE},
        keep_aspect_ratio=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor.save_pretrained(directory)


def _upernet_convnext(directory: Path) -> None:
    """UperNet on a ConvNeXt backbone (openmmlab/upernet-convnext-small), ADE20K's 150 classes."""
    from transformers import (
        ConvNextConfig,
        SegformerImageProcessorPil,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    backbone = ConvNextConfig(
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        **_outputs(out_features=["stage1", "stage2", "stage3", "stage4"]),
    )
    labels = {i: f"class_{i}" for i in range(len(ann.ADE20K_PALETTE))}
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        auxiliary_in_channels=32,
        auxiliary_channels=8,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    UperNetForSemanticSegmentation(config).save_pretrained(directory, safe_serialization=True)
    processor = SegformerImageProcessorPil(
        size={"height": _SIZE, "width": _SIZE},
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        do_reduce_labels=False,
    )
    processor.save_pretrained(directory)


def _vitpose(directory: Path) -> None:
    """ViTPose with the simple decoder (usyd-community/vitpose-base-simple): COCO's 17 keypoints."""
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessorPil,
    )

    height, width = _SIZE, _SIZE * 3 // 4  # the real 256x192's aspect
    backbone = VitPoseBackboneConfig(
        image_size=[height, width],
        patch_size=[8, 8],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        **_outputs(out_indices=[2]),
    )
    labels = {i: f"keypoint_{i}" for i in range(17)}
    config = VitPoseConfig(
        backbone_config=backbone,
        use_simple_decoder=True,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    VitPoseForPoseEstimation(config).save_pretrained(directory, safe_serialization=True)
    processor = VitPoseImageProcessorPil(
        size={"height": height, "width": width},
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
    )
    processor.save_pretrained(directory)


def _hed(directory: Path) -> None:
    """ControlNet's HED (lllyasviel/Annotators ControlNetHED.pth): its five VGG-like blocks, each
    with its real number of convolutions, at a fraction of the channels."""
    from safetensors.torch import save_file

    network = ann.hed_network(widths=(4, 8, 8, 16, 16))
    state = {k: v.contiguous() for k, v in network.state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, directory / ann.HED_SAFETENSORS)


def annotators(directory: Path) -> None:
    """Write every preprocessor network's tiny weights into ``directory``'s subfolders."""
    _dpt_hybrid(directory / ann.DEPTH_FOLDER)
    _upernet_convnext(directory / ann.SEGMENTATION_FOLDER)
    _vitpose(directory / ann.POSE_FOLDER)
    _hed(directory / ann.HED_FOLDER)
