"""The command line: the demo (the main job, in its --fast smoke form), then eval and predict on
its checkpoint, and train from a JSON config."""

import json
import subprocess
import sys

import pytest


def run(*args, timeout=900):
    result = subprocess.run([sys.executable, "-m", "minimtl", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stdout = run("demo", "--fast", "--out", str(out), "--device", "cpu")
    return out, stdout


def test_demo_writes_a_report(demo_dir):
    out, stdout = demo_dir
    assert "8 test images" in stdout and "box " in stdout and "mask " in stdout and "box AP per class" in stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["test"]) == {"box", "mask"} and set(report["test"]["box"]) >= {"AP", "AP50", "AR100", "per_class"}
    assert report["test_images"] == 8 and report["train_seconds"] > 0
    for name in ("last.pt", "metrics.jsonl", "loss_curves.png", "predictions.png", "pr_box.png", "pr_mask.png"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4  # every 5 of 20 steps


def test_eval_and_predict_from_the_checkpoint(demo_dir, tmp_path):
    out, _ = demo_dir
    stdout = run("eval", "--checkpoint", str(out / "last.pt"), "--num-images", "4", "--out", str(tmp_path),
                 "--device", "cpu")  # fmt: skip
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert "4 test images (synthetic shapes)" in stdout and evaluated["test_images"] == 4
    assert 0 <= evaluated["test"]["box"]["AP"] <= 1 and (tmp_path / "pr_box.png").exists()
    from PIL import Image

    from minimtl.data import ShapesDataset

    image = ShapesDataset(1, 128, seed=5)[0][0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "shape.png")
    stdout = run("predict", "--checkpoint", str(out / "last.pt"), "--images", str(tmp_path / "shape.png"),
                 "--out", str(tmp_path / "pred"), "--score-threshold", "0.0", "--device", "cpu")  # fmt: skip
    assert (tmp_path / "pred" / "shape_detections.png").exists()
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert f"{len(results)} detections with score >= 0.0 ->" in stdout  # the JSON has every detection
    assert results and {r["category_id"] for r in results} <= {1, 2, 3}  # shapes: the labels are the ids


def test_train_from_a_config_file(tmp_path):
    config = {"model": {"backbone": "resnet18", "masks": False, "backbone_width": 8, "fpn_channels": 16,
                        "representation_size": 32},
              "train": {"steps": 4, "batch_size": 2, "log_every": 2, "progress": False},
              "data": {"num_test_images": 2, "image_size": 64, "min_size": 64, "max_size": 64}}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    stdout = run("train", "--config", str(tmp_path / "cfg.json"), "--steps", "2", "--out", str(tmp_path / "run"),
                 "--device", "cpu")  # fmt: skip
    assert "\nbox " in stdout and "\nmask " not in stdout and "masks off" in stdout  # Faster R-CNN: boxes only
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log if "loss" in line] == [2]  # --steps overrode the file
    assert [line["step"] for line in log if "eval" in line] == [2]  # the small preset validates at the end


def test_bad_model_setting_is_refused():
    command = [sys.executable, "-m", "minimtl", "train", "--set", "model.min_sise=3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("minimtl: error: model.min_sise: not a setting of model.kind='rcnn' (did you mean")


def test_experiment_writes_its_report_and_reuses_finished_runs(tmp_path):
    args = ["experiment", "mtl", "--steps", "3", "--seeds", "0", "1", "--num-test-images", "2", "--rows",
            "semantic only", "joint, GradNorm", "--out-dir", str(tmp_path / "runs"), "--report",
            str(tmp_path / "mtl.md")]  # fmt: skip
    run(*args)
    report = (tmp_path / "mtl.md").read_text()
    assert "| semantic only | – | – | " in report and "| joint, GradNorm | " in report
    assert "Seeds [0, 1]" in report and "joint, GradNorm vs semantic only, mIoU" in report
    results = sorted((tmp_path / "runs").glob("*/seed*/result.json"))
    assert len(results) == 4
    stamps = [p.stat().st_mtime_ns for p in results]
    joint = json.loads((tmp_path / "runs" / "joint__gradnorm" / "seed1" / "result.json").read_text())
    assert {"box_AP", "mask_AP", "mIoU", "weights"} <= set(joint)
    assert set(joint["weights"]) == {"detection", "instance", "semantic"}
    run(*args)  # finished runs are read back, not trained again
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_experiment_refuses_an_unknown_row(tmp_path):
    result = subprocess.run([sys.executable, "-m", "minimtl", "experiment", "mtl", "--rows", "everything"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "minimtl: error: --rows: unknown ['everything']" in result.stderr


def test_experiment_help_gives_the_default_seeds():
    from minimtl.experiments import losses, mtl

    help_text = " ".join(run("experiment", "--help").split())
    for name, experiment in (("mtl", mtl), ("losses", losses)):
        seeds = experiment.DEFAULT_SEEDS
        assert seeds == tuple(range(len(seeds))) and f"{name} 0..{len(seeds) - 1}" in help_text


def test_train_and_eval_a_multitask_model(tmp_path):
    config = {"model": {"kind": "multitask", "backbone": "resnet18", "backbone_width": 8, "fpn_channels": 16,
                        "representation_size": 32, "mask_layers": [16], "mask_dim_reduced": 16,
                        "semantic_channels": 16},
              "train": {"steps": 2, "batch_size": 2, "log_every": 1, "progress": False},
              "data": {"num_test_images": 2, "image_size": 64}}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    stdout = run("train", "--config", str(tmp_path / "cfg.json"), "--set", "model.semantic=true", "--set",
                 "model.loss_strategy=uncertainty", "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert "box " in stdout and "mask " in stdout and "semantic mIoU" in stdout
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [line for line in log if "loss" in line][-1]
    assert {"loss_semantic", "weight_detection", "weight_instance", "weight_semantic"} <= set(losses)
    assert "semantic.mIoU" in log[-1]["eval"]
    stdout = run("eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--num-images", "2", "--device", "cpu")
    assert "semantic mIoU" in stdout
