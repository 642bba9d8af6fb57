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
The EXIF orientation tag (how a camera says "turn me upright") is applied only when asked
(`orient=True`): by default the pixels are taken as stored, which is how torchvision's CocoDetection
and OpenCV-free tools see them. Annotation tools disagree (browsers and OpenCV turn the image,
Pillow does not), so CocoDataset decides per image from the annotation file's width and height, and
`predict` turns photos upright, as any image viewer shows them (see `turns_size`).

Every file minimtl reads with Pillow is opened by `open_image`, so that each failure is one clear
error naming the file: a missing file is FileNotFoundError; a file Pillow cannot identify, a truncated
or corrupt one, or one over Pillow's pixel limit is ImageFileError (a ValueError). The limit (twice
PIL.Image.MAX_IMAGE_PIXELS, about 179 million pixels) guards against "decompression bombs"; a photo
that large would need over 2 GB as a float tensor anyway. read_image keeps it and says to cut such
an image into tiles; the converters and the tiler, which read files a user points them at in order
to cut them, open any size (`any_size=True`).
"""

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ORIENTATION_TAG = 0x0112  # EXIF "Orientation"


class ImageFileError(ValueError):
    """An image file that cannot be used: not an image, cut short or corrupt, or too large. The
    command line reports it in one line, also when it is found in the middle of a run."""


class ImageTooLargeError(ImageFileError):
    """More pixels than Pillow decodes as one image: to be cut into tiles first. `convert` is what the
    message's `data convert` command reads (a caller that knows the annotation file names it)."""

    def __init__(self, who: str, path, width: int, height: int, limit: int, convert: str = "--from ..."):
        self.fields = who, path, width, height, limit, convert
        who = f"{who}: " if who else ""
        super().__init__(
            f"{who}{path} is {width} x {height} = {width * height:,} pixels, more than Pillow decodes as one image "
            f"({2 * limit:,}: twice PIL.Image.MAX_IMAGE_PIXELS); cut it into tiles first (python -m minimtl data "
            f"convert {convert} --tile 1024)"
        )
        self.width, self.height, self.limit = width, height, limit

    def __reduce__(self):  # raised in a DataLoader worker, it is pickled back to the main process
        return ImageTooLargeError, self.fields


@contextmanager
def open_image(path, *, decode: bool = True, any_size: bool = False, who: str = "read_image"):
    """`with open_image(path) as im:` Pillow's Image.open, every failure to read the file one error
    naming it (`who` starts the message). decode=True decodes the pixels here (Pillow is lazy), so that
    a truncated file fails here too; decode=False reads the header only (the size, the mode).
    any_size=True lifts Pillow's pixel limit while the block runs (a global of Pillow's: not thread-safe)."""
    from PIL import Image, UnidentifiedImageError  # imported here: only reading images needs Pillow

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{who}: {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    limit = Image.MAX_IMAGE_PIXELS
    failures = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)
    try:
        if any_size:
            Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        except failures as error:
            raise _read_error(error, path, who, limit) from None
        with im:
            if decode:
                try:
                    im.load()
                except failures as error:  # truncated or corrupt data
                    raise _read_error(error, path, who, limit) from None
            yield im
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _read_error(error: Exception, path: Path, who: str, limit: int) -> ImageFileError:
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return ImageFileError(f"{who}: {path} is not an image file Pillow can read")
    if not isinstance(error, Image.DecompressionBombError):
        return ImageFileError(f"{who}: {path} could not be read: {error}")
    with open_image(path, decode=False, any_size=True) as im:  # the header only
        width, height = im.size
    return ImageTooLargeError(who, path, width, height, limit)


def exif_orientation(im) -> int:
    """The EXIF orientation (1..8; 1: upright as stored) of an open Pillow image; 1 without a valid tag.
    Reads the header only: a PNG's EXIF chunk is looked for before the pixels, where cameras put it
    (Pillow would decode the whole image to look after them)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError):  # a damaged EXIF block: as if there were none
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def turns_size(orientation: int) -> bool:
    """Whether turning an image upright by this EXIF orientation swaps its width and height (5..8:
    a quarter turn, with or without a flip; 2..4 are flips and a half turn)."""
    return orientation >= 5


def read_image(path, *, orient: bool = False) -> Tensor:
    """The image at `path` as a (3, H, W) float32 tensor in [0, 1]; orient=True turns it upright by
    its EXIF orientation tag first (H and W are then those of the turned image)."""
    from PIL import ImageOps

    with open_image(path) as im:
        if orient and exif_orientation(im) != 1:
            im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16") or im.mode == "I":
            grey = np.asarray(im).astype(np.float32) / 65535  # (H, W)
        elif im.mode == "F":
            grey = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        else:
            try:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255  # (H, W, 3)
            except ValueError as error:  # a mode Pillow cannot convert
                raise ImageFileError(f"read_image: {path} could not be read: {error}") from None
            return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    grey = torch.from_numpy(np.clip(grey, 0, 1))  # (H, W)
    return grey.expand(3, *grey.shape).contiguous()  # (3, H, W)
