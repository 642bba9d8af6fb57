"""Kernel benchmarks: the reference, minimtl and torchvision timed side by side in one run.

    python -m minimtl.bench ops                 # CPU (default), the sizes of issue 2's targets
    python -m minimtl.bench ops --device cuda   # the same on the GPU
    python -m minimtl.bench ops --quick         # tiny sizes, a smoke test

Before timing, every case checks that minimtl agrees with the others (llm.c's habit: validate, then
benchmark). Times are medians in milliseconds; the ratio column is minimtl / torchvision (lower is
better, < 1 means minimtl is faster) and the speed-up column is reference / minimtl. The reference
is skipped where its N x M temporaries would not fit comfortably (over 25M pairs).

Boxes: uniform in a 1000 x 1000 image with sides uniform in [1, 100] (random_boxes below); scores
are a random permutation, so no two are equal and every implementation must keep the same boxes.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from minimtl import ops
from minimtl.ops import reference

try:
    import torchvision.ops as tv_ops
except ImportError:  # torchvision is only an oracle; the benchmark runs without it
    tv_ops = None

REFERENCE_MAX_PAIRS = 25_000_000


def random_boxes(n, dtype=torch.float32, device="cpu", size=1000.0, max_side=100.0, generator=None):
    """n well-formed boxes in a size x size image, sides uniform in [1, max_side]. (n, 4)"""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * (max_side - 1) + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


def unique_scores(n, device="cpu", generator=None):
    """n distinct scores in [0, 1), in random order. (n,)"""
    return (torch.randperm(n, generator=generator) / max(n, 1)).to(device)


@dataclass
class Case:
    op: str
    size: str
    pairs: int  # N x M: what the reference would materialise
    inputs: tuple
    minimtl: Callable
    reference: Callable
    torchvision: Callable | None
    same: Callable  # same(out_a, out_b) -> bool


def _close(a, b):
    return torch.allclose(a.float(), b.float(), atol=1e-6, rtol=1e-5)


def _same_indices(a, b):
    return torch.equal(a.cpu(), b.cpu())


def cases(device: str, quick: bool) -> list[Case]:
    g = torch.Generator().manual_seed(0)
    iou_sizes = [(64, 64)] if quick else [(2000, 2000)]
    nms_sizes = [200] if quick else [5000, 20000]
    out = []
    for n, m in iou_sizes:
        a, b = random_boxes(n, generator=g, device=device), random_boxes(m, generator=g, device=device)
        for name in ("box_iou", "generalized_box_iou"):
            out.append(
                Case(
                    name,
                    f"{n}x{m}",
                    n * m,
                    (a, b),
                    getattr(ops, name),
                    getattr(reference, name),
                    getattr(tv_ops, name) if tv_ops else None,
                    _close,
                )
            )
    for n in nms_sizes:
        boxes, scores = random_boxes(n, generator=g, device=device), unique_scores(n, device, generator=g)
        out.append(
            Case(
                "nms",
                f"{n} boxes",
                n * n,
                (boxes, scores, 0.5),
                ops.nms,
                reference.nms,
                tv_ops.nms if tv_ops else None,
                _same_indices,
            )
        )
        classes = torch.randint(0, 10, (n,), generator=g).to(device)
        out.append(
            Case(
                "batched_nms",
                f"{n} boxes, 10 classes",
                n * n,
                (boxes, scores, classes, 0.5),
                ops.batched_nms,
                reference.batched_nms,
                tv_ops.batched_nms if tv_ops else None,
                _same_indices,
            )
        )
    return out


def time_ms(fn, args, device: str, min_runs: int = 5, min_seconds: float = 0.3) -> float:
    """Median wall time of fn(*args) in ms, after one warm-up call; the GPU is synchronised."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn(*args)
    sync()
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn(*args)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    rows = []
    for case in cases(device, quick):
        ours = case.minimtl(*case.inputs)
        run_reference = case.pairs <= REFERENCE_MAX_PAIRS
        if run_reference and not case.same(ours, case.reference(*case.inputs)):
            raise AssertionError(f"{case.op} ({case.size}): minimtl disagrees with the reference")
        if case.torchvision and not case.same(ours, case.torchvision(*case.inputs)):
            raise AssertionError(f"{case.op} ({case.size}): minimtl disagrees with torchvision")
        row = {"op": case.op, "size": case.size, "device": device}
        row["minimtl_ms"] = time_ms(case.minimtl, case.inputs, device)
        row["reference_ms"] = time_ms(case.reference, case.inputs, device, min_runs=1) if run_reference else None
        row["torchvision_ms"] = time_ms(case.torchvision, case.inputs, device) if case.torchvision else None
        row["vs_torchvision"] = row["minimtl_ms"] / row["torchvision_ms"] if row["torchvision_ms"] else None
        row["speedup_vs_reference"] = row["reference_ms"] / row["minimtl_ms"] if row["reference_ms"] else None
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table: names left-aligned, numbers right-aligned."""

    def fmt(x, spec, suffix=""):
        return "-" if x is None else format(x, spec) + suffix

    header = ("op", "size", "reference ms", "minimtl ms", "torchvision ms", "minimtl/tv", "ref/minimtl")
    lines = [header] + [
        (
            r["op"],
            r["size"],
            fmt(r["reference_ms"], ".2f"),
            fmt(r["minimtl_ms"], ".3f"),
            fmt(r["torchvision_ms"], ".3f"),
            fmt(r["vs_torchvision"], ".3f"),
            fmt(r["speedup_vs_reference"], ".1f", "x"),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def join(cells):
        aligned = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(aligned)

    return "\n".join([join(lines[0]), "  ".join("-" * w for w in widths)] + [join(line) for line in lines[1:]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def main(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is available")
        return 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    tv = f"torchvision {tv_ops and __import__('torchvision').__version__}" if tv_ops else "torchvision not installed"
    print(f"minimtl ops benchmark: {where}; torch {torch.__version__}; {tv}")
    rows = run(args.device, args.quick)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
