"""The run configuration: what `python -m minimtl train` trains, on which data, and how.

Three sections, each a dataclass, printed and read as JSON (`python -m minimtl config`):

    model   ModelSection: the kind ("rcnn": Faster/Mask R-CNN, "multitask": + semantic head and
            loss weighting), an optional pretrained backbone file, an optional file of another run's
            weights to start from (init_weights), the parameters that do not train (frozen), and the
            fields of minimtl.models.RCNNConfig (kind rcnn) or MultiTaskConfig (kind multitask). Three
            of those come from the data, not from here: num_classes, min_size and max_size.
    train   minimtl.engine.TrainConfig: steps, batch, optimiser, schedule, validation, output folder.
    data    DataSection: synthetic shapes, or your COCO-format files; the image size.

A configuration is resolved in layers: a preset (minimtl/app/presets.py), then a JSON file, then
flags (`--set SECTION.KEY=VALUE`, `--steps`, ...); each layer overrides the one before. Every key is
checked against its section (an unknown one is an error that lists the valid ones) and every value
against the field's type, so a typo fails before any work starts.
"""

import difflib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from minimtl.engine import TrainConfig
from minimtl.models import MultiTaskConfig, RCNNConfig

MODEL_KINDS = {"rcnn": RCNNConfig, "multitask": MultiTaskConfig}
# The model section's own keys, beside the fields of the kind's config class (kept when the kind changes).
MODEL_KEYS = ("kind", "backbone_weights", "init_weights", "frozen")
# Fields of the model configs that the data decides (minimtl/app/run.py): not settable in "model".
FROM_THE_DATA = ("num_classes", "min_size", "max_size")


class ConfigError(ValueError):
    """A setting that cannot be: the message names the section, the key, what was expected and what came."""


@dataclass
class DataSection:
    """Where the images come from. With coco_annotations set, your COCO-format files; else shapes."""

    coco_annotations: str | None = None  # training annotations (COCO JSON)
    coco_images: str | None = None  # the folder their file_names are relative to (default: the JSON's folder)
    coco_test_annotations: str | None = None  # held-out annotations, evaluated after training
    coco_test_images: str | None = None  # default: coco_images
    min_size: int | None = None  # images are resized so that their shorter side is this; None: from the data
    max_size: int | None = None  # ... and their longer side at most this; None: from the data
    augment: bool = True  # random flips and colour jitter in training
    image_size: int = 128  # shapes: the side of the images
    num_images: int = 100_000  # shapes: training images (drawn on the fly)
    num_test_images: int = 200  # shapes: held-out images
    seed: int = 0  # shapes: the training images' seed (the held-out ones use another)

    @property
    def is_coco(self) -> bool:
        return self.coco_annotations is not None

    def test_image_folder(self) -> str:
        """Where the test file's images are: coco_test_images, else coco_images, else the folder of the
        training annotations (or, with none, of the test annotations)."""
        annotations = self.coco_annotations or self.coco_test_annotations
        return self.coco_test_images or self.coco_images or str(Path(annotations).parent)


