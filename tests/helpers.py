"""One comparison helper for the op tests (tinygrad's check_op habit), and the subprocess runner
that the crash tests use."""

import subprocess
import sys
import textwrap

import torch


def check_op(op_fn, reference_fn, *inputs, atol=0.0, rtol=0.0, grad=False):
    """Run `op_fn` and `reference_fn` on the same inputs and compare what they return.

    Compares shape, dtype and values (exactly by default: the kernels mirror the reference
    operation for operation) and, with grad=True, the gradients of every floating input under a
    random upstream gradient. Returns the op's output.
    """
    if grad:
        inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        ref_inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    else:
        ref_inputs = inputs
    out, expected = op_fn(*inputs), reference_fn(*ref_inputs)
    assert out.shape == expected.shape, f"shape {tuple(out.shape)} != reference {tuple(expected.shape)}"
    assert out.dtype == expected.dtype, f"dtype {out.dtype} != reference {expected.dtype}"
    assert out.device == expected.device, f"device {out.device} != reference {expected.device}"
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol, equal_nan=False)
    if grad:
        upstream = torch.randn_like(out)
        for g, r in zip(_gradients(out, inputs, upstream), _gradients(expected, ref_inputs, upstream), strict=True):
            torch.testing.assert_close(g, r, atol=max(atol, 1e-6), rtol=max(rtol, 1e-5))
    return out


def _gradients(output, inputs, upstream):
    """d(output . upstream) / d(input) for every input that requires grad; zeros where none flows."""
    wrt = [x for x in inputs if x.requires_grad]
    if not output.requires_grad:  # e.g. an empty output, built without touching the inputs
        return [torch.zeros_like(x) for x in wrt]
    grads = torch.autograd.grad(output, wrt, upstream, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt, strict=True)]


def run_python(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter: a crash (segfault, abort) there fails a test here instead
    of killing the test run. Returns the finished process (check .returncode, .stdout, .stderr)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )
