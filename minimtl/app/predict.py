"""Prediction at scale: a checkpoint's detections on image files, as a COCO results file.

    python -m minimtl predict --checkpoint runs/train/last.pt --images photos/ 'more/*.png' --out preds/

writes preds/predictions.json, COCO's results format (one entry per detection):

    {"image_id": 3, "category_id": 7, "bbox": [x, y, w, h], "score": 0.93,
     "segmentation": {"size": [H, W], "counts": "..."}}   # compressed RLE, minimtl's own encoder

with the category ids of the annotation file the model was trained on, and preds/images.json, the
images' ids, file names and sizes (together they make a COCO file that any COCO tool reads). With
--draw, one picture per image beside them. The images stream through the model one batch at a time,
and each detection's mask is kept only as its RLE string, so memory does not grow with the number
of images. Photos are turned upright by their EXIF orientation first, as image viewers show them: the
boxes, masks and sizes are those of the upright image.
"""

import glob
import json
from pathlib import Path

from torch.utils.data import Dataset

from minimtl.data.images import read_image
from minimtl.data.masks import encode_rle
from minimtl.engine import pick_device
from minimtl.engine.inference import iter_predictions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def find_images(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in the order given."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(
                Path(p) for p in glob.glob(item, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES
            )
        if not matches:
            raise FileNotFoundError(
                f"--images {item}: no image file there (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        found += [p for p in matches if p not in found]
    return found


class ImageFiles(Dataset):
    """Image files as a dataset: (image (3, H, W), {"id": i + 1, "file_name", "height", "width"})."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        image = read_image(self.paths[index], orient=True)
        info = {"id": index + 1, "file_name": str(self.paths[index]), "height": image.shape[1], "width": image.shape[2]}
        return image, info


def coco_results(image_id: int, prediction: dict, category_ids: list[int] | None) -> list[dict]:
    """One image's detections in COCO's results format (boxes xywh; masks as compressed RLE)."""
    out = []
    boxes = prediction["boxes"].tolist()
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        label = int(prediction["labels"][k])
        entry = {
            "image_id": image_id,
            "category_id": category_ids[label - 1] if category_ids else label,
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(prediction["scores"][k]), 5),
        }
        if "masks" in prediction:
            entry["segmentation"] = encode_rle(prediction["masks"][k].numpy())
        out.append(entry)
    return out


def predict_images(model, meta: dict, paths: list[Path], out: Path, device="auto", draw: bool = False,
                   score_threshold: float = 0.5, batch_size: int = 4, log=print) -> dict:  # fmt: skip
    """Run `model` on `paths`, write out/predictions.json and out/images.json (and pictures). Returns counts."""
    out.mkdir(parents=True, exist_ok=True)
    dataset = ImageFiles(paths)
    images, count = [], 0
    with open(out / "predictions.json", "w") as results:  # written as it comes: nothing accumulates
        results.write("[")
        for index, prediction, info in iter_predictions(model, dataset, batch_size, pick_device(device)):
            images.append(info)
            for entry in coco_results(info["id"], prediction, meta.get("category_ids")):
                results.write(("," if count else "") + "\n" + json.dumps(entry))
                count += 1
            kept = int((prediction["scores"] >= score_threshold).sum())
            line = f"{paths[index]}: {kept} detections with score >= {score_threshold}"
            if draw:
                from minimtl import plots

                picture = out / (paths[index].stem + "_detections.png")
                image = read_image(paths[index], orient=True)
                plots.save_detections([image], [prediction], picture, meta["classes"], score_threshold, columns=1)
                line += f" -> {picture}"
            log(line)
        results.write("\n]\n")
    (out / "images.json").write_text(json.dumps({"images": images, "categories": _categories(meta)}, indent=1))
    return {"images": len(images), "detections": count}


def _categories(meta: dict) -> list[dict]:
    ids = meta.get("category_ids") or list(range(1, len(meta["classes"])))
    return [{"id": cid, "name": name} for cid, name in zip(ids, meta["classes"][1:], strict=True)]
