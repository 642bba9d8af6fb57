"""model.init_weights and model.frozen (minimtl/app/run.py build_model): a run started from another run's
weights, the tensors of matching name and shape copied in, and parameters that do not train.

A tiny joint multi-task run on shapes is trained through the command line, then a detection-only run is
started from its last.pt with the backbone and FPN frozen, as a user would type it."""

import json
import shutil

import pytest
import torch
from test_cli_coco import CPU, TINY, minimtl, user_error
from torch import nn

from minimtl.app import config, run
from minimtl.app.config import ConfigError, ModelSection
from minimtl.engine import load_checkpoint, save_checkpoint

TINY_MODEL = {"backbone": "resnet18", "backbone_width": 8, "fpn_channels": 16, "representation_size": 32,
              "mask_layers": [16], "mask_dim_reduced": 16, "norm": "gn"}  # fmt: skip
# Shapes of 64 pixels, 2 steps of 2 images, the learning rate from the first step (no warm-up).
SHORT = ["--image-size", 64, "--set", "data.min_size=64", "--set", "data.max_size=64", "--set",
         "data.num_test_images=2", "--steps", 2, "--batch-size", 2, "--set", "train.warmup_steps=0", "--set",
         "train.progress=false", *TINY, *CPU]  # fmt: skip
MULTITASK = ["--set", "model.kind=multitask", "--set", "model.semantic_channels=16"]


