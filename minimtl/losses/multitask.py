"""Weighting the losses of several tasks into one number to minimise:  L = Σ_i α_i L_i.

Summing the task losses with α_i = 1 lets the task with the largest loss (or the largest gradients)
dominate the shared layers. Four ways to choose α:

"fixed": α_i = weights[task], 1 for a task the dict does not name. Hand-tuned, constant.

"uncertainty" (Kendall, Gal & Cipolla, "Multi-task learning using uncertainty to weigh losses for
  scene geometry and semantics", CVPR 2018, section 3: the multi-task likelihoods): each task has a learnable
  homoscedastic noise σ_i; with s_i = log σ_i² (learnt in log space: stable, and σ > 0 for free)
      L = Σ_i exp(-s_i) L_i + s_i                  α_i = exp(-s_i)
  The + s_i term stops every σ from growing without bound. For a constant L_i the optimum is
  exp(-s_i) = 1 / L_i: a task with a large loss gets a small weight. This is a common variant of the
  paper's terms: for regression 1/(2σ²) L + log σ = ½ (exp(-s) L + s), the same optimum in s with the
  weight 1/(2L) there; for classification (1/σ²) L + log σ = exp(-s) L + s/2, optimum exp(-s) = 1/(2L).
  All three give the tasks the same weight ratios; they differ by a common factor (chapter 10).

"dwa", Dynamic Weight Average (Liu, Johns & Davison, "End-to-end multi-task learning with
  attention", CVPR 2019, the Dynamic Weight Average section): a task whose loss falls slowly gets more weight,
      α_i(t) = K exp(r_i(t-1) / T) / Σ_j exp(r_j(t-1) / T),     r_i(t-1) = L̄_i(t-1) / L̄_i(t-2)
  with K tasks, temperature T (larger: weights closer to 1) and L̄_i(t) the mean loss of task i
  over period t. The paper's period is an epoch; here it is `dwa_period` training steps. α_i = 1
  during the first two periods (no ratio yet).

"gradnorm" (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: gradient normalization for adaptive
  loss balancing in deep multitask networks", ICML 2018, the GradNorm algorithm): weights w_i (start at 1,
  Σ w_i = K) chosen so that each task's gradient on the shared parameters W has a norm in proportion
  to how far that task still has to go. Each training step:
      g_i = ‖∇_W L_i‖,   G_i = w_i g_i,   Ḡ = mean_i G_i
      L̃_i = L_i / L_i(0),   r_i = L̃_i / mean_j L̃_j        (L_i(0): the losses of the first step)
      L_grad = Σ_i |G_i - Ḡ r_i^α|                      (Ḡ r_i^α treated as a constant)
      w_i ← w_i - lr ∂L_grad/∂w_i / ḡ = w_i - lr sign(G_i - Ḡ r_i^α) g_i / ḡ,   ḡ = mean_j g_j
  then clamped at a small minimum and renormalised to Σ w_i = K. Dividing by ḡ makes the step's
  size independent of the network's gradient scale (a backbone's g_i can be 0.01 or 100), so one
  lr fits every model; the paper gets the same independence by optimising w with Adam.
  The total returned is Σ w_i L_i with this step's w (before the update) and no gradient to w. g_i
  needs torch.autograd.grad(L_i, W, retain_graph=True): one extra backward pass through the top of
  the network per task, and the model's graph stays usable for the caller's backward.

All state that training changes (s_i; DWA's step count, running sum and period means; GradNorm's w,
L_i(0) and step count) lives in parameters or registered buffers: state_dict() / load_state_dict()
carry it, so a resumed run continues exactly. DWA and GradNorm update their state only in a training
forward (module.training and autograd enabled), and skip the update on a step with a non-finite
loss (GradNorm also on a step whose gradient norms are not finite); in eval mode or under
torch.no_grad() they only apply the current weights.

Shapes: K tasks; losses {task: scalar} -> a scalar total.
"""

import math

import torch
from torch import Tensor, nn

STRATEGIES = ("fixed", "uncertainty", "dwa", "gradnorm")