@dataclass
class ModelSection:
    """The model's kind, a pretrained backbone, weights to start from, what is frozen, and the fields of the
    kind's config class.

    init_weights: a minimtl checkpoint (a run's last.pt / best.pt) or a state dict saved with torch.save.
    Before training, each of its tensors whose name and shape match one of the model's is copied in (after
    backbone_weights, so where both give a tensor this one wins); the rest of the model keeps its
    initialisation. A joint multi-task run can so start a detection-only one (the semantic head's tensors
    are not used), or single-task runs a joint one. The file is read when the model is built, never when a
    finished run's checkpoint is loaded: that has the trained weights.

    frozen: parameter-name prefixes whose parameters do not train (requires_grad False), applied after
    init_weights. A prefix is whole dotted components: "backbone" freezes backbone.layer1.0.conv1.weight
    but not backbone_x.weight; "backbone.layer4" is allowed. Normalisation statistics are not frozen by
    this: a BatchNorm (norm="bn") still updates its running mean and variance in train mode; use
    norm="frozen_bn" (or GroupNorm, which has none) for that.
    """

    kind: str = "rcnn"  # rcnn or multitask
    backbone_weights: str | None = None  # a torchvision-layout ResNet state dict on disk (ImageNet weights)
    settings: dict = field(default_factory=dict)  # fields of RCNNConfig / MultiTaskConfig that differ from its defaults
    init_weights: str | None = None  # a checkpoint or state dict: its tensors of matching name and shape are copied in
    frozen: list[str] = field(default_factory=list)  # parameter-name prefixes that do not train, e.g. ["backbone"]

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind must be one of {sorted(MODEL_KINDS)}, got {self.kind!r}")
        for key in ("backbone_weights", "init_weights"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and (value or key == "backbone_weights")):
                raise ConfigError(f"model.{key} must be a file path (str) or null, got {value!r}")
        self.frozen = check_prefixes("model.frozen", self.frozen)
        config_class = MODEL_KINDS[self.kind]
        valid = {f.name for f in fields(config_class)} - set(FROM_THE_DATA)
        hints = typing.get_type_hints(config_class)
        checked = {}
        for key, value in self.settings.items():
            if key not in valid:
                other = "multitask" if self.kind == "rcnn" else "rcnn"
                hint = ""
                if key in {f.name for f in fields(MODEL_KINDS[other])}:
                    hint = f" ({key} is a setting of model.kind={other!r})"
                elif key in FROM_THE_DATA:
                    hint = " (it comes from the data" + (
                        ": set data.min_size / data.max_size)" if "size" in key else ")"
                    )
                valid_keys = sorted(valid | set(MODEL_KEYS))
                hint = hint or _did_you_mean(key, valid_keys)
                raise ConfigError(f"model.{key}: not a setting of model.kind={self.kind!r}{hint}; valid keys: "
                                  + ", ".join(valid_keys))  # fmt: skip
            hint = hints[key] if key != "masks" else bool | None  # masks None: decided by the data
            checked[key] = check_value(f"model.{key}", value, hint)
        self.settings = checked
        try:  # the config class's own checks (thresholds, names, ...), with placeholders for the data's fields
            self.config(num_classes=2, min_size=128, max_size=128, masks=bool(self.settings.get("masks", True)))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model: {error}") from None

    def config(self, num_classes: int, min_size: int, max_size: int, masks: bool) -> RCNNConfig:
        """The model's config, with the values the data decides filled in."""
        settings = {**self.settings, "masks": masks}
        return MODEL_KINDS[self.kind](num_classes=num_classes, min_size=min_size, max_size=max_size, **settings)

    def to_dict(self, full: bool = False) -> dict:
        """Flat, as in the JSON file: kind, backbone_weights, init_weights, frozen, then the settings (all
        fields if full)."""
        out = {"kind": self.kind, "backbone_weights": self.backbone_weights, "init_weights": self.init_weights,
               "frozen": list(self.frozen)}  # fmt: skip
        if full:
            defaults = {f.name: _default(f) for f in fields(MODEL_KINDS[self.kind]) if f.name not in FROM_THE_DATA}
            defaults["masks"] = None  # from the data
            out.update(_jsonable(defaults))
        out.update(_jsonable(self.settings))
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSection":
        values = dict(values)
        kind = values.pop("kind", "rcnn")
        weights, init = values.pop("backbone_weights", None), values.pop("init_weights", None)
        frozen = values.pop("frozen", [])
        return cls(kind=check_value("model.kind", kind, str), backbone_weights=weights, settings=values,
                   init_weights=init, frozen=frozen)  # fmt: skip


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataSection = field(default_factory=DataSection)

    def to_dict(self, full: bool = True) -> dict:
        return {
            "model": self.model.to_dict(full=full),
            "train": _jsonable(asdict(self.train)),
            "data": _jsonable(asdict(self.data)),
        }

    def to_json(self) -> str:
        """One key per line, each value on its line (anchor sizes stay [[16], [32], ...])."""
        sections = []
        for name, values in self.to_dict().items():
            body = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in values.items())
            sections.append(f'  "{name}": {{\n{body}\n  }}')
        return "{\n" + ",\n".join(sections) + "\n}"


SECTIONS = ("model", "train", "data")


