"""minimtl.plots saves pictures without touching the user's matplotlib state: importing it chooses
no backend (STYLE habit 11), and the save_* functions write PNG files without opening pyplot figures."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from helpers import run_python
from matplotlib.figure import Figure

from minimtl import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scene():
    """One 32 x 32 image with two objects, and detections for it: a hit (with a mask) and a miss."""
    image = torch.rand(3, 32, 32)
    target = {"boxes": torch.tensor([[2.0, 2, 12, 12], [16, 16, 30, 30]]), "labels": torch.tensor([0, 1])}
    masks = torch.zeros(3, 1, 32, 32)
    masks[0, 0, 2:12, 2:12] = 1
    detections = {
        "boxes": torch.tensor([[2.0, 2, 12, 12], [20, 0, 28, 8], [0, 20, 6, 30]]),
        "labels": torch.tensor([0, 1, 1]),
        "scores": torch.tensor([0.9, 0.6, 0.2]),  # the last is under the default threshold 0.5
        "masks": masks,
    }
    return image, target, detections


@pytest.fixture
def no_new_pyplot_figures():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "a save_* function left a pyplot figure open"


def test_import_chooses_no_backend():
    # A fresh interpreter: this one may have imported minimtl.plots already.
    result = run_python(
        """
        import sys
        import matplotlib

        matplotlib.use("svg")  # the user's choice, made before the library is imported
        import minimtl.plots

        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules, "minimtl.plots needs no pyplot"
        """
    )
    assert result.returncode == 0, result.stderr


def test_draw_detections_on_given_axes():
    image, _, detections = _scene()
    ax = Figure().subplots()
    plots.draw_detections(ax, image, detections, classes=["circle", "square"])
    assert len(ax.patches) == 2  # scores 0.9 and 0.6 pass the threshold 0.5; 0.2 does not
    assert [t.get_text() for t in ax.texts] == ["circle 0.90", "square 0.60"]
    assert len(ax.images) == 3  # the image and a mask overlay per kept detection


def test_draw_targets_without_scores():
    image, target, _ = _scene()
    ax = Figure().subplots()
    plots.draw_detections(ax, image, target)
    assert len(ax.patches) == 2
    assert [t.get_text() for t in ax.texts] == ["0", "1"]


def test_save_detections(tmp_path, no_new_pyplot_figures):
    image, target, detections = _scene()
    path = tmp_path / "detections.png"
    plots.save_detections([image] * 3, [detections, target, detections], path, columns=2, titles=["a", "b", "c"])
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_save_loss_curves(tmp_path, no_new_pyplot_figures):
    metrics = tmp_path / "metrics.jsonl"
    lines = [f'{{"step": {s}, "loss": {1 / s}, "loss_box": {0.5 / s}}}' for s in range(1, 6)]
    lines.append('{"step": 5, "eval": {"AP": 0.25, "AP50": 0.5}}')
    metrics.write_text("\n".join(lines) + "\n")
    assert len(plots.read_metrics(metrics)) == 6
    for name, source in (("from_file.png", metrics), ("from_lines.png", plots.read_metrics(metrics)[:5])):
        plots.save_loss_curves(source, tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_save_precision_recall(tmp_path, no_new_pyplot_figures):
    image, target, detections = _scene()
    plots.save_precision_recall([detections], [target], tmp_path / "pr.png", classes=["circle", "square"])
    assert (tmp_path / "pr.png").read_bytes().startswith(PNG_MAGIC)
    precision = -np.ones((10, 101, 3, 4, 3))  # (T, R, K, A, M); category 2 has no objects
    precision[:, :, :2] = np.linspace(1, 0, 101)[None, :, None, None, None]
    plots.save_precision_recall_curves(precision, [0, 1, 2], tmp_path / "curves.png", "segm", iou_threshold=0.75)
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def _analysed_scene():
    """_scene's image with three objects, detections of every kind, and their error analysis."""
    from minimtl.evaluation import classify_image, detection_confusion_matrix

    image, target, detections = _scene()
    target = {**target, "labels": target["labels"] + 1}  # label 0 is the background in error analysis
    detections = {**detections, "labels": detections["labels"] + 1}
    result = classify_image(detections, target)  # a hit, then two boxes on nothing: object 1 is missed
    matrix = detection_confusion_matrix([detections], [target], num_classes=3, score_threshold=0.0)
    return image, target, detections, result, matrix


def test_draw_detections_with_notes():
    image, _, detections = _scene()
    ax = Figure().subplots()
    plots.draw_detections(ax, image, detections, ["circle", "square"], notes=["", "bkg", "dup"])
    assert [t.get_text() for t in ax.texts] == ["circle 0.90", "square 0.60 bkg"]


def test_draw_confusion_matrix():
    *_, matrix = _analysed_scene()
    assert matrix.tolist() == [[0, 0, 2], [0, 1, 0], [1, 0, 0]]  # two square boxes on nothing, a square missed
    ax = Figure().subplots()
    plots.draw_confusion_matrix(ax, matrix, ["background", "circle", "square"])
    assert [t.get_text() for t in ax.texts] == [str(n) for n in matrix.flat]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["missed", "circle", "square"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["no object", "circle", "square"]


def test_draw_error_costs():
    costs = {"classification": 0.1, "localisation": 0.05, "both": 0.0, "duplicate": 0.02, "background": 0.0,
             "missed": 0.2, "all": 0.6}  # fmt: skip
    ax = Figure().subplots()
    plots.draw_error_costs(ax, costs)
    assert len(ax.patches) == 6  # one bar per type, "all" left out
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "classification"
    ax = Figure().subplots()
    plots.draw_error_costs(ax, {"box": costs, "mask": costs})
    assert len(ax.patches) == 12 and [t.get_text() for t in ax.get_legend().get_texts()] == ["box", "mask"]


def test_truth_and_prediction(tmp_path, no_new_pyplot_figures):
    image, target, detections, result, _ = _analysed_scene()
    axes = Figure().subplots(1, 2)
    assert result["types"].tolist() == ["correct", "background", "background"]
    plots.draw_truth_and_prediction(axes, image, detections, target, ["bg", "circle", "square"], result=result)
    assert [t.get_text() for t in axes[0].texts] == ["circle", "square missed"]
    assert [t.get_text() for t in axes[1].texts] == ["circle 0.90", "square 0.60 bkg"]
    fig = plots.truth_and_prediction_figure([image] * 3, [detections] * 3, [target] * 3, results=[result] * 3,
                                            titles=["a", "b", "c"])  # fmt: skip
    assert isinstance(fig, Figure) and len(fig.axes) == 8  # 2 rows of 2 pairs; the last pair left empty
    fig.savefig(tmp_path / "pairs.png")
    assert (tmp_path / "pairs.png").read_bytes().startswith(PNG_MAGIC)
