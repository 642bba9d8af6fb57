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
same steps: per-image matching (_match_image), accumulation over images (_accumulate), and the
12 summary numbers (_summarize).

Shapes: per image, K detections (boxes (K, 4) xyxy, labels (K,), scores (K,), masks (K, H, W)) and G
ground-truth objects (boxes (G, 4), labels (G,), masks (G, H, W), optional iscrowd (G,), area (G,)).
"""

import numpy as np
import torch

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}
MAX_DETECTIONS = (1, 10, 100)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def evaluate(predictions: list[dict], targets: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """COCO's 12 numbers for detections against ground truth, one dict per image in each list.

    predictions[i]: "boxes" (K, 4) xyxy, "labels" (K,), "scores" (K,), and for iou_type "segm"
    "masks" (K, H, W) or (K, 1, H, W): binary, or probabilities (binarised at > 0.5).
    targets[i]: "boxes" (G, 4), "labels" (G,), for "segm" "masks" (G, H, W); optional "iscrowd" (G,)
    and "area" (G,) (default: the mask's pixel count for "segm", the box's area for "bbox").

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};
    a number that has nothing to average (e.g. APs without small objects) is -1, as in pycocotools.
    """
    precision, recall, _ = evaluate_curves(predictions, targets, iou_type)
    return _summarize(precision, recall)


def evaluate_curves(predictions: list[dict], targets: list[dict], iou_type: str = "bbox"):
    """The arrays behind `evaluate`: precision (T, R, K, A, M) at the 101 recall levels, recall
    (T, K, A, M), and the K category labels; T IoU thresholds, A area ranges (all, small, medium,
    large), M detection limits (1, 10, 100). -1 marks a category without objects."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"evaluate: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if len(predictions) != len(targets):
        raise ValueError(f"evaluate: {len(predictions)} predictions but {len(targets)} targets (one dict per image)")
    images = [_image(p, t, iou_type, i) for i, (p, t) in enumerate(zip(predictions, targets, strict=True))]
    categories = sorted({int(c) for img in images for c in np.concatenate([img["gt_labels"], img["dt_labels"]])})
    # evaluated[c][a][i]: the matching of category c, area range a, image i (None: nothing to match)
    evaluated = [[[_match_image(img, c, rng) for img in images] for rng in AREA_RANGES.values()] for c in categories]
    precision, recall = _accumulate(evaluated, len(categories))
    return precision, recall, categories


def _numpy(x, dtype=None):
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype or np.float64)


def _image(pred: dict, target: dict, iou_type: str, index: int) -> dict:
    """One image's detections and ground truth as numpy arrays, with areas and the IoU inputs."""
    for name, d, keys in (
        ("predictions", pred, ("boxes", "labels", "scores")),
        ("targets", target, ("boxes", "labels")),
    ):
        missing = [k for k in keys + (("masks",) if iou_type == "segm" else ()) if k not in d]
        if missing:
            raise ValueError(f"evaluate: {name}[{index}] is missing {missing}")
    out = {
        "dt_labels": _numpy(pred["labels"], np.int64),
        "gt_labels": _numpy(target["labels"], np.int64),
        "scores": _numpy(pred["scores"]),
    }
    gt_boxes, dt_boxes = _xywh(_numpy(target["boxes"]).reshape(-1, 4)), _xywh(_numpy(pred["boxes"]).reshape(-1, 4))
    out["iscrowd"] = _numpy(target.get("iscrowd", np.zeros(len(gt_boxes))), np.int64).astype(bool)
    if iou_type == "segm":
        gt_masks, dt_masks = _binary(target["masks"]), _binary(pred["masks"])
        out["gt"], out["dt"] = gt_masks, dt_masks
        out["dt_area"] = dt_masks.sum(axis=(1, 2)).astype(np.float64)
        default_area = gt_masks.sum(axis=(1, 2)).astype(np.float64)
    else:
        out["gt"], out["dt"] = gt_boxes, dt_boxes
        out["dt_area"] = dt_boxes[:, 2] * dt_boxes[:, 3]
        default_area = gt_boxes[:, 2] * gt_boxes[:, 3]
    out["gt_area"] = _numpy(target["area"]) if "area" in target else default_area
    out["iou_type"] = iou_type
    return out


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """xyxy -> xywh in float64, as COCO stores boxes (the IoU below then works on x + w like cocoapi)."""
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def _binary(masks) -> np.ndarray:
    masks = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(masks)
    if masks.dim() == 4:
        masks = masks[:, 0]  # (K, 1, H, W), as the models return them
    masks = masks > 0.5 if masks.is_floating_point() else masks != 0
    return masks.cpu().numpy()