def build(kind="rcnn", num_classes=4, seed=0, log=None, settings=None, **section) -> nn.Module:
    """A tiny network through build_model, as prepare builds it (seeded, then the files and frozen applied)."""
    extra = {"semantic_channels": 16} if kind == "multitask" else {}
    model = ModelSection(kind=kind, settings={**TINY_MODEL, **extra, **(settings or {})}, **section)
    torch.manual_seed(seed)
    lines = log if log is not None else []
    return run.build_model(model, model.config(num_classes, 64, 64, masks=True), lines.append)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A joint run, and a detection-only run started from (a copy of) its last.pt, backbone and FPN frozen;
    the copy is deleted once the second run is trained."""
    root = tmp_path_factory.mktemp("init")
    minimtl("train", *SHORT, *MULTITASK, "--out", root / "joint")
    init = root / "init.pt"
    shutil.copy(root / "joint" / "last.pt", init)
    stdout = minimtl("train", *SHORT, "--set", f"model.init_weights={init}", "--set", 'model.frozen=["backbone","fpn"]',
                     "--out", root / "tuned").stdout  # fmt: skip
    init.unlink()
    return root, init, stdout


def test_a_detector_from_a_joint_run_says_what_it_took_and_froze(runs):
    root, init, stdout = runs
    joint = load_checkpoint(root / "joint" / "last.pt")["model"]
    tuned = load_checkpoint(root / "tuned" / "last.pt")["model"]
    unused = [k for k in joint if k not in tuned]
    assert unused and any(k.startswith("semantic_head.") for k in unused)
    line = next(line for line in stdout.splitlines() if line.startswith("init: "))
    assert line.startswith(f"init: {len(tuned)} tensors from {init}; 0 of the model's tensors not in it; ")
    assert f"; {len(unused)} of the file's not used (semantic_head.*" in line
    frozen = next(line for line in stdout.splitlines() if line.startswith("frozen: "))
    net = build()
    parameters = [n for n, _ in net.named_parameters() if n.startswith(("backbone.", "fpn."))]
    trainable = sum(1 for n, _ in net.named_parameters() if not n.startswith(("backbone.", "fpn.")))
    assert frozen.startswith(f"frozen: {len(parameters)} parameters (prefixes backbone, fpn; ")
    assert f"), {trainable} trainable (" in frozen


def test_frozen_parameters_do_not_change_and_the_others_do(runs):
    root, _, _ = runs
    joint = load_checkpoint(root / "joint" / "last.pt")["model"]
    tuned = load_checkpoint(root / "tuned" / "last.pt")["model"]
    shared = [k for k in tuned if k.startswith(("backbone.", "fpn."))]
    assert shared and all(torch.equal(tuned[k], joint[k]) for k in shared)
    heads = [k for k in tuned if k.startswith(("rpn.", "roi_heads.")) and tuned[k].is_floating_point()]
    changed = [k for k in heads if not torch.equal(tuned[k], joint[k])]
    assert len(changed) > len(heads) // 2, changed  # trained: started from the joint run's values, moved


def test_the_settings_are_recorded_and_the_checkpoint_loads_without_the_init_file(runs, tmp_path):
    root, init, _ = runs
    assert not init.exists()
    model = json.loads((root / "tuned" / "config.json").read_text())["model"]
    assert model["init_weights"] == str(init) and model["frozen"] == ["backbone", "fpn"]
    report = json.loads((root / "tuned" / "report.json").read_text())
    assert report["settings"]["model"]["frozen"] == ["backbone", "fpn"]
    net, meta = run.model_from_checkpoint(root / "tuned" / "last.pt", "cpu")
    assert meta["run_config"]["model"]["init_weights"] == str(init)
    assert all(p.requires_grad for p in net.parameters())  # frozen is training's business
    stdout = minimtl("eval", "--checkpoint", root / "tuned" / "last.pt", "--num-images", 2, "--out", tmp_path,
                     *CPU).stdout  # fmt: skip
    assert "2 test images" in stdout and (tmp_path / "eval.json").exists()


def test_a_run_starts_with_the_files_tensors_where_names_and_shapes_match(runs):
    root, _, _ = runs
    file = load_checkpoint(root / "joint" / "last.pt")["model"]
    log = []
    net = build(seed=1, log=log, init_weights=str(root / "joint" / "last.pt"))
    state = net.state_dict()
    assert all(torch.equal(value, file[key]) for key, value in state.items())
    assert log[0].startswith(f"init: {len(state)} tensors from ")


def test_a_joint_model_from_a_detector_keeps_its_own_initialisation_elsewhere(tmp_path):
    detector = build(seed=1).state_dict()
    torch.save(detector, tmp_path / "detector.pth")  # a plain state dict
    fresh = build("multitask", seed=2).state_dict()
    log = []
    joint = build("multitask", seed=2, log=log, init_weights=str(tmp_path / "detector.pth")).state_dict()
    for key, value in joint.items():
        assert torch.equal(value, detector[key] if key in detector else fresh[key]), key
    missing = [k for k in joint if k not in detector]
    assert any(k.startswith("semantic_head.") for k in missing)
    assert f"; {len(missing)} of the model's tensors not in it (semantic_head.*" in log[0]
    assert log[0].endswith("; 0 of the file's not used")


def test_a_name_with_another_shape_is_not_used_and_named(tmp_path):
    save_checkpoint({"model": build(num_classes=4).state_dict()}, tmp_path / "four.pt")
    fresh = build(num_classes=5, seed=3).state_dict()
    log = []
    five = build(num_classes=5, seed=3, log=log, init_weights=str(tmp_path / "four.pt")).state_dict()
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(five[key], fresh[key])  # its initialisation: the file's has 4 classes
    assert f"shape differs: {key} (file (4, 32), model (5, 32))" in log[0]
    assert "roi_heads.box_predictor.*" in log[0].split("; ")[1]  # among the model's not taken from the file


def test_init_weights_override_the_backbone_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    settings = {"backbone_width": 64, "norm": "frozen_bn"}
    save_checkpoint({"model": build(seed=5, settings=settings).state_dict()}, tmp_path / "run.pt")
    log = []
    net = build(seed=6, log=log, settings=settings, backbone_weights=str(tmp_path / "resnet18.pth"),
                init_weights=str(tmp_path / "run.pt"))  # fmt: skip
    assert log[0].startswith("backbone: ") and log[1].startswith("init: ")
    ours, file = net.state_dict(), load_checkpoint(tmp_path / "run.pt")["model"]
    assert torch.equal(ours["backbone.conv1.weight"], file["backbone.conv1.weight"])


def test_a_prefix_is_whole_dotted_components():
    net = nn.Module()
    net.backbone, net.backbone_x = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 2)
    line = run.freeze(net, ["backbone"])
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == [f"backbone.{i}.{w}" for i in (0, 1)
                                                                           for w in ("weight", "bias")]  # fmt: skip
    assert line.startswith("frozen: 4 parameters (prefixes backbone; 12 values), 2 trainable (6 values)")
    net = build(frozen=["backbone.layer4", "rpn.head.objectness.weight"])
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.layer4.") or n == "rpn.head.objectness.weight" for n in frozen)
    assert net.rpn.head.objectness.bias.requires_grad and net.backbone.layer3[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match=r"model.frozen: 'back' matches no parameter .*modules: backbone, fpn, rpn"):
        build(frozen=["back"])
    with pytest.raises(ValueError, match="'backbone.layer4.0.conv' matches no parameter"):
        build(frozen=["backbone.layer4.0.conv"])  # conv1, conv2: not a component
    with pytest.raises(ValueError, match="freezes every parameter"):
        build(frozen=["backbone", "fpn", "rpn", "roi_heads"])


def test_a_file_that_cannot_be_used_is_one_clear_message(tmp_path):
    save_checkpoint({"model": build().state_dict()}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:-100])  # a partial copy
    (tmp_path / "text.pt").write_text("not weights\n")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    torch.save({"step": 3}, tmp_path / "numbers.pt")
    save_checkpoint({"step": 3}, tmp_path / "no_model.pt")
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "other.pt")
    torch.save({"backbone.conv1.weight": torch.zeros(2)}, tmp_path / "shape.pt")
    expected = {
        "nothing.pt": "no such file",
        "text.pt": "is neither a minimtl checkpoint nor a state dict saved with torch.save",
        "cut.pt": "is corrupted: its checksum does not match",
        "module.pt": "it pickles a torch.nn.modules.linear.Linear",
        "numbers.pt": "is not a checkpoint or state dict: 'step' holds a value of type int",
        "no_model.pt": "is a minimtl checkpoint without model weights",
        "other.pt": "no tensor of .* fits the model .*the file's tensors begin other.\\*, the model's backbone.\\*",
        "shape.pt": r"1 name matches, but with other shapes \(backbone.conv1.weight \(file \(2,\), model \(8, 3,",
    }
    for name, message in expected.items():
        with pytest.raises((ValueError, FileNotFoundError), match=f"^model.init_weights: .*{message}") as error:
            build(init_weights=str(tmp_path / name))
        assert "\n" not in str(error.value), name
    with pytest.raises(ValueError, match="is a directory"):
        build(init_weights=str(tmp_path))


def test_command_line_errors_are_one_line(tmp_path):
    message = user_error("train", "--set", f"model.init_weights={tmp_path / 'missing.pt'}", *CPU)
    assert message == f"minimtl: error: model.init_weights: {tmp_path / 'missing.pt'}: no such file"
    message = user_error("train", "--set", "model.frozen=backbone", *CPU)
    assert message.startswith("minimtl: error: model.frozen: expected a list of parameter-name prefixes")


def test_the_settings_are_checked():
    with pytest.raises(ConfigError, match=r"model.init_weights must be a file path \(str\) or null, got 3"):
        config.resolve({"model": {"init_weights": 3}})
    with pytest.raises(ConfigError, match="model.init_weights must be a file path"):
        ModelSection(init_weights="")
    with pytest.raises(ConfigError, match=r"model.frozen: expected a list .*got \{'backbone': 1\}"):
        config.resolve({"model": {"frozen": {"backbone": 1}}})
    with pytest.raises(ConfigError, match=r"model.frozen\[1\]: expected a non-empty string"):
        config.resolve({"model": {"frozen": ["backbone", ""]}})
    with pytest.raises(ConfigError, match=r"model.frozen\[0\]: 'backbone.' is not a dotted name"):
        ModelSection(frozen=["backbone."])
    with pytest.raises(ConfigError, match=r"model.froze: not a setting .*\(did you mean frozen\?\)"):
        config.resolve({"model": {"froze": ["fpn"]}})


def test_the_settings_round_trip_through_the_json_config(capsys):
    from minimtl import cli

    layer = {"model": {"init_weights": "runs/x/last.pt", "frozen": ["backbone", "fpn"]}}
    settings = config.resolve(layer, {"model": {"kind": "multitask"}})  # another kind keeps them
    assert settings.model.init_weights == "runs/x/last.pt" and settings.model.frozen == ["backbone", "fpn"]
    stored = json.loads(settings.to_json())
    assert stored["model"]["init_weights"] == "runs/x/last.pt" and stored["model"]["frozen"] == ["backbone", "fpn"]
    assert config.resolve(stored).to_dict() == settings.to_dict()
    assert config.resolve().to_dict()["model"]["frozen"] == [] and config.resolve().model.init_weights is None
    # finalize rebuilds the model section for a backbone file: the new fields go along
    finalized = run.finalize(config.resolve(layer, {"model": {"backbone_weights": "resnet18.pth"}}))
    assert finalized.model.settings["norm"] == "frozen_bn"
    assert finalized.model.init_weights == "runs/x/last.pt" and finalized.model.frozen == ["backbone", "fpn"]
    cli.main(["config", "--set", "model.init_weights=a.pt", "--set", 'model.frozen=["backbone"]'])
    printed = json.loads(capsys.readouterr().out)["model"]
    assert printed["init_weights"] == "a.pt" and printed["frozen"] == ["backbone"]
