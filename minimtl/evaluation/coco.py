"""COCO-style detection metrics (Lin et al., "Microsoft COCO", ECCV 2014; the cocoapi's cocoeval.py).

For one category, rank every detection of every image by score. Walking down the ranking, a
detection is a true positive if it matches a ground-truth object not matched yet (IoU >= t), else
a false positive; precision and recall follow after each detection:

    precision_n = TP_n / n,   recall_n = TP_n / (number of ground-truth objects)

AP is the area under the precision-recall curve, measured COCO's way: the precision is first made
non-increasing (each value replaced by the best precision at any higher recall), then read at the
101 recall levels 0, 0.01, ..., 1 and averaged. COCO's AP averages it over the categories and the
IoU thresholds t = 0.50, 0.55, ..., 0.95; AP50 and AP75 use one threshold; APs/APm/APl only count
objects of area < 32^2, in [32^2, 96^2], > 96^2 pixels. AR_k is the recall with at most k detections
per image, averaged over categories and thresholds.

Crowd regions ("iscrowd") are neither required nor penalised: a detection matched to one is ignored,
and its IoU is intersection / detection area. Objects outside the area range are ignored the same
way, and so are unmatched detections outside it.

This module reproduces pycocotools' numbers (tests/test_evaluation.py checks them to 1e-6), in the
same steps: per-image matching (_match_category), accumulation over images (_accumulate), and the
12 summary numbers (_summarize). It streams: CocoEvaluator.add matches an image as it comes and keeps
only what accumulation needs, per category and in image order: each detection's score, its rank in
its image, whether it matched / is ignored at each threshold and area range (90 bytes a detection),
and how many objects count. No mask outlives `add`, so memory grows with the number of detections,
not with image area. `evaluate(predictions, targets)` is the same evaluator fed two lists.

Shapes: per image, D detections (boxes (D, 4) xyxy, labels (D,), scores (D,), masks (D, H, W)) and G
ground-truth objects (boxes (G, 4), labels (G,), masks (G, H, W), optional iscrowd (G,), area (G,));
T = 10 IoU thresholds, R = 101 recall levels, K categories, A = 4 area ranges, M = 3 detection limits.
"""

import numpy as np
import torch

from minimtl.data.masks import decode_segmentation

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}
MAX_DETECTIONS = (1, 10, 100)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


