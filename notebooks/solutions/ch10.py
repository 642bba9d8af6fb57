"""Worked solutions to the exercises of chapter 10, multi-task losses (notebooks/10_multitask_loss.ipynb).

`exercise_K` is the answer to exercise K in the form `exercises.ch10.exercise_K` takes; the reasoning
is in its docstring and comments. `MISTAKES[K]` is a plausible wrong answer, which the check rejects.
Try the exercise before you read on.
"""

import math

import torch
from torch import Tensor

# --- 1. Fixed weights 1 / L_i(0) -------------------------------------------------------------------------


def exercise_1(first_losses: dict[str, float]) -> dict[str, float]:
    """alpha_i = 1 / L_i(0): every weighted first loss is 1, which is where "uncertainty" is at its optimum
    for the first losses (s_i = log L_i, alpha_i = exp(-s_i) = 1 / L_i).

    Use: `train_toy("fixed", weights=exercise_1(toy["fixed"][1][0]))`. The two start from the same balance,
    then part: the fixed weights stay at the first losses' scales (0.013, 2.1 and 5.9), while uncertainty's
    weights start at 1 and move towards 1 / L_i, which itself moves as the losses fall; they lag far behind
    it (section 10.4). In our run, L / L(0) at the end (big, medium, small): fixed 1 / L(0) 0.022, 0.0019,
    0.0061; uncertainty 0.013, 0.0006, 0.023; equal weights 0.009, 0.046, 0.029. The fixed 1 / L(0)
    serves the small task best of the three and the big task worst: it gives the small tasks their large
    weights from the first step, where uncertainty needs most of the run to reach them.
    """
    return {task: 1.0 / loss for task, loss in first_losses.items()}


def _not_inverted(first_losses):
    """Wrong: weights proportional to the losses make the big task bigger still."""
    return dict(first_losses)


# --- 2. SGD, and what Adam hides --------------------------------------------------------------------------


def exercise_2(grad: Tensor, lr: float) -> Tensor:
    """Adam's first step: m = (1 - b1) g and v = (1 - b2) g^2, bias-corrected to m^ = g and v^ = g^2, so

        step = -lr * m^ / (sqrt(v^) + eps) = -lr * g / (|g| + eps)  ~  -lr * sign(g).

    Its size does not depend on the size of the gradient: multiply a task's loss by 100 and its head's
    parameters move exactly as far (later steps too, nearly: Adam divides by the running RMS of each
    parameter's own gradient). So with Adam a task's weight hardly matters to the parameters only that task
    uses; it acts only where the tasks' gradients are added, in the shared layers (section 10.1).

    SGD has no such normalisation: the big task's loss (about 160 times the medium's at the start) sets both
    the step and the largest stable learning rate, about 2 / the largest curvature, which is the big task's.
    In our run, fixed equal weights train at 0.01, 0.03 and 0.1 and diverge at 0.3 (the total shoots up to
    about 1e5); at 0.1 the big task ends at L/L(0) = 3e-5, the medium and small ones at 0.02 and 0.01.
    "Uncertainty" under SGD is no cure: its s_i take SGD steps too, lr (1 - exp(-s_i) L_i), about 7.6 for the
    big task on the first step at lr 0.1, and the run diverges at 0.1; at 0.01 it serves the small task better
    than fixed weights (0.011 against 0.041) and the big one far worse (0.79 against 0.007). Under SGD one
    learning rate cannot suit both the network and the s_i; Adam's normalisation lets one rate fit both.
    """
    return -lr * grad / (grad.abs() + 1e-8)


def _sgd_step(grad, lr):
    """Wrong: the SGD step; its size grows with the loss's scale, Adam's does not."""
    return -lr * grad


# --- 3. DWA's temperature ---------------------------------------------------------------------------------


def exercise_3(losses: Tensor, period: int, temperature: float) -> Tensor:
    """DWA's weights after the per-step losses (steps, K): K softmax(r / T), r = L(t-1) / L(t-2), with L(t)
    the mean over the last two *complete* periods; ones until two periods are complete.

    The temperature: T = 0.1 turns the softmax into an argmax, K on the task whose loss fell least in the
    last period, nearly 0 on the others; the weights jump from task to task at each period (on the toy with
    periods of 10 steps, in our run, each weight swings between less than 0.02 and 2.6 to 3.0, and the big and
    medium tasks end worse than with T = 2, the small one no better). T = 10 keeps them within 3 % of 1: DWA is
    switched off. With short periods the period means are noisy, and so is r: a ratio of 1.05 against 0.95
    may be noise, and at a small T that noise decides the weights. A large T lets through only lasting
    differences in the rates.
    """
    steps, k = losses.shape
    complete = steps // period
    if complete < 2:
        return torch.ones(k)
    means = losses[: complete * period].reshape(complete, period, k).mean(dim=1)  # (periods, K)
    ratio = means[-1] / means[-2]  # r_i(t - 1)
    return k * torch.softmax(ratio / temperature, dim=0)


