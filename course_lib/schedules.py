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
5. ``train_digits``: the batch-size experiment at small scale (a small MLP on
   the 8x8 digits), used by notebooks/10_large_minibatch.ipynb.

Steps count optimizer iterations from 0 (the rate used by the first update).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------------
# 1-3. The schedules, as plain functions of the step
# --------------------------------------------------------------------------

def linear_scaling_lr(batch: int, base_lr: float = 0.1, base_batch: int = 256) -> float:
    """``eta = base_lr * kn / base_batch`` with kn = ``batch`` (Goyal et al. 2017).

    "When the minibatch size is multiplied by k, multiply the learning rate by k."

    >>> linear_scaling_lr(8192)          # 256 GPUs x 32 images
    3.2
    """
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch (kn, workers x images per worker) must be a positive int, "
                         f"got {batch!r}")
    if base_lr <= 0 or base_batch < 1:
        raise ValueError(f"need base_lr > 0 and base_batch >= 1, got {base_lr}, {base_batch}")
    return base_lr * batch / base_batch


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


# --------------------------------------------------------------------------
# 5. The experiment: error vs global batch size on the digits
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    batch: int
    lr: float
    warmup_steps: int
    steps: int
    train_error: float
    test_error: float


def train_digits(batch: int, lr: float, epochs: int, warmup_epochs: float = 0.0,
                 start_lr: float | None = None, hidden: int = 64, seed: int = 0,
                 data=None) -> RunResult:
    """Train a 64-``hidden``-10 MLP with plain minibatch SGD on the 8x8 digits.

    A small network stands in for ResNet-50 so that a dozen runs fit in a few
    seconds on a laptop; the effect studied (a fixed number of epochs gives a
    large batch fewer, bigger steps) does not depend on the model. Every run
    sees the same number of epochs, as in Goyal et al. The initial weights are
    the same for every batch size (``seed``).

    Parameters
    ----------
    batch : global minibatch size kn
    lr : the (target) learning rate
    warmup_epochs : length of the linear warm-up from ``start_lr`` (default lr / 10;
        a start_lr above lr is lowered to lr, i.e. no warm-up is needed)
    data : a ``course_lib.data.Digits`` of 8x8 images, or None to load it
    """
    import torch
    from course_lib.data import load_digits
    data = load_digits(size=8) if data is None else data
    x, y = torch.from_numpy(data.x_train.reshape(len(data.x_train), -1)), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    with torch.no_grad():                                        # the same start for every run
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1]) ** 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x) // batch)                        # ceil: the last batch may be short
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    start_lr = min(start_lr or lr / 10, lr)
    sched = torch_warmup_scheduler(opt, lr, warmup_steps, start_lr) if warmup_steps else None
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    with torch.no_grad():
        err = lambda xs, ys: float((model(xs).argmax(1) != ys).float().mean())
        x_test = torch.from_numpy(data.x_test.reshape(len(data.x_test), -1))
        return RunResult(batch, lr, warmup_steps, epochs * steps_per_epoch, err(x, y),
                         err(x_test, torch.from_numpy(data.y_test)))


def batch_size_sweep(batches, base_lr: float, base_batch: int, epochs: int,
                     warmup_epochs: float, seed: int = 0, data=None) -> dict[str, list[RunResult]]:
    """The three arms of the experiment, one run per batch size each:

    * "no scaling": lr = base_lr for every batch size;
    * "linear scaling": lr = linear_scaling_lr(batch, base_lr, base_batch);
    * "linear scaling + warm-up": the same, reached by a linear warm-up from
      base_lr over ``warmup_epochs`` (Goyal et al.'s "gradual warmup").
    """
    from course_lib.data import load_digits
    data = load_digits(size=8) if data is None else data
    arms = {"no scaling": [], "linear scaling": [], "linear scaling + warm-up": []}
    done = {}                                   # identical settings run once (kn = base_batch)

    def run(batch, lr, warmup):
        key = (batch, lr, warmup)
        if key not in done:
            done[key] = train_digits(batch, lr, epochs, warmup_epochs=warmup, start_lr=base_lr,
                                     seed=seed, data=data)
        return done[key]

    for batch in batches:
        lr = linear_scaling_lr(batch, base_lr, base_batch)
        arms["no scaling"].append(run(batch, base_lr, 0.0))
        arms["linear scaling"].append(run(batch, lr, 0.0))
        arms["linear scaling + warm-up"].append(run(batch, lr, warmup_epochs if lr > base_lr else 0.0))
    return arms
