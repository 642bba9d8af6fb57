"""The joint-versus-separate experiment: does training detection, instance masks and semantic
segmentation together, L = sum_i alpha_i L_i, beat training them apart?

    python -m minimtl experiment mtl            # every row, 3 seeds, writes docs/mtl_experiment.md

Every row trains the same network (minimtl.models.MultiTaskRCNN, the demo's small ResNet-18-FPN)
on the same synthetic shapes with the same budget (steps, batch, optimiser, schedule); only the
heads that are on and the loss weighting change. Each run is evaluated on the same held-out
images: box AP, mask AP (COCO's, minimtl.evaluation) and semantic mIoU.

A finished run leaves result.json in its folder and is not run again, so an interrupted
experiment continues where it stopped.
"""

import json
import math
import statistics
import time
from pathlib import Path

import torch

from minimtl.app import run as app
from minimtl.app.config import DataSection, ModelSection, RunConfig
from minimtl.app.presets import SMALL_MODEL, SMALL_TRAIN
from minimtl.engine import TrainConfig

# (name, heads and weighting): the rows of the table.
ROWS = [
    ("detection only", dict(detection=True, masks=False, semantic=False)),
    ("Mask R-CNN (detection + instance)", dict(detection=True, masks=True, semantic=False)),
    ("semantic only", dict(detection=False, masks=False, semantic=True)),
    ("joint, fixed equal weights", dict(loss_strategy="fixed")),
    ("joint, uncertainty weighting", dict(loss_strategy="uncertainty")),
    ("joint, DWA", dict(loss_strategy="dwa")),
    ("joint, GradNorm", dict(loss_strategy="gradnorm")),
    ("joint, fixed + PCGrad", dict(loss_strategy="fixed", pcgrad=True)),
]
# The demo's model (the "small" preset, minimtl/app/presets.py), plus the semantic head.
MODEL = {
    **{k: v for k, v in SMALL_MODEL.items() if k != "kind"},
    "semantic": True,
    "semantic_head": "fpn",
    "semantic_channels": 64,
    "loss_options": {"dwa_period": 25},
}
# The demo's training, shorter: a CPU budget (8 rows x 3 seeds took 54 minutes on 2 cores).
TRAIN = {**SMALL_TRAIN, "steps": 600, "checkpoint_every": 250, "progress": False}
TEST_SEED = app.SHAPES_TEST_SEED  # the demo's held-out images


def run_one(name: str, row: dict, seed: int, steps: int, num_test: int, out: Path, log=print) -> dict:
    """Train and evaluate one (row, seed); returns (and stores in out/result.json) its metrics."""
    result_path = out / "result.json"
    train = {**TRAIN, "steps": steps}
    settings = {"row": name, "seed": seed, "steps": steps, "num_test": num_test, "model": MODEL, "train": train}
    if result_path.exists():
        stored = json.loads(result_path.read_text())
        if stored.get("settings") == json.loads(json.dumps(settings)):
            return stored
    row = dict(row)
    pcgrad = row.pop("pcgrad", False)
    run = RunConfig(
        model=ModelSection(kind="multitask", settings={**MODEL, **row}),
        train=TrainConfig(**{**TRAIN, "steps": steps, "seed": seed, "pcgrad": pcgrad, "output_dir": str(out)}),
        data=DataSection(image_size=128, min_size=128, max_size=128, num_test_images=num_test),
    )
    report = app.train(run, log=log)
    test = report["test"]
    result = {"settings": settings, "train_seconds": report["train_seconds"], "weights": report["loss_weights"]}
    if "box" in test:
        result["box_AP"] = test["box"]["AP"]
    if "mask" in test:
        result["mask_AP"] = test["mask"]["AP"]
    if "semantic" in test:
        result["mIoU"] = test["semantic"]["mIoU"]
    result_path.write_text(json.dumps(result, indent=1))
    return result


def run(seeds=(0, 1, 2), steps: int = TRAIN["steps"], num_test: int = 200, out_dir="runs/mtl", rows=None, log=print):
    """Every row x seed; returns {row name: [result per seed]}."""
    results = {}
    for name, row in ROWS:
        if rows is not None and name not in rows:
            continue
        results[name] = []
        for seed in seeds:
            folder = Path(out_dir) / _slug(name) / f"seed{seed}"
            log(f"experiment mtl: {name}, seed {seed}")
            results[name].append(run_one(name, row, seed, steps, num_test, folder, log))
    return results


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(results: dict) -> dict:
    """{row: {metric: (mean, std)}} for box_AP, mask_AP, mIoU and train_seconds."""
    table = {}
    for name, runs in results.items():
        table[name] = {
            metric: _mean_std([r[metric] for r in runs])
            for metric in ("box_AP", "mask_AP", "mIoU", "train_seconds")
            if metric in runs[0]
        }
    return table


