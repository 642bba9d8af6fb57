"""ImageNet weights for the backbone: load a torchvision ResNet checkpoint from disk.

A detector starts from a backbone trained on ImageNet classification (Mask R-CNN, He et al. 2017,
section 3.1 "Implementation Details"). Save the weights once, where torchvision is installed, then:

    # once: torch.save(torchvision.models.resnet50(weights="IMAGENET1K_V1").state_dict(), "resnet50.pth")
    model = minimtl.models.maskrcnn_resnet50_fpn(num_classes=91, norm="frozen_bn", trainable_backbone_layers=3)
    minimtl.models.load_backbone_weights(model, "resnet50.pth")  # {"loaded": 265, "ignored": ["fc.weight", ...], ...}

The file may hold the plain state dict, or one nested under "state_dict" or "model", its keys
prefixed by "module." (DataParallel) or "backbone.body."/"backbone."; the classifier (fc.*) is
dropped. minimtl's ResNet uses torchvision's module names, so nothing else is renamed.

Why norm="frozen_bn". BatchNorm in training normalises with the statistics of the current batch.
ImageNet training had 256 images per batch; a detector trains on 1-2 images of 800x1333 per GPU,
whose per-channel means and variances are noisy estimates from a few correlated images, and it
would then be tested with running averages of those noisy numbers. Frozen BatchNorm keeps the
pretrained mean, variance and affine parameters: each BatchNorm becomes a fixed y = x * scale + shift
(cheaper too). Keep norm_eps at 1e-5, the eps the ImageNet weights were trained with (torchvision's
COCO detection checkpoints use 0.0; see convert.py). With norm="bn" the statistics load too, but
train mode renormalises with the batch's. norm="gn" has no running statistics to take: GroupNorm
suits training from scratch (Wu & He, "Group Normalization", 2018).

trainable_backbone_layers=3 (torchvision's default with pretrained weights) trains layer2..layer4
and keeps the stem and layer1, whose edge and colour filters ImageNet already learnt, fixed. The
images must be normalised as in ImageNet training: RCNNConfig's image_mean and image_std are that.
"""

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from minimtl.modeling.backbone import ResNet
from minimtl.models.rcnn import RCNN

# Blocks per stage -> name, for BasicBlock (ResNet-18/34) and Bottleneck (ResNet-50/101/152).
_ARCHITECTURES = {
    ("BasicBlock", (2, 2, 2, 2)): "resnet18",
    ("BasicBlock", (3, 4, 6, 3)): "resnet34",
    ("Bottleneck", (3, 4, 6, 3)): "resnet50",
    ("Bottleneck", (3, 4, 23, 3)): "resnet101",
    ("Bottleneck", (3, 8, 36, 3)): "resnet152",
}
_WRAPPERS = ("state_dict", "model")  # what training scripts nest the weights under
_PREFIXES = ("module.", "backbone.body.", "backbone.")  # DataParallel; a detector's backbone


