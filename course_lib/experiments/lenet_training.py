"""Lesson 5's experiment: LeNet-5 trained on the digits, in numpy and in PyTorch side by side.

The network itself is ``course_lib.lenet`` (the lecture); this module trains
it and times it:

``train``          minibatch training of a ``LeNet5`` or a ``TorchLeNet5``: the same
                   batches in the same order for both, a tqdm bar; returns a ``History``
``train_step``     one minibatch: forward, loss, backward, optimizer step
``minibatches``    the index arrays of one shuffled pass over the data
``train_over_seeds`` both implementations once per seed: a training outcome is a distribution
``accuracy_summary`` median, min and max over seeds of each one's final test accuracy
``epoch_timings``  seconds per training epoch of each implementation (numpy, PyTorch CPU / GPU)

Figures and tables of these results are drawn by ``course_lib.viz.lenet``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from course_lib.data import Digits
from course_lib.experiments.seeds import summarize
from course_lib.lenet import LeNet5, TorchLeNet5, copy_weights
from course_lib.optim import SGD, Adagrad


@dataclass
class History:
    """Per-epoch record of a training run (lists of equal length)."""
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)   # cumulative training time, evaluation excluded


def minibatches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of a shuffled pass over n examples (the last batch may be smaller)."""
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _optimizer_for(params, optimizer: str, lr: float, momentum: float):
    if optimizer not in ("sgd", "adagrad"):
        raise ValueError(f"train: optimizer must be 'sgd' or 'adagrad', got {optimizer!r}")
    if isinstance(params[0], np.ndarray):
        return SGD(params, lr, momentum=momentum) if optimizer == "sgd" else Adagrad(params, lr)
    return (torch.optim.SGD(params, lr, momentum=momentum) if optimizer == "sgd"
            else torch.optim.Adagrad(params, lr))


def _scale_lr(opt, factor: float) -> None:
    """Multiply the learning rate by factor (course_lib.optim and torch.optim alike)."""
    if isinstance(opt, torch.optim.Optimizer):
        for group in opt.param_groups:
            group["lr"] *= factor
    else:
        opt.lr *= factor


def _accuracy(model, x: np.ndarray, y: np.ndarray, device) -> float:
    if isinstance(model, LeNet5):
        return float((model.predict(x) == y).mean())
    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        logits = torch.cat([model(torch.from_numpy(x[i:i + 500]).to(device, dtype=dtype))
                            for i in range(0, len(x), 500)])
    return float((logits.argmax(1).cpu().numpy() == y).mean())


def train_step(model, opt, xb: np.ndarray, yb: np.ndarray, device=None) -> tuple[float, int]:
    """One minibatch: forward, loss, backward, optimizer step. Returns (mean loss, correct predictions).

    model : LeNet5 with a ``course_lib.optim`` optimizer, or TorchLeNet5 (on
    ``device``) with a ``torch.optim`` one; xb (N, 1, 32, 32), yb (N,).
    """
    if isinstance(model, LeNet5):
        loss, grads, logits = model.loss_and_grads(xb, yb)
        opt.step(grads)
        return loss, int((logits.argmax(1) == yb).sum())
    dtype = next(model.parameters()).dtype
    xt, yt = torch.from_numpy(xb).to(device, dtype=dtype), torch.from_numpy(yb).to(device)
    logits = model(xt)
    loss = F.cross_entropy(logits, yt)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), int((logits.argmax(1) == yt).sum())


