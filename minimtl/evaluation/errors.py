"""Error analysis of a detector: what each false positive and each missed object is, and how much AP
each kind of error costs. The error types and their oracles are TIDE's (Bolya et al., "TIDE: A
General Toolbox for Identifying Object Detection Errors", ECCV 2020, Sections 2.1-2.3), which refine
Hoiem et al., "Diagnosing Error in Object Detectors", ECCV 2012.

Every detection is first matched as `evaluate` matches it, at the foreground threshold t_f (0.5): per
image and class, by decreasing score (the 100 best of each class), each takes the free object of its
class with the highest IoU >= t_f, an object before a crowd region. A matched detection is "correct";
one matched only to a crowd, or past the 100 best of its class, is "ignored" (as `evaluate` ignores
it). Each other detection is an error; with IoU_same its best IoU with an object of its own class and
IoU_other with an object of another class (crowds left out), the first rule that holds names it:

    localisation     t_b <= IoU_same < t_f            (right class, box or mask not good enough)
    classification   IoU_other >= t_f                  (right place, wrong class)
    duplicate        IoU_same >= t_f                   (its object was taken by a higher-scored detection)
    background       max(IoU_same, IoU_other) < t_b    (on nothing; t_b = 0.1)
    both             otherwise: t_b <= IoU_other < t_f (wrong class and badly placed)

TIDE's order: localisation is tested before classification. An object no detection matched is
"missed" unless a classification or localisation error points at it (that error is what went wrong).

The cost of an error type is the AP at t_f gained by fixing that type alone (TIDE's oracles, each
applied to the original detections, not one after another):

    classification   of the errors of both kinds pointing at an object that no correct detection took,
    localisation     the highest-scored one is fixable: if it is of the type fixed, it takes the
                     object's class (classification) or its box and mask (localisation), and becomes a
                     true positive. Every other error of the type fixed is removed (its object was
                     found already, or a higher-scored error claims it): TIDE's BestGTMatch.
    both, duplicate, background     removed
    missed           removed from the objects to find: TIDE's "reduce the number of GT by one" (recall
                     counted as if the object were not there; TIDE does not add a detection for it)

AP is computed by minimtl's own evaluator on the changed detections and objects, so a cost is in the
AP the report prints (AP50 for t_f = 0.5). No oracle can lower AP (each only removes false positives,
turns one into a true positive, or removes an unfound object); fixing every type gives AP 1. Two
edge cases: with no object in any image AP is undefined (-1, as `evaluate` says) and every cost is 0;
a fix that leaves no object to find (every object was missed) counts as AP 1. Detections past the 100
best of their class count nowhere, as in `evaluate`, and the oracles drop them.

Shapes: per image D detections, G objects (crowds included), masks at the image's size (H, W).
"""

from dataclasses import dataclass, field

import numpy as np

from minimtl.evaluation.coco import (
    IOU_THRESHOLDS,
    MAX_DETECTIONS,
    CocoEvaluator,
    binary_masks,
    image_arrays,
    mean_defined,
    pairwise_iou,
)

DETECTION_TYPES = ("correct", "classification", "localisation", "both", "duplicate", "background", "ignored")
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
COUNT_COLUMNS = ("correct",) + ERROR_TYPES  # the columns of ErrorAnalysis.per_image


@dataclass
class ErrorAnalysis:
    """What `analyze_errors` finds. ap: AP at t_f (all areas, 100 detections); counts: detections of
    each type in DETECTION_TYPES and "missed" objects; costs: AP gained by fixing each error type
    alone, and "all" (every type at once: 1 - ap); images: one dict per image, from `classify_image`."""

    iou_type: str
    fg_threshold: float
    bg_threshold: float
    ap: float
    counts: dict[str, int]
    costs: dict[str, float]
    images: list[dict] = field(repr=False)

    def per_image(self, score_threshold: float = 0.0) -> np.ndarray:
        """(N, 7) counts per image in COUNT_COLUMNS order, counting the detections scored >= the
        threshold; "missed" then counts the objects that none of those found or pointed at (at 0: the
        missed objects above). With the drawing's threshold the counts are what a picture shows."""
        out = np.zeros((len(self.images), len(COUNT_COLUMNS)), dtype=np.int64)  # (N, 7)
        for i, image in enumerate(self.images):
            kept = image["scores"] >= score_threshold  # (D,)
            for c, name in enumerate(COUNT_COLUMNS[:-1]):
                out[i, c] = np.count_nonzero(kept & (image["types"] == name))
            out[i, -1] = np.count_nonzero(missed_objects(image, score_threshold))
        return out

    def worst_images(self, k: int = 4, score_threshold: float = 0.5) -> list[int]:
        """The k images with the most errors among detections scored >= score_threshold (and objects
        those leave missed); ties in image order."""
        errors = self.per_image(score_threshold)[:, 1:].sum(axis=1)  # (N,)
        return np.argsort(-errors, kind="stable")[:k].tolist()