def load_backbone_weights(model_or_backbone: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> dict:
    """Load an ImageNet ResNet checkpoint (torchvision's names) into the backbone of an RCNN.

    Args:
        model_or_backbone: an RCNN or MultiTaskRCNN (its .backbone is loaded) or a ResNet.
        path: a file written by torch.save(resnet.state_dict(), path); read with weights_only=True.
        strict: True: every backbone tensor must come from the file and every file tensor (but fc.*)
            must have a place in the backbone. False: load the keys both have, report the rest.
            A shape mismatch is an error either way.

    Returns:
        {"loaded": number of tensors copied into the backbone, "ignored": the file's keys not loaded
        (fc.*, num_batches_tracked that frozen BatchNorm has no use for, and with strict=False the
        keys the backbone lacks), "missing": backbone keys the file lacks (strict=False only)}.
    """
    backbone = _backbone_of(model_or_backbone)
    state = _read_state_dict(path)
    ours = backbone.state_dict()
    where = f"load_backbone_weights: {os.fspath(path)}"

    if any(isinstance(m, nn.GroupNorm) for m in backbone.modules()) and any(
        k.endswith((".running_mean", ".running_var")) for k in state
    ):
        raise ValueError(
            f"{where} holds BatchNorm statistics (running_mean, running_var), which a GroupNorm backbone "
            f'(norm="gn") cannot use; build the model with norm="frozen_bn" (or "bn") to load ImageNet weights'
        )

    ignored = [k for k in state if k.startswith("fc.")]
    # num_batches_tracked counts BatchNorm2d's updates; FrozenBatchNorm2d drops it on load, and a
    # BatchNorm2d given a file without it starts the count at 0 (checkpoints before torch 0.4.1).
    ignored += [k for k in state if k.endswith("num_batches_tracked") and k not in ours]
    unexpected = [k for k in state if k not in ours and k not in ignored]
    missing = [k for k in ours if k not in state and not k.endswith("num_batches_tracked")]
    if strict and (unexpected or missing):
        raise ValueError(_key_mismatch_message(where, state, ours, unexpected, missing))

    shared = [k for k in ours if k in state]
    mismatched = [k for k in shared if state[k].shape != ours[k].shape]
    if mismatched:
        k = mismatched[0]
        also = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        if _width(ours) != _width(state):
            why = (
                f"ImageNet weights need backbone_width=64 (the model's stem has {_width(ours)} channels, "
                f"the file's {_width(state)})"
            )
        else:  # e.g. wide_resnet50_2 or resnext50_32x4d: resnet50's names, other block widths
            why = (
                f"the stems agree ({_width(ours)} channels; ImageNet weights need backbone_width=64), the blocks don't"
            )
        raise ValueError(
            f"{where}: {k} has shape {tuple(state[k].shape)} in the file but {tuple(ours[k].shape)} in the "
            f"model{also}; {why}"
        )

    # num_batches_tracked goes along even where the model has none: FrozenBatchNorm2d drops it itself.
    to_load = {k: state[k] for k in state if k in ours or k.endswith("num_batches_tracked")}
    backbone.load_state_dict(to_load, strict=False)  # the key checks above are this function's strictness
    if not strict:
        ignored += unexpected
    return {"loaded": len(shared), "ignored": ignored, "missing": [] if strict else missing}


def _backbone_of(model: nn.Module) -> ResNet:
    if isinstance(model, ResNet):
        return model
    if isinstance(model, RCNN):  # MultiTaskRCNN too
        return model.backbone
    raise TypeError(f"load_backbone_weights: expected an RCNN, a MultiTaskRCNN or a ResNet, got {type(model).__name__}")


def _read_state_dict(path) -> dict[str, Tensor]:
    where = f"load_backbone_weights: {os.fspath(path)}"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    if not os.path.isfile(path):
        raise IsADirectoryError(f"{where} is a directory, not a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickled nn.Module, a file that is not torch's, a truncated download
        reason = _load_failure(error)
        raise ValueError(
            f"{where} could not be read as a state dict by torch.load(..., weights_only=True): {reason}; "
            "save the weights with torch.save(resnet.state_dict(), path)"
        ) from error
    for wrapper in _WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{where} is not a state dict: it holds {_kind(state)}, not a dict of name -> Tensor")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"{where} is not a state dict: {bad[0]!r} holds {_kind(state[bad[0]])}, not a Tensor "
            f"(keys at the top: {sorted(map(str, state))[:5]}; weights nested under {' or '.join(_WRAPPERS)} are found)"
        )
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _load_failure(error: Exception) -> str:
    """The reason in torch.load's error, which is a page long and suggests weights_only=False (the
    whole text stays in the chained exception)."""
    text = " ".join(str(error).split())
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return f"it pickles a {found.group(1)}, not only tensors"
    if found := re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text):
        return f"the weights-only unpickler refused it ({found.group(1)})"
    return text or f"{type(error).__name__}: the file is empty or cut short"


def _kind(value) -> str:
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping) and not value:
        return "an empty dict"
    return f"a {type(value).__name__}"


def _key_mismatch_message(where: str, state, ours, unexpected: list[str], missing: list[str]) -> str:
    parts = [
        f"{where} does not fit the backbone: the file looks like {_describe(state)}; the model is {_describe(ours)}."
    ]
    if unexpected:
        parts.append(f"Keys the backbone lacks: {_few(unexpected)}.")
    if missing:
        parts.append(f"Backbone tensors the file lacks: {_few(missing)}.")
    if any(k.startswith(("fpn.", "rpn.", "roi_heads.")) for k in state):
        parts.append("It holds a whole detector: use model.load_state_dict (and convert_torchvision_state_dict).")
    elif (name := _name(state)) in ("resnet18", "resnet34", "resnet50") and name != _name(ours):
        parts.append(f"Build the model with backbone={name!r}.")
    else:
        parts.append("strict=False loads the keys both have and reports the rest.")
    return " ".join(parts)


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def _blocks(keys) -> tuple[str, tuple[int, ...]]:
    """(block type, blocks per stage) read off the key names."""
    block = "Bottleneck" if "layer1.0.conv3.weight" in keys else "BasicBlock"
    counts = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(indices) + 1 if indices else 0)
    return block, tuple(counts)


def _name(keys) -> str | None:
    return _ARCHITECTURES.get(_blocks(keys))


def _describe(keys) -> str:
    block, counts = _blocks(keys)
    conv3 = "layer1.0.conv3 present" if block == "Bottleneck" else "no layer1.0.conv3"
    details = f"{block} blocks, {conv3}"
    if not any(counts):
        return f"no ResNet (no layer1..layer4 keys; first keys {_few(sorted(keys))})"
    return f"{_name(keys) or f'a ResNet with {counts} blocks per stage'} ({details})"


def _width(state) -> str:
    return str(state["conv1.weight"].shape[0]) if "conv1.weight" in state else "unknown"
