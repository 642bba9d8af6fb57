"""Train -> evaluate -> report, below the command line: what `python -m minimtl demo | train | eval`
run, and what the experiments run.

    run = config.resolve(presets.preset("small"), {"data": {"coco_annotations": "train.json"}})
    report = train(run)                               # -> run.train.output_dir/{last,best}.pt, report.json, plots
    results = evaluate_checkpoint("runs/train/last.pt")   # the same test set again, or another

`prepare` turns the configuration into what training needs and decides what the data decides: the
classes (and the file's category ids), whether there are masks to learn, the image size (the median
shorter side of the training images, rounded to a multiple of 32, in [128, 1024], unless data.min_size
is set), and semantic label maps for a multi-task model (derived from the instance masks). Each
decision is a line in `notes`, printed before training starts.
"""

import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from minimtl.app.config import MODEL_KINDS, DataSection, ModelSection, RunConfig
from minimtl.data import CocoDataset, ShapesDataset, default_train_transforms
from minimtl.engine import Trainer, load_checkpoint, pick_device
from minimtl.engine.distributed import process_group
from minimtl.engine.inference import evaluate_dataset
from minimtl.engine.trainer import MAGIC
from minimtl.evaluation import multilabel_metrics
from minimtl.models import RCNN, MultiTaskConfig, MultiTaskRCNN, RCNNConfig

SHAPES_TEST_SEED = 1_000_003  # the held-out shapes: another seed than any training seed
MIN_SIZE_LIMITS = (128, 1024)
MAX_SIZE_LIMIT = 1333


@dataclass
class Prepared:
    train_set: object
    test_set: object | None
    classes: list[str]  # names by label, "background" first
    category_ids: list[int] | None  # the annotation file's id of each label 1..C (None: shapes)
    model_config: RCNNConfig
    model: RCNN  # initialised from train.seed (and the backbone and init_weights files, if any; frozen applied)
    notes: list[str] = field(default_factory=list)


