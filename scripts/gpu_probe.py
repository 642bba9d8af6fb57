"""The GPU check's measurements that are not benchmarks or tests (scripts/gpu_check.sh runs each once).

    python scripts/gpu_probe.py profile OUT.json       # kernel time against wall time, minimtl and torchvision
    python scripts/gpu_probe.py determinism OUT.json   # the deterministic backward, three runs, bit for bit
    python scripts/gpu_probe.py graph OUT.json         # what a CUDA graph can capture
    python scripts/gpu_probe.py collect DIR OUT.json   # every DIR/*.json (and DIR/steps.tsv) in one file

Each measurement prints a few lines for the summary and writes its numbers as JSON. Without a CUDA
GPU each says "not available" and exits with status 3, which gpu_check.sh reports as such.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

NOT_AVAILABLE = 3
# The benchmark's sizes (minimtl/bench/ops.py): 20,000 boxes for NMS; 512 RoIs on a 2 x 256 x 100 x 100
# map of stride 8 for RoIAlign, 7 x 7 bins of 2 x 2 samples, aligned.
NMS_BOXES = 20_000
ROI_ALIGN = {"rois": 512, "map": (2, 256, 100, 100), "output_size": 7, "scale": 1 / 8, "sampling_ratio": 2}


def roi_align_inputs(device="cuda"):
    from minimtl.bench.ops import random_rois

    g = torch.Generator().manual_seed(0)
    n, c, h, w = ROI_ALIGN["map"]
    x = torch.randn(n, c, h, w, generator=g).to(device)
    rois = random_rois(ROI_ALIGN["rois"], n, 8 * h, 16, 256, generator=g, device=device)
    grad = torch.randn(ROI_ALIGN["rois"], c, 7, 7, generator=g).to(device)
    return x, rois, grad


def roi_align_args():
    return ROI_ALIGN["output_size"], ROI_ALIGN["scale"], ROI_ALIGN["sampling_ratio"], True


def nms_inputs(device="cuda"):
    from minimtl.bench.ops import random_boxes, unique_scores

    g = torch.Generator().manual_seed(0)
    return random_boxes(NMS_BOXES, g).to(device), unique_scores(NMS_BOXES, g).to(device)


def wall_ms(fn, runs=20) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def kernel_times(fn, runs=10) -> dict[str, float]:
    """Microseconds of GPU time per call of fn, by kernel name (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    out = {}
    for event in prof.key_averages():
        if str(event.device_type).endswith("CUDA"):
            us = getattr(event, "self_device_time_total", None)
            if us is None:
                us = event.self_cuda_time_total
            if us > 0:
                out[event.key] = us / runs
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def short(name: str, width: int = 60) -> str:
    name = name.split("(")[0]
    return name if len(name) <= width else name[: width - 3] + "..."


def profile() -> dict:
    from minimtl import ops

    try:
        from torchvision import ops as tv
    except ImportError:
        tv = None
    boxes, scores = nms_inputs()
    x, rois, grad = roi_align_inputs()
    args = roi_align_args()

    def forward_backward(fn):
        def run():
            xg = x.detach().requires_grad_()
            torch.autograd.grad(fn(xg, rois, *args), xg, grad)

        return run

    ours_roi = lambda a, r, *s: ops.roi_align(a, r, *s, check_indices=False)  # noqa: E731 (as the model calls it)
    cases = {
        "nms minimtl": lambda: ops.nms(boxes, scores, 0.5),
        "roi_align fwd minimtl": lambda: ours_roi(x, rois, *args),
        "roi_align fwd+bwd minimtl": forward_backward(ours_roi),
    }
    if tv is not None:
        cases.update(
            {
                "nms torchvision": lambda: tv.nms(boxes, scores, 0.5),
                "roi_align fwd torchvision": lambda: tv.roi_align(x, rois, *args),
                "roi_align fwd+bwd torchvision": forward_backward(tv.roi_align),
            }
        )
    result = {}
    for name, fn in cases.items():
        kernels = kernel_times(fn)
        wall = wall_ms(fn)
        total_us = sum(kernels.values())
        result[name] = {"wall_ms": wall, "kernel_ms": total_us / 1e3, "kernels_us": kernels}
        print(f"{name:30} wall {wall:8.3f} ms, kernels {total_us / 1e3:8.3f} ms ({total_us / 1e3 / wall:5.1%} of wall)")
        for kernel, us in list(kernels.items())[:4]:
            print(f"    {us:9.1f} us  {short(kernel)}")
    return {"profile": result}


def determinism() -> tuple[dict, int]:
    from minimtl import ops

    x, rois, grad = roi_align_inputs()
    args = roi_align_args()

    def backward():
        xg = x.detach().requires_grad_()
        (g,) = torch.autograd.grad(ops.roi_align(xg, rois, *args, check_indices=False), xg, grad)
        return g

    atomic = [backward() for _ in range(3)]
    torch.use_deterministic_algorithms(True)
    try:
        fixed = [backward() for _ in range(3)]
        fixed_ms = wall_ms(backward, runs=10)
    finally:
        torch.use_deterministic_algorithms(False)
    atomic_ms = wall_ms(backward, runs=10)
    identical = all(torch.equal(fixed[0], f) for f in fixed[1:])
    atomic_identical = all(torch.equal(atomic[0], a) for a in atomic[1:])
    diff = (fixed[0] - atomic[0]).abs().max().item()
    scale = atomic[0].abs().max().item()
    print(f"deterministic backward, 3 runs at benchmark size: {'bit-identical' if identical else 'NOT IDENTICAL'}")
    print(f"float-atomic backward, 3 runs: {'bit-identical' if atomic_identical else 'differ (as expected)'}")
    print(f"max |deterministic - atomic| = {diff:.3g} (largest |grad| {scale:.3g})")
    print(
        f"backward (fwd+bwd) ms: deterministic {fixed_ms:.3f}, atomic {atomic_ms:.3f}, ratio {fixed_ms / atomic_ms:.2f}"
    )
    result = {"bit_identical": identical, "atomic_bit_identical": atomic_identical, "max_abs_diff": diff,
              "max_abs_grad": scale, "deterministic_ms": fixed_ms, "atomic_ms": atomic_ms}  # fmt: skip
    return {"determinism": result}, (0 if identical else 1)


def capture(fn, inputs_refresh):
    """Capture fn() in a CUDA graph, change the inputs, replay: (ok, message)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside the capture (allocator, lazy initialisation)
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = fn()
    except Exception as error:  # what the capture refused, and why
        torch.cuda.synchronize()
        return False, f"not capturable: {str(error).splitlines()[0][:160]}"
    inputs_refresh()
    graph.replay()
    torch.cuda.synchronize()
    expected = fn()
    same = torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    return same, "captured; replay equals eager" if same else "captured; REPLAY DIFFERS from eager"


def graph() -> tuple[dict, int]:
    from torch import nn

    from minimtl import ops

    torch.manual_seed(0)
    feature = torch.randn(2, 64, 64, 64, device="cuda")  # one level, stride 4, of two 256 x 256 images
    boxes = [torch.rand(100, 4, device="cuda").sort(dim=1).values * 256 for _ in range(2)]  # x1 < y1 < x2 < y2
    rois = ops.boxes_to_rois(boxes)  # (200, 5)
    head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 49, 256), nn.ReLU(), nn.Linear(256, 5)).cuda()
    scores = torch.rand(2000, device="cuda")
    nms_boxes = torch.rand(2000, 4, device="cuda").sort(dim=1).values * 256

    def refresh():
        feature.copy_(torch.randn_like(feature))
        scores.copy_(torch.rand_like(scores))

    cases = {
        # A box head on one level: RoIAlign (a Tensor[K, 5], its check skipped while capturing), then an MLP.
        "roi_align + box head forward": lambda: head(ops.roi_align(feature, rois, 7, 0.25, 2, True)),
        # NMS keeps a data-dependent number of boxes: its output's size must come back to the host.
        "nms": lambda: ops.nms(nms_boxes, scores, 0.5).float(),
    }
    result = {}
    for name, fn in cases.items():
        ok, message = capture(fn, refresh)
        result[name] = {"ok": ok, "message": message}
        print(f"cuda graph, {name}: {message}")
    return {"graph": result}, (0 if result["roi_align + box head forward"]["ok"] else 1)


def collect(folder: Path, out: Path) -> None:
    """Every folder/*.json in one object under its stem, plus the steps' table folder/steps.tsv."""
    merged = {}
    for path in sorted(folder.glob("*.json")):
        try:
            merged[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            merged[path.stem] = {"unreadable": str(error)}
    steps = folder / "steps.tsv"
    if steps.exists():
        merged["steps"] = [
            dict(zip(("step", "status", "seconds", "note"), line.split("\t", 3), strict=False))
            for line in steps.read_text().splitlines()
            if line
        ]
    out.write_text(json.dumps(merged, indent=1) + "\n")


def main(argv: list[str]) -> int:
    commands = {"profile": profile, "determinism": determinism, "graph": graph}
    if len(argv) == 3 and argv[0] == "collect":
        collect(Path(argv[1]), Path(argv[2]))
        return 0
    if len(argv) != 2 or argv[0] not in commands:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("not available: no CUDA GPU on this machine")
        return NOT_AVAILABLE
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}")
    returned = commands[argv[0]]()
    numbers, status = returned if isinstance(returned, tuple) else (returned, 0)
    Path(argv[1]).write_text(json.dumps(numbers, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
