"""MultiTaskLoss (minimtl/losses/multitask.py) and PCGrad (minimtl/losses/pcgrad.py): each strategy
on a problem whose answer is known, the state_dict round trip, and the errors."""

import copy
import math

import pytest
import torch
from torch import nn

from minimtl.losses import MultiTaskLoss, pcgrad_backward


def scalars(**values) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(float(v)) for name, v in values.items()}


# --- fixed -----------------------------------------------------------------------------------------


def test_fixed_weights():
    losses = {"det": torch.tensor(2.0, requires_grad=True), "seg": torch.tensor(3.0, requires_grad=True)}
    plain = MultiTaskLoss(["det", "seg"])
    assert plain(losses).item() == 5.0 and plain.weights() == {"det": 1.0, "seg": 1.0}
    weighted = MultiTaskLoss(["det", "seg"], weights={"det": 0.5})  # a task not named keeps weight 1
    total = weighted(losses)
    assert total.item() == 0.5 * 2 + 3 and weighted.weights() == {"det": 0.5, "seg": 1.0}
    total.backward()
    assert losses["det"].grad.item() == 0.5 and losses["seg"].grad.item() == 1.0
    assert list(weighted.parameters()) == []  # nothing to learn


# --- uncertainty -----------------------------------------------------------------------------------


def test_uncertainty_formula():
    mtl = MultiTaskLoss(["a", "b"], "uncertainty")
    assert mtl(scalars(a=2, b=0.5)).item() == 2.5  # s = 0: exp(0) L + 0
    with torch.no_grad():
        mtl.log_vars.copy_(torch.tensor([math.log(2.0), -1.0]))
    expected = 0.5 * 2 + math.log(2.0) + math.e * 0.5 - 1.0
    assert mtl(scalars(a=2, b=0.5)).item() == pytest.approx(expected)
    assert mtl.weights() == pytest.approx({"a": 0.5, "b": math.e})


