"""Pictures of what a model does, saved as PNG with matplotlib: detections drawn on images, loss
curves from a metrics log, precision-recall curves from an evaluation; for error analysis
(minimtl.evaluation.errors), a confusion matrix of detections, the AP cost of each error type, and
detections beside the ground truth with each one's error type.

The save_* functions build a `matplotlib.figure.Figure` directly instead of asking pyplot for one:
such a figure needs no backend (`savefig` draws it on an Agg canvas by itself), so saving works under
whatever backend the user chose (Jupyter's inline one, a window, none), opens no window, and leaves
no figure behind in pyplot's list. Choosing the backend (`matplotlib.use`) is the user's business,
never a library's: doing it at import switched off the notebooks' inline pictures.
"""

import json
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minimtl.evaluation import RECALL_THRESHOLDS, evaluate_curves, missed_objects

COLOURS = matplotlib.colormaps["tab10"].colors


def draw_detections(ax, image, detections: dict, classes=None, score_threshold: float = 0.5, notes=None):
    """Draw an image (3, H, W) in [0, 1] and its detections (boxes, labels, scores, optional masks) on
    `ax`, any matplotlib Axes: one of a pyplot figure (shown inline in a notebook) or of a `Figure`.
    notes: one string per detection (or None), added to its label, e.g. its error type."""
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    keep = (
        detections["scores"] >= score_threshold
        if "scores" in detections
        else torch.ones(len(detections["boxes"]), dtype=torch.bool)
    )
    for k in torch.where(keep)[0].tolist():
        label = int(detections["labels"][k])
        colour = COLOURS[label % len(COLOURS)]
        x1, y1, x2, y2 = detections["boxes"][k].tolist()
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.5))
        if "masks" in detections:
            mask = detections["masks"][k]
            mask = (mask[0] if mask.dim() == 3 else mask).float().cpu().numpy() > 0.5
            overlay = np.zeros(mask.shape + (4,))
            overlay[mask] = (*colour, 0.45)
            ax.imshow(overlay)
        name = classes[label] if classes is not None else str(label)
        text = f"{name} {float(detections['scores'][k]):.2f}" if "scores" in detections else name
        if notes is not None and notes[k]:
            text = f"{text} {notes[k]}"
        ax.text(x1, y1, text, color="white", fontsize=7, va="bottom", bbox={"facecolor": colour, "pad": 1, "lw": 0})
    ax.set_axis_off()


