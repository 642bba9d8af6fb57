"""Inference over a dataset, streamed: one batch in memory at a time.

iter_predictions   yields (index, prediction, target) per image, in dataset order, prediction on the
                   CPU with masks binarised at the image's size: (D, H, W) bool, 1 byte a pixel, not
                   the model's (D, 1, H, W) float32 probabilities (4 bytes)
evaluate_dataset   one pass that feeds a CocoEvaluator per IoU type, a semantic confusion matrix and
                   the image head's scores: memory grows with the number of detections, not with
                   the images' area
predict            every prediction in a list, for small sets (notebooks, pictures)

Memory: the model's full-resolution float masks live on the device for one batch; only their bool
copy crosses to the CPU. A COCO validation image (about 640 x 480, 100 detections) is then 31 MB of
bool masks instead of 123 MB of floats, and evaluate_dataset drops it once the image is matched.
"""

import torch
from torch.utils.data import DataLoader

from minimtl.data.loader import collate
from minimtl.evaluation.classification import multilabel_metrics
from minimtl.evaluation.coco import CocoEvaluator
from minimtl.evaluation.semantic import confusion_matrix, scores_from_confusion
from minimtl.modeling.image_head import image_targets


def iter_predictions(
    model, dataset, batch_size=4, device=None, num_workers=0, progress=False, mask_threshold: float | None = 0.5
):
    """Yields (index, prediction, target) per image, in dataset order; prediction tensors on the CPU,
    masks (if any) as bool (D, H, W) at the image's size (foreground where probability > mask_threshold;
    mask_threshold=None keeps the model's (D, 1, H, W) probabilities): one batch in memory at a time.

    The model is put in eval mode (and left there, as `predict` always did)."""
    index = 0
    batches = _batches(model, dataset, batch_size, device, num_workers, progress, mask_threshold)
    for _, predictions, targets in batches:
        for prediction, target in zip(predictions, targets, strict=True):
            yield index, prediction, target
            index += 1


def predict(
    model, dataset, batch_size: int = 4, device=None, num_workers: int = 0, progress: bool = False, mask_threshold=0.5
):
    """(predictions, targets): one dict per image, in the dataset's order, all held in memory: for small
    sets. Masks are (D, H, W) bool as iter_predictions gives them (mask_threshold=None: the model's
    (D, 1, H, W) float probabilities). Large sets: iter_predictions or evaluate_dataset."""
    predictions, targets = [], []
    stream = iter_predictions(
        model,
        dataset,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
        mask_threshold=mask_threshold,
    )
    for _, prediction, target in stream:
        predictions.append(prediction)
        targets.append(target)
    return predictions, targets


def evaluate_dataset(
    model,
    dataset,
    iou_types=("bbox", "segm"),
    batch_size: int = 8,
    device=None,
    keep: int = 8,
    num_semantic_classes: int | None = None,
    ignore_index: int = 255,
    num_workers: int = 0,
    progress: bool = False,
    num_classes: int | None = None,
):
    """Score a model on a dataset in one streamed pass. Returns (results, kept):

    results[iou_type]    for each of iou_types ("bbox", "segm"):
        "stats"          COCO's 12 numbers, as `evaluate` returns them
        "per_class"      {label: {"AP", "AP50", "AP75"}}, as CocoEvaluator.per_class
        "precision", "recall", "categories"   as `evaluate_curves` (precision-recall pictures)
    results["semantic"]  {"mIoU", "IoU", "pixel_accuracy"} as `mean_iou`, when the predictions have
                         "semantic" (H, W) label maps: a (C, C) confusion matrix summed over images
                         (pixels labelled ignore_index skipped). C = num_semantic_classes, or None: the
                         largest label seen + 1 (only the length of "IoU" depends on it)
    results["image"]     multilabel_metrics of the image head's "image_scores" (N, C-1) against the classes
                         present in each target (crowds left out), when the predictions have them;
                         C = num_classes, which they need
    results["num_images"]
    kept                 the first `keep` (image, prediction, target) triples, for pictures

    Masks are binarised at 0.5, as `evaluate` binarises probabilities.
    """
    evaluators = {iou_type: CocoEvaluator(iou_type) for iou_type in iou_types}
    matrix = None  # (C, C) semantic confusion counts, summed over images
    scores, present = [], []  # the image head's (C-1,) scores and each image's classes, (C-1,) multi-hot
    kept, num_images = [], 0
    batches = _batches(model, dataset, batch_size, device, num_workers, progress, mask_threshold=0.5)
    for images, predictions, targets in batches:
        for image, prediction, target in zip(images, predictions, targets, strict=True):
            for evaluator in evaluators.values():
                evaluator.add(prediction, target)
            if "semantic" in prediction:
                if "semantic" not in target:
                    raise ValueError(
                        f"evaluate_dataset: the predictions have 'semantic' label maps but targets[{num_images}] "
                        f"has none (its keys: {sorted(target)})"
                    )
                semantic = prediction["semantic"], target["semantic"]
                matrix = _add_confusion(matrix, *semantic, num_semantic_classes, ignore_index)
            if "image_scores" in prediction:
                if num_classes is None:
                    raise ValueError("evaluate_dataset: the predictions have 'image_scores': give num_classes")
                scores.append(prediction["image_scores"])
                present.append(image_targets([target], num_classes)[0])
            if len(kept) < keep:
                kept.append((image, prediction, target))
            num_images += 1
    results = {}
    for iou_type, evaluator in evaluators.items():
        precision, recall, categories = evaluator.curves()
        results[iou_type] = {
            "stats": evaluator.summarize(),
            "per_class": evaluator.per_class(),
            "precision": precision,
            "recall": recall,
            "categories": categories,
        }
    if matrix is not None:
        results["semantic"] = scores_from_confusion(matrix)
    if scores:
        results["image"] = multilabel_metrics(torch.stack(scores), torch.stack(present))
    results["num_images"] = num_images
    return results, kept


@torch.no_grad()
def _batches(model, dataset, batch_size, device, num_workers, progress, mask_threshold):
    """(images, predictions, targets) per batch; predictions on the CPU, masks as iter_predictions says."""
    device = device or next(model.parameters()).device
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="predict", dynamic_ncols=True)
    for images, targets in loader:
        outputs = model([img.to(device) for img in images])
        yield images, [_to_cpu(out, mask_threshold) for out in outputs], targets


def _to_cpu(output: dict, mask_threshold: float | None) -> dict:
    out = {}
    for key, value in output.items():
        if key == "masks" and mask_threshold is not None:
            # thresholded on the device: a quarter of the bytes cross to the CPU
            value = (value[:, 0] if value.dim() == 4 else value) > mask_threshold  # (D, H, W) bool
        out[key] = value.cpu()
    return out


def _add_confusion(matrix, prediction, target, num_classes: int | None, ignore_index: int) -> torch.Tensor:
    """matrix + the image's (C, C) confusion counts; with num_classes None, C grows to the largest label + 1."""
    if num_classes is None:
        counted = target != ignore_index  # (a prediction of another shape: confusion_matrix says so below)
        labels = (prediction[counted] if prediction.shape == target.shape else prediction), target[counted]
        num_classes = max(1, *(int(x.max()) + 1 for x in labels if x.numel()), 0 if matrix is None else len(matrix))
        if matrix is not None and len(matrix) < num_classes:
            grown = torch.zeros(num_classes, num_classes, dtype=matrix.dtype)
            grown[: len(matrix), : len(matrix)] = matrix
            matrix = grown
    image_matrix = confusion_matrix([prediction], [target], num_classes, ignore_index)
    return image_matrix if matrix is None else matrix + image_matrix