def image_size_from_data(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(min_size, max_size) from the images' (height, width): the median shorter side rounded to a
    multiple of 32 within MIN_SIZE_LIMITS, and the median aspect ratio's longer side, at most 1333."""
    short = statistics.median(min(h, w) for h, w in sizes)
    ratio = statistics.median(max(h, w) / max(min(h, w), 1) for h, w in sizes)
    min_size = int(min(max(round(short / 32) * 32, MIN_SIZE_LIMITS[0]), MIN_SIZE_LIMITS[1]))
    max_size = int(min(max(round(min_size * ratio / 32) * 32, min_size), MAX_SIZE_LIMIT))
    return min_size, max_size


def image_size(data: DataSection, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(min_size, max_size) a run resizes its images to: data.min_size / data.max_size where set, else
    from the images' (height, width), as image_size_from_data decides."""
    auto_min, auto_max = image_size_from_data(sizes)
    min_size = data.min_size or auto_min
    return min_size, data.max_size or max(auto_max, min_size)


def prepare(run: RunConfig) -> Prepared:
    """The datasets, classes, model config and initial model a run trains with. Raises ValueError (or
    FileNotFoundError) for bad data, a bad backbone or init_weights file, or a frozen prefix that matches
    nothing: before any training starts."""
    data, model = run.data, run.model
    notes = []
    semantic = model.kind == "multitask" and model.settings.get("semantic", True)
    detection = model.kind == "rcnn" or model.settings.get("detection", True)
    masks_wanted = model.settings.get("masks")  # None: as the data allows
    transforms = default_train_transforms() if data.augment else None
    if data.is_coco:
        images = data.coco_images or str(Path(data.coco_annotations).parent)
        masks = None if masks_wanted is None else (masks_wanted or semantic)
        train_set = CocoDataset(data.coco_annotations, images, transforms=transforms, masks=masks, train=True,
                                semantic=semantic)  # fmt: skip
        train_set.check_image_files()
        has_masks = train_set.masks
        if masks_wanted is None and not has_masks:
            notes.append(f"{data.coco_annotations} has no masks (no 'segmentation'): training boxes only")
        test_set = None
        if data.coco_test_annotations:
            test_set = coco_test_set(data, masks=has_masks, semantic=semantic)
            _check_same_categories(train_set, test_set, data.coco_annotations, data.coco_test_annotations)
        classes, category_ids = train_set.categories, train_set.category_ids
        sizes = train_set.image_sizes
        notes.append(
            f"data: {len(train_set)} training images from {data.coco_annotations}"
            + (f", {len(test_set)} test images from {data.coco_test_annotations}" if test_set else ", no test set")
            + f"; {len(classes) - 1} {'class' if len(classes) == 2 else 'classes'}: {', '.join(classes[1:])}"
        )
        if train_set.num_crowd:
            notes.append(f"data: {train_set.num_crowd} crowd annotations (iscrowd=1) are not trained on")
        notes.extend(orientation_notes(train_set, test_set))
    else:
        train_set = ShapesDataset(data.num_images, data.image_size, seed=data.seed, transforms=transforms)
        test_set = ShapesDataset(data.num_test_images, data.image_size, seed=SHAPES_TEST_SEED)
        classes, category_ids, has_masks = list(ShapesDataset.classes), None, True
        sizes = [(data.image_size, data.image_size)]
        notes.append(f"data: synthetic shapes, {data.image_size} x {data.image_size}, {len(test_set)} test images")
    if masks_wanted and not has_masks:
        raise ValueError(f"model.masks is true but {data.coco_annotations} has no masks ('segmentation')")
    masks = has_masks and detection if masks_wanted is None else masks_wanted
    min_size, max_size = image_size(data, sizes)
    if data.min_size is None:
        notes.append(
            f"image size: shorter side {min_size}, longer at most {max_size} (from the data: median shorter side "
            f"{statistics.median(min(s) for s in sizes):g}; set data.min_size / data.max_size to choose)"
        )
    model_config = model.config(num_classes=len(classes), min_size=min_size, max_size=max_size, masks=masks)
    torch.manual_seed(run.train.seed)  # the initial weights
    network = build_model(model, model_config, notes.append)
    return Prepared(train_set, test_set, classes, category_ids, model_config, network, notes)


def orientation_notes(*datasets) -> list[str]:
    """What was done with the photos that carry an EXIF orientation (see CocoDataset)."""
    notes = []
    for dataset in filter(None, datasets):
        turned = sum(dataset.turned.values())
        kept = dataset.orientations_kept
        if turned:
            notes.append(
                f"data: {turned} images of {dataset.annotation_file} turned upright by their EXIF orientation "
                "(the file's width and height are those of the turned photos)"
            )
        if kept:
            orientations = ", ".join(str(o) for o in sorted(set(kept.values())))
            notes.append(
                f"data: {len(kept)} images of {dataset.annotation_file} carry an EXIF orientation that keeps their "
                f"size (orientation {orientations}; image id {next(iter(kept))} first); the sizes cannot tell "
                "which way they were annotated: used as stored, as torchvision does"
            )
    return notes


def coco_test_set(data: DataSection, masks: bool | None, semantic: bool) -> CocoDataset:
    """The test file of `data`, for evaluation (crowds kept), its image files checked to exist."""
    dataset = CocoDataset(data.coco_test_annotations, data.test_image_folder(), masks=masks, train=False,
                          semantic=semantic)  # fmt: skip
    dataset.check_image_files()
    return dataset


def _check_same_categories(train_set, test_set, train_file, test_file) -> None:
    if test_set.category_ids != train_set.category_ids or test_set.categories != train_set.categories:
        raise ValueError(
            f"{test_file} and {train_file} list different categories: "
            f"{dict(zip(test_set.category_ids, test_set.categories[1:], strict=True))} against "
            f"{dict(zip(train_set.category_ids, train_set.categories[1:], strict=True))}"
        )


def build_model(model: ModelSection, config: RCNNConfig, log=print) -> RCNN:
    """The network of a model section: its pretrained backbone loaded when one is named, then the tensors of
    init_weights that fit (overriding the backbone's where both give one), then the frozen prefixes applied.
    Raises ValueError / FileNotFoundError (one line, naming the setting) for a file or prefix that cannot be."""
    net = network(config)
    if model.backbone_weights:
        from minimtl.models.pretrained import load_backbone_weights

        summary = load_backbone_weights(net, model.backbone_weights)
        log(f"backbone: {summary['loaded']} tensors from {model.backbone_weights}")
    if model.init_weights:
        log(load_matching_weights(net, model.init_weights))
    if model.frozen:
        log(freeze(net, model.frozen))
    return net


def read_weights(path, where: str = "model.init_weights") -> dict[str, torch.Tensor]:
    """The weights in `path`: a minimtl checkpoint's "model" (its header and checksum checked), or a state
    dict saved with torch.save (read with weights_only=True; nested under "model" or "state_dict", or its
    names prefixed by DataParallel's "module.", is found too)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{where}: {path}: no such file")
    if not path.is_file():
        raise ValueError(f"{where}: {path} is a directory, not a checkpoint or state dict file")
    with open(path, "rb") as f:
        checkpoint = f.read(len(MAGIC)) == MAGIC
    if checkpoint:
        try:
            state = load_checkpoint(path, map_location="cpu")
        except ValueError as error:  # a damaged file: the checksum
            raise ValueError(f"{where}: {error}") from None
        if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
            raise ValueError(f"{where}: {path} is a minimtl checkpoint without model weights (no 'model')")
        state = state["model"]
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # not torch's format, a pickled module, a cut-off file
            from minimtl.models.pretrained import _load_failure

            raise ValueError(
                f"{where}: {path} is neither a minimtl checkpoint nor a state dict saved with torch.save "
                f"({_load_failure(error)})"
            ) from None
        for wrapper in ("model", "state_dict"):
            if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
    what = f"{where}: {path} is not a checkpoint or state dict"
    if not isinstance(state, Mapping) or not state:
        held = "an empty dict" if isinstance(state, Mapping) else f"a {type(state).__name__}"
        raise ValueError(f"{what}: it holds {held}, not a dict of name -> Tensor")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{what}: {bad[0]!r} holds a value of type {type(state[bad[0]]).__name__}, not a Tensor")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_matching_weights(net: nn.Module, path, where: str = "model.init_weights") -> str:
    """Copy each tensor of the file at `path` (read_weights) whose name and shape match one of `net`'s
    into it; the rest of `net` keeps its values. Returns the line that says what was and was not used; a
    ValueError if not one tensor fits (a name with another shape is reported, not an error)."""
    file = read_weights(path, where)
    ours = net.state_dict()
    fits = {k: v for k, v in file.items() if k in ours and v.shape == ours[k].shape}
    other_shape = [k for k in file if k in ours and k not in fits]
    if not fits:
        why = f"the file's tensors begin {_modules(list(file), file)}, the model's {_modules(list(ours), ours)}"
        if other_shape:
            names = "1 name matches" if len(other_shape) == 1 else f"{len(other_shape)} names match"
            why = f"{names}, but with other shapes ({_shapes(other_shape, file, ours)})"
        raise ValueError(f"{where}: no tensor of {path} fits the model (same name and shape): {why}")
    net.load_state_dict(fits, strict=False)  # only names the model has, with its shapes: nothing to refuse
    missing = [k for k in ours if k not in fits]
    unused = [k for k in file if k not in fits]
    line = f"init: {len(fits)} tensors from {path}; {len(missing)} of the model's tensors not in it"
    if missing:
        line += f" ({_modules(missing, ours)})"
    line += f"; {len(unused)} of the file's not used"
    if unused:
        parts = [_modules([k for k in unused if k not in ours], file)] if len(unused) > len(other_shape) else []
        if other_shape:
            parts.append(f"shape differs: {_shapes(other_shape, file, ours)}")
        line += f" ({'; '.join(parts)})"
    return line


def freeze(net: nn.Module, prefixes) -> str:
    """requires_grad False for the parameters whose names start with one of `prefixes`, whole dotted
    components ("backbone" matches backbone.layer1.0.conv1.weight, not backbone_x.weight). Returns the line
    that counts them; a ValueError for a prefix that matches no parameter, or if none would train.
    BatchNorm running statistics are buffers, not parameters: train mode still updates them."""
    parameters = dict(net.named_parameters())
    frozen = {}
    for prefix in prefixes:
        matched = {n: p for n, p in parameters.items() if n == prefix or n.startswith(prefix + ".")}
        if not matched:
            modules = ", ".join(name for name, m in net.named_children() if any(True for _ in m.parameters()))
            raise ValueError(
                f"model.frozen: {prefix!r} matches no parameter of the model (a prefix matches whole dotted "
                f"components, e.g. backbone or backbone.layer4); the model's modules: {modules}"
            )
        frozen.update(matched)
    for p in frozen.values():
        p.requires_grad_(False)
    trainable = [p for p in parameters.values() if p.requires_grad]
    if not trainable:
        raise ValueError(f"model.frozen: {list(prefixes)} freezes every parameter of the model: nothing would train")
    return (
        f"frozen: {len(frozen)} parameters (prefixes {', '.join(prefixes)}; {_count(frozen.values())} values), "
        f"{len(trainable)} trainable ({_count(trainable)} values)"
    )


def _count(parameters) -> str:
    return f"{sum(p.numel() for p in parameters):,}"


def _modules(keys: list[str], universe, few: int = 4) -> str:
    """`keys` named by module where they are all of it ("semantic_head.*"), one by one where not; the first few."""
    groups = _group(keys, list(universe), 0)
    return ", ".join(groups[:few]) + (f" and {len(groups) - few} more" if len(groups) > few else "")


def _group(keys: list[str], universe: list[str], depth: int) -> list[str]:
    """`keys` by their first depth + 1 components: "a.b.*" where they are all of universe's a.b, else deeper."""
    out: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        prefix = ".".join(parts[: depth + 1])
        if prefix in out:
            continue
        if len(parts) <= depth + 1:
            out[prefix] = [key]
            continue
        inside = [k for k in keys if k.startswith(prefix + ".")]
        whole = [k for k in universe if k.startswith(prefix + ".")]
        out[prefix] = [prefix + ".*"] if len(inside) == len(whole) else _group(inside, whole, depth + 1)
    return [name for names in out.values() for name in names]


def _shapes(keys: list[str], file, ours, few: int = 2) -> str:
    shown = [f"{k} (file {tuple(file[k].shape)}, model {tuple(ours[k].shape)})" for k in keys[:few]]
    return ", ".join(shown) + (f" and {len(keys) - few} more" if len(keys) > few else "")


def network(config: RCNNConfig) -> RCNN:
    """RCNN, or MultiTaskRCNN for a MultiTaskConfig: the model a config describes."""
    return MultiTaskRCNN(config) if isinstance(config, MultiTaskConfig) else RCNN(config)


def finalize(run: RunConfig) -> RunConfig:
    """What a setting implies: a pretrained backbone brings frozen BatchNorm and 3 trainable stages
    (torchvision's choice for fine-tuning), unless the settings say otherwise. The other fields of the
    model section (init_weights, frozen) are kept as they are."""
    model = run.model
    if not model.backbone_weights:
        return run
    settings = {"norm": "frozen_bn", "trainable_backbone_layers": 3, **model.settings}
    return RunConfig(model=replace(model, settings=settings), train=run.train, data=run.data)


def checkpoint_metadata(run: RunConfig, prepared: Prepared) -> dict:
    return {
        "model_kind": run.model.kind,
        "model_config": asdict(prepared.model_config),
        "classes": prepared.classes,
        "category_ids": prepared.category_ids,
        "run_config": run.to_dict(),
    }


def train(run: RunConfig, log=print, prepared: Prepared | None = None) -> dict:
    """Train, evaluate the test set, write the report (rank 0). Returns the report dict ({} on other ranks).

    prepared: prepare(finalize(run)), when the caller made it already (to report bad data before this)."""
    device = pick_device(run.train.device)
    with process_group(device) as (rank, world):
        return _train(run, prepared, device, rank, world, log)


def _train(run: RunConfig, prepared: Prepared | None, device, rank: int, world: int, log) -> dict:
    say = log if rank == 0 else (lambda *_: None)
    run = finalize(run)
    prepared = prepared or prepare(run)
    out = Path(run.train.output_dir)
    for note in prepared.notes:
        say(note)
    c, t = prepared.model_config, run.train
    say(
        f"model: {run.model.kind}, {c.backbone} width {c.backbone_width}, {c.norm}, masks {'on' if c.masks else 'off'}"
        + (f", semantic head {c.semantic_head}" if getattr(c, "semantic", False) else "")
        + f"; training: {t.steps} steps of {t.batch_size} images, {t.optimizer} lr {t.lr}, on {device}"
        + (f" x {world} processes" if world > 1 else "")
        + f"; output: {out}"
    )
    model = prepared.model
    evaluator, latest = None, {}
    if prepared.test_set is not None and t.eval_every:

        def evaluator(m):  # the latest results are kept: validation at the last step is the final report's
            latest["test"] = evaluate(m, prepared.test_set, device, out, prepared.classes)
            return flat_metrics(latest["test"])

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(run.to_json() + "\n")
    trainer = Trainer(model, prepared.train_set, t, log=say, metadata=checkpoint_metadata(run, prepared),
                      evaluator=evaluator)  # fmt: skip
    trainer.train()
    if rank != 0:
        return {}
    precision = f"mixed, {str(trainer.amp_dtype).removeprefix('torch.')}" if trainer.amp_dtype else "float32"
    report = {
        "train_seconds": trainer.seconds,  # every call's, when the run was resumed
        "device": str(device),
        "processes": world,
        "precision": precision,
        "settings": run.to_dict(),
        "classes": prepared.classes,
    }
    if trainer.best is not None:
        report["best"] = trainer.best
    if hasattr(model, "loss_weights"):
        report["loss_weights"] = model.loss_weights()
    if prepared.test_set is not None:
        report["test_images"] = len(prepared.test_set)
        if "test" in latest:  # validated at the last step: that is the final model's evaluation
            report["test"] = latest["test"]
        else:
            start = time.perf_counter()
            report["test"] = evaluate(model, prepared.test_set, device, out, prepared.classes)
            report["eval_seconds"] = time.perf_counter() - start
    from minimtl import plots

    plots.save_loss_curves(out / "metrics.jsonl", out / "loss_curves.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def evaluate(model, dataset, device, out: Path | None = None, classes=None, batch_size: int = 8) -> dict:
    """{"box": COCO's 12 numbers + "per_class" AP, "mask": ..., "semantic": mIoU..., "image": mAP, exact
    match...} on `dataset`; with `out`, the pictures too (predictions.png, pr_box.png, pr_mask.png)."""
    model_config = model.config
    detection = getattr(model_config, "detection", True)
    masks = model_config.masks and getattr(dataset, "masks", True)  # a box-only test file: boxes only
    iou_types = (("bbox",) if detection else ()) + (("segm",) if masks else ())
    semantic_head = getattr(model, "semantic_head", None)
    num_semantic = semantic_head.classifier.out_channels if semantic_head is not None else None
    results, kept = evaluate_dataset(model, dataset, iou_types=iou_types, batch_size=batch_size, device=device,
                                     keep=8 if out is not None else 0, num_semantic_classes=num_semantic,
                                     num_classes=model_config.num_classes)  # fmt: skip
    names = {"bbox": "box", "segm": "mask"}
    report = {}
    for iou_type in iou_types:
        stats = dict(results[iou_type]["stats"])
        stats["per_class"] = {_name(classes, label): ap for label, ap in results[iou_type]["per_class"].items()}
        report[names[iou_type]] = stats
    if "semantic" in results:
        report["semantic"] = results["semantic"]
    if "image" not in results and getattr(model, "image_head", None) is not None:  # an empty test set
        empty = torch.zeros(0, model_config.num_classes - 1)  # (0, C-1)
        results["image"] = multilabel_metrics(empty, empty)
    if "image" in results:
        report["image"] = dict(results["image"])
        ap = report["image"].pop("AP")
        report["image"]["per_class"] = {_name(classes, label): value for label, value in enumerate(ap, start=1)}
    if out is not None and detection and kept:
        from minimtl import plots

        out.mkdir(parents=True, exist_ok=True)
        images = [image for image, _, _ in kept]
        plots.save_detections(images, [p for _, p, _ in kept], out / "predictions.png", classes)
        for iou_type in iou_types:
            precision, categories = results[iou_type]["precision"], results[iou_type]["categories"]
            plots.save_precision_recall_curves(precision, categories, out / f"pr_{names[iou_type]}.png", iou_type,
                                               classes)  # fmt: skip
    return report


def _name(classes, label: int) -> str:
    return classes[label] if classes is not None and 0 <= label < len(classes) else str(label)


def flat_metrics(results: dict) -> dict[str, float]:
    """{"box.AP": ..., "mask.AP": ..., "semantic.mIoU": ..., "image.mAP": ...}: the numbers validation logs."""
    out = {}
    tasks = (("box", ("AP", "AP50")), ("mask", ("AP", "AP50")), ("semantic", ("mIoU",)),
             ("image", ("mAP", "exact_match")))  # fmt: skip
    for task, names in tasks:
        for name in names:
            if task in results:
                out[f"{task}.{name}"] = results[task][name]
    return out


def model_from_checkpoint(path, device) -> tuple[RCNN, dict]:
    """The model a checkpoint holds (in eval mode, on `device`) and its metadata. Built from the stored
    model config and weights alone: the run's backbone_weights and init_weights files are not read (they
    may be gone), nor is anything frozen (an evaluated model does not train)."""
    state = load_checkpoint(path, map_location="cpu")
    meta = state.get("metadata", {})
    if "model_config" not in meta:
        raise ValueError(f"{path} holds no model configuration (was it written by `python -m minimtl train`?)")
    config = meta["model_config"]
    kind = meta.get("model_kind")
    if kind is None:  # written before the kind was recorded: a MultiTaskRCNN's config has its extra fields
        kind = "multitask" if set(config) - RCNNConfig.field_names() else "rcnn"
    model = network(MODEL_KINDS[kind](**config))
    model.load_state_dict(state["model"])
    meta.setdefault("classes", [str(i) for i in range(model.config.num_classes)])
    meta.setdefault("category_ids", None)
    return model.to(pick_device(device) if isinstance(device, str) else device).eval(), meta


def test_set_for(meta: dict, model, data: DataSection):
    """The dataset `eval` evaluates: data's COCO test file if given, else the run's own test set."""
    stored = DataSection(**meta.get("run_config", {}).get("data", {})) if "run_config" in meta else DataSection()
    semantic = bool(getattr(model.config, "semantic", False))
    if data.coco_test_annotations:
        dataset = coco_test_set(data, masks=None if model.config.masks else False, semantic=semantic)
        if meta["category_ids"] is not None and dataset.category_ids != meta["category_ids"]:
            raise ValueError(
                f"{data.coco_test_annotations} has the category ids {dataset.category_ids}, the checkpoint was "
                f"trained on {meta['category_ids']} ({', '.join(meta['classes'][1:])})"
            )
        return dataset, data.coco_test_annotations
    if data.coco_images or data.coco_test_images:
        raise ValueError("give --coco-test-annotations too: the annotations of the images to evaluate")
    if stored.coco_test_annotations:
        return test_set_for(meta, model, stored)
    if meta["category_ids"] is not None:
        raise ValueError(
            "the checkpoint was trained on COCO-format data without a test set: give --coco-test-annotations"
        )
    size = stored.image_size
    return ShapesDataset(data.num_test_images, size, seed=SHAPES_TEST_SEED), "synthetic shapes"


def evaluate_checkpoint(path, data: DataSection | None = None, device="auto", out: Path | None = None) -> dict:
    device = pick_device(device)
    model, meta = model_from_checkpoint(path, device)
    dataset, source = test_set_for(meta, model, data or DataSection())
    results = evaluate(model, dataset, device, out, meta["classes"])
    return {"test": results, "test_images": len(dataset), "source": source, "classes": meta["classes"]}
