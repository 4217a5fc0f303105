"""Learning-rate schedules for large-minibatch SGD (Goyal et al. 2017).

Reading order
-------------
1. ``linear_scaling_lr``: the lecture's rule ``eta = 0.1 * kn / 256``: k
   workers with n images each make a minibatch of kn; multiply the learning
   rate by the same factor the batch grew by.
2. ``warmup_lr``: gradual warm-up, "from a low to a high value in 5 epochs":
   start at ``start_lr`` and add a constant amount every iteration until the
   target is reached, then hold it.
3. ``goyal_lr``: warm-up followed by step decay (x0.1 at given iterations),
   the whole schedule of the paper.
4. ``torch_warmup_scheduler`` / ``torch_goyal_scheduler``: the same schedules
   as PyTorch ``LRScheduler`` objects (``LinearLR``, ``MultiStepLR``,
   ``SequentialLR``); the tests check both give the same rate at every step.

Steps count optimizer iterations from 0 (the rate used by the first update).
"""

from __future__ import annotations

import numpy as np

from course_lib.checks import check_positive


# --------------------------------------------------------------------------
# 1-3. The schedules, as plain functions of the step
# --------------------------------------------------------------------------

def linear_scaling_lr(batch: int, base_lr: float = 0.1, base_batch: int = 256) -> float:
    """``eta = base_lr * kn / base_batch`` with kn = ``batch`` (Goyal et al. 2017).

    "When the minibatch size is multiplied by k, multiply the learning rate by k."

    >>> linear_scaling_lr(8192)          # 256 GPUs x 32 images
    3.2
    """
    kn = check_positive(batch, "batch (kn, workers x images per worker)", integer=True)
    base_lr, base_batch = check_positive(base_lr, "base_lr"), check_positive(base_batch, "base_batch", integer=True)
    return base_lr * kn / base_batch


def warmup_lr(step: int, target_lr: float, warmup_steps: int, start_lr: float) -> float:
    """Gradual warm-up: linear from ``start_lr`` at step 0 to ``target_lr`` at
    ``warmup_steps``, constant afterwards.

        lr(t) = start_lr + (target_lr - start_lr) * t / warmup_steps,   t < warmup_steps
        lr(t) = target_lr,                                              t >= warmup_steps

    Goyal et al. start from the small-batch rate (0.1) and reach ``k * 0.1``
    after 5 epochs. ``warmup_steps = 0`` means no warm-up.
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got {step}, {warmup_steps}")
    if not 0 < start_lr <= target_lr:
        raise ValueError(f"warm-up goes up: need 0 < start_lr <= target_lr, got start_lr="
                         f"{start_lr}, target_lr={target_lr}")
    if step >= warmup_steps:
        return float(target_lr)
    return start_lr + (target_lr - start_lr) * step / warmup_steps


def goyal_lr(step: int, target_lr: float, warmup_steps: int, start_lr: float,
             milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Warm-up, then multiply by ``gamma`` at each milestone step passed
    (Goyal et al.: x0.1 at epochs 30, 60 and 80 of 90)."""
    if any(m < warmup_steps for m in milestones):
        raise ValueError(f"milestones {milestones} must come after the warm-up ({warmup_steps} steps)")
    decays = sum(step >= m for m in milestones)
    return warmup_lr(step, target_lr, warmup_steps, start_lr) * gamma ** decays


# --------------------------------------------------------------------------
# 4. The same in PyTorch
# --------------------------------------------------------------------------

def torch_warmup_scheduler(optimizer, target_lr: float, warmup_steps: int, start_lr: float):
    """``warmup_lr`` as ``torch.optim.lr_scheduler.LinearLR``.

    The optimizer's lr must be ``target_lr``; LinearLR multiplies it by a
    factor going linearly from start_lr / target_lr to 1 over warmup_steps.
    Call ``scheduler.step()`` after every ``optimizer.step()``.
    """
    import torch
    _check_torch_lr(optimizer, target_lr)
    warmup_lr(0, target_lr, warmup_steps, start_lr)               # the same checks
    start_factor = start_lr / target_lr if warmup_steps else 1.0   # no warm-up: target_lr from step 0
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=start_factor,
                                             end_factor=1.0, total_iters=max(warmup_steps, 1))


def torch_goyal_scheduler(optimizer, target_lr: float, warmup_steps: int, start_lr: float,
                          milestones: tuple[int, ...] = (), gamma: float = 0.1):
    """``goyal_lr`` as ``SequentialLR(LinearLR, MultiStepLR)``."""
    import torch
    goyal_lr(0, target_lr, warmup_steps, start_lr, milestones, gamma)  # the same checks
    if warmup_steps == 0:                                               # no warm-up: the decay alone
        _check_torch_lr(optimizer, target_lr)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    warm = torch_warmup_scheduler(optimizer, target_lr, warmup_steps, start_lr)
    decay = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[m - warmup_steps for m in milestones], gamma=gamma)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, decay], milestones=[warmup_steps])


def _check_torch_lr(optimizer, target_lr: float) -> None:
    if any("initial_lr" in group for group in optimizer.param_groups):
        raise ValueError(
            "this optimizer already has a learning-rate scheduler (its param groups carry "
            "'initial_lr'), perhaps from a cell run twice; a second scheduler would multiply its "
            "factor into the first's lowered rate. Create a new optimizer with lr = target_lr "
            "for each scheduler")
    lrs = [group["lr"] for group in optimizer.param_groups]
    if not np.allclose(lrs, target_lr):
        raise ValueError(f"create the optimizer with lr = target_lr = {target_lr}; it has {lrs}")