def train(model, data: Digits, epochs: int = 10, lr: float = 0.05, momentum: float = 0.9,
          batch_size: int = 32, optimizer: str = "sgd", lr_decay: float = 1.0, seed: int = 0,
          device=None, progress: bool = True, desc: str | None = None) -> History:
    """Minibatch training of a ``LeNet5`` (numpy) or a ``TorchLeNet5`` on ``data``.

    Both kinds see the same batches in the same order for the same seed, with
    ``course_lib.optim`` for the numpy model and ``torch.optim`` (equal to it)
    for the PyTorch one, so their curves can be put side by side.

    Parameters
    ----------
    model : LeNet5 or TorchLeNet5 (moved to ``device``, default cpu)
    data : Digits, x (N, 1, 32, 32) float32 and y (N,) int64
    epochs, lr, momentum, batch_size : the usual; momentum is SGD's only
    optimizer : 'sgd' (with momentum) or 'adagrad'
    lr_decay : the learning rate is multiplied by this after every epoch
    seed : seeds the shuffling
    progress : show a tqdm bar over the batches

    Returns
    -------
    History, one entry per epoch
    """
    if not isinstance(model, (LeNet5, TorchLeNet5)):
        raise TypeError(f"train: model must be a LeNet5 or a TorchLeNet5, got {type(model).__name__}")
    if isinstance(model, TorchLeNet5):
        device = torch.device(device or "cpu")
        model.to(device).train()
    params = model.params if isinstance(model, LeNet5) else list(model.parameters())
    opt = _optimizer_for(params, optimizer, lr, momentum)
    rng, history, elapsed = np.random.default_rng(seed), History(), 0.0
    n_batches = -(-len(data.x_train) // batch_size)
    bar = tqdm(total=epochs * n_batches, desc=desc or type(model).__name__, disable=not progress)
    for _ in range(epochs):
        start, losses, correct = time.perf_counter(), [], 0
        for idx in minibatches(len(data.x_train), batch_size, rng):
            loss, n_correct = train_step(model, opt, data.x_train[idx], data.y_train[idx], device)
            correct += n_correct
            losses.append(loss * len(idx))
            bar.update()
        elapsed += time.perf_counter() - start
        history.seconds.append(elapsed)
        history.train_loss.append(float(sum(losses) / len(data.x_train)))
        history.train_acc.append(correct / len(data.x_train))
        history.test_acc.append(_accuracy(model, data.x_test, data.y_test, device))
        _scale_lr(opt, lr_decay)
        bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", test_acc=f"{history.test_acc[-1]:.3f}")
    bar.close()
    return history


@dataclass
class SeedRun:
    """One seed's pair of runs: the numpy LeNet-5 and its PyTorch twin, same weights, same batches."""
    seed: int
    histories: dict[str, History]    # {"numpy": History, "PyTorch": History}
    models: dict                      # the trained networks, same keys


def train_over_seeds(data: Digits, seeds=range(5), device=None, progress: bool = True,
                     **settings) -> list[SeedRun]:
    """``train`` the numpy LeNet-5 and its PyTorch twin once per seed, side by side.

    For each seed both start from ``LeNet5(seed=seed)``'s weights (copied into the
    twin) and see the same minibatches, shuffled by the same seed. One run's
    accuracy is one draw: float rounding, which differs between CPUs, and the
    seed move it by a point or more, so report the median and the range over
    seeds (``accuracy_summary``).

    settings : passed to ``train`` (epochs, lr, momentum, lr_decay, batch_size, optimizer)
    progress : one tqdm bar over the seeds
    Returns one ``SeedRun`` per seed, in order.
    """
    runs = []
    for seed in tqdm(list(seeds), desc="seeds", disable=not progress):
        numpy_net, torch_net = LeNet5(seed=seed), TorchLeNet5()
        copy_weights(numpy_net, torch_net)
        histories = {"numpy": train(numpy_net, data, seed=seed, progress=False, **settings),
                     "PyTorch": train(torch_net, data, seed=seed, device=device, progress=False, **settings)}
        runs.append(SeedRun(seed, histories, {"numpy": numpy_net, "PyTorch": torch_net}))
    return runs


def accuracy_summary(runs: list[SeedRun]) -> dict[str, dict]:
    """Median, min and max over seeds of each implementation's final test accuracy.

    Returns ``{name: {"median": float, "min": float, "max": float, "all": ndarray (seeds,)}}``
    with name "numpy" and "PyTorch".
    """
    if not runs:
        raise ValueError("accuracy_summary: give at least one SeedRun (the result of train_over_seeds)")
    summary = {}
    for name in runs[0].histories:
        s = summarize([run.histories[name].test_acc[-1] for run in runs])         # over (seeds,)
        summary[name] = {key: float(s[key]) for key in ("median", "min", "max")} | {"all": s["all"]}
    return summary


def epoch_timings(data: Digits, batch_size: int = 32, n_batches: int = 10, device=None,
                  repeats: int = 3) -> dict[str, float]:
    """Seconds per training epoch (forward + backward + SGD step) of each implementation.

    Times ``n_batches`` minibatches after one warm-up batch, takes the median
    of ``repeats``, and scales to a full epoch of ``data.x_train``. Keys:
    'numpy', 'PyTorch CPU' and, when ``device`` is a GPU, 'PyTorch GPU'.
    """
    from course_lib.machinery.device import synchronize

    n = batch_size * n_batches
    warmup = Digits(data.x_train[:batch_size], data.y_train[:batch_size], data.x_test[:1], data.y_test[:1])
    timed = Digits(data.x_train[:n], data.y_train[:n], data.x_test[:1], data.y_test[:1])
    batches_per_epoch = -(-len(data.x_train) // batch_size)
    devices = {"numpy": None, "PyTorch CPU": torch.device("cpu")}
    if device is not None and torch.device(device).type != "cpu":
        devices["PyTorch GPU"] = torch.device(device)
    result = {}
    for name, dev in devices.items():
        model = LeNet5(seed=0)
        if dev is not None:
            model, numpy_model = TorchLeNet5(), model
            copy_weights(numpy_model, model)
        train(model, warmup, epochs=1, batch_size=batch_size, device=dev, progress=False)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            train(model, timed, epochs=1, batch_size=batch_size, device=dev, progress=False)
            if dev is not None:
                synchronize(dev)
            samples.append((time.perf_counter() - start) / n_batches)
        result[name] = float(np.median(samples)) * batches_per_epoch
    return result

