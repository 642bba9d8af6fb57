"""Pictures of what a model does, saved as PNG with matplotlib: detections drawn on images, loss
curves from a metrics log, precision-recall curves from an evaluation.

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

from minimtl.evaluation import RECALL_THRESHOLDS, evaluate_curves

COLOURS = matplotlib.colormaps["tab10"].colors


def draw_detections(ax, image, detections: dict, classes=None, score_threshold: float = 0.5):
    """Draw an image (3, H, W) in [0, 1] and its detections (boxes, labels, scores, optional masks) on
    `ax`, any matplotlib Axes: one of a pyplot figure (shown inline in a notebook) or of a `Figure`."""
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
    """Every loss term (and the total) against the step, log scale; beside them, when the log has
    validation lines ({"step", "eval": {...}}), the evaluation numbers against the step."""
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
    fig.savefig(path, dpi=100)


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