def classify_image(
    prediction: dict, target: dict, iou_type: str = "bbox", fg_threshold=0.5, bg_threshold=0.1, index: int = 0
) -> dict:
    """One image's detections typed (module docstring). The dicts are as `evaluate` takes them; index:
    the image's place in its list, for error messages.

    Returns {"types" (D,) str from DETECTION_TYPES, "gt" (D,) the object each detection matched or
    points at (-1: none), "fixable" (D,) bool: the classification/localisation error the oracle turns
    into a true positive, "ranked" (D,) bool: among the 100 best of its class (the others never count),
    "missed" (G,) bool, "counted" (G,) bool: objects that are not crowds, "scores" (D,)}.
    """
    _check_thresholds(fg_threshold, bg_threshold)
    img = image_arrays(prediction, target, iou_type, index)
    dt_labels, gt_labels, scores, crowd = img["dt_labels"], img["gt_labels"], img["scores"], img["iscrowd"]
    ious = pairwise_iou(img["dt"], img["gt"], crowd, iou_type)  # (D, G); against a crowd: inter / detection area
    num_d, num_g = ious.shape
    types = np.full(num_d, "ignored", dtype=object)
    gt = -np.ones(num_d, dtype=np.int64)
    used = np.zeros(num_g, dtype=bool)  # taken by a correct detection
    ranked = np.zeros(num_d, dtype=bool)
    unmatched = []
    for category in np.unique(dt_labels):  # cocoapi's greedy matching, category by category
        d_idx = np.flatnonzero(dt_labels == category)
        d_idx = d_idx[np.argsort(-scores[d_idx], kind="mergesort")][: MAX_DETECTIONS[-1]]  # the rest: ignored
        ranked[d_idx] = True
        g_idx = np.flatnonzero(gt_labels == category)
        g_idx = g_idx[np.argsort(crowd[g_idx], kind="mergesort")]  # objects first, crowds last
        for d in d_idx:
            m = _best_free(ious[d], g_idx, used, crowd, fg_threshold)
            if m == -1:
                unmatched.append(d)
            elif not crowd[m]:
                types[d], gt[d], used[m] = "correct", m, True
    counted = ~crowd
    for d in unmatched:
        same = counted & (gt_labels == dt_labels[d])  # (G,)
        iou_same, iou_other = np.where(same, ious[d], 0.0), np.where(counted & ~same, ious[d], 0.0)  # (G,)
        iou_taken = np.where(used, iou_same, 0.0)  # (G,)
        if bg_threshold <= iou_same.max(initial=0) < fg_threshold:
            types[d], gt[d] = "localisation", int(np.argmax(iou_same))
        elif iou_other.max(initial=0) >= fg_threshold:
            types[d], gt[d] = "classification", int(np.argmax(iou_other))
        elif iou_taken.max(initial=0) >= fg_threshold:
            types[d], gt[d] = "duplicate", int(np.argmax(iou_taken))
        elif max(iou_same.max(initial=0), iou_other.max(initial=0)) < bg_threshold:
            types[d] = "background"
        else:
            types[d] = "both"
    # The object of a classification/localisation error is fixable if no correct detection took it;
    # of the errors pointing at it the highest-scored one is fixed (TIDE's BestGTMatch).
    fixable = np.zeros(num_d, dtype=bool)
    pointing = np.isin(types, ("classification", "localisation")) & (gt >= 0)
    pointing[pointing] = ~used[gt[pointing]]
    for g in np.unique(gt[pointing]):
        candidates = np.flatnonzero(pointing & (gt == g))
        fixable[candidates[np.argmax(scores[candidates])]] = True  # the first of equal scores
    targeted = np.zeros(num_g, dtype=bool)
    targeted[gt[pointing]] = True
    types = types.astype(str)
    return {"types": types, "gt": gt, "fixable": fixable, "ranked": ranked, "missed": counted & ~used & ~targeted,
            "counted": counted, "scores": scores}  # fmt: skip