def table_markdown(table: dict) -> str:
    lines = ["| run | box AP | mask AP | semantic mIoU | time per run |", "|---|---|---|---|---|"]
    for name, metrics in table.items():
        cells = []
        for metric in ("box_AP", "mask_AP", "mIoU"):
            cells.append(f"{metrics[metric][0]:.3f} ± {metrics[metric][1]:.3f}" if metric in metrics else "–")
        cells.append(f"{metrics['train_seconds'][0]:.0f} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BASELINES = {"box_AP": "detection only", "mask_AP": "Mask R-CNN (detection + instance)", "mIoU": "semantic only"}


def differences(table: dict, results: dict) -> list[tuple[str, str, float, float, str]]:
    """(joint row, metric, difference, standard error, verdict) for each joint row and metric.

    A difference is called real only when it exceeds twice its standard error (the two rows' seed
    standard deviations combined); with three seeds that is a coarse test.
    """
    out = []
    for name in table:
        if not name.startswith("joint"):
            continue
        for metric, base in BASELINES.items():
            if base not in table or metric not in table[name]:
                continue
            (m1, s1), (m0, s0) = table[name][metric], table[base][metric]
            stderr = math.sqrt(s1**2 / len(results[name]) + s0**2 / len(results[base]))
            diff = m1 - m0
            verdict = "better" if diff > 0 else "worse"
            if stderr == 0 or abs(diff) <= 2 * stderr:
                verdict = "no clear difference"
            out.append((name, metric, diff, stderr, verdict))
    return out


def verdict(table: dict, results: dict) -> str:
    """The answer in a paragraph: did joint training help, on which metric, by how much."""
    rows = differences(table, results)
    if not rows:
        return "No joint row and baseline to compare."
    lines = []
    for metric, base in BASELINES.items():
        mine = [r for r in rows if r[1] == metric]
        if not mine:
            continue
        better = sum(r[4] == "better" for r in mine)
        worse = sum(r[4] == "worse" for r in mine)
        lo, hi = min(r[2] for r in mine), max(r[2] for r in mine)
        lines.append(
            f"{metric} against {base}: joint rows differ by {lo:+.3f} to {hi:+.3f}; clearly better in {better}, "
            f"clearly worse in {worse} of {len(mine)}."
        )
    better = sum(r[4] == "better" for r in rows)
    worse = sum(r[4] == "worse" for r in rows)
    if better and not worse:
        overall = f"Joint training helped here: {better} of {len(rows)} comparisons are clearly better, none worse."
    elif worse and not better:
        overall = f"Joint training hurt here: {worse} of {len(rows)} comparisons are clearly worse, none better."
    elif better or worse:
        overall = f"Mixed: {better} of {len(rows)} comparisons clearly better, {worse} clearly worse."
    else:
        overall = (
            f"Neither confirmed nor refuted at this budget: none of the {len(rows)} comparisons differs by more "
            "than twice its standard error."
        )
    return " ".join([overall, *lines])


def compare(table: dict, results: dict) -> list[str]:
    """Plain statements: each joint row against the single-task baselines, with the seeds' spread."""
    statements = []
    for name, metric, diff, stderr, verdict_ in differences(table, results):
        m1, m0 = table[name][metric][0], table[BASELINES[metric]][metric][0]
        statements.append(
            f"- {name} vs {BASELINES[metric]}, {metric}: {m1:.3f} vs {m0:.3f} ({diff:+.3f}, "
            f"standard error {stderr:.3f}): {verdict_}."
        )
    return statements


def write_report(results: dict, path: Path, seeds, steps: int, num_test: int, conclusion: str = "") -> str:
    table = summary(results)
    text = [
        "# Joint versus separate training (`python -m minimtl experiment mtl`)",
        "",
        f"Written by minimtl/experiments/mtl.py on {time.strftime('%Y-%m-%d')}, on "
        f"{'a CUDA GPU' if torch.cuda.is_available() else 'the CPU'} "
        f"({torch.get_num_threads()} threads). Seeds {list(seeds)}; mean ± standard deviation over seeds.",
        "",
        table_markdown(table),
        "",
        "## Settings",
        "",
        f"- Data: synthetic shapes (`ShapesDataset`, 128 × 128, training seed 0 with flips and colour jitter); "
        f"{num_test} held-out images (seed {TEST_SEED}).",
        f"- Training, the same for every run: {steps} steps of {TRAIN['batch_size']} images, "
        f"{TRAIN['optimizer']} lr {TRAIN['lr']}, weight decay {TRAIN['weight_decay']}, {TRAIN['warmup_steps']} "
        f"warm-up steps, {TRAIN['schedule']} schedule, gradient clipping at {TRAIN['grad_clip']}.",
        f"- Model: `MultiTaskRCNN`, {json.dumps(MODEL)}; each row switches heads and weighting: "
        + "; ".join(f"{name}: `{json.dumps(row)}`" for name, row in ROWS if name in results)
        + ".",
        "- Box and mask AP are COCO's AP@[.5:.95] (`minimtl.evaluation.evaluate`); mIoU over background, "
        "circle, square and triangle (`minimtl.evaluation.mean_iou`).",
        "- Time per run: the wall-clock training time (evaluation excluded); anything else running on the "
        "machine at the same time inflates it.",
        "- A difference is called clear when it exceeds twice its standard error (the two rows' standard "
        'deviations over seeds combined); with three seeds that is a coarse test: "no clear difference" means the '
        "experiment cannot tell, not that the rows are equal.",
        "",
        "## Joint against separate",
        "",
        verdict(table, results),
        "",
        *compare(table, results),
    ]
    if conclusion:
        text += ["", "## Conclusion", "", conclusion]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return "\n".join(text)


__all__ = ["ROWS", "run", "summary", "table_markdown", "write_report"]
