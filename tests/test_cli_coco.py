"""Your own data through the command line: COCO-format files the tests write (tests/coco_files.py),
trained, evaluated and predicted on with every command, as a user would type them."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from coco_files import CATEGORY_IDS, write_coco

# A narrow model so that the runs take seconds (the "small" preset otherwise, as a user gets it).
TINY = ["--set", "model.backbone_width=8", "--set", "model.fpn_channels=16", "--set", "model.representation_size=32",
        "--set", "model.mask_layers=[16]", "--set", "model.mask_dim_reduced=16"]  # fmt: skip
CPU = ["--device", "cpu"]


def minimtl(*args, timeout=600, expect=0):
    result = subprocess.run([sys.executable, "-m", "minimtl", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def user_error(*args) -> str:
    """A user's mistake: exit status 2 and one line, `minimtl: error: ...`, no traceback."""
    result = minimtl(*args, expect=2)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("minimtl: error: "), result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A trained run on COCO-format data: compressed RLE, ids 3/7/12, crowds, images without objects."""
    root = tmp_path_factory.mktemp("coco")
    train = write_coco(root, 12, seed=0, crowd_every=7, empty_every=5, name="train.json")
    test = write_coco(root, 6, seed=1, crowd_every=5, empty_every=4, name="test.json")
    out = root / "run"
    result = minimtl("train", "--coco-annotations", train, "--coco-images", root, "--coco-test-annotations", test,
                     "--steps", 6, "--set", "train.log_every=2", "--set", "train.eval_every=3", "--set",
                     "train.progress=false", "--out", out, *TINY, *CPU)  # fmt: skip
    return root, train, test, out, result.stdout


def test_train_on_coco_data_reports_what_it_decided(coco):
    root, train, test, out, stdout = coco
    assert "image size: shorter side 128" in stdout  # 64-pixel images: the lower limit, never 800
    assert "crowd annotations (iscrowd=1) are not trained on" in stdout
    assert "circle, square, triangle" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["test_images"] == 6 and set(report["test"]) == {"box", "mask"}
    assert set(report["test"]["box"]["per_class"]) <= {"circle", "square", "triangle"}
    assert "box AP per class" in stdout
    settings = json.loads((out / "config.json").read_text())
    assert settings["data"]["coco_annotations"] == str(train) and settings["model"]["kind"] == "rcnn"


def test_validation_during_training_keeps_the_best_checkpoint(coco):
    _, _, _, out, _ = coco
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval" in line]
    assert [line["step"] for line in evals] == [3, 6]
    assert {"box.AP", "box.AP50", "mask.AP", "mask.AP50"} <= set(evals[0]["eval"])
    assert [line["step"] for line in lines if "loss" in line] == [2, 4, 6]
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    report = json.loads((out / "report.json").read_text())
    best = max(evals, key=lambda line: line["eval"]["box.AP"])
    assert report["best"]["metric"] == "box.AP" and report["best"]["value"] == best["eval"]["box.AP"]
    # the last evaluation is the final model's: the report's test numbers, exactly
    assert evals[-1]["eval"]["box.AP"] == report["test"]["box"]["AP"]


def test_eval_reproduces_the_report_exactly(coco, tmp_path):
    root, _, test, out, _ = coco
    report = json.loads((out / "report.json").read_text())
    stdout = minimtl("eval", "--checkpoint", out / "last.pt", "--coco-test-annotations", test, "--coco-images", root,
                     "--out", tmp_path, *CPU).stdout  # fmt: skip
    assert "6 test images" in stdout
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["test"] == report["test"]
    # without data flags: the run's own test set
    stdout = minimtl("eval", "--checkpoint", out / "last.pt", *CPU).stdout
    assert str(test) in stdout


def test_predict_writes_coco_results_with_the_files_ids(coco, tmp_path):
    root, _, test, out, _ = coco
    minimtl("predict", "--checkpoint", out / "last.pt", "--images", root / "images" / "1_00*.png", "--out", tmp_path,
            "--score-threshold", 0.0, *CPU)  # fmt: skip
    results = json.loads((tmp_path / "predictions.json").read_text())
    images = json.loads((tmp_path / "images.json").read_text())
    assert len(images["images"]) == 6 and [c["id"] for c in images["categories"]] == list(CATEGORY_IDS)
    assert len(list(tmp_path.glob("*_detections.png"))) == 6
    assert results, "an untrained model still returns low-scoring detections"
    from pycocotools import mask as coco_mask

    sizes = {image["id"]: (image["height"], image["width"]) for image in images["images"]}
    for r in results[:50]:
        assert r["category_id"] in CATEGORY_IDS and r["image_id"] in sizes and len(r["bbox"]) == 4
        mask = coco_mask.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
        assert mask.shape == sizes[r["image_id"]] and mask.dtype == np.uint8


def test_predict_finds_folders_and_refuses_nothing(coco, tmp_path):
    root, _, _, out, _ = coco
    stdout = minimtl("predict", "--checkpoint", out / "last.pt", "--images", root / "images", "--out", tmp_path,
                     "--no-draw").stdout  # the default device, "auto"  # fmt: skip
    assert "on 18 images" in stdout and not list(tmp_path.glob("*.png"))
    message = user_error("predict", "--checkpoint", out / "last.pt", "--images", root / "nothing*.png", *CPU)
    assert "no image file there" in message


@pytest.mark.parametrize("masks", ["polygon", "uncompressed", None])
def test_every_mask_format_and_box_only_files_train(tmp_path, masks):
    train = write_coco(tmp_path, 4, seed=2, masks=masks, name="train.json")
    test = write_coco(tmp_path, 2, seed=3, masks=masks, name="test.json")
    stdout = minimtl("train", "--coco-annotations", train, "--coco-test-annotations", test, "--steps", 2,
                     "--batch-size", 2, "--out", tmp_path / "run", *TINY, *CPU).stdout  # fmt: skip
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    if masks is None:
        assert "has no masks" in stdout and "masks off" in stdout and set(report["test"]) == {"box"}
    else:
        assert set(report["test"]) == {"box", "mask"}


def test_masks_on_box_only_data_is_refused(tmp_path):
    train = write_coco(tmp_path, 2, seed=2, masks=None, name="train.json")
    message = user_error("train", "--coco-annotations", train, "--set", "model.masks=true", *CPU)
    assert "masks" in message and "train.json" in message


def test_multitask_training_on_coco_data(tmp_path):
    train = write_coco(tmp_path, 4, seed=2, name="train.json", crowd_every=3)
    test = write_coco(tmp_path, 2, seed=3, name="test.json")
    stdout = minimtl("train", "--coco-annotations", train, "--coco-test-annotations", test, "--steps", 2,
                     "--batch-size", 2, "--set", "model.kind=multitask", "--set", "model.semantic_channels=16",
                     "--set", "train.pcgrad=true", "--out", tmp_path / "run", *TINY, *CPU).stdout  # fmt: skip
    assert "semantic mIoU" in stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert 0 <= report["test"]["semantic"]["mIoU"] <= 1 and report["settings"]["train"]["pcgrad"] is True
    stdout = minimtl("eval", "--checkpoint", tmp_path / "run" / "last.pt", *CPU).stdout
    assert "semantic mIoU" in stdout


def test_bad_data_is_one_line_before_training(tmp_path):
    train = write_coco(tmp_path, 2, seed=2, name="train.json")
    data = json.loads(train.read_text())
    (tmp_path / "notjson.json").write_text("{ nope")
    assert "not valid JSON" in user_error("train", "--coco-annotations", tmp_path / "notjson.json", *CPU)
    bad = dict(data, annotations=[dict(data["annotations"][0], category_id=99)])
    (tmp_path / "badcat.json").write_text(json.dumps(bad))
    message = user_error("train", "--coco-annotations", tmp_path / "badcat.json", *CPU)
    assert "badcat.json" in message and "99" in message
    missing = dict(data, images=[dict(data["images"][0], file_name="images/gone.png"), *data["images"][1:]])
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    message = user_error("train", "--coco-annotations", tmp_path / "missing.json", *CPU)
    assert "gone.png" in message
    assert "unknown key" in user_error("train", "--set", "train.stepz=3", *CPU)
    assert "expected SECTION.KEY=VALUE" in user_error("train", "--set", "steps=3", *CPU)


def test_a_loss_gone_nan_is_one_line(tmp_path):
    train = write_coco(tmp_path, 4, seed=2, name="train.json")
    message = user_error("train", "--coco-annotations", train, "--coco-images", tmp_path, "--steps", 3, "--set",
                         "train.lr=1e30", "--set", "train.warmup_steps=0", "--set", "train.grad_clip=null",
                         "--out", tmp_path / "run", *TINY, *CPU)  # fmt: skip
    assert "training stopped at step" in message and "Lower the learning rate" in message
    assert "nan" in message or "inf" in message


def test_config_prints_a_file_that_trains(tmp_path):
    stdout = minimtl("config", "demo", "--set", "train.steps=2").stdout
    settings = json.loads(stdout)
    assert settings["model"]["kind"] == "rcnn" and settings["train"]["steps"] == 2
    assert settings["model"]["anchor_sizes"] == [[16], [32], [64], [128], [256]]
    settings["data"].update(num_test_images=2, image_size=64)
    settings["train"].update(progress=False, output_dir=str(tmp_path / "run"))
    (tmp_path / "cfg.json").write_text(json.dumps(settings))
    minimtl("train", "--config", tmp_path / "cfg.json", *TINY, *CPU)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == 2
    assert "unknown section 'nothing'" in user_error(
        "config", "--config", tmp_path / "cfg.json", "--set", "nothing.x=1"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_train_like_one(tmp_path):
    train = write_coco(tmp_path, 8, seed=4, name="train.json")
    # Every anchor and proposal sampled (no random subsets, which would differ between one process and two)
    every = ["--set", "model.rpn_batch_size_per_image=1000000", "--set", "model.box_batch_size_per_image=1000000"]
    args = ["train", "--coco-annotations", train, "--steps", 3, "--batch-size", 4, "--set", "train.log_every=1",
            "--optimizer", "sgd", "--lr", 0.01, "--set", "data.augment=false", "--set", "train.progress=false",
            *every, *TINY, *CPU]  # fmt: skip
    minimtl(*args, "--out", tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "minimtl", *map(str, args), "--out", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("trained in") == 1  # rank 0 reports, once
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in two] == [1, 2, 3]  # one log, written once
    assert (tmp_path / "two" / "last.pt").exists() and (tmp_path / "two" / "report.json").exists()
    # Step 1, the same weights in both runs: each term that is a mean over a fixed number of samples per
    # image is the combined batch's, up to float rounding. The mask loss is a mean over the positive RoIs,
    # and two processes average two such means (one per half batch), which weighs the RoIs differently
    # when the halves have different numbers of positives: close, not equal; so are the later steps.
    first_one, first_two = one[0], two[0]
    for term in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
        assert first_two[term] == pytest.approx(first_one[term], rel=1e-3, abs=1e-6), term
    assert first_two["loss_mask"] == pytest.approx(first_one["loss_mask"], rel=0.05)
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.1), (a, b)


def test_a_pretrained_backbone_from_a_file(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    train = write_coco(tmp_path, 2, seed=2, name="train.json")
    weights = ["--set", f"model.backbone_weights={tmp_path / 'resnet18.pth'}"]
    imagenet = ["--set", "model.backbone_width=64", "--set", "model.norm=frozen_bn"]
    stdout = minimtl("train", "--coco-annotations", train, "--steps", 1, "--batch-size", 2, "--out", tmp_path / "run",
                     *weights, *imagenet, *CPU).stdout  # fmt: skip
    assert "backbone: 100 tensors from" in stdout  # 20 convolutions, 20 BatchNorms of 4 tensors each
    settings = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert settings["trainable_backbone_layers"] == 3 and settings["norm"] == "frozen_bn"
    message = user_error("train", "--coco-annotations", train, *weights, *CPU)  # the small preset: width 32, GroupNorm
    assert "resnet18.pth" in message and ("backbone_width" in message or "norm" in message)


PEAK_RSS = """import resource, runpy, sys
sys.argv = ["minimtl", *sys.argv[1:]]
try:
    runpy.run_module("minimtl", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("peak rss kB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_predict_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """100 detections with a 256 x 256 mask each per image: kept as arrays, 100 images would hold 655 MB
    of bool masks (2.6 GB of float); streamed, the peak stays where 10 images put it (measured: +45 MB,
    the allocator's noise: 200 and 400 images peak no higher than 100)."""
    from dataclasses import asdict

    import torch
    from PIL import Image

    from minimtl.engine import save_checkpoint
    from minimtl.models import RCNN, RCNNConfig

    torch.manual_seed(0)
    config = RCNNConfig(num_classes=4, backbone="resnet18", backbone_width=8, fpn_channels=16, norm="gn",
                        representation_size=32, mask_layers=(16,), mask_dim_reduced=16, min_size=256, max_size=256,
                        box_score_thresh=0.0)  # fmt: skip
    meta = {"model_kind": "rcnn", "model_config": asdict(config), "classes": ["background", "a", "b", "c"]}
    save_checkpoint({"model": RCNN(config).state_dict(), "metadata": meta}, tmp_path / "model.pt")
    image = Image.fromarray((np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8))
    peaks, detections = {}, {}
    for n in (10, 100):
        folder = tmp_path / f"images{n}"
        folder.mkdir()
        for i in range(n):
            image.save(folder / f"{i:03d}.png")
        command = [sys.executable, "-c", PEAK_RSS, "predict", "--checkpoint", tmp_path / "model.pt", "--images",
                   folder, "--out", tmp_path / f"out{n}", "--no-draw", *CPU]  # fmt: skip
        result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[n] = int(result.stdout.split("peak rss kB")[-1]) / 1024  # MB
        detections[n] = len(json.loads((tmp_path / f"out{n}" / "predictions.json").read_text()))
    assert detections[100] == 100 * 100 and detections[10] == 10 * 100
    assert peaks[100] - peaks[10] < 150, peaks  # holding the masks would add > 580 MB


def test_experiment_on_coco_files_with_masks(tmp_path):
    """`experiment mtl` on a user's COCO files: semantic targets painted from the instance masks, the report
    names the files, and the runs go to runs/mtl-<folder> unless told otherwise."""
    train = write_coco(tmp_path / "mine", 4, seed=5, name="train.json")
    test = write_coco(tmp_path / "mine", 2, seed=6, name="test.json")
    rows = ["Mask R-CNN (detection + instance)", "semantic only", "joint, fixed equal weights"]
    report = tmp_path / "report.md"
    minimtl("experiment", "mtl", "--coco-annotations", train, "--coco-test-annotations", test, "--steps", 2,
            "--seeds", 0, "--rows", *rows, "--out-dir", tmp_path / "runs", "--report", report)  # fmt: skip
    text = report.read_text()
    assert f"training `{train}`" in text and f"held out `{test}`" in text
    assert "mIoU over background and the classes" in text
    joint = json.loads((tmp_path / "runs" / "joint__fixed_equal_weights" / "seed0" / "result.json").read_text())
    assert {"box_AP", "mask_AP", "mIoU"} <= set(joint)
    assert joint["settings"]["data"]["coco_annotations"] == str(train)
    assert "joint, fixed equal weights vs semantic only, mIoU" in text


def test_experiment_on_coco_files_refuses_what_it_cannot_run(tmp_path):
    train = write_coco(tmp_path / "mine", 2, seed=5, name="train.json")
    boxes = write_coco(tmp_path / "boxes", 2, seed=5, masks=None, name="train.json")
    args = ["experiment", "mtl", "--steps", 1, "--out-dir", tmp_path / "runs", "--report", tmp_path / "r.md"]
    assert "--coco-annotations needs --coco-test-annotations" in user_error(*args, "--coco-annotations", train)
    assert "--coco-test-annotations needs --coco-annotations" in user_error(*args, "--coco-test-annotations", train)
    assert "--num-test-images is for the shapes" in user_error(
        *args, "--coco-annotations", train, "--coco-test-annotations", train, "--num-test-images", 5
    )
    assert "trains mask and semantic heads, needing masks" in user_error(
        *args, "--coco-annotations", boxes, "--coco-test-annotations", boxes
    )
    missing = user_error(*args, "--coco-annotations", tmp_path / "nothing.json", "--coco-test-annotations", train)
    assert f"{tmp_path / 'nothing.json'} does not exist" in missing
    assert not (tmp_path / "runs").exists()  # checked before any run starts


def test_experiment_paths_name_the_data():
    from argparse import Namespace

    from minimtl.cli import experiment_paths

    plain = Namespace(name="mtl", out_dir=None, report=None, coco_annotations=None)
    assert experiment_paths(plain) == ("runs/mtl", "docs/mtl_experiment.md")
    nuclei = Namespace(name="losses", out_dir=None, report=None, coco_annotations="data/nuclei/train.json")
    assert experiment_paths(nuclei) == ("runs/losses-nuclei", "docs/losses_experiment_nuclei.md")