def resolve(*layers: dict) -> RunConfig:
    """A RunConfig from layers of {section: {key: value}}, each overriding the ones before.

    A layer is a preset, the contents of a --config file, or the flags. Keys are checked here.
    """
    merged: dict[str, dict] = {section: {} for section in SECTIONS}
    for layer in layers:
        unknown = set(layer) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"unknown section(s) {sorted(unknown)}: the sections are {', '.join(SECTIONS)}")
        for section, values in layer.items():
            if not isinstance(values, dict):
                raise ConfigError(f"section {section!r} must be a JSON object of key: value, got {values!r}")
            if section == "model" and "kind" in values and values["kind"] != merged["model"].get("kind", "rcnn"):
                # another kind: the earlier layers' settings may not exist there; keep the shared ones
                shared = {f.name for f in fields(MODEL_KINDS.get(values["kind"], RCNNConfig))}
                merged["model"] = {k: v for k, v in merged["model"].items() if k in shared or k in MODEL_KEYS}
            merged[section].update(values)
    return RunConfig(
        model=ModelSection.from_dict(merged["model"]),
        train=_section(TrainConfig, "train", merged["train"]),
        data=_section(DataSection, "data", merged["data"]),
    )


def parse_assignment(text: str) -> tuple[str, str, object]:
    """ "SECTION.KEY=VALUE" -> (section, key, value); VALUE is JSON, or else a plain string."""
    name, equals, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not equals or not dot or not key:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE (e.g. train.steps=500), sections: "
                          + ", ".join(SECTIONS))  # fmt: skip
    if section not in SECTIONS:
        raise ConfigError(f"--set {text!r}: unknown section {section!r}; the sections are {', '.join(SECTIONS)}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # --set model.norm=gn: a string needs no quotes
    return section, key, value


def _section(cls, name: str, values: dict):
    valid = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(valid))
    if unknown:
        hint = _did_you_mean(unknown[0], valid)
        raise ConfigError(f"{name}.{unknown[0]}: unknown key{hint}; valid keys: {', '.join(sorted(valid))}")
    hints = typing.get_type_hints(cls)
    checked = {key: check_value(f"{name}.{key}", value, hints[key]) for key, value in values.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: {error}") from None


def check_value(where: str, value, hint):
    """`value` as the type `hint` asks (a JSON list becomes a tuple, an int a float); ConfigError if it can't."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(where, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_name(hint)}, got {value!r}")
    if hint is typing.Any or hint is object:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            if not args:
                return tuple(_tuples(v) for v in value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(check_value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value))
            if len(args) == len(value):
                return tuple(
                    check_value(f"{where}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True))
                )
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{where}: expected {_name(hint)}, got {value!r}")


def check_prefixes(where: str, value) -> list[str]:
    """A list of parameter-name prefixes: non-empty strings of dotted names ("backbone", "backbone.layer4")."""
    example = '["backbone", "fpn"]'
    if isinstance(value, str):
        raise ConfigError(f"{where}: expected a list of parameter-name prefixes, got the string {value!r} "
                          f"(e.g. --set '{where}={example}')")  # fmt: skip
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of parameter-name prefixes (e.g. {example}), got {value!r}")
    for i, prefix in enumerate(value):
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"{where}[{i}]: expected a non-empty string (a parameter-name prefix), got {prefix!r}")
        if not all(prefix.split(".")):
            raise ConfigError(f"{where}[{i}]: {prefix!r} is not a dotted name (e.g. backbone or backbone.layer4)")
    return list(value)


def _did_you_mean(key: str, valid) -> str:
    close = difflib.get_close_matches(key, [*valid, *FROM_THE_DATA], n=1)
    if not close:
        return ""
    if close[0] in FROM_THE_DATA and close[0] not in valid:
        return f" (did you mean {close[0]}? it comes from the data" + (
            ": data.min_size, data.max_size)" if "size" in close[0] else ")"
        )
    return f" (did you mean {close[0]}?)"


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _name(hint) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _jsonable(values: dict) -> dict:
    """Tuples as lists, as JSON writes them (round-trips through check_value)."""
    return json.loads(json.dumps(values))