def _iou(dt, gt, iscrowd: np.ndarray, iou_type: str) -> np.ndarray:
    """IoU of every detection with every ground truth, (D, G); against a crowd: inter / detection area."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    if iou_type == "segm":
        d = dt.reshape(len(dt), dt.shape[1] * dt.shape[2]).astype(np.float64)  # (D, H*W)
        g = gt.reshape(len(gt), gt.shape[1] * gt.shape[2]).astype(np.float64)
        inter = d @ g.T  # (D, G) pixel counts
        d_area, g_area = d.sum(1)[:, None], g.sum(1)[None, :]
        union = np.where(iscrowd[None, :], d_area, d_area + g_area - inter)
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


def _match_image(img: dict, category: int, area_range) -> dict | None:
    """Greedy matching of one image's detections of one category, at every IoU threshold."""
    g_idx = np.where(img["gt_labels"] == category)[0]
    d_idx = np.where(img["dt_labels"] == category)[0]
    if len(g_idx) == 0 and len(d_idx) == 0:
        return None
    d_idx = d_idx[np.argsort(-img["scores"][d_idx], kind="mergesort")][: MAX_DETECTIONS[-1]]
    crowd, area = img["iscrowd"][g_idx], img["gt_area"][g_idx]
    ignore = crowd | (area < area_range[0]) | (area > area_range[1])
    order = np.argsort(ignore, kind="mergesort")  # the objects that count first
    g_idx, crowd, ignore = g_idx[order], crowd[order], ignore[order]
    ious = _iou(img["dt"][d_idx], img["gt"][g_idx], crowd, img["iou_type"])  # (D, G)

    num_t, num_d, num_g = len(IOU_THRESHOLDS), len(d_idx), len(g_idx)
    gt_matched = np.zeros((num_t, num_g), dtype=bool)
    dt_matched = np.zeros((num_t, num_d), dtype=bool)
    dt_ignore = np.zeros((num_t, num_d), dtype=bool)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        for d in range(num_d):  # by decreasing score
            best, m = min(threshold, 1 - 1e-10), -1
            for g in range(num_g):
                if gt_matched[t, g] and not crowd[g]:  # taken (a crowd can take many)
                    continue
                if m > -1 and not ignore[m] and ignore[g]:  # the rest are ignored: keep a real match
                    break
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m == -1:
                continue
            dt_ignore[t, d] = ignore[m]
            dt_matched[t, d] = gt_matched[t, m] = True
    dt_area = img["dt_area"][d_idx]
    outside = (dt_area < area_range[0]) | (dt_area > area_range[1])
    dt_ignore |= ~dt_matched & outside[None, :]  # an unmatched detection of another size is not an error
    return {"scores": img["scores"][d_idx], "dt_matched": dt_matched, "dt_ignore": dt_ignore, "gt_ignore": ignore}


def _accumulate(evaluated, num_categories: int):
    """Precision (T, R, K, A, M) at the recall thresholds and recall (T, K, A, M); -1 where undefined."""
    num_t, num_r, num_a, num_m = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETECTIONS)
    precision = -np.ones((num_t, num_r, num_categories, num_a, num_m))
    recall = -np.ones((num_t, num_categories, num_a, num_m))
    for k in range(num_categories):
        for a in range(num_a):
            results = [e for e in evaluated[k][a] if e is not None]
            if not results:
                continue
            num_objects = int(np.count_nonzero(~np.concatenate([e["gt_ignore"] for e in results])))
            if num_objects == 0:
                continue
            for m, max_det in enumerate(MAX_DETECTIONS):
                scores = np.concatenate([e["scores"][:max_det] for e in results])
                order = np.argsort(-scores, kind="mergesort")  # every image's detections, by score
                matched = np.concatenate([e["dt_matched"][:, :max_det] for e in results], axis=1)[:, order]
                ignored = np.concatenate([e["dt_ignore"][:, :max_det] for e in results], axis=1)[:, order]
                tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
                fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
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


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    areas = list(AREA_RANGES)

    def mean(values):
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    def ap(threshold=None, area="all"):
        p = precision[..., areas.index(area), MAX_DETECTIONS.index(100)]  # (T, R, K)
        if threshold is not None:
            p = p[np.where(threshold == IOU_THRESHOLDS)[0]]
        return mean(p)

    def ar(max_det=100, area="all"):
        return mean(recall[:, :, areas.index(area), MAX_DETECTIONS.index(max_det)])

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
