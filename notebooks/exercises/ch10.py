"""Checks for the exercises of chapter 10, multi-task losses (notebooks/10_multitask_loss.ipynb, 10.9).

`exercise_K(answer)` returns quietly when the answer to exercise K is right, and raises an
AssertionError that says what is wrong otherwise. Each check compares the answer with minimtl's own
code (`MultiTaskLoss`, `pcgrad_backward`, `sigmoid_focal_loss`, the command line's parser, section 10.7's
anchors and labels) on hand cases, edge cases and seeded random inputs; none trains a model.
Worked solutions: notebooks/solutions/ch10.py.
"""

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from exercises.common import call as _call
from exercises.common import close as _close
from exercises.common import has_keys as _keys
from exercises.common import keeps_global_rng as _keeps_global_rng
from exercises.common import number as _number
from minimtl import ops
from minimtl.cli import experiment_paths
from minimtl.cli import parser as command_line
from minimtl.data import ShapesDataset
from minimtl.losses import MultiTaskLoss, pcgrad_backward, sigmoid_focal_loss
from minimtl.modeling.anchors import AnchorGenerator
from minimtl.modeling.matcher import Matcher
from minimtl.models.rcnn import RCNNConfig

S_GRADIENT_SOURCES = {
    "projected": "from the projected task gradients, like the network's parameters",
    "separately": "from a backward of the uncertainty total with respect to the s_i alone, outside the projection",
    "nowhere": "nowhere: the s_i need no gradient, PCGrad sets the weights",
}
EXPERIMENT_ROWS = ("semantic only", "joint, fixed equal weights")  # exercise 7's rows


# --- helpers: every failure is an AssertionError that names the exercise ---------------------------


# --- the exercises -----------------------------------------------------------------------------------


@_keeps_global_rng
def exercise_1(initial_loss_weights) -> None:
    """initial_loss_weights({task: L_i(0)}) -> {task: alpha_i} for MultiTaskLoss(..., "fixed", weights=...):
    the weights that "uncertainty" reaches at its optimum for the first losses."""
    cases = [
        {"big": 77.0, "medium": 0.48, "small": 0.168},  # about the toy's first losses
        {"a": 2.0, "b": 30.0},
        {"detection": 1.7, "instance": 0.69, "semantic": 1.39},
    ]
    for first in cases:
        got = _call(1, initial_loss_weights, dict(first))
        if not isinstance(got, dict) or set(got) != set(first):
            raise AssertionError(f"exercise 1: return a dict with one weight per task, {sorted(first)}")
        tasks = list(first)
        losses = {t: torch.tensor(v) for t, v in first.items()}
        uncertainty = MultiTaskLoss(tasks, "uncertainty")
        with torch.no_grad():
            uncertainty.log_vars.copy_(torch.log(torch.stack(list(losses.values()))))  # its optimum, s_i = log L_i
        expected = uncertainty.weights()
        fixed = MultiTaskLoss(tasks, "fixed", weights={t: float(w) for t, w in got.items()})
        for t in tasks:
            assert math.isclose(float(got[t]), expected[t], rel_tol=1e-5), (
                f"exercise 1: {first}: task {t!r} should weigh {expected[t]:.4g} (uncertainty's optimum for that "
                f"loss), got {float(got[t]):.4g}"
            )
        total = fixed(losses).item()
        assert math.isclose(total, len(tasks), rel_tol=1e-5), (
            f"exercise 1: with these weights every weighted first loss is 1, so the total is {len(tasks)}, got {total}"
        )


@_keeps_global_rng
def exercise_2(adam_first_step) -> None:
    """adam_first_step(grad, lr) -> the change torch.optim.Adam (default betas, eps) makes on its first step."""
    generator = torch.Generator().manual_seed(0)
    grads = [
        torch.tensor([1.0, -2.0, 0.5, 0.0]),
        100 * torch.randn(6, generator=generator),  # a task whose loss is 100 times larger
        1e-3 * torch.randn(6, generator=generator),
        torch.tensor([1e-9, -3e-8, 2e-7]),  # so small that Adam's eps (1e-8) shows
    ]
    for grad in grads:
        for lr in (0.01, 0.001):
            parameter = torch.zeros_like(grad, requires_grad=True)
            optimizer = torch.optim.Adam([parameter], lr=lr)
            parameter.grad = grad.clone()
            optimizer.step()
            got = _call(2, adam_first_step, grad.clone(), lr)
            if isinstance(got, Tensor) and got.shape == grad.shape and torch.allclose(got, -lr * grad):
                raise AssertionError("exercise 2: -lr * grad is SGD's step; Adam divides by the root mean square")
            _close(2, f"Adam's first step for the gradient {grad.tolist()} at lr {lr}", got, parameter.detach(),
                   atol=1e-9, rtol=1e-5)  # fmt: skip


