"""The joint-versus-separate experiment: does training detection, instance masks, semantic
segmentation (and image classification) together, L = sum_i alpha_i L_i, beat training them apart?

    python -m minimtl experiment mtl            # every row, DEFAULT_SEEDS, writes docs/mtl_experiment.md
    python -m minimtl experiment mtl --seeds 0 1 2      # a first look (three seeds resolve about 0.09 AP)

Every row trains the same network (minimtl.models.MultiTaskRCNN, the demo's small ResNet-18-FPN)
on the same data with the same budget (steps, batch, optimiser, schedule); only the heads that are
on and the loss weighting change. Each run is evaluated on the same held-out images: box AP, mask
AP (COCO's, minimtl.evaluation), semantic mIoU, and the image head's mAP. The data are the
synthetic shapes, or COCO-format files with masks (`--coco-annotations ... --coco-test-annotations
...`; the semantic targets are painted from the instance masks, as `train` does):

    python -m minimtl data fetch nuclei --out data/nuclei
    python -m minimtl experiment mtl --coco-annotations data/nuclei/train.json \
        --coco-test-annotations data/nuclei/test.json

Two rows follow the article's protocols, in phases, each reported model having seen the same
`steps` updates as any other row's:
  * "joint, then fine-tuned per task": the joint network (fixed equal weights) for (1 - f) steps,
    then, for each task, a copy of it with only that task's heads on, fine-tuned f steps on that
    task's loss alone with the backbone and FPN frozen (f = FINETUNE_FRACTION); each task is
    reported from its own fine-tuned model.
  * "separate, then joint": Mask R-CNN (detection + instance) and semantic segmentation each
    trained alone for g steps (g = SEPARATE_FRACTION of them), then one network initialised from
    both (backbone and FPN the average of the two, each head from its own run) trained jointly for
    the rest.

A finished run leaves result.json in its folder and is not run again, so an interrupted
experiment continues where it stopped.
"""

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minimtl.app import run as app
from minimtl.app.config import DataSection, ModelSection, RunConfig
from minimtl.app.presets import SMALL_MODEL, SMALL_TRAIN
from minimtl.engine import TrainConfig, load_checkpoint
from minimtl.experiments import stats

# The single-task baselines, by the metric each is compared on.
DETECTION = dict(detection=True, masks=False, semantic=False)
MASK_RCNN = dict(detection=True, masks=True, semantic=False)
SEMANTIC = dict(detection=False, masks=False, semantic=True)
IMAGE = dict(detection=False, masks=False, semantic=False, image_classification=True)
FINETUNE_FRACTION = 0.25  # "joint, then fine-tuned per task": the share of the steps spent fine-tuning
FINETUNE_FROZEN = ["backbone", "fpn"]  # what stays as the joint phase left it
SEPARATE_FRACTION = 0.5  # "separate, then joint": the share of the steps spent on the tasks alone
# (name, heads and weighting, or a protocol): the rows of the table.
ROWS = [
    ("detection only", DETECTION),
    ("Mask R-CNN (detection + instance)", MASK_RCNN),
    ("semantic only", SEMANTIC),
    ("image classification only", IMAGE),
    ("joint, fixed equal weights", dict(loss_strategy="fixed")),
    ("joint, uncertainty weighting", dict(loss_strategy="uncertainty")),
    ("joint, DWA", dict(loss_strategy="dwa")),
    ("joint, GradNorm", dict(loss_strategy="gradnorm")),
    ("joint, fixed + PCGrad", dict(loss_strategy="fixed", pcgrad=True)),
    ("joint with the image task, fixed equal weights", dict(loss_strategy="fixed", image_classification=True)),
    ("joint, then fine-tuned per task", dict(protocol="joint_then_finetune")),
    ("separate, then joint", dict(protocol="separate_then_joint")),
]
# The demo's model (the "small" preset, minimtl/app/presets.py), plus the semantic head.
MODEL = {
    **{k: v for k, v in SMALL_MODEL.items() if k != "kind"},
    "semantic": True,
    "semantic_head": "fpn",
    "semantic_channels": 64,
    "loss_options": {"dwa_period": 25},
}
# The demo's training, shorter: a CPU budget (one seed of the eight main rows, about 14 minutes on 2 cores).
TRAIN = {**SMALL_TRAIN, "steps": 600, "checkpoint_every": 250, "progress": False}
# The seeds a plain `experiment mtl` runs: the fewest that resolve a paired difference of 0.02 (TARGET) in box
# and mask AP at the largest spread s_d measured on the shapes (docs/mtl_experiment.md, "What this experiment
# can resolve", 2026-12-03: box AP s_d 0.038 at 9 seeds; stats.seeds_needed gives 17). About 4 CPU hours on
# 2 cores for the eight main rows (a seed of them, about 14 minutes), 6 with the four weighting rows.
DEFAULT_SEEDS = tuple(range(17))
TEST_SEED = app.SHAPES_TEST_SEED  # the demo's held-out images