def test_uncertainty_learns_inverse_losses():
    """For a constant L_i, exp(-s) L_i + s is smallest at exp(-s_i) = 1 / L_i."""
    mtl = MultiTaskLoss(["a", "b"], "uncertainty")
    optimizer = torch.optim.Adam(mtl.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        mtl(scalars(a=2.0, b=0.5)).backward()
        optimizer.step()
    weights = mtl.weights()
    assert weights["a"] == pytest.approx(0.5, rel=0.03) and weights["b"] == pytest.approx(2.0, rel=0.03)


# --- DWA -------------------------------------------------------------------------------------------


def test_dwa_weights_by_hand():
    mtl = MultiTaskLoss(["a", "b"], "dwa", dwa_period=2, dwa_temperature=2.0)
    # Period 0: means (4, 2); period 1: means (2, 2). The weights are 1 throughout both.
    for a, b in [(4, 1), (4, 3), (2, 2), (2, 2)]:
        assert mtl.weights() == {"a": 1.0, "b": 1.0}
        assert mtl(scalars(a=a, b=b)).item() == a + b
    # Period 2: r = (2/4, 2/2), α = 2 exp(r/T) / Σ exp(r/T).
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    expected = {"a": 2 * ea / (ea + eb), "b": 2 * eb / (ea + eb)}
    assert mtl.weights() == pytest.approx(expected)
    assert mtl(scalars(a=1, b=1)).item() == pytest.approx(2.0)  # Σ α = K
    assert mtl(scalars(a=3, b=1)).item() == pytest.approx(3 * expected["a"] + expected["b"])
    # Period 3 uses period 2's means (1 + 3)/2 = 2 and (1 + 1)/2 = 1 against period 1's (2, 2).
    ea, eb = math.exp(1.0 / 2), math.exp(0.5 / 2)
    assert mtl.weights() == pytest.approx({"a": 2 * ea / (ea + eb), "b": 2 * eb / (ea + eb)})


def test_dwa_does_not_update_in_eval_or_no_grad():
    mtl = MultiTaskLoss(["a", "b"], "dwa", dwa_period=1)
    mtl(scalars(a=1, b=1))
    before = copy.deepcopy(mtl.state_dict())
    with torch.no_grad():
        mtl(scalars(a=5, b=1))
    mtl.eval()
    mtl(scalars(a=5, b=1))
    for name, value in mtl.state_dict().items():
        assert torch.equal(value, before[name]), name


# --- GradNorm --------------------------------------------------------------------------------------


def test_gradnorm_one_step_by_hand():
    """W a scalar p = 1; L_a = 3p, L_b = p, so g = (3, 1), ḡ = 2. First step: L̃ = 1, r = 1, Ḡ = 2,
    target (2, 2); sign(G - target) = (+1, -1): w = (1 - 0.025·3/2, 1 + 0.025·1/2), renormalised to sum 2."""
    p = nn.Parameter(torch.tensor(1.0))
    mtl = MultiTaskLoss(["a", "b"], "gradnorm")
    mtl.set_shared_parameters([p])
    total = mtl({"a": 3 * p, "b": p})
    assert total.item() == 4.0  # this step's weights (1, 1), before the update
    w = torch.tensor([1 - 0.025 * 1.5, 1 + 0.025 * 0.5])
    assert list(mtl.weights().values()) == pytest.approx((w * 2 / w.sum()).tolist())
    assert mtl.initial_losses.tolist() == [3.0, 1.0]
    total.backward()  # the graph is still there, and w gets no gradient
    assert p.grad.item() == 4.0 and not mtl.gradnorm_weights.requires_grad


def test_gradnorm_balances_gradient_norms():
    """A shared layer feeding two heads whose losses differ 100× in scale: at the start the weighted
    gradient norms on the shared layer differ ~80×; GradNorm brings them within a small factor."""
    torch.manual_seed(0)
    shared, head_a, head_b = nn.Linear(8, 16), nn.Linear(16, 1), nn.Linear(16, 1)
    x, y_a, y_b = torch.randn(64, 8), torch.randn(64, 1), torch.randn(64, 1)
    mtl = MultiTaskLoss(["a", "b"], "gradnorm", gradnorm_lr=0.01)  # the step on w_i is lr · g_i / ḡ
    mtl.set_shared_parameters(shared.parameters())
    optimizer = torch.optim.SGD([*shared.parameters(), *head_a.parameters(), *head_b.parameters()], lr=1e-3)

    def gradient_norm(loss):
        return torch.cat(
            [g.flatten() for g in torch.autograd.grad(loss, shared.parameters(), retain_graph=True)]
        ).norm()

    ratios = []  # w_b g_b / w_a g_a at each step
    for _ in range(150):
        features = torch.relu(shared(x))
        loss_a = 0.05 * ((head_a(features) - y_a) ** 2).mean()
        loss_b = 5.0 * ((head_b(features) - y_b) ** 2).mean()
        w = mtl.weights()
        ratios.append((w["b"] * gradient_norm(loss_b) / (w["a"] * gradient_norm(loss_a))).item())
        total = mtl({"a": loss_a, "b": loss_b})
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert ratios[0] > 30
    assert all(1 / 3 < r < 3 for r in ratios[-30:]), ratios[-30:]
    assert mtl.weights()["b"] < 0.1 < 1.9 < mtl.weights()["a"]  # the larger-scale task gets the smaller weight


def test_gradnorm_needs_shared_parameters_in_training_only():
    mtl = MultiTaskLoss(["a", "b"], "gradnorm")
    losses = {"a": torch.tensor(1.0, requires_grad=True), "b": torch.tensor(2.0, requires_grad=True)}
    with pytest.raises(RuntimeError, match=r"call set_shared_parameters"):
        mtl(losses)
    with torch.no_grad():
        assert mtl(losses).item() == 3.0
    mtl.eval()
    assert mtl(losses).item() == 3.0
    assert int(mtl.step) == 0 and mtl.weights() == {"a": 1.0, "b": 1.0}


# --- state_dict round trip -------------------------------------------------------------------------


def loss_sequence(p: nn.Parameter, steps: int, seed: int):
    """Losses of three tasks that all depend on the shared parameter p, varying from step to step."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(3, 4, generator=g) + 0.1  # (3 tasks, 4)
        yield {name: ((p * x[i]).sum() - i) ** 2 + 0.1 for i, name in enumerate(["a", "b", "c"])}


@pytest.mark.parametrize("strategy", ["fixed", "uncertainty", "dwa", "gradnorm"])
def test_state_dict_round_trip_resumes_exactly(strategy):
    def make():
        kwargs = {"weights": {"a": 2.0, "c": 0.5}} if strategy == "fixed" else {"dwa_period": 3}
        mtl = MultiTaskLoss(["a", "b", "c"], strategy, **kwargs)
        mtl.set_shared_parameters([p])
        return mtl

    p = nn.Parameter(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    original = make()
    optimizer = torch.optim.SGD(original.parameters(), lr=0.1) if strategy == "uncertainty" else None
    for losses in loss_sequence(p, steps=7, seed=0):  # 7: DWA stops in the middle of its third period
        total = original(losses)
        if optimizer is not None:
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    resumed = make()
    resumed.load_state_dict(original.state_dict())
    assert resumed.weights() == original.weights()
    for losses in loss_sequence(p, steps=6, seed=1):
        assert torch.equal(resumed(losses), original(losses))
        assert resumed.weights() == original.weights()
    if strategy in ("dwa", "gradnorm"):
        assert int(resumed.step) == 13 and original.weights() != {"a": 1.0, "b": 1.0, "c": 1.0}


# --- errors ----------------------------------------------------------------------------------------


def test_constructor_errors():
    with pytest.raises(
        ValueError, match=r"strategy must be one of 'fixed', 'uncertainty', 'dwa', 'gradnorm', got 'avg'"
    ):
        MultiTaskLoss(["a"], "avg")
    with pytest.raises(ValueError, match=r"tasks must name at least one task"):
        MultiTaskLoss([])
    with pytest.raises(ValueError, match=r"tasks must be distinct, got \['a'\] more than once"):
        MultiTaskLoss(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"weights name unknown tasks \['segm'\]; the tasks are \['det', 'seg'\]"):
        MultiTaskLoss(["det", "seg"], weights={"segm": 1.0})
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0, got \{'det': -1.0\}"):
        MultiTaskLoss(["det", "seg"], weights={"det": -1.0})
    with pytest.raises(ValueError, match=r"weights only apply to strategy 'fixed'"):
        MultiTaskLoss(["det"], "uncertainty", weights={"det": 1.0})
    with pytest.raises(ValueError, match=r"dwa_period must be an int >= 1 \(training steps\), got 0"):
        MultiTaskLoss(["det"], "dwa", dwa_period=0)
    with pytest.raises(ValueError, match=r"dwa_temperature must be > 0, got 0"):
        MultiTaskLoss(["det"], "dwa", dwa_temperature=0)
    with pytest.raises(ValueError, match=r"gradnorm_lr must be > 0, got -0.1"):
        MultiTaskLoss(["det"], "gradnorm", gradnorm_lr=-0.1)


def test_forward_and_setter_errors():
    mtl = MultiTaskLoss(["det", "seg"])
    with pytest.raises(
        ValueError, match=r"exactly the tasks \['det', 'seg'\]; missing \['seg'\], unexpected \['sem'\]"
    ):
        mtl(scalars(det=1, sem=2))
    with pytest.raises(ValueError, match=r"losses\['seg'\] must be a scalar \(0-dim\) tensor, got shape \(2,\)"):
        mtl({"det": torch.tensor(1.0), "seg": torch.ones(2)})
    with pytest.raises(ValueError, match=r"losses\['seg'\] must be a scalar \(0-dim\) tensor, got float"):
        mtl({"det": torch.tensor(1.0), "seg": 2.0})
    with pytest.raises(ValueError, match=r"set_shared_parameters: params is empty"):
        mtl.set_shared_parameters([])
    with pytest.raises(ValueError, match=r"must require grad, got one of shape \(3,\)"):
        mtl.set_shared_parameters([torch.zeros(3)])


# --- PCGrad ----------------------------------------------------------------------------------------


def linear_losses(p: torch.Tensor, **directions) -> dict[str, torch.Tensor]:
    """L_i = p · d_i: the gradient of task i is exactly d_i."""
    return {name: p @ torch.tensor(d) for name, d in directions.items()}


def test_pcgrad_conflicting_pair_by_hand():
    p = nn.Parameter(torch.zeros(2))
    stats = pcgrad_backward(linear_losses(p, a=[1.0, 0.0], b=[-1.0, 1.0]), [p])
    # a · b = -1 < 0. a' = a - (-1 / ‖b‖² = 2) b = (0.5, 0.5); b' = b - (-1 / ‖a‖² = 1) a = (0, 1).
    torch.testing.assert_close(p.grad, torch.tensor([0.5, 1.5]))
    assert stats["conflict_fraction"] == 1.0
    assert stats["cosine/a/b"] == pytest.approx(-1 / math.sqrt(2))


def test_pcgrad_leaves_agreeing_gradients_alone_and_accumulates():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([10.0, 10.0])  # like backward(), pcgrad_backward adds to .grad
    stats = pcgrad_backward(linear_losses(p, a=[1.0, 0.0], b=[1.0, 1.0]), [p])
    torch.testing.assert_close(p.grad, torch.tensor([12.0, 11.0]))
    assert stats["conflict_fraction"] == 0.0


def test_pcgrad_result_never_conflicts_with_either_task():
    g = torch.Generator().manual_seed(8)
    for _ in range(50):
        p = nn.Parameter(torch.zeros(5))
        a, b = torch.randn(2, 5, generator=g).tolist()
        pcgrad_backward(linear_losses(p, a=a, b=b), [p], generator=g)
        assert p.grad @ torch.tensor(a) >= -1e-6 and p.grad @ torch.tensor(b) >= -1e-6


def test_pcgrad_parameter_one_task_does_not_touch():
    shared, only_b, unused = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(1))
    losses = {"a": shared @ torch.tensor([1.0, 0.0]), "b": shared @ torch.tensor([-1.0, 1.0]) + only_b.sum()}
    pcgrad_backward(losses, [shared, unused, only_b])
    assert unused.grad is None  # no task reaches it: left alone, as backward() would
    # Flattened: g_a = (1, 0, 0, 0, 0), g_b = (-1, 1, 1, 1, 1); a · b = -1, ‖g_b‖² = 5, ‖g_a‖² = 1.
    a_projected = torch.tensor([1.0, 0, 0, 0, 0]) + torch.tensor([-1.0, 1, 1, 1, 1]) / 5
    b_projected = torch.tensor([-1.0, 1, 1, 1, 1]) + torch.tensor([1.0, 0, 0, 0, 0])
    total = a_projected + b_projected
    torch.testing.assert_close(shared.grad, total[:2])
    torch.testing.assert_close(only_b.grad, total[2:])


def test_pcgrad_three_tasks_shared_graph_and_generator():
    def run(seed):
        torch.manual_seed(0)
        layer = nn.Linear(4, 4)
        features = layer(torch.randn(8, 4))  # (8, 4): one graph shared by the three losses
        directions = torch.randn(3, 4)  # (3 tasks, 4)
        losses = {name: (features @ directions[i]).sum() for i, name in enumerate("abc")}
        stats = pcgrad_backward(losses, list(layer.parameters()), generator=torch.Generator().manual_seed(seed))
        return layer.weight.grad.clone(), stats

    grad1, stats1 = run(0)
    grad2, stats2 = run(0)
    assert torch.equal(grad1, grad2) and stats1 == stats2  # the generator fixes the order
    assert set(stats1) == {"cosine/a/b", "cosine/a/c", "cosine/b/c", "conflict_fraction"}
    # b conflicts with both a and c, so the order of b's two projections matters.
    assert stats1["conflict_fraction"] == pytest.approx(2 / 3)
    assert any(not torch.equal(run(seed)[0], grad1) for seed in range(1, 10))


def test_pcgrad_errors():
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"pcgrad_backward: task_losses is empty"):
        pcgrad_backward({}, [p])
    with pytest.raises(ValueError, match=r"pcgrad_backward: parameters is empty"):
        pcgrad_backward({"a": p.sum()}, [])
    with pytest.raises(ValueError, match=r"pcgrad_backward: task_losses\['a'\] must be a scalar"):
        pcgrad_backward({"a": p * 2}, [p])
    with pytest.raises(
        ValueError, match=r"pcgrad_backward: every parameter must require grad, got one of shape \(3,\)"
    ):
        pcgrad_backward({"a": p.sum()}, [p, torch.zeros(3)])