def missed_objects(result: dict, score_threshold: float = 0.0) -> np.ndarray:
    """(G,) bool: the objects (not crowds) of one image that no detection scored >= score_threshold
    found (correct) or points at (a classification or localisation error), from classify_image's dict.
    At threshold 0 these are its "missed" objects; at a picture's threshold, the ones it shows missed
    (the types of the detections above a threshold do not depend on those below it)."""
    pointing = (result["scores"] >= score_threshold) & np.isin(
        result["types"], ("correct", "classification", "localisation")
    )  # (D,)
    found = np.zeros(len(result["counted"]), dtype=bool)  # (G,)
    found[result["gt"][pointing]] = True
    return result["counted"] & ~found


def analyze_errors(
    predictions: list[dict], targets: list[dict], iou_type: str = "bbox", fg_threshold=0.5, bg_threshold=0.1
) -> ErrorAnalysis:
    """Every detection typed and every error type's AP cost (module docstring), for the lists that
    `evaluate` takes. fg_threshold must be one of COCO's IoU thresholds (0.5, 0.55, ..., 0.95)."""
    if len(predictions) != len(targets):
        raise ValueError(f"analyze_errors: {len(predictions)} predictions but {len(targets)} targets")
    pairs = enumerate(zip(predictions, targets, strict=True))
    images = [classify_image(p, t, iou_type, fg_threshold, bg_threshold, index=i) for i, (p, t) in pairs]
    counts = {name: sum(int(np.count_nonzero(im["types"] == name)) for im in images) for name in DETECTION_TYPES}
    counts["missed"] = sum(int(np.count_nonzero(im["missed"])) for im in images)
    ap = ap_at(predictions, targets, iou_type, fg_threshold)
    costs = {}
    for name in ERROR_TYPES + ("all",):
        if ap == -1:  # no object in any image: AP is undefined (as in `evaluate`) and nothing can raise it
            costs[name] = 0.0
            continue
        fixed = fix_errors(predictions, targets, images, ERROR_TYPES if name == "all" else (name,), iou_type)
        fixed_ap = ap_at(*fixed, iou_type, fg_threshold)
        costs[name] = (1.0 if fixed_ap == -1 else fixed_ap) - ap  # -1: no object left to find, none missed
    return ErrorAnalysis(iou_type, fg_threshold, bg_threshold, ap, counts, costs, images)


def fix_errors(predictions, targets, images: list[dict], error_types, iou_type: str = "bbox"):
    """TIDE's oracle for `error_types` (module docstring): new (predictions, targets) lists with numpy
    arrays (masks (D, H, W) bool for "segm"). images: classify_image's result per image."""
    unknown = set(error_types) - set(ERROR_TYPES)
    if unknown:
        raise ValueError(f"fix_errors: unknown error types {sorted(unknown)}; the types are {ERROR_TYPES}")
    new_predictions, new_targets = [], []
    for i, (pred, target, image) in enumerate(zip(predictions, targets, images, strict=True)):
        p, t = _arrays(pred, f"predictions[{i}]", iou_type), _arrays(target, f"targets[{i}]", iou_type)
        # Past the 100 best of their class detections never count; dropped, so that none moves up
        # into the 100 once errors before it are removed.
        keep = image["ranked"] & ~np.isin(image["types"], [name for name in error_types if name != "missed"])  # (D,)
        for name, key in (("classification", "labels"), ("localisation", "boxes"), ("localisation", "masks")):
            if name in error_types and key in p:
                fix = image["fixable"] & (image["types"] == name)  # (D,)
                p[key][fix] = t[key][image["gt"][fix]]
                keep |= fix
        new_predictions.append({key: value[keep] for key, value in p.items()})
        stay = ~image["missed"] if "missed" in error_types else np.ones(len(image["missed"]), dtype=bool)  # (G,)
        new_targets.append({key: value[stay] for key, value in t.items()})
    return new_predictions, new_targets