def save_detections(images, detections, path, classes=None, score_threshold=0.5, columns=4, titles=None):
    """A grid of images with their detections, saved to `path`."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(3 * columns, 3 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            draw_detections(ax, images[i], detections[i], classes, score_threshold)
            if titles:
                ax.set_title(titles[i], fontsize=8)
        else:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def read_metrics(source) -> list[dict]:
    """A metrics.jsonl file (or a list of its lines, as dicts)."""
    if isinstance(source, (str, Path)):
        return [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
    return list(source)


def save_loss_curves(metrics, path) -> None:
    loss_curves_figure(metrics).savefig(path, dpi=100)


def loss_curves_figure(metrics) -> Figure:
    """Every loss term (and the total) against the step, log scale; beside them, when the log has
    validation lines ({"step", "eval": {...}}), the evaluation numbers against the step.
    metrics: a metrics.jsonl path or its lines (read_metrics)."""
    lines = read_metrics(metrics)
    losses = [line for line in lines if "loss" in line]
    evals = [line for line in lines if "eval" in line]
    fig = Figure(figsize=(12 if evals else 7, 4))
    axes = fig.subplots(1, 2 if evals else 1, squeeze=False)
    ax = axes[0, 0]
    steps = [line["step"] for line in losses]
    for key in [k for k in (losses[0] if losses else {}) if k.startswith("loss")]:
        ax.plot(steps, [line[key] for line in losses], label=key, lw=2 if key == "loss" else 1)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    ax.legend(fontsize=8)
    if evals:
        ax = axes[0, 1]
        for key in evals[0]["eval"]:
            ax.plot([line["step"] for line in evals], [line["eval"][key] for line in evals], "o-", label=key)
        ax.set(xlabel="step", ylabel="metric", ylim=(0, 1), title="validation")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_precision_recall(predictions, targets, path, iou_type="bbox", classes=None, iou_threshold=0.5) -> None:
    """The precision-recall curve of each category at one IoU threshold (all areas, 100 detections)."""
    precision, _, categories = evaluate_curves(predictions, targets, iou_type)
    save_precision_recall_curves(precision, categories, path, iou_type, classes, iou_threshold)


def save_precision_recall_curves(precision, categories, path, iou_type="bbox", classes=None, iou_threshold=0.5):
    """The same from an evaluation's precision array (T, R, K, A, M) and its K category labels."""
    t = int(np.argmin(np.abs(np.linspace(0.5, 0.95, 10) - iou_threshold)))
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for k, label in enumerate(categories):
        p = precision[t, :, k, 0, -1]
        if (p > -1).any():
            name = classes[label] if classes is not None and label < len(classes) else str(label)
            ax.plot(RECALL_THRESHOLDS, p, label=f"{name} (AP{int(iou_threshold * 100)} {p.mean():.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{iou_type}, IoU {iou_threshold}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# Short names for the labels of detections in pictures (minimtl.evaluation.errors' types).
ERROR_NOTES = {"classification": "cls", "localisation": "loc", "both": "cls+loc", "duplicate": "dup",
               "background": "bkg", "correct": "", "ignored": ""}  # fmt: skip


def draw_confusion_matrix(ax, matrix, classes=None, title: str | None = None) -> None:
    """A (C, C) confusion matrix of detections (minimtl.evaluation.detection_confusion_matrix) on `ax`:
    rows the objects' classes, row 0 the detections that matched no object; columns the detections'
    classes, column 0 the objects no detection found. Each cell shows its count, shaded by its share
    of the row, so that a row reads as "what became of the objects of this class"."""
    matrix = np.asarray(matrix)
    num = len(matrix)
    names = [classes[k] if classes is not None and k < len(classes) else str(k) for k in range(num)]
    rows, columns = ["no object", *names[1:]], ["missed", *names[1:]]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # (C, C)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(num), columns)
    ax.set_yticks(range(num), rows)
    ax.set(xlabel="detected as", ylabel="object", title=title or "detections against objects")


def draw_error_costs(ax, costs: dict, title: str | None = None) -> None:
    """The AP cost of each error type as horizontal bars (ErrorAnalysis.costs; "all" is left out).
    costs: {type: cost}, or {series: {type: cost}} for grouped bars, e.g. {"box": ..., "mask": ...}."""
    series = costs if all(isinstance(v, dict) for v in costs.values()) else {"": costs}
    types = [name for name in next(iter(series.values())) if name != "all"]
    height = 0.8 / len(series)
    for s, (name, values) in enumerate(series.items()):
        y = np.arange(len(types)) + (s - (len(series) - 1) / 2) * height
        bars = ax.barh(y, [values[t] for t in types], height=height, label=name or None, color=COLOURS[s])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_yticks(range(len(types)), types)
    ax.invert_yaxis()
    ax.set(xlabel="AP gained by fixing it alone", title=title or "what each error type costs")
    ax.margins(x=0.2)
    if len(series) > 1:
        ax.legend(fontsize=8)


def draw_truth_and_prediction(
    axes, image, prediction: dict, target: dict, classes=None, score_threshold: float = 0.5, result=None
) -> None:
    """The ground truth on axes[0] and the detections scored >= score_threshold on axes[1]. With
    `result` (minimtl.evaluation.classify_image's dict for this image) each detection's label names
    its error type, and each object that none of the detections shown found, or points at with a
    classification or localisation error, is labelled "missed"."""
    truth_notes = detection_notes = None
    if result is not None:
        detection_notes = [ERROR_NOTES.get(t, t) for t in result["types"]]
        truth_notes = ["missed" if m else "" for m in missed_objects(result, score_threshold)]
    draw_detections(axes[0], image, target, classes, notes=truth_notes)
    draw_detections(axes[1], image, prediction, classes, score_threshold, notes=detection_notes)
    axes[0].set_title("ground truth", fontsize=8)
    axes[1].set_title(f"detections (score >= {score_threshold})", fontsize=8)


def truth_and_prediction_figure(
    images, predictions, targets, classes=None, score_threshold: float = 0.5, results=None, titles=None, columns=2
) -> Figure:
    """A `Figure` of images side by side with their ground truth and detections (draw_truth_and_prediction),
    `columns` pairs a row; results: classify_image's dict per image, titles: a line above each pair."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(5 * columns, 2.7 * rows))
    axes = fig.subplots(rows, 2 * columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, image in enumerate(images):
        pair = axes[i // columns, 2 * (i % columns) : 2 * (i % columns) + 2]
        result = results[i] if results is not None else None
        draw_truth_and_prediction(pair, image, predictions[i], targets[i], classes, score_threshold, result)
        if titles:
            pair[0].set_title(f"{titles[i]}: ground truth", fontsize=8)
    fig.tight_layout()
    return fig


def data_stats_figure(stats) -> Figure:
    """A dataset's statistics (minimtl.data.stats.DataStats) in four panels: objects per class, objects
    per image, every object's width and height in the model's pixels (coloured by its best anchor IoU,
    the anchors' own shapes as crosses), and the best anchor IoU against the RPN's thresholds."""
    fig = Figure(figsize=(15, 3.6))
    ax1, ax2, ax3, ax4 = fig.subplots(1, 4)
    ax1.bar(stats.classes[1:], stats.objects_per_class, color=COLOURS[0])
    ax1.set(title="objects per class", ylabel="objects")
    ax1.tick_params(axis="x", labelrotation=45 if len(stats.classes) > 5 else 0, labelsize=8)
    counts = stats.objects_per_image
    ax2.hist(counts, bins=np.arange(int(counts.max(initial=0)) + 2) - 0.5, color=COLOURS[0])
    ax2.set(title="objects per image", xlabel="objects", ylabel="images")
    if len(stats.labels):
        w, h = stats.model_sizes[:, 0], stats.model_sizes[:, 1]
        points = ax3.scatter(w, h, c=stats.best_anchor_iou, cmap="viridis", vmin=0, vmax=1, s=6)
        fig.colorbar(points, ax=ax3, label="best anchor IoU")
        for sizes, ratios in zip(stats.anchor_sizes, stats.aspect_ratios, strict=True):
            for s in sizes:
                for r in ratios:  # r = h / w at area s^2
                    ax3.plot(s / r**0.5, s * r**0.5, "+", color="red", ms=9, mew=1.5)
        ax3.set(xscale="log", yscale="log", xlabel="width (model pixels)", ylabel="height (model pixels)",
                title="objects (dots) and anchors (+)")  # fmt: skip
        ax4.hist(stats.best_anchor_iou, bins=np.linspace(0, 1, 21), color=COLOURS[0])
        for t, style in ((0.5, ":"), (0.7, "--")):
            ax4.axvline(t, color="red", ls=style, label=f"IoU {t}")
        ax4.legend(fontsize=8)
    ax4.set(title="each object's best anchor IoU", xlabel="IoU", ylabel="objects")
    fig.tight_layout()
    return fig


def save_data_stats(stats, path) -> None:
    data_stats_figure(stats).savefig(path, dpi=100)
