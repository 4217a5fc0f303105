"""Lesson 10's experiment: test error against the global minibatch size kn.

A 64-``hidden``-10 MLP with plain minibatch SGD on the 8x8 digits stands in
for ResNet-50 on ImageNet (Goyal et al. 2017), so that a sweep fits in
seconds on a laptop. The schedules themselves are ``course_lib.lr_schedules``.

``train_digits``       one run: kn, a learning rate, optionally a warm-up
``batch_size_sweep``   the three arms (no scaling, linear, linear + warm-up) for one seed
``warmup_over_seeds``  one kn and rate, with and without warm-up, over many seeds
``seed_summary``       median and range over seeds of each arm's test error
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from course_lib.experiments.seeds import summarize
from course_lib.lr_schedules import linear_scaling_lr, torch_warmup_scheduler

ARMS = ("no scaling", "linear scaling", "linear scaling + warm-up")


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
                 data=None, optimizer=None) -> RunResult:
    """Train a 64-``hidden``-10 MLP with plain minibatch SGD (or ``optimizer``) on the 8x8 digits.

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
    optimizer : None for ``torch.optim.SGD``, or a callable ``optimizer(params, lr=lr)`` that
        returns another ``torch.optim.Optimizer`` (a layer-wise rule such as LARS)
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
    opt = (optimizer or torch.optim.SGD)(model.parameters(), lr=lr)
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
    arms = {arm: [] for arm in ARMS}
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


def seed_summary(sweeps: list[dict[str, list[RunResult]]]) -> dict[str, dict[str, np.ndarray]]:
    """Median, min and max over seeds of each arm's test error, per batch size.

    sweeps : one ``batch_size_sweep`` result per seed, all over the same batch sizes
    returns ``{arm: {"median": (n_sizes,), "min": (n_sizes,), "max": (n_sizes,), "all": (seeds, n_sizes)}}``,
    n_sizes the number of batch sizes in each sweep
    """
    if not sweeps:
        raise ValueError("give at least one sweep (one batch_size_sweep result per seed)")
    return {arm: summarize([[r.test_error for r in sweep[arm]] for sweep in sweeps])   # (seeds, n_sizes)
            for arm in sweeps[0]}


def warmup_over_seeds(batch: int, lr: float, epochs: int, warmup_epochs: float, start_lr: float,
                      seeds=range(20), data=None) -> dict[str, np.ndarray]:
    """Test error of the same setting with and without warm-up, once per seed.

    The seed sets the initial weights and the order of the minibatches; both
    arms of one seed share them, so the pair differs only by the warm-up.
    Returns ``{"no warm-up": (len(seeds),), "warm-up": (len(seeds),)}``.
    """
    from course_lib.data import load_digits
    data = load_digits(size=8) if data is None else data
    cold = [train_digits(batch, lr, epochs, seed=s, data=data).test_error for s in seeds]
    warm = [train_digits(batch, lr, epochs, warmup_epochs=warmup_epochs, start_lr=start_lr, seed=s,
                         data=data).test_error for s in seeds]
    return {"no warm-up": np.array(cold), "warm-up": np.array(warm)}