def shapes_data(num_test: int = 200) -> DataSection:
    """The demo's synthetic shapes, 128 x 128, with `num_test` held-out images."""
    return DataSection(image_size=128, min_size=128, max_size=128, num_test_images=num_test)


def data_settings(data: DataSection) -> dict:
    """What a run's result.json records of its data (for shapes, the held-out count alone, as it always has)."""
    if not data.is_coco:
        return {"num_test": data.num_test_images}
    return {"data": {k: v for k, v in dataclasses.asdict(data).items() if k.startswith("coco_") or k.endswith("_size")}}


def data_line(data: DataSection) -> str:
    """The report's "Data:" line."""
    if not data.is_coco:
        return (f"- Data: synthetic shapes (`ShapesDataset`, 128 × 128, training seed 0 with flips and colour jitter); "
                f"{data.num_test_images} held-out images (seed {TEST_SEED}).")  # fmt: skip
    return (f"- Data: COCO-format files, training `{data.coco_annotations}` (images in "
            f"`{data.coco_images or Path(data.coco_annotations).parent}`, flips and colour jitter), held out "
            f"`{data.coco_test_annotations}`; semantic targets painted from the instance masks "
            "(`minimtl.data.CocoDataset`, semantic=True); image sizes from the data.")  # fmt: skip


def run_one(name: str, row: dict, seed: int, steps: int, data: DataSection, out: Path, log=print) -> dict:
    """Train and evaluate one (row, seed) on `data`; returns (and stores in out/result.json) its metrics."""
    result_path = out / "result.json"
    train = {**TRAIN, "steps": steps}
    settings = {"row": name, "row_settings": row, "seed": seed, "steps": steps, **data_settings(data), "model": MODEL,
                "train": train}  # fmt: skip
    protocol = row.get("protocol")
    if protocol == "joint_then_finetune":
        settings["protocol"] = {"finetune_fraction": FINETUNE_FRACTION, "frozen": FINETUNE_FROZEN}
    elif protocol == "separate_then_joint":
        settings["protocol"] = {"separate_fraction": SEPARATE_FRACTION, "shared": "average"}
    if result_path.exists():
        stored = json.loads(result_path.read_text())
        if stored.get("settings") == json.loads(json.dumps(settings)):
            return stored
    if protocol == "joint_then_finetune":
        result = joint_then_finetune(seed, steps, data, out, log)
    elif protocol == "separate_then_joint":
        result = separate_then_joint(seed, steps, data, out, log)
    else:
        report = train_phase(row, seed, steps, data, out, log)
        result = {"train_seconds": report["train_seconds"], "weights": report["loss_weights"], **metrics(report)}
    result = {"settings": settings, **result}
    result_path.write_text(json.dumps(result, indent=1))
    return result


