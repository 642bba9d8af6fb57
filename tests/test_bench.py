"""`python -m minimtl.bench ops` runs, validates every kernel before timing it, and reports every op.

No timing is asserted here (timings belong to the benchmark's own output)."""

import argparse
import json
import os
import subprocess
import sys

import torch

from minimtl.bench import ops as bench_ops


def test_bench_ops_quick(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, "-m", "minimtl.bench", "ops", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    ops = {"box_iou", "generalized_box_iou", "nms", "batched_nms", "roi_align fwd", "roi_align fwd+bwd"}
    assert {r["op"] for r in rows} == ops
    for row in rows:
        assert row["minimtl_ms"] > 0 and row["reference_ms"] > 0
        assert row["op"] in result.stdout
    assert "minimtl/tv" in result.stdout


def test_bench_cuda_without_gpu_is_a_clear_refusal():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this runs the same on every machine.
    result = subprocess.run(
        [sys.executable, "-m", "minimtl.bench", "ops", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 2 and "no CUDA GPU is available" in result.stdout


def test_bench_train_runs():
    result = subprocess.run(
        [sys.executable, "-m", "minimtl.bench", "train", "--runs", "1"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert {"training", "inference"} <= set(lines)
    assert float(lines["training"][-1]) > 0 and float(lines["inference"][-1]) > 0  # the ratios


def test_a_disagreement_marks_its_row_and_keeps_the_table(monkeypatch, capsys):
    # On a GPU a single wrong result must not drop every other number (scripts/gpu_check.sh has one try).
    x = torch.arange(4.0)
    wrong = bench_ops.Case("wrong op", "4", (x,), lambda t: t * 2, lambda t: t * 3, None, torch.equal)
    right = bench_ops.Case("right op", "4", (x,), lambda t: t * 2, lambda t: t * 2, None, torch.equal)
    monkeypatch.setattr(bench_ops, "SUITES", {"toy": lambda device, quick, g: [wrong, right]})
    rows = bench_ops.run("cpu")
    assert [r["disagrees_with"] for r in rows] == [["reference"], []]
    assert all(r["minimtl_ms"] > 0 for r in rows)
    status = bench_ops.main(argparse.Namespace(device="cpu", quick=False, json=None, only=None))
    printed = capsys.readouterr().out
    assert status == 1
    assert "DIFFER from reference" in printed and "right op" in printed and "results differ in 1 rows" in printed
