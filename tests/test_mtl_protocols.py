"""The MTL experiment's two protocols from the article (minimtl/experiments/mtl.py): "joint, then
fine-tuned per task" and "separate, then joint", run end to end at a few steps, and the weight merge
that starts the second from two single-task runs."""

import json

import torch

from minimtl.engine import load_checkpoint, save_checkpoint
from minimtl.experiments import losses, mtl


def test_merge_averages_the_shared_modules_and_takes_each_head_from_its_run(tmp_path):
    counter = "backbone.bn.num_batches_tracked"
    detector = {"backbone.conv.weight": torch.full((2, 2), 1.0), "fpn.inner.bias": torch.tensor([0.0, 2.0]),
                "rpn.head.weight": torch.tensor([5.0]), counter: torch.tensor(7)}  # fmt: skip
    semantic = {"backbone.conv.weight": torch.full((2, 2), 3.0), "fpn.inner.bias": torch.tensor([2.0, 2.0]),
                "semantic_head.weight": torch.tensor([9.0]), counter: torch.tensor(3)}  # fmt: skip
    paths = []
    for name, state in (("a", detector), ("b", semantic)):
        paths.append(tmp_path / f"{name}.pt")
        save_checkpoint({"model": state}, paths[-1])
    merged = mtl.merge_weights(paths)
    assert set(merged) == set(detector) | set(semantic)
    assert torch.equal(merged["backbone.conv.weight"], torch.full((2, 2), 2.0))  # the mean of 1 and 3
    assert torch.equal(merged["fpn.inner.bias"], torch.tensor([1.0, 2.0]))
    assert torch.equal(merged["rpn.head.weight"], torch.tensor([5.0]))  # a head: from the run that has it
    assert torch.equal(merged["semantic_head.weight"], torch.tensor([9.0]))
    assert merged[counter].item() == 7  # an integer counter is not averaged: the first


def test_split_keeps_both_phases():
    assert mtl._split(600, 0.25) == (450, 150)
    assert mtl._split(600, 0.5) == (300, 300)
    assert mtl._split(4, 0.25) == (3, 1) and mtl._split(2, 0.9) == (1, 1)


def test_protocol_rows_run_every_phase_and_report_every_metric(tmp_path):
    rows = ["detection only", "Mask R-CNN (detection + instance)", "semantic only", "joint, then fine-tuned per task",
            "separate, then joint"]  # fmt: skip
    results = mtl.run(
        seeds=(0,), steps=4, data=mtl.shapes_data(2), out_dir=tmp_path / "runs", rows=rows, log=lambda *a: None
    )
    finetuned = results["joint, then fine-tuned per task"][0]
    assert {"box_AP", "mask_AP", "mIoU"} <= set(finetuned) and finetuned["phases"] == {"joint": 3, "finetune": 1}
    folder = tmp_path / "runs" / "joint__then_fine_tuned_per_task" / "seed0"
    assert {p.name for p in folder.iterdir()} >= {"joint", "finetune_box_AP", "finetune_mask_AP", "finetune_mIoU"}
    # The fine-tuned detector started from the joint run, its backbone and FPN frozen: still the joint run's.
    joint = load_checkpoint(folder / "joint" / "last.pt")["model"]
    tuned = load_checkpoint(folder / "finetune_box_AP" / "last.pt")["model"]
    assert not any(k.startswith("semantic_head.") for k in tuned)  # the detector has no semantic head
    shared = [k for k in tuned if k.startswith(("backbone.", "fpn.")) and tuned[k].is_floating_point()]
    assert shared and all(torch.equal(tuned[k], joint[k]) for k in shared)
    heads = [k for k in tuned if k.startswith("roi_heads.") and tuned[k].is_floating_point()]
    assert any(not torch.equal(tuned[k], joint[k]) for k in heads)  # the heads did train
    separate = results["separate, then joint"][0]
    assert {"box_AP", "mask_AP", "mIoU"} <= set(separate) and separate["phases"] == {"alone": 2, "joint": 2}
    merged = torch.load(tmp_path / "runs" / "separate__then_joint" / "seed0" / "merged.pt")
    assert any(k.startswith("semantic_head.") for k in merged) and any(k.startswith("roi_heads.") for k in merged)
    text = mtl.write_report(results, tmp_path / "mtl.md", (0,), 4, mtl.shapes_data(2))
    assert "joint, then fine-tuned per task: the joint network (fixed equal weights) for 3 steps" in text
    assert "separate, then joint vs semantic only, mIoU" in text
    stored = json.loads((folder / "result.json").read_text())
    assert stored["settings"]["protocol"] == {"finetune_fraction": 0.25, "frozen": ["backbone", "fpn"]}


def test_losses_experiment_compares_each_row_with_the_published_losses(tmp_path):
    rows = [losses.BASELINE, "focal and GIoU", "GIoU in the box head, weight 10"]
    results = losses.run(
        seeds=(0, 1), steps=3, data=mtl.shapes_data(2), out_dir=tmp_path / "runs", rows=rows, log=lambda *a: None
    )
    assert list(results) == rows and all(len(runs) == 2 for runs in results.values())
    focal = results["focal and GIoU"][0]
    assert {"box_AP", "mask_AP"} <= set(focal) and "mIoU" not in focal  # a Mask R-CNN: no semantic head
    assert focal["settings"]["row_settings"] == {
        "detection": True, "masks": True, "semantic": False, "rpn_objectness_loss": "focal",
        "box_classifier_loss": "focal", "rpn_box_loss": "giou", "box_loss": "giou",
    }  # fmt: skip
    weighted = json.loads((tmp_path / "runs" / "giou_in_the_box_head__weight_10" / "seed0" / "config.json").read_text())
    assert (weighted["model"]["box_loss"], weighted["model"]["box_loss_weight"]) == ("giou", 10.0)
    assert (weighted["model"]["rpn_box_loss"], weighted["model"]["rpn_box_loss_weight"]) == ("smooth_l1", 1.0)
    text = losses.write_report(results, tmp_path / "losses.md", (0, 1), 3, mtl.shapes_data(2))
    assert f"- focal and GIoU vs {losses.BASELINE}, box_AP: " in text
    assert f"- focal and GIoU vs {losses.BASELINE}, mask_AP: " in text
    assert "## What this experiment can resolve" in text and "| box_AP | 2 |" in text
