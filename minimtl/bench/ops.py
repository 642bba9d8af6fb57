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
RoIs: uniform in the image of the map (stride 8), sides uniform in [16, 256] pixels (random_rois).
"""

import argparse
import functools
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

REFERENCE_MAX_PAIRS = 25_000_000  # N x M above which the box references are not run


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
    inputs: tuple
    minimtl: Callable
    reference: Callable
    torchvision: Callable | None
    same: Callable  # same(out_a, out_b) -> bool
    run_reference: bool = True  # False where the reference would take gigabytes or minutes


def _close(a, b):
    return torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-5)


def _same_indices(a, b):
    return torch.equal(a.cpu(), b.cpu())


def box_cases(device: str, quick: bool, g: torch.Generator) -> list[Case]:
    n = m = 64 if quick else 2000
    a, b = random_boxes(n, generator=g, device=device), random_boxes(m, generator=g, device=device)
    return [
        Case(
            name,
            f"{n}x{m}",
            (a, b),
            getattr(ops, name),
            getattr(reference, name),
            getattr(tv_ops, name, None),
            _close,
            run_reference=n * m <= REFERENCE_MAX_PAIRS,
        )
        for name in ("box_iou", "generalized_box_iou")
    ]


def nms_cases(device: str, quick: bool, g: torch.Generator) -> list[Case]:
    out = []
    for n in [200] if quick else [5000, 20000]:
        boxes, scores = random_boxes(n, generator=g, device=device), unique_scores(n, device, generator=g)
        classes = torch.randint(0, 10, (n,), generator=g).to(device)
        small = n * n <= REFERENCE_MAX_PAIRS
        out += [
            Case(
                "nms",
                f"{n} boxes",
                (boxes, scores, 0.5),
                ops.nms,
                reference.nms,
                getattr(tv_ops, "nms", None),
                _same_indices,
                run_reference=small,
            ),
            Case(
                "batched_nms",
                f"{n} boxes, 10 classes",
                (boxes, scores, classes, 0.5),
                ops.batched_nms,
                reference.batched_nms,
                getattr(tv_ops, "batched_nms", None),
                _same_indices,
                run_reference=small,
            ),
        ]
    return out


def random_rois(k, n, image_size, min_side, max_side, generator=None, device="cpu"):
    """k RoIs (batch_index, x1, y1, x2, y2) on n images of image_size^2 pixels, sides uniform in
    [min_side, max_side]. (k, 5)"""
    xy = torch.rand(k, 2, generator=generator, dtype=torch.float64) * (image_size - min_side)
    wh = torch.rand(k, 2, generator=generator, dtype=torch.float64) * (max_side - min_side) + min_side
    index = torch.randint(0, n, (k, 1), generator=generator).double()
    return torch.cat([index, xy, xy + wh], dim=1).float().to(device)


def _forward_backward(roi_align_fn, settings):
    """roi_align, then the gradient of <output, grad> with respect to the map: fn(x, rois, grad)."""

    def run(x, rois, grad):
        x = x.detach().requires_grad_()
        (grad_x,) = torch.autograd.grad(roi_align_fn(x, rois, *settings), x, grad)
        return grad_x

    return run


def roi_align_cases(device: str, quick: bool, g: torch.Generator) -> list[Case]:
    # issue 3: 512 RoIs on a 2 x 256 x 100 x 100 map of stride 8 (an 800 x 800 image), sides 16-256 px
    n, c, h, k = (2, 8, 20, 16) if quick else (2, 256, 100, 512)
    x = torch.randn(n, c, h, h, generator=g).to(device)
    rois = random_rois(k, n, 8 * h, 16, min(256, 8 * h), generator=g, device=device)
    tv = getattr(tv_ops, "roi_align", None)
    # As the model's poolers call it: indices made by the caller, not checked on CUDA (a check waits
    # for the GPU on every call; torchvision checks nothing).
    roi_align = functools.partial(ops.roi_align, check_indices=False)
    out = []
    for output_size, sampling_ratio in [(7, 2), (14, -1)]:
        settings = (output_size, 1 / 8, sampling_ratio, True)
        size = f"{k} RoIs, {n}x{c}x{h}x{h}, {output_size}x{output_size}, sr={sampling_ratio}"
        grad = torch.randn(k, c, output_size, output_size, generator=g).to(device)
        out += [
            Case("roi_align fwd", size, (x, rois) + settings, roi_align, reference.roi_align, tv, _close),
            Case(
                "roi_align fwd+bwd",
                size,
                (x, rois, grad),
                _forward_backward(roi_align, settings),
                _forward_backward(reference.roi_align, settings),
                tv and _forward_backward(tv, settings),
                _close,
            ),
        ]
    return out


SUITES = {"boxes": box_cases, "nms": nms_cases, "roi_align": roi_align_cases}


def cases(device: str, quick: bool, only: list[str] | None = None) -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [case for name, make in SUITES.items() if not only or name in only for case in make(device, quick, g)]


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


def run(device: str = "cpu", quick: bool = False, only: list[str] | None = None) -> list[dict]:
    rows = []
    for case in cases(device, quick, only):
        ours = case.minimtl(*case.inputs)
        run_reference = case.run_reference
        # A disagreement marks its row (and main's exit status); the other rows are still measured.
        disagrees = []
        if run_reference and not case.same(ours, case.reference(*case.inputs)):
            disagrees.append("reference")
        if case.torchvision and not case.same(ours, case.torchvision(*case.inputs)):
            disagrees.append("torchvision")
        row = {"op": case.op, "size": case.size, "device": device, "disagrees_with": disagrees}
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

    header = ("op", "size", "reference ms", "minimtl ms", "torchvision ms", "minimtl/tv", "ref/minimtl", "results")
    lines = [header] + [
        (
            r["op"],
            r["size"],
            fmt(r["reference_ms"], ".2f"),
            fmt(r["minimtl_ms"], ".3f"),
            fmt(r["torchvision_ms"], ".3f"),
            fmt(r["vs_torchvision"], ".3f"),
            fmt(r["speedup_vs_reference"], ".1f", "x"),
            "DIFFER from " + " and ".join(r["disagrees_with"]) if r.get("disagrees_with") else "agree",
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
    parser.add_argument("--only", nargs="+", choices=list(SUITES), help="run only these suites")


def main(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is available")
        return 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    tv = f"torchvision {tv_ops and __import__('torchvision').__version__}" if tv_ops else "torchvision not installed"
    print(f"minimtl ops benchmark: {where}; torch {torch.__version__}; {tv}")
    rows = run(args.device, args.quick, args.only)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    differ = [f"{r['op']} ({r['size']})" for r in rows if r["disagrees_with"]]
    if differ:
        print(f"results differ in {len(differ)} rows: " + "; ".join(differ))
        return 1
    return 0
