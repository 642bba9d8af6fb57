"""The losses experiment: Mask R-CNN's published losses against the suggestions that are often said to
be part of it (chapter 8, section 8.6).

    python -m minimtl experiment losses         # every row, DEFAULT_SEEDS, writes docs/losses_experiment.md

Every row trains the MTL experiment's network as a Mask R-CNN (detection + instance masks; the
demo's small ResNet-18-FPN, minimtl/experiments/mtl.py's MODEL) on the same data (the synthetic
shapes, or COCO-format files with masks, as in the MTL experiment) with the same budget; only the
detector's losses change (minimtl/modeling/rpn.py and roi_heads.py):

  * as published: binary cross-entropy for the RPN's objectness over 256 sampled anchors, softmax
    cross-entropy for the box classifier, smooth L1 on the box deltas of both (He et al., 2017);
  * focal: the focal loss for the objectness (every anchor, no sampling) and for the classifier
    (a sigmoid per class), with the prior bias initialisation (Lin et al., 2017);
  * GIoU / CIoU: the IoU-family losses on the decoded boxes of both stages (Rezatofighi et al., 2019;
    Zheng et al., 2020);
  * the list's combination: focal and GIoU together;
  * GIoU / CIoU in the box head only, scaled as mmdetection's Faster R-CNN configurations scale them
    (box_loss_weight 10 and 12; the RPN keeps smooth L1): 1 - IoU is at most 2 and its gradients are
    smaller than smooth L1's on the (10, 10, 5, 5)-weighted deltas, so at weight 1 the rows above also
    change how much the box term counts against the classifier.

Each row is compared with the published losses on box AP and mask AP, paired by seed, as the MTL
experiment does (minimtl.experiments.stats). A finished run is not run again.
"""

import json
import time
from pathlib import Path

import torch

from minimtl.app.config import DataSection
from minimtl.experiments import mtl

FOCAL = dict(rpn_objectness_loss="focal", box_classifier_loss="focal")
BASELINE = "as published: cross-entropy, smooth L1"
ROWS = [
    (BASELINE, {}),
    ("focal objectness and classifier", FOCAL),
    ("GIoU box losses", dict(rpn_box_loss="giou", box_loss="giou")),
    ("CIoU box losses", dict(rpn_box_loss="ciou", box_loss="ciou")),
    ("focal and GIoU", dict(**FOCAL, rpn_box_loss="giou", box_loss="giou")),
    ("GIoU in the box head, weight 10", dict(box_loss="giou", box_loss_weight=10.0)),
    ("CIoU in the box head, weight 12", dict(box_loss="ciou", box_loss_weight=12.0)),
]
BASELINES = {"box_AP": BASELINE, "mask_AP": BASELINE}
# The seeds a plain `experiment losses` runs: the fewest that resolve a paired difference of 0.02 in box and mask
# AP at the largest s_d measured (docs/losses_experiment.md, 2026-12-03: 0.036, mask AP of "focal and GIoU", at
# 3 seeds; stats.seeds_needed gives 15). About 3.5 CPU hours on 2 cores for the seven rows.
DEFAULT_SEEDS = tuple(range(15))


def run(seeds=DEFAULT_SEEDS, steps: int = mtl.TRAIN["steps"], data: DataSection | None = None, out_dir="runs/losses",
        rows=None, log=print) -> dict:  # fmt: skip
    """Every row x seed on `data` (default: mtl.shapes_data()); returns {row name: [result per seed]} (results
    as mtl.run_one stores them)."""
    mask_rcnn_rows = [(name, {**mtl.MASK_RCNN, **row}) for name, row in ROWS]
    return mtl.run_rows(mask_rcnn_rows, "losses", seeds, steps, data or mtl.shapes_data(), out_dir, rows, log)


def write_report(results: dict, path: Path, seeds, steps: int, data: DataSection) -> str:
    """The table, the settings, each row against the published losses (paired by seed) and what the seeds
    resolve, written to `path`; returns the text."""
    table = mtl.summary(results)
    comparisons = mtl.differences(results, baselines=BASELINES)
    train = mtl.TRAIN
    text = [
        "# Mask R-CNN's losses against the suggested ones (`python -m minimtl experiment losses`)",
        "",
        f"Written by minimtl/experiments/losses.py on {time.strftime('%Y-%m-%d')}, on "
        f"{'a CUDA GPU' if torch.cuda.is_available() else 'the CPU'} ({torch.get_num_threads()} threads). "
        f"Seeds {list(seeds)}; mean ± standard deviation over seeds.",
        "",
        mtl.table_markdown(table),
        "",
        "## Settings",
        "",
        mtl.data_line(data),
        f"- Training, the same for every run: {steps} steps of {train['batch_size']} images, {train['optimizer']} "
        f"lr {train['lr']}, weight decay {train['weight_decay']}, {train['warmup_steps']} warm-up steps, "
        f"{train['schedule']} schedule, gradient clipping at {train['grad_clip']}.",
        f"- Model: `MultiTaskRCNN` as a Mask R-CNN, {json.dumps({**mtl.MODEL, **mtl.MASK_RCNN})}; each row changes "
        "the detector's losses: "
        + "; ".join(f"{name}: `{json.dumps(row)}`" for name, row in ROWS if name in results)
        + " (focal_alpha 0.25, focal_gamma 2, focal_prior 0.01; see minimtl/modeling/rpn.py and roi_heads.py).",
        "- Box and mask AP are COCO's AP@[.5:.95] (`minimtl.evaluation.evaluate`). Each row is compared with "
        f"{BASELINE!r} seed by seed: the paired mean difference with its {mtl._LEVEL} t interval "
        '(`minimtl.experiments.stats`); "better" or "worse" when the interval excludes 0.',
        "",
        "## Against the published losses",
        "",
        mtl.verdict(comparisons, BASELINES, subject="A suggested loss", rows="rows"),
        "",
        *mtl.compare(table, comparisons),
        "",
        "## What this experiment can resolve",
        "",
        *mtl.resolvable(comparisons, baselines=BASELINES),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return "\n".join(text)


__all__ = ["BASELINE", "DEFAULT_SEEDS", "ROWS", "run", "write_report"]