class CocoEvaluator:
    """COCO AP/AR accumulated one image at a time (see the module docstring for what is kept).

    evaluator = CocoEvaluator("segm")
    for prediction, target in stream:     # dicts as `evaluate` takes them, one image each
        evaluator.add(prediction, target)
    evaluator.summarize()                  # the 12 numbers; per_class() and curves() for more
    """

    def __init__(self, iou_type: str = "bbox"):
        if iou_type not in IOU_TYPES:
            raise ValueError(f"CocoEvaluator: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        self.iou_type = iou_type
        self.num_images = 0
        self._records: dict[int, _CategoryRecord] = {}
        self._curves = None  # cached until the next add

    def add(self, prediction: dict, target: dict) -> None:
        """Match one image's detections now, for every category in it and every area range; keep
        only scores and flags. The dicts are as `evaluate` documents; masks may also be COCO RLE."""
        img = image_arrays(prediction, target, self.iou_type, self.num_images)
        categories = np.union1d(img["gt_labels"], img["dt_labels"]).tolist()
        matches = [_match_category(img, category) for category in categories]  # all, before any is kept
        for category, match in zip(categories, matches, strict=True):
            self._records.setdefault(category, _CategoryRecord()).append(*match)
        self.num_images += 1
        self._curves = None

    def curves(self):
        """(precision (T, R, K, A, M), recall (T, K, A, M), categories): as `evaluate_curves`.
        Cached until the next `add`: read them, do not write to them."""
        if self._curves is None:
            categories = sorted(self._records)
            self._curves = (*_accumulate([self._records[c] for c in categories]), categories)
        return self._curves

    def summarize(self) -> dict[str, float]:
        """The 12 numbers, as `evaluate` returns them."""
        precision, recall, _ = self.curves()
        return _summarize(precision, recall)

    def per_class(self) -> dict[int, dict[str, float]]:
        """label -> {"AP", "AP50", "AP75"} (all areas, 100 detections); -1 where undefined."""
        precision, _, categories = self.curves()
        return per_class_ap(precision, categories)


def evaluate(predictions: list[dict], targets: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """COCO's 12 numbers for detections against ground truth, one dict per image in each list.

    predictions[i]: "boxes" (D, 4) xyxy, "labels" (D,), "scores" (D,), and for iou_type "segm"
    "masks": (D, H, W) or (D, 1, H, W) probabilities (foreground where > 0.5) or bool/uint8 (nonzero),
    or a list of D COCO RLE dicts {"size": [H, W], "counts": str or list}.
    targets[i]: "boxes" (G, 4), "labels" (G,), for "segm" "masks" (G, H, W) in the same forms;
    optional "iscrowd" (G,) and "area" (G,) (default: the mask's pixel count for "segm", the box's
    area for "bbox").

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};
    a number that has nothing to average (e.g. APs without small objects) is -1, as in pycocotools.
    For many images, feed a CocoEvaluator instead of building these lists.
    """
    return _evaluator(predictions, targets, iou_type).summarize()


def evaluate_curves(predictions: list[dict], targets: list[dict], iou_type: str = "bbox"):
    """The arrays behind `evaluate`: precision (T, R, K, A, M) at the 101 recall levels, recall
    (T, K, A, M), and the K category labels; T IoU thresholds, A area ranges (all, small, medium,
    large), M detection limits (1, 10, 100). -1 marks a category without objects."""
    return _evaluator(predictions, targets, iou_type).curves()


def per_class_ap(precision: np.ndarray, categories) -> dict[int, dict[str, float]]:
    """{label: {"AP", "AP50", "AP75"}} from evaluate_curves' precision: for category k the mean of
    precision[:, :, k, 0, -1] (all areas, 100 detections) over the thresholds (or at one) and the
    recall levels, skipping -1 (pycocotools' own per-category AP); -1 for a category without objects."""
    out = {}
    for k, label in enumerate(categories):
        p = precision[:, :, k, 0, -1]  # (T, R)
        out[int(label)] = {
            "AP": mean_defined(p),
            "AP50": mean_defined(p[_threshold(0.5)]),
            "AP75": mean_defined(p[_threshold(0.75)]),
        }
    return out


def _evaluator(predictions, targets, iou_type) -> CocoEvaluator:
    evaluator = CocoEvaluator(iou_type)
    if len(predictions) != len(targets):
        raise ValueError(f"evaluate: {len(predictions)} predictions but {len(targets)} targets (one dict per image)")
    for pred, target in zip(predictions, targets, strict=True):
        evaluator.add(pred, target)
    return evaluator


def _numpy(x, dtype=None):
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype or np.float64)


def image_arrays(pred: dict, target: dict, iou_type: str, index: int) -> dict:
    """One image's detections and ground truth as numpy arrays, with areas and the IoU inputs."""
    for name, d, keys in (
        ("predictions", pred, ("boxes", "labels", "scores")),
        ("targets", target, ("boxes", "labels")),
    ):
        missing = [k for k in keys + (("masks",) if iou_type == "segm" else ()) if k not in d]
        if missing:
            raise ValueError(
                f"CocoEvaluator.add: {name}[{index}] is missing {missing} (image {index} in the order added)"
            )
    out = {
        "dt_labels": _numpy(pred["labels"], np.int64).reshape(-1),
        "gt_labels": _numpy(target["labels"], np.int64).reshape(-1),
        "scores": _numpy(pred["scores"]).reshape(-1),
    }
    gt_boxes, dt_boxes = _xywh(_numpy(target["boxes"]).reshape(-1, 4)), _xywh(_numpy(pred["boxes"]).reshape(-1, 4))
    out["iscrowd"] = _numpy(target.get("iscrowd", np.zeros(len(gt_boxes))), np.int64).astype(bool)
    if iou_type == "segm":
        gt_masks = binary_masks(target["masks"], f"targets[{index}]['masks']")
        dt_masks = binary_masks(pred["masks"], f"predictions[{index}]['masks']")
        if len(gt_masks) and len(dt_masks) and gt_masks.shape[1:] != dt_masks.shape[1:]:
            raise ValueError(
                f"CocoEvaluator.add: predictions[{index}]['masks'] are {dt_masks.shape[1:]} (H, W), "
                f"targets[{index}]['masks'] {gt_masks.shape[1:]}: both must be at the image's size"
            )
        out["gt"], out["dt"] = gt_masks, dt_masks
        out["dt_area"] = _pixel_counts(dt_masks)
        default_area = _pixel_counts(gt_masks)
    else:
        out["gt"], out["dt"] = gt_boxes, dt_boxes
        out["dt_area"] = dt_boxes[:, 2] * dt_boxes[:, 3]
        default_area = gt_boxes[:, 2] * gt_boxes[:, 3]
    out["gt_area"] = _numpy(target["area"]).reshape(-1) if "area" in target else default_area
    out["iou_type"] = iou_type
    return out


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """xyxy -> xywh in float64, as COCO stores boxes (the IoU below then works on x + w like cocoapi)."""
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def binary_masks(masks, name: str) -> np.ndarray:
    """(K, H, W) bool from probabilities (> 0.5), bool/uint8 (nonzero), (K, 1, H, W), or K RLE dicts."""
    if isinstance(masks, (list, tuple)):  # COCO RLE, one dict per object
        if not all(isinstance(m, dict) and "size" in m and "counts" in m for m in masks):
            raise ValueError(f"{name}: a list of masks must hold COCO RLE dicts {{'size': [H, W], 'counts': ...}}")
        if not masks:
            return np.zeros((0, 0, 0), dtype=bool)  # no size known; nothing to intersect either
        sizes = {tuple(int(s) for s in m["size"]) for m in masks}
        if len(sizes) > 1:
            raise ValueError(f"{name}: RLE masks of one image must share one size, got {sorted(sizes)}")
        return np.stack([decode_segmentation(m, *m["size"]) for m in masks])
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (K, 1, H, W), as the models return them
    if masks.ndim != 3:
        raise ValueError(f"{name} must be (K, H, W) or (K, 1, H, W) (or a list of RLE dicts), got {masks.shape}")
    if masks.dtype == bool:
        return masks
    return masks > 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0


def pairwise_iou(dt, gt, iscrowd: np.ndarray, iou_type: str) -> np.ndarray:
    """IoU of every detection with every ground truth, (D, G); against a crowd: inter / detection area."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    if iou_type == "segm":
        inter, d_area, g_area = _mask_overlaps(dt, gt)
    else:
        dx, dy, dw, dh = (dt[:, k : k + 1] for k in range(4))  # (D, 1)
        gx, gy, gw, gh = (gt[:, k][None, :] for k in range(4))  # (1, G)
        w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
        h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
        inter = np.where((w > 0) & (h > 0), w * h, 0.0)
        d_area, g_area = dw * dh, gw * gh
    union = np.where(iscrowd[None, :], d_area, d_area + g_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _mask_overlaps(dt: np.ndarray, gt: np.ndarray):
    """Pixel counts of (D, H, W) and (G, H, W) bool masks: intersections (D, G), areas (D, 1), (1, G).

    Cost: a (D, P) @ (P, G) product over the P pixels of the smallest window holding every mask's
    pixels (nothing intersects outside it, so cropping is exact). Counts are integers, so float32
    adds them exactly while every partial sum stays <= 2^24 (P <= 16.7M pixels, a 4096 x 4096
    window); beyond that float64. Peak memory: 4 (D + G) P bytes, once per category.
    """
    union = dt.any(axis=0) | gt.any(axis=0)  # (H, W)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if len(rows) == 0:  # every mask empty
        return np.zeros((len(dt), len(gt))), np.zeros((len(dt), 1)), np.zeros((1, len(gt)))
    window = np.s_[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    d = dt[window].reshape(len(dt), -1)  # (D, P)
    g = gt[window].reshape(len(gt), -1)  # (G, P)
    dtype = np.float32 if d.shape[1] <= 2**24 else np.float64
    inter = (d.astype(dtype) @ g.astype(dtype).T).astype(np.float64)  # (D, G)
    return inter, _pixel_counts(d)[:, None], _pixel_counts(g)[None, :]


def _pixel_counts(masks: np.ndarray) -> np.ndarray:
    """(K,) float64 foreground pixel counts of (K, ...) bool masks."""
    return np.array([np.count_nonzero(m) for m in masks], dtype=np.float64)  # 6x faster than axis=1


def _match_category(img: dict, category: int):
    """One image's detections of one category matched at every area range and IoU threshold.

    Returns scores (D,) by decreasing score (the best 100), matched (A, T, D) and ignored (A, T, D)
    bool, and the number of objects that count in each area range (A,).
    """
    g_idx = np.flatnonzero(img["gt_labels"] == category)
    d_idx = np.flatnonzero(img["dt_labels"] == category)
    d_idx = d_idx[np.argsort(-img["scores"][d_idx], kind="mergesort")][: MAX_DETECTIONS[-1]]
    crowd, gt_area, dt_area = img["iscrowd"][g_idx], img["gt_area"][g_idx], img["dt_area"][d_idx]
    ious = pairwise_iou(img["dt"][d_idx], img["gt"][g_idx], crowd, img["iou_type"])  # (D, G), shared by the area ranges

    num_a, num_t, num_d = len(AREA_RANGES), len(IOU_THRESHOLDS), len(d_idx)
    matched = np.zeros((num_a, num_t, num_d), dtype=bool)
    ignored = np.zeros((num_a, num_t, num_d), dtype=bool)
    num_objects = np.zeros(num_a, dtype=np.int64)
    for a, (low, high) in enumerate(AREA_RANGES.values()):
        gt_ignore = crowd | (gt_area < low) | (gt_area > high)
        order = np.argsort(gt_ignore, kind="mergesort")  # the objects that count first
        matched[a], ignored[a] = _greedy_match(ious[:, order], crowd[order], gt_ignore[order])
        outside = (dt_area < low) | (dt_area > high)
        ignored[a] |= ~matched[a] & outside[None, :]  # an unmatched detection of another size is not an error
        num_objects[a] = np.count_nonzero(~gt_ignore)
    return img["scores"][d_idx], matched, ignored, num_objects


def _greedy_match(ious: np.ndarray, crowd: np.ndarray, ignore: np.ndarray):
    """cocoapi's matching at each threshold: every detection (rows, by decreasing score) takes the
    free object (columns, ignored ones last) of highest IoU >= t, a counted object before an ignored
    one. Returns matched (T, D) and ignored (T, D): matched to an ignored object."""
    num_t, (num_d, num_g) = len(IOU_THRESHOLDS), ious.shape
    dt_matched = np.zeros((num_t, num_d), dtype=bool)
    dt_ignore = np.zeros((num_t, num_d), dtype=bool)
    # Plain Python lists: this loop runs T * D times per image and category. cocoapi walks every
    # column; those with IoU < 0.5 change nothing at any threshold (they can only `continue`, or
    # `break` where every later column is ignored too), so each row walks only its candidates.
    rows, crowd, ignore = ious.tolist(), crowd.tolist(), ignore.tolist()
    candidates = [[g for g, iou in enumerate(row) if iou >= IOU_THRESHOLDS[0]] for row in rows]
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = [False] * num_g
        for d in range(num_d):
            best, m = min(threshold, 1 - 1e-10), -1
            for g in candidates[d]:
                if taken[g] and not crowd[g]:  # taken (a crowd can take many)
                    continue
                if m > -1 and not ignore[m] and ignore[g]:  # the rest are ignored: keep a real match
                    break
                if rows[d][g] < best:
                    continue
                best, m = rows[d][g], g
            if m == -1:
                continue
            dt_ignore[t, d] = ignore[m]
            dt_matched[t, d] = taken[m] = True
    return dt_matched, dt_ignore


class _CategoryRecord:
    """What accumulation needs of one category, over the images added so far, in image order:
    per detection its score, its rank in its image, matched (A, T) and ignored (A, T) flags; the
    number of objects that count (A,). Per-image pieces are concatenated every 64 images, so a
    long stream holds a few large arrays instead of many small ones."""

    def __init__(self):
        self.parts: list[tuple] = []  # (scores (D,), rank (D,), matched (A, T, D), ignored (A, T, D))
        self.num_objects = np.zeros(len(AREA_RANGES), dtype=np.int64)

    def append(self, scores, matched, ignored, num_objects) -> None:
        self.parts.append((scores, np.arange(len(scores), dtype=np.int16), matched, ignored))
        self.num_objects += num_objects
        if len(self.parts) >= 64:
            self.arrays()

    def arrays(self):
        """(scores (N,), rank (N,), matched (A, T, N), ignored (A, T, N)) over the N detections so far."""
        if len(self.parts) > 1:
            self.parts = [tuple(np.concatenate(arrays, axis=-1) for arrays in zip(*self.parts, strict=True))]
        return self.parts[0]


def _accumulate(records: list[_CategoryRecord]):
    """Precision (T, R, K, A, M) at the recall thresholds and recall (T, K, A, M); -1 where undefined."""
    num_t, num_r, num_a, num_m = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETECTIONS)
    precision = -np.ones((num_t, num_r, len(records), num_a, num_m))
    recall = -np.ones((num_t, len(records), num_a, num_m))
    for k, record in enumerate(records):
        scores, rank, matched, ignored = record.arrays()
        for m, max_det in enumerate(MAX_DETECTIONS):
            top = rank < max_det  # each image's best max_det, images in the order added
            order = np.argsort(-scores[top], kind="mergesort")  # every image's detections, by score
            for a in range(num_a):
                num_objects = int(record.num_objects[a])
                if num_objects == 0:
                    continue
                hit, skip = matched[a][:, top][:, order], ignored[a][:, top][:, order]  # (T, N)
                tp = np.cumsum(hit & ~skip, axis=1).astype(float)
                fp = np.cumsum(~hit & ~skip, axis=1).astype(float)
                for t in range(num_t):
                    rc = tp[t] / num_objects
                    pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                    recall[t, k, a, m] = rc[-1] if len(rc) else 0
                    pr = np.maximum.accumulate(pr[::-1])[::-1]  # non-increasing: best precision to the right
                    at = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")  # first rank reaching each level
                    q = np.zeros(num_r)
                    reachable = at < len(pr)
                    q[reachable] = pr[at[reachable]]  # recall levels never reached keep precision 0
                    precision[t, :, k, a, m] = q
    return precision, recall


def mean_defined(values: np.ndarray) -> float:
    """The mean of the entries COCO defines (-1: no ground truth there); -1 when none is."""
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0


def _threshold(iou: float) -> int:
    return int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))[0])


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    areas = list(AREA_RANGES)

    def ap(threshold=None, area="all"):
        p = precision[..., areas.index(area), MAX_DETECTIONS.index(100)]  # (T, R, K)
        return mean_defined(p if threshold is None else p[_threshold(threshold)])

    def ar(max_det=100, area="all"):
        return mean_defined(recall[:, :, areas.index(area), MAX_DETECTIONS.index(max_det)])

    values = [
        ap(),
        ap(0.5),
        ap(0.75),
        ap(area="small"),
        ap(area="medium"),
        ap(area="large"),
        ar(1),
        ar(10),
        ar(100),
        ar(area="small"),
        ar(area="medium"),
        ar(area="large"),
    ]
    return dict(zip(STAT_NAMES, values, strict=True))
