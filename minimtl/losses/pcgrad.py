"""PCGrad: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient
surgery for multi-task learning", NeurIPS 2020, Algorithm 1).

Two tasks conflict on the shared parameters when their gradients point against each other
(g_i · g_j < 0): a step that helps one hurts the other, and the sum may favour whichever gradient is
larger. PCGrad removes from each task's gradient its component along every gradient it conflicts with:
    for each task i, for each other task j in a random order:
        if g_i^PC · g_j < 0:   g_i^PC ← g_i^PC - (g_i^PC · g_j / ‖g_j‖²) g_j
    update direction: Σ_i g_i^PC
g_j is always the ORIGINAL gradient of task j; only g_i^PC changes. For two tasks the result never
conflicts with either original gradient: in the conflicting case (g_1' + g_2') · g_1 = ‖g_1‖² -
(g_1 · g_2)² / ‖g_2‖² ≥ 0 by Cauchy-Schwarz (chapter 10 writes it out; the paper's Theorem 1 is a
convergence result, not this); for more tasks it usually holds, not always.

Shapes: T tasks, P = the total number of elements of `parameters`; gradients are handled as flat
vectors (T, P) and written back into each parameter's .grad.
"""

import torch
from torch import Tensor, nn


def pcgrad_backward(
    task_losses: dict[str, Tensor], parameters: list[nn.Parameter], generator: torch.Generator | None = None
) -> dict[str, float]:
    """Accumulate Σ_i g_i^PC into each parameter's .grad, in place of sum(losses).backward().

    A parameter that a task's loss does not reach gets a zero gradient from that task; one that no
    task reaches keeps its .grad as it was (None stays None, as with backward(): an optimiser then
    skips it instead of applying momentum or weight decay to a zero gradient). `generator`
    (a CPU generator) fixes the random order of the projections. Returns numbers for logging:
    "conflict_fraction" (the fraction of task pairs with g_i · g_j < 0) and "cosine/<a>/<b>" for each
    pair of tasks (the cosine of the original gradients; 0 where one is 0).
    """
    parameters = list(parameters)
    names = list(task_losses)
    if not names:
        raise ValueError("pcgrad_backward: task_losses is empty; pass {task: scalar loss}")
    if not parameters:
        raise ValueError("pcgrad_backward: parameters is empty; pass the parameters the tasks share")
    for name in names:
        if not isinstance(task_losses[name], Tensor) or task_losses[name].dim() != 0:
            raise ValueError(f"pcgrad_backward: task_losses[{name!r}] must be a scalar (0-dim) tensor")
    for p in parameters:
        if not p.requires_grad:
            raise ValueError(f"pcgrad_backward: every parameter must require grad, got one of shape {tuple(p.shape)}")

    # Keep the graph for every task but the last: the tasks' graphs usually share the backbone.
    reached = [False] * len(parameters)  # does any task's loss reach parameter k?
    grads = torch.stack(
        [_flat_gradient(task_losses[n], parameters, i < len(names) - 1, reached) for i, n in enumerate(names)]
    )  # (T, P)
    projected = grads.clone()  # (T, P)
    for i in range(len(names)):
        for j in torch.randperm(len(names), generator=generator).tolist():
            if j == i:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:  # implies g_j != 0, so the division is safe
                projected[i] -= dot / (grads[j] @ grads[j]) * grads[j]
    _accumulate_grad(parameters, projected.sum(dim=0), reached)
    return _statistics(names, grads)


def _flat_gradient(loss: Tensor, parameters: list[Tensor], retain_graph: bool, reached: list[bool]) -> Tensor:
    """∇ loss over all parameters as one vector (P,); zeros where the loss does not reach a parameter
    (and `reached[k]` set where it does)."""
    if not loss.requires_grad:
        grads = [None] * len(parameters)
    else:
        grads = torch.autograd.grad(loss, parameters, retain_graph=retain_graph, allow_unused=True)
    for k, g in enumerate(grads):
        reached[k] = reached[k] or g is not None
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, parameters, strict=True)]
    )


def _accumulate_grad(parameters: list[Tensor], flat: Tensor, reached: list[bool]) -> None:
    """Add the slices of the flat vector (P,) to each reached parameter's .grad, as backward() would."""
    offset = 0
    for p, was_reached in zip(parameters, reached, strict=True):
        g = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        if not was_reached:
            continue
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad += g


def _statistics(names: list[str], grads: Tensor) -> dict[str, float]:
    """Fraction of conflicting pairs and the cosine of each pair's original gradients (T, P)."""
    stats: dict[str, float] = {}
    norms = grads.norm(dim=1)  # (T,)
    conflicts, pairs = 0, 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            dot = grads[i] @ grads[j]
            denominator = norms[i] * norms[j]
            stats[f"cosine/{names[i]}/{names[j]}"] = float(dot / denominator) if denominator > 0 else 0.0
            conflicts += int(dot < 0)
            pairs += 1
    stats["conflict_fraction"] = conflicts / pairs if pairs else 0.0
    return stats
