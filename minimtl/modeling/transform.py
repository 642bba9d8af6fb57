"""From a list of images of any size to one padded batch, and back (torchvision's GeneralizedRCNNTransform).

1. Normalise: (image - mean) / std per channel (ImageNet statistics by default).
2. Resize so that the shorter side is min_size, unless the longer side would then exceed max_size
   (then the longer side is max_size); bilinear for images, nearest for masks and semantic label
   maps; boxes scaled alike.
   In training, min_size may be a tuple: one value is drawn per image (multi-scale training).
3. Batch: pad every image with zeros at the bottom and right to the batch's largest size, rounded up
   to a multiple of 32, so that every level of a stride-32 pyramid has whole cells.
After the model, `postprocess` scales the detections back to each original image and pastes the
masks into it.

Shapes: images list of (3, H_i, W_i) -> batch (N, 3, Hb, Wb); image_sizes [(h_i, w_i)] after resizing.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimtl.modeling.mask_head import paste_masks_in_image


class ImageTransform(nn.Module):
    def __init__(
        self,
        min_size=800,
        max_size=1333,
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
        size_divisible: int = 32,
    ):
        super().__init__()
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.size_divisible = size_divisible

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """-> (batch (N, 3, Hb, Wb), image_sizes [(h, w)], targets resized to match)."""
        targets = [dict(t) for t in targets] if targets is not None else None  # never modify the caller's
        resized = []
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"images[{i}] must be a Tensor[3, H, W], got shape {tuple(image.shape)}")
            if not image.is_floating_point():
                raise TypeError(f"images[{i}] must be floating point with values in [0, 1], got {image.dtype}")
            image, target = self.resize(self.normalize(image), targets[i] if targets is not None else None)
            resized.append(image)
            if targets is not None:
                targets[i] = target
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized]
        return self.batch(resized), image_sizes, targets

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: Tensor, target: dict[str, Tensor] | None):
        h, w = image.shape[-2:]
        if self.training and len(self.min_size) > 1:
            size = self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
        else:
            size = self.min_size[-1]
        scale = min(size / min(h, w), self.max_size / max(h, w))
        image = F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]
        if target is None:
            return image, None
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "masks" in target:
            masks = target["masks"][:, None].float()
            masks = F.interpolate(masks, scale_factor=scale, recompute_scale_factor=True)[:, 0]
            target["masks"] = masks.byte()
        if "semantic" in target:  # a label map: nearest neighbour, never a blend of two labels
            semantic = target["semantic"][None, None].float()
            semantic = F.interpolate(semantic, scale_factor=scale, recompute_scale_factor=True)[0, 0]
            target["semantic"] = semantic.to(torch.int64)
        return image, target

    def batch(self, images: list[Tensor]) -> Tensor:
        """Zero-pad to the largest height and width, rounded up to a multiple of size_divisible."""
        stride = float(self.size_divisible)
        height = int(math.ceil(max(img.shape[-2] for img in images) / stride) * stride)
        width = int(math.ceil(max(img.shape[-1] for img in images) / stride) * stride)
        batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        for img, slot in zip(images, batch, strict=True):
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch

    def postprocess(self, detections, image_sizes, original_sizes) -> list[dict[str, Tensor]]:
        """Detections from the resized images back to the originals; masks (D, 1, H, W) pasted."""
        for d, size, original in zip(detections, image_sizes, original_sizes, strict=True):
            d["boxes"] = resize_boxes(d["boxes"], size, original)
            if "masks" in d:
                d["masks"] = paste_masks_in_image(d["masks"], d["boxes"], original)
        return detections


def resize_boxes(boxes: Tensor, original_size, new_size) -> Tensor:
    """Boxes (K, 4) from an image of original_size (h, w) to one of new_size."""
    ratio_h, ratio_w = (
        torch.tensor(s, dtype=torch.float32, device=boxes.device)
        / torch.tensor(s_orig, dtype=torch.float32, device=boxes.device)
        for s, s_orig in zip(new_size, original_size, strict=True)
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)
