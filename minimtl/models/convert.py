"""torchvision checkpoints -> minimtl: the same network, other names.

    state_dict = torch.load("maskrcnn_resnet50_fpn_coco.pth")        # torchvision's, on your disk
    model = maskrcnn_resnet50_fpn(num_classes=91, norm="frozen_bn", norm_eps=0.0)
    model.load_state_dict(convert_torchvision_state_dict(state_dict))  # strict

torchvision's COCO checkpoints (v1) were trained with frozen BatchNorm and eps 0.0, hence the two
settings above. A checkpoint of a model built without pretrained weights uses plain BatchNorm
(norm="bn", the default).
"""

import re

from torch import Tensor

# (torchvision's key, minimtl's key), first match wins. Both the current and the old (version 1)
# torchvision layouts are understood.
_RENAMES = [
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?", r"fpn.lateral_convs.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?", r"fpn.output_convs.\1."),
    (r"^rpn\.head\.conv\.(?:0\.0\.)?", "rpn.head.conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.", "roi_heads.box_head."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_predictor."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask_head.convs.convs.\1."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", None),  # old layout, numbered from 1: see below
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.predictor.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor.logits."),
]


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        match = re.match(pattern, key)
        if not match:
            continue
        if replacement is None:  # mask_fcn1..4 -> convs.0..3
            return f"roi_heads.mask_head.convs.convs.{int(match.group(1)) - 1}." + key[match.end() :]
        return re.sub(pattern, replacement, key, count=1)
    raise KeyError(f"convert_torchvision_state_dict: no minimtl parameter corresponds to torchvision's {key!r}")


def convert_torchvision_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision Faster/Mask R-CNN ResNet-FPN state dict with minimtl's parameter names."""
    return {_rename(key): value for key, value in state_dict.items()}