def _inverted_ratio(losses, period, temperature):
    """Wrong: L(t-2) / L(t-1) gives the weight to the task whose loss falls fastest, the opposite of DWA."""
    steps, k = losses.shape
    complete = steps // period
    if complete < 2:
        return torch.ones(k)
    means = losses[: complete * period].reshape(complete, period, k).mean(dim=1)
    return k * torch.softmax(means[-2] / means[-1] / temperature, dim=0)


# --- 4. GradNorm with alpha = 0 ------------------------------------------------------------------------------


def exercise_4(norms: Tensor) -> Tensor:
    """With alpha = 0 every r_i^alpha is 1: the target of every task is the mean weighted norm G-bar. The
    update stops when w_i g_i are all equal, w_i proportional to 1 / g_i; rescaled to sum to K:

        w_i = K (1 / g_i) / sum_j (1 / g_j).

    So alpha = 0 balances the *gradients*: the target is that every task pushes the shared layer equally
    hard, whatever its loss's scale or progress (the losses do not enter at all).

    On the toy it does not get there. Log w_i g_i each step (g_i: the norm of `torch.autograd.grad` of task
    i's loss on `net.shared`): in our run, over the last 50 of 300 steps they average 0.12, 0.023 and 0.0048,
    still 25 times apart, as at the start (8.1, 0.57, 0.34). The weights are 0.037, 1.49 and 1.47. Two reasons,
    both in the update w_i <- w_i - lr sign(...) g_i / g-bar: the big task's gradient dominates the mean, so its
    step, lr g_big / g-bar = 0.07, is larger than its weight, which chatters between the floor (1e-3) and 0.07
    (section 10.4); and the other two tasks' steps, lr g_i / g-bar with g_i / g-bar below 0.02, hardly move
    them, so they stay where the rescaling to K left them, nearly equal. The equilibrium exists (the check
    runs GradNorm where it is reached), but a sign-step of fixed size cannot settle on it when the gradient
    norms differ by orders of magnitude.
    """
    inverse = 1.0 / norms
    return len(norms) * inverse / inverse.sum()


def _proportional_to_the_norms(norms):
    """Wrong: w proportional to g makes the weighted norms g_i^2 / ..., as unequal as possible."""
    return len(norms) * norms / norms.sum()


# --- 5. Three tasks can still conflict ----------------------------------------------------------------------
#
# g1 = (1, 0), g2 = (0, 1), g3 = (-1, -1): g3 conflicts with both others. PCGrad (generator seed 0) returns
# (0.5, 0.5), whose dot product with g3 is -1: a step along it increases task 3's loss. It cannot be avoided
# here: g1 + g2 + g3 = 0, so for any direction d, d.g1 + d.g2 + d.g3 = 0, and unless all three dot products
# are 0, one is negative. Whenever 0 is a positive combination of the gradients, *every* step conflicts
# with some task; for two tasks that needs g1 = -c g2 exactly, for three it is a whole region of gradients.
exercise_5 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])

_NO_CONFLICT = torch.tensor([[2.0, 0.3], [-0.8, 0.5], [0.5, 1.0]])  # wrong: section 10.3's pair and a friendly third


# --- 6. PCGrad and uncertainty -------------------------------------------------------------------------------


def s_gradient(log_vars: Tensor, losses: Tensor) -> Tensor:
    """dL/ds_i for L = sum_i exp(-s_i) L_i + s_i: 1 - exp(-s_i) L_i (0 at s_i = log L_i, the optimum)."""
    return 1 - torch.exp(-log_vars) * losses


# Why the trainer refuses the combination: pcgrad_backward replaces total.backward() by one gradient per task
# on the parameters it is given, then projects and sums them. The trainer gives it each task's loss times its
# weight *as a number* (`model.loss_weights()`), so no gradient reaches s_i at all; and s_i's gradient has the
# "+1" of the s_i term, which belongs to no task's loss and must not be projected. It would have to be
# computed apart: torch.autograd.grad(model.total_loss(losses), [log_vars]) (or the formula above), outside
# the projection, and written into log_vars.grad next to the projected network gradients.
exercise_6 = {"gradient": s_gradient, "where": "separately"}


