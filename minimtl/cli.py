"""The command line: python -m minimtl demo | train | eval | predict | experiment.

    python -m minimtl demo                     train on shapes, evaluate, write a report (the main job)
    python -m minimtl train --steps 2000 --out runs/shapes
    python -m minimtl train --coco-annotations ann.json --coco-images imgs/ --out runs/mine
    python -m minimtl eval --checkpoint runs/shapes/last.pt
    python -m minimtl predict --checkpoint runs/shapes/last.pt --images a.png b.png --out predictions/
    python -m minimtl experiment mtl           joint vs separate training -> docs/mtl_experiment.md

Settings come from flags, or from a JSON file (--config) with the sections "model" (RCNNConfig
fields), "train" (TrainConfig fields) and "data"; flags override the file.
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from minimtl import models
from minimtl.data import CocoDataset, ShapesDataset, default_train_transforms
from minimtl.engine import TrainConfig, Trainer, load_checkpoint, pick_device, predict
from minimtl.evaluation import evaluate, mean_iou

# The demo's model: the same code path as Mask R-CNN R18-FPN, narrower, for 128 x 128 shapes.
DEMO_MODEL = dict(
    min_size=128,
    max_size=128,
    backbone_width=32,
    fpn_channels=64,
    norm="gn",
    representation_size=256,
    mask_layers=(64, 64),
    mask_dim_reduced=64,
    anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
    rpn_batch_size_per_image=128,
    rpn_pre_nms_top_n_train=600,
    rpn_post_nms_top_n_train=300,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=128,
)
DEMO_TRAIN = dict(
    steps=3000,
    batch_size=4,
    optimizer="adamw",
    lr=1e-3,
    weight_decay=1e-4,
    warmup_steps=100,
    schedule="cosine",
    grad_clip=10.0,
    checkpoint_every=500,
    log_every=25,
)
DEMO_TEST_SEED = 1_000_003  # the held-out images: another seed than training's


def _table(rows: dict[str, dict[str, float]]) -> str:
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"]
    lines = [f"{'':6}" + "".join(f"{n:>8}" for n in names)]
    for kind, stats in rows.items():
        if kind == "semantic":
            lines.append(f"semantic mIoU {stats['mIoU']:.3f}, pixel accuracy {stats['pixel_accuracy']:.3f}")
        else:
            lines.append(f"{kind:6}" + "".join(f"{stats[n]:8.3f}" for n in names))
    return "\n".join(lines)


def build_model(model_settings: dict, num_classes: int) -> models.RCNN:
    """RCNN, or MultiTaskRCNN when a setting only it has is given (e.g. "semantic": true)."""
    settings = dict(model_settings)
    if set(settings) - models.RCNNConfig.field_names():
        return models.MultiTaskRCNN(models.MultiTaskConfig(num_classes=num_classes, **settings))
    backbone = settings.pop("backbone", "resnet18")
    masks = settings.pop("masks", True)
    return models.build(num_classes, backbone, masks, **settings)


def model_from_checkpoint(path, device) -> tuple[models.RCNN, list[str]]:
    state = load_checkpoint(path, map_location="cpu")
    meta = state.get("metadata", {})
    if "model_config" not in meta:
        raise ValueError(f"{path} holds no model configuration (was it written by `python -m minimtl train`?)")
    config = meta["model_config"]
    if set(config) - models.RCNNConfig.field_names():  # written by a MultiTaskRCNN
        model = models.MultiTaskRCNN(models.MultiTaskConfig(**config))
    else:
        model = models.RCNN(models.RCNNConfig(**config))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta.get("classes", [str(i) for i in range(model.config.num_classes)])


def _datasets(data: dict):
    """(train dataset, test dataset, class names) from the "data" settings."""
    if data.get("coco_annotations"):
        train = CocoDataset(data["coco_annotations"], data["coco_images"], transforms=default_train_transforms())
        test = (
            CocoDataset(data["coco_test_annotations"], data.get("coco_test_images", data["coco_images"]))
            if data.get("coco_test_annotations")
            else None
        )
        return train, test, train.categories
    size = data.get("image_size", 128)
    train = ShapesDataset(
        data.get("num_images", 100_000), size, seed=data.get("seed", 0), transforms=default_train_transforms()
    )
    test = ShapesDataset(data.get("num_test_images", 200), size, seed=DEMO_TEST_SEED)
    return train, test, list(ShapesDataset.classes)


def evaluate_model(model, dataset, out_dir: Path | None, classes, device, batch_size=8) -> dict:
    predictions, targets = predict(model, dataset, batch_size=batch_size, device=device)
    detection = getattr(model.config, "detection", True)  # a MultiTaskRCNN may have it off
    results = {}
    if detection:
        results["box"] = evaluate(predictions, targets, "bbox")
    if model.config.masks:
        results["mask"] = evaluate(predictions, targets, "segm")
    if getattr(model.config, "semantic", False):
        labels = [p["semantic"] for p in predictions], [t["semantic"] for t in targets]
        results["semantic"] = mean_iou(*labels, model.semantic_head.classifier.out_channels)
    if out_dir is not None and detection:
        from minimtl import plots

        out_dir.mkdir(parents=True, exist_ok=True)
        images = [dataset[i][0] for i in range(min(8, len(dataset)))]
        plots.save_detections(images, predictions[: len(images)], out_dir / "predictions.png", classes)
        plots.save_precision_recall(predictions, targets, out_dir / "pr_box.png", "bbox", classes)
        if model.config.masks:
            plots.save_precision_recall(predictions, targets, out_dir / "pr_mask.png", "segm", classes)
    return results


def run_training(settings: dict, out: Path, device: str = "auto") -> dict:
    """Train, evaluate on the test set, write the report. Returns the report dict."""
    train_set, test_set, classes = _datasets(settings.get("data", {}))
    torch.manual_seed(settings.get("train", {}).get("seed", 0))
    model = build_model(settings.get("model", {}), len(classes))
    train_config = TrainConfig(**{**settings.get("train", {}), "output_dir": str(out), "device": device})
    metadata = {"model_config": asdict(model.config), "classes": classes, "settings": settings}
    start = time.perf_counter()
    trainer = Trainer(model, train_set, train_config, metadata=metadata)
    trainer.train()
    train_seconds = time.perf_counter() - start
    precision = f"mixed, {str(trainer.amp_dtype).removeprefix('torch.')}" if trainer.amp_dtype else "float32"
    report = {"train_seconds": train_seconds, "device": str(pick_device(device)), "precision": precision}
    report["settings"] = settings
    if test_set is not None:
        start = time.perf_counter()
        report["test"] = evaluate_model(model, test_set, out, classes, pick_device(device))
        report["test_images"] = len(test_set)
        report["eval_seconds"] = time.perf_counter() - start
    from minimtl import plots

    plots.save_loss_curves(out / "metrics.jsonl", out / "loss_curves.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _settings(args) -> dict:
    settings = json.loads(Path(args.config).read_text()) if getattr(args, "config", None) else {}
    for section in ("model", "train", "data"):
        settings.setdefault(section, {})
    for key in ("steps", "batch_size", "lr", "optimizer", "seed", "num_workers"):
        if getattr(args, key, None) is not None:
            settings["train"][key] = getattr(args, key)
    for key in ("coco_annotations", "coco_images", "coco_test_annotations", "coco_test_images", "image_size"):
        if getattr(args, key, None) is not None:
            settings["data"][key] = getattr(args, key)
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        if key not in {f.name for f in fields(models.MultiTaskConfig)}:
            raise SystemExit(f"--set {key}: not a model setting (see minimtl.models.RCNNConfig, MultiTaskConfig)")
        settings["model"][key] = json.loads(value)
    return settings


def cmd_demo(args) -> int:
    out = Path(args.out)
    settings = {"model": dict(DEMO_MODEL), "train": dict(DEMO_TRAIN), "data": {"num_test_images": 200}}
    if args.fast:  # a smoke run: seconds, not minutes (the tests use it)
        settings["train"].update(steps=20, log_every=5, checkpoint_every=10)
        settings["data"]["num_test_images"] = 8
    if args.steps is not None:
        settings["train"]["steps"] = args.steps
    print(
        f"minimtl demo: Mask R-CNN on synthetic shapes, {settings['train']['steps']} steps of "
        f"{settings['train']['batch_size']} images, report in {out}"
    )
    report = run_training(settings, out, args.device)
    test = report["test"]
    print(
        f"\ntrained in {report['train_seconds'] / 60:.1f} min on {report['device']} ({report['precision']} precision); "
        f"{report['test_images']} held-out images:"
    )
    print(_table(test))
    print(f"\nreport: {out / 'report.json'}, plots: {out}/*.png, checkpoint: {out / 'last.pt'}")
    return 0


def cmd_train(args) -> int:
    report = run_training(_settings(args), Path(args.out), args.device)
    if "test" in report:
        print(_table(report["test"]))
    return 0


def cmd_eval(args) -> int:
    device = pick_device(args.device)
    model, classes = model_from_checkpoint(args.checkpoint, device)
    data = _settings(args)["data"]
    data.setdefault("num_test_images", args.num_images)
    _, test_set, _ = _datasets(data)
    if test_set is None:
        raise SystemExit("eval: give --coco-test-annotations (and --coco-images) to evaluate on COCO-format data")
    results = evaluate_model(model, test_set, Path(args.out) if args.out else None, classes, device)
    print(_table(results))
    if args.out:
        (Path(args.out) / "eval.json").write_text(json.dumps(results, indent=1))
    return 0


def cmd_predict(args) -> int:
    from PIL import Image

    from minimtl import plots

    device = pick_device(args.device)
    model, classes = model_from_checkpoint(args.checkpoint, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        with Image.open(path) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
        with torch.no_grad():
            detections = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        target = out / (Path(path).stem + "_detections.png")
        plots.save_detections([image], [detections], target, classes, args.score_threshold, columns=1)
        kept = detections["scores"] >= args.score_threshold
        print(f"{path}: {int(kept.sum())} detections -> {target}")
    return 0


def cmd_experiment(args) -> int:
    from minimtl.experiments import mtl

    seeds = args.seeds if args.seeds is not None else ([0] if args.fast else [0, 1, 2])
    steps = args.steps if args.steps is not None else (20 if args.fast else mtl.TRAIN["steps"])
    num_test = 8 if args.fast else args.num_test_images
    if args.rows:
        unknown = set(args.rows) - {name for name, _ in mtl.ROWS}
        if unknown:
            raise SystemExit(f"--rows: unknown {sorted(unknown)}; the rows are {[name for name, _ in mtl.ROWS]}")
    results = mtl.run(seeds, steps, num_test, args.out_dir, rows=args.rows)
    text = mtl.write_report(results, Path(args.report), seeds, steps, num_test)
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minimtl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on synthetic shapes, evaluate, write a report")
    demo.add_argument("--out", default="reports/demo")
    demo.add_argument("--steps", type=int)
    demo.add_argument("--fast", action="store_true", help="a smoke run of a few steps")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(run=cmd_demo)

    train = sub.add_parser("train", help="train a model (shapes, or COCO-format data)")
    train.add_argument("--out", default="runs/train")
    train.add_argument("--config", help="JSON with sections model, train, data")
    for name, kind in [
        ("steps", int),
        ("batch-size", int),
        ("lr", float),
        ("optimizer", str),
        ("seed", int),
        ("num-workers", int),
        ("image-size", int),
    ]:
        train.add_argument(f"--{name}", type=kind)
    for name in ("coco-annotations", "coco-images", "coco-test-annotations", "coco-test-images"):
        train.add_argument(f"--{name}")
    train.add_argument("--set", action="append", metavar="KEY=JSON", help="a model setting, e.g. --set min_size=256")
    train.add_argument("--device", default="auto")
    train.set_defaults(run=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint (held-out shapes, or COCO-format data)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--num-images", type=int, default=200)
    ev.add_argument("--out")
    for name in ("coco-images", "coco-test-annotations", "coco-test-images"):
        ev.add_argument(f"--{name}")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(run=cmd_eval)

    pr = sub.add_parser("predict", help="draw a checkpoint's detections on image files")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--images", nargs="+", required=True)
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--score-threshold", type=float, default=0.5)
    pr.add_argument("--device", default="auto")
    pr.set_defaults(run=cmd_predict)

    ex = sub.add_parser("experiment", help="run an experiment and write its report (mtl: joint vs separate)")
    ex.add_argument("name", choices=["mtl"])
    ex.add_argument("--steps", type=int, help="training steps per run (default 600; 20 with --fast)")
    ex.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (0 with --fast)")
    ex.add_argument("--num-test-images", type=int, default=200)
    ex.add_argument("--rows", nargs="+", help="only these rows (by name)")
    ex.add_argument("--out-dir", default="runs/mtl", help="one folder per run; finished runs are reused")
    ex.add_argument("--report", default="docs/mtl_experiment.md")
    ex.add_argument("--fast", action="store_true", help="a smoke run: 20 steps, one seed, 8 test images")
    ex.set_defaults(run=cmd_experiment)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