class MultiTaskLoss(nn.Module):
    MIN_GRADNORM_WEIGHT = 1e-3  # a weight at 0 would never see its gradient again

    def __init__(
        self,
        tasks: list[str],
        strategy: str = "fixed",
        weights: dict[str, float] | None = None,
        *,
        dwa_temperature: float = 2.0,
        dwa_period: int = 50,
        gradnorm_alpha: float = 1.5,
        gradnorm_lr: float = 0.025,
    ):
        super().__init__()
        tasks = list(tasks)
        _check_arguments(tasks, strategy, weights, dwa_temperature, dwa_period, gradnorm_alpha, gradnorm_lr)
        self.tasks = tasks
        self.strategy = strategy
        self.dwa_temperature = dwa_temperature
        self.dwa_period = dwa_period
        self.gradnorm_alpha = gradnorm_alpha
        self.gradnorm_lr = gradnorm_lr
        self._shared_parameters: list[Tensor] | None = None  # the model's, not our state: set each run
        k = len(tasks)
        if strategy == "fixed":
            weights = weights or {}
            self.register_buffer("fixed_weights", torch.tensor([float(weights.get(t, 1.0)) for t in tasks]))
        elif strategy == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(k))  # s_i = log σ_i²
        elif strategy == "dwa":
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))  # training steps seen
            self.register_buffer("period_sum", torch.zeros(k))  # Σ L_i over the current period
            self.register_buffer("period_means", torch.zeros(2, k))  # rows: L̄(t-2), L̄(t-1)
        else:
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))
            self.register_buffer("gradnorm_weights", torch.ones(k))  # w_i
            self.register_buffer("initial_losses", torch.zeros(k))  # L_i(0), set by the first step

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, strategy={self.strategy!r}"

    def set_shared_parameters(self, params) -> None:
        """GradNorm's W: the shared parameters whose gradient norms are balanced (the paper takes the
        last shared layer: cheap, and enough). Other strategies do not use them."""
        params = list(params)
        if not params:
            raise ValueError("MultiTaskLoss.set_shared_parameters: params is empty; pass the shared layer's parameters")
        for p in params:
            if not isinstance(p, Tensor):
                raise ValueError(f"MultiTaskLoss.set_shared_parameters: params must be tensors, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(
                    "MultiTaskLoss.set_shared_parameters: every parameter must require grad, got one of shape "
                    f"{tuple(p.shape)} that does not"
                )
        self._shared_parameters = params

    def weights(self) -> dict[str, float]:
        """The current α_i of each task (for GradNorm: after the last update, the weights the next step uses)."""
        with torch.no_grad():
            return dict(zip(self.tasks, self._current_weights().tolist(), strict=True))

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        """Σ_i α_i L_i (for "uncertainty": Σ_i exp(-s_i) L_i + s_i); updates DWA/GradNorm state in training."""
        stacked = self._stack(losses)  # (K,)
        if self.strategy == "uncertainty":
            s = self.log_vars  # (K,)
            return (torch.exp(-s) * stacked + s).sum()
        updating = self.training and torch.is_grad_enabled()
        if updating and self.strategy == "gradnorm" and self._shared_parameters is None:
            raise RuntimeError(
                "MultiTaskLoss: strategy 'gradnorm' needs the shared parameters W in training; call "
                "set_shared_parameters(shared_layer.parameters()) before the first training forward"
            )
        # This step's weights, copied: the update below changes the buffers in place, and autograd
        # keeps `weights` for the backward of the product.
        weights = self._current_weights().detach().clone()  # (K,)
        total = (weights * stacked).sum()
        if updating and bool(torch.isfinite(stacked).all()):
            if self.strategy == "dwa":
                self._dwa_update(stacked.detach())
            elif self.strategy == "gradnorm":
                self._gradnorm_update([losses[t] for t in self.tasks], stacked.detach())
        return total

    # --- the pieces ------------------------------------------------------------------------------

    def _stack(self, losses: dict[str, Tensor]) -> Tensor:
        """The losses in task order, after checking that they are exactly the tasks, each a scalar."""
        if not isinstance(losses, dict):
            raise TypeError(
                f"MultiTaskLoss: losses must be a dict {{task: scalar tensor}}, got {type(losses).__name__}"
            )
        missing = [t for t in self.tasks if t not in losses]
        unexpected = [name for name in losses if name not in self.tasks]
        if missing or unexpected:
            raise ValueError(
                f"MultiTaskLoss: losses must have exactly the tasks {self.tasks}; missing {missing}, "
                f"unexpected {unexpected}"
            )
        for t in self.tasks:
            loss = losses[t]
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"MultiTaskLoss: losses[{t!r}] must be a scalar (0-dim) tensor, got {got}")
        return torch.stack([losses[t] for t in self.tasks])

    def _current_weights(self) -> Tensor:
        """α (K,) as the next forward would apply it."""
        if self.strategy == "fixed":
            return self.fixed_weights
        if self.strategy == "uncertainty":
            return torch.exp(-self.log_vars)
        if self.strategy == "dwa":
            return self._dwa_weights()
        return self.gradnorm_weights

    def _dwa_weights(self) -> Tensor:
        """K softmax(r / T), r = L̄(t-1) / L̄(t-2); ones until two full periods have been seen."""
        if int(self.step) < 2 * self.dwa_period:
            return torch.ones_like(self.period_sum)
        previous, last = self.period_means  # L̄(t-2), L̄(t-1): (K,), (K,)
        ratio = last / previous.clamp(min=torch.finfo(previous.dtype).tiny)  # a loss of exactly 0 stays finite
        return len(self.tasks) * torch.softmax(ratio / self.dwa_temperature, dim=0)  # softmax: no overflow

    def _dwa_update(self, losses: Tensor) -> None:
        """Add this step's losses (K,) to the period; at a period's end, shift the period means."""
        self.period_sum += losses.to(self.period_sum.dtype)
        self.step += 1
        if int(self.step) % self.dwa_period == 0:
            self.period_means[0] = self.period_means[1]
            self.period_means[1] = self.period_sum / self.dwa_period
            self.period_sum.zero_()

    def _gradnorm_update(self, task_losses: list[Tensor], losses: Tensor) -> None:
        """One SGD step of L_grad on w (see the module docstring); task_losses still have their graphs."""
        losses = losses.to(self.gradnorm_weights.dtype)  # (K,), detached
        if int(self.step) == 0:
            self.initial_losses.copy_(losses)
        self.step += 1
        norms = torch.stack([self._shared_gradient_norm(loss) for loss in task_losses])  # g_i: (K,)
        if not bool(torch.isfinite(norms).all()):  # e.g. an fp16 overflow: w would turn NaN for good
            return
        w = self.gradnorm_weights  # (K,)
        weighted = w * norms  # G_i
        tiny = torch.finfo(losses.dtype).tiny
        relative = losses / self.initial_losses.clamp(min=tiny)  # L̃_i: how much of L_i(0) is left
        inverse_rate = relative / relative.mean().clamp(min=tiny)  # r_i
        target = weighted.mean() * inverse_rate**self.gradnorm_alpha  # constant
        grad_w = torch.sign(weighted - target) * norms  # ∂ Σ_j |w_j g_j - target_j| / ∂ w_i
        grad_w = grad_w / norms.mean().clamp(min=tiny)  # in units of the mean gradient norm
        w_new = (w - self.gradnorm_lr * grad_w).clamp(min=self.MIN_GRADNORM_WEIGHT)
        w.copy_(w_new * len(self.tasks) / w_new.sum())

    def _shared_gradient_norm(self, loss: Tensor) -> Tensor:
        """‖∇_W loss‖ over all shared parameters; 0 for a loss that does not reach W."""
        params = self._shared_parameters
        zero = torch.zeros((), dtype=self.gradnorm_weights.dtype, device=self.gradnorm_weights.device)
        if not loss.requires_grad:
            return zero
        # retain_graph: the caller still backpropagates through this graph. No create_graph: the
        # update of w is analytic, nothing differentiates through g_i.
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().to(zero.dtype).pow(2).sum() for g in grads if g is not None]
        return torch.sqrt(sum(squares, zero))