# --- 7. A smaller experiment ----------------------------------------------------------------------------------
#
# The command as written in earlier versions of the chapter would have written its report to
# docs/mtl_experiment.md, over the full report (and its hand-written conclusion) that section 10.6 reads,
# and its runs to runs/mtl/<row>/seed<k>, where they replace the full experiment's runs of the same rows and
# seeds (a run is reused only when its settings match). Hence --report and --out-dir of its own. With 2
# seeds and 200 steps the standard errors are larger and the metrics lower; what to compare is the verdict,
# not the numbers: the full report finds no clear difference between joint and separate training.
exercise_7 = [
    "experiment",
    "mtl",
    "--rows",
    "semantic only",
    "joint, fixed equal weights",
    "--seeds",
    "0",
    "1",
    "--steps",
    "200",
    "--report",
    "runs/mtl_200_steps/report.md",
    "--out-dir",
    "runs/mtl_200_steps",
]

_OVERWRITES_THE_REPORT = [  # wrong: the defaults write over docs/mtl_experiment.md and the full runs
    "experiment",
    "mtl",
    "--rows",
    "semantic only",
    "joint, fixed equal weights",
    "--seeds",
    "0",
    "1",
    "--steps",
    "200",
]


# --- 8. The focal loss on an untrained head -------------------------------------------------------------------
#
# Section 10.7's labels: 27 positive and 100 601 negative labelled anchors over the four images.
#
# Every logit 0, p = 0.5: every anchor costs log 2 under CE, so the shares are the counts: the negatives
# carry 100 601 / 100 628 = 99.97 %. Under the focal loss every p_t is 0.5 and every term is scaled by
# (1 - 0.5)^2 = 1/4: the same factor for all, so the focal loss cannot tell easy from hard yet, there are no
# easy examples. Only alpha_t changes the shares, 0.75 for negatives against 0.25: 99.99 %.
#
# At the prior bias, b = -log(99), p = 0.01 everywhere: a negative costs 0.75 * 0.01^2 * -log(0.99) = 7.5e-7,
# a positive 0.25 * 0.99^2 * -log(0.01) = 1.128. Totals: 100 601 * 7.5e-7 = 0.076 for the negatives and
# 27 * 1.128 = 30.5 for the positives: the negatives now carry 0.25 %. The focal loss's total falls from
# 13 076 to 30.5, by a factor of about 428 (the cross-entropy's by 61): the first steps are no longer spent
# pushing 100 000 anchors from 0.5 to "background", the instability RetinaNet's prior removes.
_POSITIVES, _NEGATIVES = 27, 100_601
_P = 0.01
_FL_ZERO_NEG, _FL_ZERO_POS = 0.75 * 0.25 * math.log(2), 0.25 * 0.25 * math.log(2)
_FL_PRIOR_NEG = 0.75 * _P**2 * -math.log(1 - _P)
_FL_PRIOR_POS = 0.25 * (1 - _P) ** 2 * -math.log(_P)
_FL_ZERO = _NEGATIVES * _FL_ZERO_NEG + _POSITIVES * _FL_ZERO_POS
_FL_PRIOR = _NEGATIVES * _FL_PRIOR_NEG + _POSITIVES * _FL_PRIOR_POS
exercise_8 = {
    "ce_zero": _NEGATIVES / (_NEGATIVES + _POSITIVES),
    "fl_zero": _NEGATIVES * _FL_ZERO_NEG / _FL_ZERO,
    "fl_prior": _NEGATIVES * _FL_PRIOR_NEG / _FL_PRIOR,
    "fall": _FL_ZERO / _FL_PRIOR,
}

_CE_FALL = (_NEGATIVES + _POSITIVES) * math.log(2) / (_NEGATIVES * -math.log(1 - _P) + _POSITIVES * -math.log(_P))


MISTAKES = {
    1: _not_inverted,
    2: _sgd_step,
    3: _inverted_ratio,
    4: _proportional_to_the_norms,
    5: _NO_CONFLICT,
    6: {"gradient": lambda log_vars, losses: -torch.exp(-log_vars) * losses, "where": "separately"},
    7: _OVERWRITES_THE_REPORT,
    8: {**exercise_8, "fall": _CE_FALL},  # the cross-entropy's fall, not the focal loss's
}
