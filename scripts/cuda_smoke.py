"""Every CUDA kernel once on small and awkward inputs: what compute-sanitizer runs under memcheck,
racecheck and synccheck in scripts/gpu_check.sh (the full tests would take hours under the sanitizer).

    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/cuda_smoke.py

Sizes around the NMS kernel's 64-box blocks (0, 1, 63, 64, 65, ...), NaN/inf boxes and scores,
empty inputs, every dtype, RoIAlign forward and backward in both backward modes (atomic float and
deterministic fixed point), bad batch indices checked and unchecked, a batch without images. It
checks results against the CPU kernels too, so it is also a quick correctness check.
"""

import math

import torch

from minimtl import ops


def boxes(n, generator, special=False):
    xy = torch.rand(n, 2, generator=generator) * 100
    b = torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * 30], dim=1)
    if special and n > 3:
        b[0, 0], b[1, 2], b[2] = math.nan, math.inf, torch.tensor([5.0, 5.0, 1.0, 1.0])  # NaN, inf, inverted
    return b


def main() -> None:
    assert torch.cuda.is_available(), "cuda_smoke needs a CUDA GPU"
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 63, 64, 65, 200, 3000):
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            a, b = boxes(n, g, special=True), boxes(max(n // 2, 1), g)
            iou = ops.box_iou(a.to("cuda", dtype), b.to("cuda", dtype))
            giou = ops.generalized_box_iou(a.to("cuda", dtype), b.to("cuda", dtype))
            if dtype in (torch.float32, torch.float64):
                torch.testing.assert_close(iou.cpu(), ops.box_iou(a.to(dtype), b.to(dtype)))
                torch.testing.assert_close(giou.cpu(), ops.generalized_box_iou(a.to(dtype), b.to(dtype)))
            scores = torch.rand(n, generator=g)
            if n > 4:
                scores[3] = math.nan
            keep = ops.nms(a.to("cuda", dtype), scores.to("cuda", dtype), 0.5)
            idxs = torch.randint(0, 5, (n,), generator=g)
            batched = ops.batched_nms(a.to("cuda", dtype), scores.to("cuda", dtype), idxs.cuda(), 0.5)
            if dtype in (torch.float32, torch.float64):
                assert torch.equal(keep.cpu(), ops.nms(a.to(dtype), scores.to(dtype), 0.5)), (n, dtype)
                assert torch.equal(batched.cpu(), ops.batched_nms(a.to(dtype), scores.to(dtype), idxs, 0.5)), (n, dtype)

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.randn(2, 8, 13, 17, generator=g)
        rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), boxes(40, g, special=True) / 5], dim=1)
        grad = torch.randn(40, 8, 7, 7, generator=g)
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            try:
                xg = x.to("cuda", dtype).requires_grad_()
                out = ops.roi_align(xg, rois.cuda(), 7, 0.5, 2, True)
                out.backward(grad.to("cuda", dtype))
                adaptive = ops.roi_align(xg, rois.cuda(), (5, 3), 1.0, -1, False)
                adaptive.sum().backward()
            finally:
                torch.use_deterministic_algorithms(False)
            if dtype in (torch.float32, torch.float64):
                xc = x.to(dtype).requires_grad_()
                expected = ops.roi_align(xc, rois, 7, 0.5, 2, True)
                expected.backward(grad.to(dtype))
                ops.roi_align(xc, rois, (5, 3), 1.0, -1, False).sum().backward()
                torch.testing.assert_close(out.cpu(), expected)
                torch.testing.assert_close(xg.grad.cpu(), xc.grad)
        empty = ops.roi_align(x.to("cuda", dtype), torch.zeros(0, 5, device="cuda"), 7)
        assert empty.shape == (0, 8, 7, 7)
    for index in (7.0, -1.0, 0.5, math.nan):  # a bad batch index: an error from the check, zeros from the kernel
        bad = rois.clone()
        bad[5, 0] = index
        try:
            ops.roi_align(x.cuda(), bad.cuda(), 7)
            raise AssertionError(f"batch index {index} was accepted")
        except RuntimeError as error:
            assert "in row 5" in str(error), error
        xg = x.cuda().requires_grad_()
        unchecked = ops.roi_align(xg, bad.cuda(), 7, check_indices=False)
        assert (unchecked[5] == 0).all()
        unchecked.sum().backward()  # the backward skips the row too
    no_images = torch.zeros(0, 8, 13, 17, device="cuda", requires_grad=True)  # N = 0: nothing to launch
    out = ops.roi_align(no_images, rois.cuda(), 7, check_indices=False)
    out.sum().backward()
    assert (out == 0).all() and no_images.grad.shape == (0, 8, 13, 17)
    torch.cuda.synchronize()
    print("cuda_smoke: every CUDA kernel ran; results equal the CPU kernels'")


if __name__ == "__main__":
    main()