def _check_arguments(tasks, strategy, weights, dwa_temperature, dwa_period, gradnorm_alpha, gradnorm_lr) -> None:
    if not tasks:
        raise ValueError("MultiTaskLoss: tasks must name at least one task, got []")
    if not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"MultiTaskLoss: tasks must be strings, got {tasks}")
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise ValueError(f"MultiTaskLoss: tasks must be distinct, got {duplicates} more than once")
    if strategy not in STRATEGIES:
        raise ValueError(f"MultiTaskLoss: strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    if weights is not None:
        if strategy != "fixed":
            raise ValueError(
                f"MultiTaskLoss: weights only apply to strategy 'fixed'; strategy {strategy!r} learns them"
            )
        unknown = [name for name in weights if name not in tasks]
        if unknown:
            raise ValueError(f"MultiTaskLoss: weights name unknown tasks {unknown}; the tasks are {tasks}")
        bad = {name: w for name, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"MultiTaskLoss: weights must be finite and >= 0, got {bad}")
    if not dwa_temperature > 0:
        raise ValueError(f"MultiTaskLoss: dwa_temperature must be > 0, got {dwa_temperature}")
    if not (isinstance(dwa_period, int) and dwa_period >= 1):
        raise ValueError(f"MultiTaskLoss: dwa_period must be an int >= 1 (training steps), got {dwa_period!r}")
    if not gradnorm_alpha >= 0:
        raise ValueError(f"MultiTaskLoss: gradnorm_alpha must be >= 0, got {gradnorm_alpha}")
    if not gradnorm_lr > 0:
        raise ValueError(f"MultiTaskLoss: gradnorm_lr must be > 0, got {gradnorm_lr}")