@_keeps_global_rng
def exercise_3(dwa_weights) -> None:
    """dwa_weights(losses (steps, K), period, temperature) -> (K,): the weights DWA uses at the next step."""
    generator = torch.Generator().manual_seed(0)
    cases = [
        ("the chapter's example", torch.tensor([[4.0, 1.0], [4.0, 1.0], [2.0, 1.0], [2.0, 1.0], [1.0, 1.0]]), 2, 2.0),
        ("fewer than two periods", 1 + torch.rand(7, 3, generator=generator), 4, 2.0),
        ("exactly two periods", 1 + torch.rand(8, 3, generator=generator), 4, 2.0),
    ]
    for temperature in (0.1, 2.0, 10.0):
        for steps in (23, 40):
            losses = torch.exp(-torch.arange(steps)[:, None] * torch.tensor([0.05, 0.01, 0.1]))
            losses = losses * (1 + 0.2 * torch.rand(steps, 3, generator=generator))  # falling, noisy
            cases.append((f"{steps} noisy steps, T = {temperature}", losses, 5, temperature))
    for name, losses, period, temperature in cases:
        tasks = [f"task{i}" for i in range(losses.shape[1])]
        dwa = MultiTaskLoss(tasks, "dwa", dwa_period=period, dwa_temperature=temperature)
        for row in losses:
            dwa(dict(zip(tasks, row, strict=True)))  # a training forward: updates the period means
        expected = torch.tensor(list(dwa.weights().values()))
        got = _call(3, dwa_weights, losses.clone(), period, temperature)
        if isinstance(got, Tensor) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-5):
            if not torch.allclose(got.sum(), torch.tensor(float(len(tasks))), atol=1e-4):
                raise AssertionError(
                    f"exercise 3 ({name}): DWA's weights sum to K = {len(tasks)}, yours to {got.sum():.4f}"
                )
        _close(3, f"the weights ({name}, period {period})", got, expected)


@_keeps_global_rng
def exercise_4(gradnorm_equilibrium) -> None:
    """gradnorm_equilibrium(norms (K,)) -> (K,): the weights at which GradNorm with alpha = 0 stays put."""
    generator = torch.Generator().manual_seed(0)
    for norms in (
        torch.tensor([4.0, 1.0, 0.25]),
        torch.tensor([3.0, 2.0]),
        0.1 + 5 * torch.rand(4, generator=generator),
    ):
        got = _call(4, gradnorm_equilibrium, norms.clone())
        k = len(norms)
        if not isinstance(got, Tensor) or got.shape != (k,):
            raise AssertionError(f"exercise 4: return the K = {k} weights as a tensor")
        assert math.isclose(got.sum().item(), k, rel_tol=1e-5), f"exercise 4: GradNorm's weights sum to K = {k}"
        weighted = got * norms
        assert torch.allclose(weighted, weighted.mean().expand(k), rtol=1e-4), (
            f"exercise 4: at the equilibrium the weighted norms w_i g_i are all equal (alpha = 0: every target is "
            f"their mean); yours are {weighted.tolist()}"
        )
    # minimtl's GradNorm, run with alpha = 0 on losses whose gradient norms stay 2, 1 and 1/2, settles there.
    norms = torch.tensor([2.0, 1.0, 0.5])
    theta = torch.zeros(3, requires_grad=True)
    gradnorm = MultiTaskLoss(["a", "b", "c"], "gradnorm", gradnorm_alpha=0.0)
    gradnorm.set_shared_parameters([theta])
    history = []
    for step in range(150):
        losses = {t: g * theta[i] + 1.0 + 0.01 * step * i for i, (t, g) in enumerate(zip("abc", norms, strict=True))}
        gradnorm(losses)  # a training forward: one update of the weights
        history.append(torch.tensor(list(gradnorm.weights().values())))
    settled = torch.stack(history[-40:]).mean(dim=0)  # it chatters by about gradnorm_lr around the equilibrium
    got = _call(4, gradnorm_equilibrium, norms.clone())
    _close(4, "the weights minimtl's GradNorm (alpha = 0) settles at, the mean of its last 40 steps", got, settled,
           atol=0.0, rtol=0.03)  # fmt: skip