def ap_at(predictions, targets, iou_type: str = "bbox", iou_threshold: float = 0.5) -> float:
    """COCO's AP at one IoU threshold (all areas, 100 detections; AP50 at 0.5), from minimtl's evaluator."""
    evaluator = CocoEvaluator(iou_type)
    for pred, target in zip(predictions, targets, strict=True):
        evaluator.add(pred, target)
    precision, _, _ = evaluator.curves()  # (T, R, K, A, M)
    return mean_defined(precision[_threshold_index(iou_threshold), :, :, 0, -1])


def detection_confusion_matrix(
    predictions, targets, num_classes: int, iou_type="bbox", iou_threshold=0.5, score_threshold=0.5
) -> np.ndarray:
    """(C, C) counts of matched detections, C = num_classes with label 0 the background: entry [g, p]
    counts objects of class g found by a detection of class p. Row 0 counts detections that match no
    object (background, duplicates, poorly placed ones), column 0 the objects no detection matched.

    Only detections scored >= score_threshold count (the picture's threshold: an operating point, where
    AP integrates over all). They are matched class-blind: by decreasing score, each takes the free
    object of any class with the highest IoU >= iou_threshold, so each object is counted once; one that
    takes only a crowd region is left out, as `evaluate` ignores it."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # (C, C)
    for i, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        img = image_arrays(pred, target, iou_type, i)
        dt_labels, gt_labels, crowd = img["dt_labels"], img["gt_labels"], img["iscrowd"]
        for name, labels in (("predictions", dt_labels), ("targets", gt_labels)):
            if len(labels) and (labels.min() < 1 or labels.max() >= num_classes):
                raise ValueError(f"detection_confusion_matrix: {name}[{i}] has labels outside 1..{num_classes - 1}")
        ious = pairwise_iou(img["dt"], img["gt"], crowd, iou_type)  # (D, G)
        order = np.argsort(-img["scores"], kind="mergesort")
        order = order[img["scores"][order] >= score_threshold]
        g_order = np.argsort(crowd, kind="mergesort")  # objects first, crowds last
        used = np.zeros(len(gt_labels), dtype=bool)  # (G,)
        for d in order:
            m = _best_free(ious[d], g_order, used, crowd, iou_threshold)
            if m == -1:
                matrix[0, dt_labels[d]] += 1
            elif not crowd[m]:
                used[m] = True
                matrix[gt_labels[m], dt_labels[d]] += 1
        np.add.at(matrix, (gt_labels[~used & ~crowd], 0), 1)
    return matrix


def _best_free(ious: np.ndarray, g_order: np.ndarray, used: np.ndarray, crowd: np.ndarray, threshold: float) -> int:
    """cocoapi's choice for one detection: the free object (in g_order, crowds last) of highest IoU >=
    threshold (the later of equal ones); a crowd only when no object qualifies. -1: none. Marks nothing."""
    best, m = min(threshold, 1 - 1e-10), -1
    for g in g_order:
        if used[g] and not crowd[g]:
            continue
        if m > -1 and not crowd[m] and crowd[g]:
            break
        if ious[g] < best:
            continue
        best, m = ious[g], g
    return int(m)


def _arrays(d: dict, name: str, iou_type: str) -> dict:
    """The keys `evaluate` reads, as numpy copies (masks binary (K, H, W)), so that oracles can edit them."""
    out = {}
    for key in ("boxes", "labels", "scores", "iscrowd", "area"):
        if key in d:
            value = d[key].detach().cpu().numpy() if hasattr(d[key], "detach") else np.asarray(d[key])
            out[key] = value.reshape(-1, 4).copy() if key == "boxes" else value.reshape(-1).copy()
    if iou_type == "segm":
        out["masks"] = binary_masks(d["masks"], f"{name}['masks']").copy()  # (K, H, W)
    return out


def _threshold_index(iou: float) -> int:
    hits = np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))
    if len(hits) == 0:
        raise ValueError(f"the IoU threshold must be one of COCO's {IOU_THRESHOLDS.round(2).tolist()}, got {iou}")
    return int(hits[0])


def _check_thresholds(fg_threshold: float, bg_threshold: float) -> None:
    if not 0 <= bg_threshold <= fg_threshold <= 1:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold <= 1, got bg {bg_threshold}, fg {fg_threshold}")