def train_phase(row: dict, seed: int, steps: int, data: DataSection, out: Path, log=print, init_weights=None,
                frozen=()) -> dict:  # fmt: skip
    """One training run of the experiment's model with `row`'s heads and weighting; its report."""
    row = dict(row)
    pcgrad = row.pop("pcgrad", False)
    warmup = min(TRAIN["warmup_steps"], max(steps // 4, 1))  # a short phase still warms up, then decays
    run = RunConfig(
        model=ModelSection(
            kind="multitask",
            settings={**MODEL, **row},
            init_weights=init_weights and str(init_weights),
            frozen=list(frozen),
        ),  # fmt: skip
        train=TrainConfig(
            **{**TRAIN, "steps": steps, "warmup_steps": warmup, "seed": seed, "pcgrad": pcgrad, "output_dir": str(out)}
        ),  # fmt: skip
        data=data,
    )
    return app.train(run, log=log)


def metrics(report: dict) -> dict:
    """The experiment's numbers from a run's report: box_AP, mask_AP, mIoU, image_mAP (those it has)."""
    test, out = report["test"], {}
    if "box" in test:
        out["box_AP"] = test["box"]["AP"]
    if "mask" in test:
        out["mask_AP"] = test["mask"]["AP"]
    if "semantic" in test:
        out["mIoU"] = test["semantic"]["mIoU"]
    if "image" in test:
        out["image_mAP"] = test["image"]["mAP"]
    return out


def _split(steps: int, fraction: float) -> tuple[int, int]:
    """steps = first + second, second = round(fraction * steps), each at least 1."""
    second = min(max(round(fraction * steps), 1), steps - 1)
    return steps - second, second


def joint_then_finetune(seed: int, steps: int, data: DataSection, out: Path, log=print) -> dict:
    """The article's "joint training": the whole network on all tasks, then each task fine-tuned alone.

    Phase 1: the joint network with fixed equal weights, (1 - FINETUNE_FRACTION) of the steps. Phase 2, per
    baseline (detection only, Mask R-CNN, semantic only): that model's heads initialised from phase 1 (the
    heads it lacks are left out), the backbone and FPN frozen, FINETUNE_FRACTION of the steps on its loss
    alone. Each metric comes from the model fine-tuned for it.
    """
    first, second = _split(steps, FINETUNE_FRACTION)
    joint = train_phase(dict(loss_strategy="fixed"), seed, first, data, out / "joint", log)
    seconds = joint["train_seconds"]
    result = {"weights": joint["loss_weights"], "phases": {"joint": first, "finetune": second}}
    for metric, heads in (("box_AP", DETECTION), ("mask_AP", MASK_RCNN), ("mIoU", SEMANTIC)):
        report = train_phase(heads, seed, second, data, out / f"finetune_{metric}", log,
                             init_weights=out / "joint" / "last.pt", frozen=FINETUNE_FROZEN)  # fmt: skip
        seconds += report["train_seconds"]
        result[metric] = metrics(report)[metric]
    return {"train_seconds": seconds, **result}


def separate_then_joint(seed: int, steps: int, data: DataSection, out: Path, log=print) -> dict:
    """The article's "separate training": each task trained alone, then the resulting models jointly.

    Phase 1: Mask R-CNN (detection + instance: a mask head needs the detector) and semantic segmentation,
    each alone for SEPARATE_FRACTION of the steps. Phase 2: one joint network (fixed equal weights)
    initialised from both (merge_weights: backbone and FPN averaged, each head from its own run), trained
    jointly for the rest.
    """
    first, second = _split(steps, SEPARATE_FRACTION)
    seconds = 0.0
    for name, heads in (("alone_mask_rcnn", MASK_RCNN), ("alone_semantic", SEMANTIC)):
        seconds += train_phase(heads, seed, first, data, out / name, log)["train_seconds"]
    merged = out / "merged.pt"
    torch.save(merge_weights([out / "alone_mask_rcnn" / "last.pt", out / "alone_semantic" / "last.pt"]), merged)
    report = train_phase(dict(loss_strategy="fixed"), seed, second, data, out / "joint", log, init_weights=merged)
    return {"train_seconds": seconds + report["train_seconds"], "weights": report["loss_weights"],
            "phases": {"alone": first, "joint": second}, **metrics(report)}  # fmt: skip


SHARED = ("backbone.", "fpn.")  # the modules every task's network has


def merge_weights(checkpoints: list[Path]) -> dict[str, torch.Tensor]:
    """One state dict from several runs of the same backbone: the shared modules' floating-point tensors
    averaged over the runs that have them, every other tensor (the heads, integer counters) from the first
    run that has it."""
    states = [load_checkpoint(path, map_location="cpu")["model"] for path in checkpoints]
    merged = {}
    for state in states:
        for key, value in state.items():
            if key in merged:
                continue
            same = [s[key] for s in states if key in s and s[key].shape == value.shape]
            if key.startswith(SHARED) and value.is_floating_point() and len(same) > 1:
                merged[key] = torch.stack(same).mean(dim=0)
            else:
                merged[key] = value
    return merged


def run(seeds=DEFAULT_SEEDS, steps: int = TRAIN["steps"], data: DataSection | None = None, out_dir="runs/mtl",
        rows=None, log=print) -> dict:  # fmt: skip
    """Every row x seed on `data` (default: shapes_data()); returns {row name: [result per seed]}."""
    return run_rows(ROWS, "mtl", seeds, steps, data or shapes_data(), out_dir, rows, log)


def run_rows(table_rows, experiment: str, seeds, steps: int, data: DataSection, out_dir, rows=None, log=print) -> dict:
    """Each (name, row) of `table_rows` (only those named in `rows`, if given) x seed, with run_one, in
    out_dir/<row>/seed<s>; returns {row name: [result per seed]}."""
    results = {}
    for name, row in table_rows:
        if rows is not None and name not in rows:
            continue
        results[name] = []
        for seed in seeds:
            folder = Path(out_dir) / _slug(name) / f"seed{seed}"
            log(f"experiment {experiment}: {name}, seed {seed}")
            results[name].append(run_one(name, row, seed, steps, data, folder, log))
    return results


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(results: dict) -> dict:
    """{row: {metric: (mean, std)}} for box_AP, mask_AP, mIoU, image_mAP and train_seconds."""
    table = {}
    for name, runs in results.items():
        table[name] = {
            metric: _mean_std([r[metric] for r in runs]) for metric in (*METRICS, "train_seconds") if metric in runs[0]
        }
    return table


METRICS = {"box_AP": "box AP", "mask_AP": "mask AP", "mIoU": "semantic mIoU", "image_mAP": "image mAP"}


def table_markdown(table: dict) -> str:
    shown = [m for m in METRICS if any(m in metrics for metrics in table.values())]
    lines = ["| run | " + " | ".join(METRICS[m] for m in shown) + " | time per run |", "|---" * (len(shown) + 2) + "|"]
    for name, metrics in table.items():
        cells = [f"{metrics[m][0]:.3f} ± {metrics[m][1]:.3f}" if m in metrics else "–" for m in shown]
        cells.append(f"{metrics['train_seconds'][0]:.0f} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BASELINES = {
    "box_AP": "detection only",
    "mask_AP": "Mask R-CNN (detection + instance)",
    "mIoU": "semantic only",
    "image_mAP": "image classification only",
}
CONFIDENCE = 0.95  # of the intervals of the paired differences
_LEVEL = f"{CONFIDENCE:.0%}".replace("%", " %")  # "95 %"
TARGET = 0.02  # the difference (of AP or mIoU) "What this experiment can resolve" asks seeds for


@dataclass(frozen=True)
class Comparison:
    """A joint row against its single-task baseline on one metric, paired over the seeds both ran."""

    row: str
    metric: str
    baseline: str
    seeds: tuple
    paired: stats.PairedDifference  # of row - baseline, seed by seed

    @property
    def verdict(self) -> str:
        """'better' or 'worse' when the interval excludes 0 (every metric here is higher-is-better), else
        'cannot tell'."""
        if not self.paired.excludes_zero:
            return "cannot tell"
        return "better" if self.paired.mean > 0 else "worse"


def _by_seed(name: str, runs: list[dict]) -> dict:
    """{seed: result} of one row, from each result's settings["seed"]."""
    by_seed = {}
    for result in runs:
        seed = result.get("settings", {}).get("seed")
        if seed is None:
            raise ValueError(f"{name!r}: a result without settings['seed'], so it cannot be paired with another row")
        if seed in by_seed:
            raise ValueError(f"{name!r}: seed {seed} appears twice")
        by_seed[seed] = result
    return by_seed


def differences(results: dict, confidence: float = CONFIDENCE, baselines: dict = BASELINES) -> list[Comparison]:
    """Each row against the baseline row of each metric (`baselines`: metric -> row), paired by seed.

    Seed s of every row uses the same data order and initialisation seed, so the rows are compared seed by
    seed: d_s = joint_s - baseline_s, and the mean d̄ with its interval d̄ ± t_{(1+c)/2, n-1} s_d / √n
    (minimtl.experiments.stats.paired_difference). The two rows must have run the same seeds.
    """
    out = []
    for name, runs in results.items():
        if name in baselines.values():  # a baseline: what the others are compared with
            continue
        for metric, base in baselines.items():
            if base not in results or not runs or metric not in runs[0]:
                continue
            mine, theirs = _by_seed(name, runs), _by_seed(base, results[base])
            if set(mine) != set(theirs):
                raise ValueError(
                    f"cannot pair {name!r} (seeds {sorted(mine)}) with {base!r} (seeds {sorted(theirs)}) on {metric}: "
                    "run both rows with the same seeds"
                )
            seeds = tuple(sorted(mine))
            a = [mine[s][metric] for s in seeds]
            b = [theirs[s][metric] for s in seeds]
            out.append(Comparison(name, metric, base, seeds, stats.paired_difference(a, b, confidence)))
    return out


def unpaired_differences(table: dict, results: dict) -> list[tuple[str, str, float, float, str]]:
    """The earlier, unpaired rule: (joint row, metric, difference, standard error, verdict) per joint row and metric.

    A difference of the means is called real only when it exceeds twice its standard error, the two rows'
    seed standard deviations combined: sqrt(s_1² / n_1 + s_0² / n_0). It ignores that the rows share their
    seeds, so what the seed does to both rows counts as noise twice; differences() pairs the seeds instead.
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


def verdict(comparisons: list[Comparison], baselines: dict = BASELINES, subject: str = "Joint training",
            rows: str = "joint rows") -> str:  # fmt: skip
    """The answer in a paragraph: did `subject` (joint training) help, on which metric, by how much."""
    if not comparisons:
        return f"No {rows[:-1]} and baseline to compare."
    lines = []
    for metric, base in baselines.items():
        mine = [c for c in comparisons if c.metric == metric]
        if not mine:
            continue
        better = sum(c.verdict == "better" for c in mine)
        worse = sum(c.verdict == "worse" for c in mine)
        lo, hi = min(c.paired.mean for c in mine), max(c.paired.mean for c in mine)
        lines.append(
            f"{metric} against {base}: {rows} differ by {lo:+.3f} to {hi:+.3f} (paired means); better in "
            f"{better}, worse in {worse}, cannot tell in {len(mine) - better - worse} of {len(mine)}."
        )
    better = sum(c.verdict == "better" for c in comparisons)
    worse = sum(c.verdict == "worse" for c in comparisons)
    total = len(comparisons)
    if better and not worse:
        overall = f"{subject} helped here: in {better} of {total} comparisons the {_LEVEL} interval is above 0, "
        overall += "in none below."
    elif worse and not better:
        overall = f"{subject} hurt here: in {worse} of {total} comparisons the {_LEVEL} interval is below 0, "
        overall += "in none above."
    elif better or worse:
        overall = (
            f"Mixed: {better} of {total} comparisons better, {worse} worse ({_LEVEL} intervals of the paired means)."
        )
    else:
        overall = (
            f"Neither confirmed nor refuted at this budget: none of the {total} comparisons has a {_LEVEL} interval "
            "that excludes 0."
        )
    return " ".join([overall, *lines])


def compare(table: dict, comparisons: list[Comparison]) -> list[str]:
    """Plain statements: each joint row against its single-task baseline, paired over the seeds."""
    statements = []
    for c in comparisons:
        m1, m0 = table[c.row][c.metric][0], table[c.baseline][c.metric][0]
        p = c.paired
        if p.std is None:
            spread = p.note
        else:
            spread = f"s_d {p.std:.3f}, {_LEVEL} interval {p.low:+.3f} to {p.high:+.3f}"
        statements.append(
            f"- {c.row} vs {c.baseline}, {c.metric}: {m1:.3f} vs {m0:.3f}, paired difference {p.mean:+.3f} "
            f"({spread}): {c.verdict}."
        )
    return statements


def resolvable(comparisons: list[Comparison], target: float = TARGET, baselines: dict = BASELINES) -> list[str]:
    """What the experiment can resolve, per metric: the largest s_d among its comparisons, the half-width
    t_{(1+c)/2, n-1} s_d / √n it gives at the n seeds run (stats.resolvable_difference), and the seeds that
    would bring the half-width down to `target` (stats.seeds_needed)."""
    lines = [
        f"| metric | seeds | largest s_d (comparison) | resolvable difference | seeds needed for {target} |",
        "|---|---|---|---|---|",
    ]
    for metric in baselines:
        mine = [c for c in comparisons if c.metric == metric]
        if not mine:
            continue
        n = min(c.paired.n for c in mine)
        if n < 2:
            lines.append(f"| {metric} | {n} | – (one seed: no spread) | – | – (at least 2 seeds to measure s_d) |")
            continue
        worst = max(mine, key=lambda c: c.paired.std)
        s_d = worst.paired.std
        needed = stats.seeds_needed(s_d, target, CONFIDENCE)
        lines.append(
            f"| {metric} | {n} | {s_d:.3f} ({worst.row}) | {stats.resolvable_difference(s_d, n, CONFIDENCE):.3f} | "
            f"{needed if needed is not None else 'more than 1000'} |"
        )
    if len(lines) == 2:
        return ["No joint row and baseline to compare."]
    return [
        f"The half-width t_{{{(1 + CONFIDENCE) / 2:g}, n-1}} s_d / √n of the {_LEVEL} interval is the smallest "
        "paired mean difference the experiment resolves: a larger one has an interval without 0. Below, per "
        f"metric, at the largest s_d among its comparisons, with the seeds that would bring it down to {target}. "
        f"s_d measured on a few seeds is itself uncertain, and a true difference of exactly {target} gives a "
        "resolved mean only about half of the time: the counts are the least that could do.",
        "",
        *lines,
    ]


def protocol_lines(results: dict, steps: int) -> list[str]:
    """What the article's two protocols did, with their phases' steps, for the rows that ran."""
    lines = []
    if "joint, then fine-tuned per task" in results:
        joint, tune = _split(steps, FINETUNE_FRACTION)
        lines.append(
            f"- joint, then fine-tuned per task: the joint network (fixed equal weights) for {joint} steps, then "
            f"three copies, each with one baseline's heads (detection only; Mask R-CNN; semantic only), "
            f"initialised from it and fine-tuned {tune} steps on that task's loss alone, "
            f"{' and '.join(FINETUNE_FROZEN)} frozen; each metric from its own copy (training time: all four "
            "phases)."
        )
    if "separate, then joint" in results:
        alone, joint = _split(steps, SEPARATE_FRACTION)
        lines.append(
            f"- separate, then joint: Mask R-CNN (detection + instance) and semantic segmentation each alone for "
            f"{alone} steps, then one joint network (fixed equal weights) initialised from both, backbone and FPN "
            f"the average of the two runs', each head from its own run, trained {joint} steps (training time: all "
            "three phases)."
        )
    return lines


def write_report(results: dict, path: Path, seeds, steps: int, data: DataSection, conclusion: str = "") -> str:
    """Write the report (the table, the settings, the paired comparisons, what the seeds resolve) to path;
    returns its text. Raises ValueError, before writing, when a joint row and its baseline ran different seeds."""
    table = summary(results)
    comparisons = differences(results)
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
        data_line(data),
        f"- Training, the same for every run: {steps} steps of {TRAIN['batch_size']} images, "
        f"{TRAIN['optimizer']} lr {TRAIN['lr']}, weight decay {TRAIN['weight_decay']}, {TRAIN['warmup_steps']} "
        f"warm-up steps, {TRAIN['schedule']} schedule, gradient clipping at {TRAIN['grad_clip']}.",
        f"- Model: `MultiTaskRCNN`, {json.dumps(MODEL)}; each row switches heads and weighting: "
        + "; ".join(f"{name}: `{json.dumps(row)}`" for name, row in ROWS if name in results and "protocol" not in row)
        + ".",
        *protocol_lines(results, steps),
        "- Box and mask AP are COCO's AP@[.5:.95] (`minimtl.evaluation.evaluate`); mIoU over background and "
        f"{'the classes' if data.is_coco else 'circle, square and triangle'} (`minimtl.evaluation.mean_iou`); "
        "image mAP the mean over the classes of the AP of the image head's scores for "
        '"the class is in the image" (`minimtl.evaluation.classification`).',
        "- Time per run: the wall-clock training time (evaluation excluded); anything else running on the "
        "machine at the same time inflates it.",
        "- Seed s of every row uses the same data order and initialisation seed, so each joint row is compared with "
        "its single-task baseline seed by seed: d_s = joint_s − baseline_s, their mean d̄ and standard deviation "
        f"s_d over the n seeds, and the {_LEVEL} interval d̄ ± t s_d / √n, with t Student's "
        f"{(1 + CONFIDENCE) / 2:g}-quantile for n − 1 degrees of freedom (`minimtl.experiments.stats`). "
        '"better" or "worse" when the interval excludes 0; "cannot tell" means the experiment cannot tell, not '
        f"that the rows are equal. Rows that do not differ still give an interval without 0 one time in "
        f"{1 / (1 - CONFIDENCE):.0f}: about {len(comparisons) * (1 - CONFIDENCE):.1f} of the {len(comparisons)} "
        "comparisons here by chance alone.",
        "",
        "## Joint against separate",
        "",
        verdict(comparisons),
        "",
        *compare(table, comparisons),
        "",
        "## What this experiment can resolve",
        "",
        *resolvable(comparisons),
    ]
    if conclusion:
        text += ["", "## Conclusion", "", conclusion]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return "\n".join(text)


__all__ = [
    "DEFAULT_SEEDS",
    "ROWS",
    "data_line",
    "shapes_data",
    "Comparison",
    "differences",
    "run",
    "summary",
    "table_markdown",
    "unpaired_differences",
    "write_report",
]
