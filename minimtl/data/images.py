"""Reading an image file into the tensor every model in minimtl takes: (3, H, W) float32 in [0, 1].

One function, so that every dataset reads images the same way. Pillow (which comes with matplotlib)
does the decoding; what differs is how each kind of pixel becomes [0, 1]:

    8-bit modes (RGB, RGBA, L, P, LA, CMYK, 1, ...)   converted to RGB by Pillow, then / 255
                                                      (an alpha channel is dropped, not composited)
    16-bit greyscale ("I;16", "I;16B", "I;16L")       / 65535
    32-bit integer greyscale ("I", how Pillow may     / 65535, clamped to [0, 1]: in practice a
        open a 16-bit PNG)                            16-bit image widened, so 65535 is white
    32-bit float greyscale ("F")                      clamped to [0, 1] (NaN -> 0)

A greyscale image is repeated to 3 channels. Multi-frame files (GIF, TIFF) give their first frame.
The EXIF orientation tag is not applied: the pixels are taken as stored, which is how COCO's
height and width (and torchvision's CocoDetection) see them.
"""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def read_image(path) -> Tensor:
    """The image at `path` as a (3, H, W) float32 tensor in [0, 1]."""
    from PIL import Image, UnidentifiedImageError  # imported here: only reading images needs Pillow

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_image: {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode == "I":
                grey = np.asarray(im).astype(np.float32) / 65535  # (H, W)
            elif im.mode == "F":
                grey = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255  # (H, W, 3)
                return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    except UnidentifiedImageError:
        raise ValueError(f"read_image: {path} is not an image file Pillow can read") from None
    except (OSError, ValueError) as error:  # truncated or corrupt data, a mode Pillow cannot convert
        raise ValueError(f"read_image: {path} could not be read: {error}") from None
    grey = torch.from_numpy(np.clip(grey, 0, 1))  # (H, W)
    return grey.expand(3, *grey.shape).contiguous()  # (3, H, W)