@_keeps_global_rng
def exercise_5(gradients) -> None:
    """gradients: three 2-D task gradients (3, 2) whose PCGrad direction (generator seed 0) conflicts with one."""
    try:
        g = torch.as_tensor(gradients, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError("exercise 5: pass the three gradients as a (3, 2) tensor or nested list") from None
    if g.shape != (3, 2) or not torch.isfinite(g).all():
        raise AssertionError(
            f"exercise 5: pass three finite 2-D gradients, a (3, 2) tensor; got shape {tuple(g.shape)}"
        )
    if (g.norm(dim=1) == 0).any():
        raise AssertionError("exercise 5: a zero gradient conflicts with nothing; give three nonzero ones")
    theta = torch.zeros(2, requires_grad=True)
    pcgrad_backward({f"task {i}": g[i] @ theta for i in range(3)}, [theta], generator=torch.Generator().manual_seed(0))
    direction = theta.grad
    dots = g @ direction
    scale = g.norm(dim=1) * max(direction.norm().item(), 1e-12)
    assert (dots < -1e-5 * scale).any(), (
        f"exercise 5: PCGrad's direction {direction.tolist()} has dot products {dots.tolist()} with your gradients: "
        "none is negative, so it conflicts with none of them"
    )


@_keeps_global_rng
def exercise_6(answer: dict) -> None:
    """{"gradient": f(log_vars (K,), losses (K,)) -> dL/ds (K,) for L = sum exp(-s) L_i + s_i,
    "where": one of S_GRADIENT_SOURCES}."""
    _keys(6, answer, ("gradient", "where"))
    generator = torch.Generator().manual_seed(0)
    for k in (2, 3, 5):
        log_vars = 2 * torch.randn(k, generator=generator, dtype=torch.float64)
        losses = torch.exp(2 * torch.randn(k, generator=generator, dtype=torch.float64))
        uncertainty = MultiTaskLoss([f"t{i}" for i in range(k)], "uncertainty").double()
        with torch.no_grad():
            uncertainty.log_vars.copy_(log_vars)
        uncertainty({f"t{i}": loss for i, loss in enumerate(losses)}).backward()
        got = _call(6, answer["gradient"], log_vars.clone(), losses.clone())
        if (
            isinstance(got, Tensor)
            and got.shape == (k,)
            and torch.allclose(got.double(), -torch.exp(-log_vars) * losses)
        ):
            raise AssertionError("exercise 6: that is the gradient of the weighted losses alone; the + s_i term adds 1")
        _close(6, "the gradient on s", got, uncertainty.log_vars.grad)
    where = answer["where"]
    assert where in S_GRADIENT_SOURCES, f"exercise 6: where should be one of {sorted(S_GRADIENT_SOURCES)}"
    assert where == "separately", (
        f"exercise 6: not {S_GRADIENT_SOURCES[where]!r}: the trainer hands pcgrad_backward each task's loss times "
        "its weight as a number, and the + s_i term belongs to no task"
    )


@_keeps_global_rng
def exercise_7(arguments) -> None:
    """arguments: the command's arguments after `python -m minimtl`, as a list of strings."""
    if not isinstance(arguments, (list, tuple)) or not all(isinstance(a, str) for a in arguments):
        raise AssertionError('exercise 7: pass the arguments as a list of strings, e.g. ["experiment", "mtl", ...]')
    try:
        args = command_line().parse_args(list(arguments))
    except SystemExit:
        raise AssertionError(
            f"exercise 7: python -m minimtl does not accept {list(arguments)} (see its error above)"
        ) from None
    assert getattr(args, "name", None) == "mtl", 'exercise 7: the command is "experiment mtl"'
    assert set(args.rows or ()) == set(EXPERIMENT_ROWS), (
        f"exercise 7: the rows are {list(EXPERIMENT_ROWS)}, one argument each (as the shell passes a quoted name); "
        f"got {args.rows}"
    )
    assert args.seeds == [0, 1], f"exercise 7: the seeds are 0 and 1, got {args.seeds}"
    assert args.steps == 200 and not args.fast, f"exercise 7: 200 steps (and not --fast), got {args.steps}"
    out_dir, report = experiment_paths(args)
    default_out_dir, default_report = experiment_paths(command_line().parse_args(["experiment", "mtl"]))
    assert Path(report).resolve() != Path(default_report).resolve(), (
        f"exercise 7: the report would go to {default_report}, over the full experiment's report that section 10.6 "
        "reads; give it another --report"
    )
    assert Path(out_dir).resolve() != Path(default_out_dir).resolve(), (
        f"exercise 7: the runs would go to {default_out_dir}, where they replace the full experiment's runs of the "
        "same rows and seeds; give them another --out-dir"
    )


@functools.lru_cache(maxsize=1)
def section_10_7_labels() -> Tensor:
    """The labels of section 10.7: four 320 x 320 shapes, the default anchors, the RPN's matching. (4, R)."""
    size, images = 320, 4
    detector = RCNNConfig(num_classes=len(ShapesDataset.classes))
    feature_shapes = [(size // stride, size // stride) for stride in (4, 8, 16, 32, 64)]
    anchors = torch.cat(AnchorGenerator(detector.anchor_sizes, detector.aspect_ratios)((size, size), feature_shapes))
    matcher = Matcher(detector.rpn_fg_iou_thresh, detector.rpn_bg_iou_thresh, allow_low_quality_matches=True)
    labels = []
    data = ShapesDataset(images, size, seed=0)
    for k in range(images):
        matches = matcher(ops.box_iou(data[k][1]["boxes"], anchors))
        label = (matches >= 0).float()
        label[matches == Matcher.BETWEEN_THRESHOLDS] = -1.0
        labels.append(label)
    return torch.stack(labels)


@_keeps_global_rng
def exercise_8(answer: dict) -> None:
    """{"ce_zero", "fl_zero", "fl_prior": the negatives' share of the total over the labelled anchors (CE with
    logits 0; the focal loss with logits 0; the focal loss at RetinaNet's prior bias), "fall": the focal
    loss's total with logits 0 over its total at the prior}."""
    _keys(8, answer, ("ce_zero", "fl_zero", "fl_prior", "fall"))
    labels = section_10_7_labels()
    used, y = labels >= 0, labels.clamp(min=0)
    negatives = used & (y == 0)
    prior = -math.log((1 - 0.01) / 0.01)

    def totals(logit: float, loss: str) -> tuple[float, float]:
        logits = torch.full(labels.shape, logit)
        if loss == "ce":
            per_anchor = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            per_anchor = sigmoid_focal_loss(logits, y, alpha=0.25, gamma=2.0)
        total = per_anchor[used].sum().item()
        return total, per_anchor[negatives].sum().item() / total

    expected = {
        "ce_zero": totals(0.0, "ce")[1],
        "fl_zero": totals(0.0, "fl")[1],
        "fl_prior": totals(prior, "fl")[1],
        "fall": totals(0.0, "fl")[0] / totals(prior, "fl")[0],
    }
    described = {
        "ce_zero": "the negatives' share of the cross-entropy with every logit 0",
        "fl_zero": "the negatives' share of the focal loss with every logit 0",
        "fl_prior": f"the negatives' share of the focal loss with every logit at the prior bias {prior:.3f}",
        "fall": "the focal loss's total with logits 0 over its total at the prior",
    }
    ce_fall = totals(0.0, "ce")[0] / totals(prior, "ce")[0]
    for key, value in expected.items():
        got = _number(8, key, answer[key])
        if key == "fall" and math.isclose(got, ce_fall, rel_tol=1e-3):
            raise AssertionError("exercise 8: that is how far the cross-entropy falls; the question is the focal loss")
        tolerance = dict(rel_tol=1e-3) if key == "fall" else dict(abs_tol=1e-4)
        assert math.isclose(got, value, **tolerance), (
            f"exercise 8: {key}, {described[key]} (over the labelled anchors of section 10.7), is not {got:.6g}"
        )
