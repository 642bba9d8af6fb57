"""scripts/gpu_check.sh, dry-run here: with a fake nvidia-smi and no GPU every step says "not
available", the summary comes out whole, and $OUT holds at most the four files the device tool is to
bring back. (On a GPU the same script runs every step; a session with one lent runs it first.)"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HAS_CUDA

ROOT = Path(__file__).resolve().parent.parent
STEPS = [
    "tests",
    "compute-sanitizer memcheck",
    "compute-sanitizer racecheck",
    "compute-sanitizer synccheck",
    "bench ops",
    "profile",
    "determinism",
    "cuda graph",
    "bench train",
    "demo",
]


@pytest.mark.skipif(HAS_CUDA, reason="the dry run is for machines without a GPU")
def test_dry_run_reports_every_step_and_returns_four_files_at_most(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text('#!/bin/sh\necho "Fake GPU (dry run), 0.0, 0 MiB"\n')
    (fake_bin / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "OUT": str(out), "GPU_CHECK_SKIP_BUILD": "1"}
    env["PYTHON"] = sys.executable
    start = time.perf_counter()
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=300, env=env
    )
    seconds = time.perf_counter() - start
    print(f"dry run: {seconds:.0f} s")  # the bound (a minute beyond the build) is read here, not asserted
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["build.log", "results.json", "summary.md"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## Fake GPU (dry run), ") and summary.rstrip().endswith("```")
    for step in STEPS:
        lines = [line for line in summary.splitlines() if line.startswith(step)]
        assert lines and "not available" in lines[0], (step, summary)
    # The probes ran (and found no GPU) rather than being skipped by the script.
    for probe in ("profile", "determinism", "cuda graph"):
        assert f"{probe}: not available: not available: no CUDA GPU" in summary, summary
    assert "total: " in summary and "no step failed" in summary
    results = json.loads((out / "results.json").read_text())
    assert {s["step"] for s in results["steps"]} == set(STEPS)
    assert all(s["status"] == "not available" for s in results["steps"])


def test_probes_refuse_cleanly_without_a_gpu_and_collect_merges(tmp_path):
    # Exit status 3 and one line, the status gpu_check.sh reads as "not available".
    env_hidden = {"CUDA_VISIBLE_DEVICES": ""}
    for probe in ("profile", "determinism", "graph"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "gpu_probe.py"), probe, str(tmp_path / f"{probe}.json")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env_hidden},
        )
        assert result.returncode == 3 and result.stdout.strip() == "not available: no CUDA GPU on this machine"
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "steps.tsv").write_text("build\tok\t12\tdone\nprofile\tnot available\t1\tno GPU\n")
    probe = [sys.executable, str(ROOT / "scripts" / "gpu_probe.py")]
    result = subprocess.run(
        probe + ["collect", str(tmp_path), str(tmp_path / "all.json")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["a"] == {"x": 1}
    assert merged["steps"] == [
        {"step": "build", "status": "ok", "seconds": "12", "note": "done"},
        {"step": "profile", "status": "not available", "seconds": "1", "note": "no GPU"},
    ]
