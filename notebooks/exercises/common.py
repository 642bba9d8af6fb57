"""What the chapters' checks share: calling the learner's code so that a failure is an AssertionError
naming the exercise, comparing tensors and numbers, reading a dict answer, and leaving torch's global
random state as the notebook had it."""

import functools

import numpy as np
import torch
from torch import Tensor


def run(k: int, name: str, fn, *args):
    """fn(*args); an exception becomes an AssertionError that names the exercise."""
    try:
        return fn(*args)
    except Exception as error:  # the learner's code failed: say where, as an assertion
        raise AssertionError(f"exercise {k}: {name} raised {type(error).__name__}: {error}") from error


def call(k: int, function, *args):
    """The learner's function, called; an exception in it becomes an AssertionError saying so."""
    if not callable(function):
        raise AssertionError(f"exercise {k}: pass your function itself, got {type(function).__name__}")
    try:
        return function(*args)
    except AssertionError:
        raise
    except Exception as error:
        raise AssertionError(f"exercise {k}: your function raised {type(error).__name__}: {error}") from error


def close_elementwise(k: int, what: str, got, expected: torch.Tensor, atol: float) -> None:
    """got == expected to within atol, elementwise (NaN only where expected is NaN), with a message that shows where."""
    assert torch.is_tensor(got), f"exercise {k}: {what} should be a tensor, got {type(got).__name__}"
    assert got.shape == expected.shape, (
        f"exercise {k}: {what} should have shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    )
    got, expected = got.detach().double(), expected.detach().double()
    bad = ~((got - expected).abs() <= atol) & ~(got.isnan() & expected.isnan())
    if bad.any():
        at = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"exercise {k}: {what}: {int(bad.sum())} of {bad.numel()} values are off by more than {atol:g}; at "
            f"index {at} the answer is {expected[at].item():.6g}, got {got[at].item():.6g}"
        )


def close(k: int, what: str, got, expected: Tensor, atol=1e-5, rtol=1e-5) -> None:
    if not isinstance(got, Tensor):
        raise AssertionError(f"exercise {k}: {what} should be a tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise AssertionError(f"exercise {k}: {what} should have shape {tuple(expected.shape)}, got {tuple(got.shape)}")
    try:
        torch.testing.assert_close(got.to(expected.dtype), expected, atol=atol, rtol=rtol)
    except AssertionError as error:
        raise AssertionError(f"exercise {k}: {what} differs from minimtl's: {error}") from None


def record(k: int, answer, keys: set[str]) -> dict:
    assert isinstance(answer, dict) and set(answer) == keys, (
        f"exercise {k}: pass a dict with the keys {sorted(keys)}, got {answer!r}"
    )
    return answer


def has_keys(k: int, answer, keys) -> None:
    if not isinstance(answer, dict) or set(keys) - set(answer):
        got = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
        raise AssertionError(f"exercise {k}: pass a dict with the keys {list(keys)}, got {got}")


def number(k: int, what: str, value) -> float:
    """A number (int, float, numpy or one-element tensor), never a string or a bool."""
    if value is None or isinstance(value, (str, bytes, bool, np.bool_)):
        raise AssertionError(f"exercise {k}: {what} should be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError(f"exercise {k}: {what} should be a number, got {value!r}") from None


def keeps_global_rng(check):
    """Run a check without touching torch's global random state: the notebook's next numbers stay the same."""

    @functools.wraps(check)
    def wrapper(answer):
        with torch.random.fork_rng(devices=[]):
            return check(answer)

    return wrapper
