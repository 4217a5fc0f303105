"""Optimizers over numpy arrays: SGD (momentum, Nesterov) and Adagrad.

Reading order
-------------
1. ``SGD``: plain gradient descent, then the momentum and Nesterov momentum
   recalled at the start of lecture 5 ("Gradient descent with Momentum and
   Nesterov momentum").
2. ``Adagrad``: the per-parameter learning rate of the "Downpour SGD" slide,

       eta_ik = gamma / sqrt(sum_{j=1..k} dw_ij^2)

   (Dean et al., "Large Scale Distributed Deep Networks", 2012), where
   ``eta_ik`` is the learning rate of parameter i at iteration k, ``dw_ij``
   its gradient at iteration j and ``gamma`` a constant scale (``lr`` here).

Both follow ``torch.optim``'s conventions exactly, so a notebook can run the
two side by side and assert equal trajectories:

* the constructor takes the list of parameter arrays (``params``), which
  ``step(grads)`` updates IN PLACE, like ``optimizer.step()`` in PyTorch; the
  caller keeps references to the same arrays and sees them change;
* the state is plain attributes you can print (``velocity``, ``state_sum``,
  ``steps``), and ``Adagrad.effective_lr()`` returns ``eta_ik`` per element.

Parameters must be floating-point numpy arrays (the in-place update cannot
change their dtype); gradients are cast to each parameter's dtype.
"""

from __future__ import annotations

import numpy as np


def _check_params(params, who: str) -> list[np.ndarray]:
    """The parameter list an optimizer will update in place, or a teaching error."""
    if isinstance(params, np.ndarray):
        raise TypeError(f"{who}: params must be a list of arrays, got a single array of shape "
                        f"{params.shape}; wrap it: {who}([w], ...)")
    params = list(params)
    if not params:
        raise ValueError(f"{who}: params is empty; pass the list of arrays to optimize")
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{who}: params[{i}] is a {type(p).__name__}, not a numpy array "
                            f"(the update is in place, so it must be the array itself)")
        if not np.issubdtype(p.dtype, np.floating):
            raise TypeError(f"{who}: params[{i}] has dtype {p.dtype}; an in-place update needs "
                            f"floating point (use .astype(np.float32))")
        if not p.flags.writeable:
            raise ValueError(f"{who}: params[{i}] is read-only, so it cannot be updated in place")
    return params


def _check_grads(params: list[np.ndarray], grads, who: str) -> list[np.ndarray]:
    """One gradient per parameter, of the same shape, cast to the parameter's dtype."""
    grads = list(grads)
    if len(grads) != len(params):
        raise ValueError(f"{who}.step: got {len(grads)} gradients for {len(params)} parameters; "
                         f"pass them in the same order as params")
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        g = np.asarray(g)
        if g.shape != p.shape:
            raise ValueError(f"{who}.step: grads[{i}] has shape {g.shape} but params[{i}] has "
                             f"shape {p.shape}")
        out.append(g.astype(p.dtype, copy=False))
    return out


def _check_hyper(who: str, **values: float) -> None:
    for name, value in values.items():
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{who}: {name} = {value!r} must be a finite number >= 0")


class SGD:
    """Stochastic gradient descent with optional momentum and Nesterov momentum.

    With ``g = grad + weight_decay * w`` and velocity ``v`` (zero before the
    first step; on the first step ``v = g``, as in PyTorch):

        plain:     w <- w - lr * g
        momentum:  v <- momentum * v + g;   w <- w - lr * v
        Nesterov:  v <- momentum * v + g;   w <- w - lr * (g + momentum * v)

    The Nesterov line is the "look-ahead" form PyTorch uses (Sutskever et al.
    2013): the step uses the gradient plus the momentum the *next* step will
    carry. Equal to ``torch.optim.SGD(params, lr, momentum, nesterov=...,
    weight_decay=...)`` with ``dampening=0``.

    Parameters
    ----------
    params : list of float ndarrays, updated in place by ``step``
    lr : learning rate (> 0)
    momentum : in [0, 1); 0 is plain SGD
    nesterov : use Nesterov momentum (needs momentum > 0)
    weight_decay : L2 penalty coefficient added to the gradient

    Attributes
    ----------
    velocity : list of ndarrays (one per parameter) or None before the first step
    steps : number of ``step`` calls so far
    """

    def __init__(self, params: list[np.ndarray], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        self.params = _check_params(params, "SGD")
        _check_hyper("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if lr == 0:
            raise ValueError("SGD: lr = 0 would never move the parameters")
        if momentum >= 1:
            raise ValueError(f"SGD: momentum = {momentum!r} must be < 1: v <- momentum*v + g then never "
                             f"forgets an old gradient and the velocity grows without bound (0.9 is usual)")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0 (Nesterov is a kind of momentum)")
        self.lr, self.momentum, self.nesterov = float(lr), float(momentum), bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.velocity: list[np.ndarray] | None = None
        self.steps = 0

    def step(self, grads: list[np.ndarray]) -> None:
        """Update every parameter in place from its gradient (same order as params)."""
        grads = _check_grads(self.params, grads, "SGD")
        if self.weight_decay:
            grads = [g + self.weight_decay * w for g, w in zip(grads, self.params)]
        if self.momentum:
            if self.velocity is None:
                self.velocity = [g.copy() for g in grads]              # v_1 = g_1
            else:
                for v, g in zip(self.velocity, grads):
                    v *= self.momentum                                  # v <- momentum*v + g
                    v += g
            if self.nesterov:
                grads = [g + self.momentum * v for g, v in zip(grads, self.velocity)]
            else:
                grads = self.velocity
        for w, g in zip(self.params, grads):
            w -= self.lr * g
        self.steps += 1

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr:g}, momentum={self.momentum:g}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay:g}, steps={self.steps}, "
                f"params={[p.shape for p in self.params]})")


class Adagrad:
    """Adagrad: every parameter gets its own, shrinking learning rate.

    The lecture ("Downpour SGD" slide, after Dean et al. 2012):

        eta_ik = gamma / sqrt(sum_{j=1..k} dw_ij^2)

    Here ``gamma`` is ``lr`` and the running sum is ``state_sum``. As in
    ``torch.optim.Adagrad``, ``eps`` is added to the square root (not inside
    it) so that a parameter whose gradients have all been zero does not divide
    by zero, and the sum may start at ``initial_accumulator_value``:

        state_sum_i <- state_sum_i + dw_ik^2
        eta_ik       = lr / (sqrt(state_sum_i) + eps)
        w_i         <- w_i - eta_ik * dw_ik

    Parameters that receive large gradients slow down, rarely-updated ones
    keep a large step: the robustness Downpour SGD needs when replicas push
    stale gradients. Equal to ``torch.optim.Adagrad(params, lr, eps=eps,
    initial_accumulator_value=...)`` (lr_decay = 0, weight_decay = 0).

    Parameters
    ----------
    params : list of float ndarrays, updated in place by ``step``
    lr : gamma, the constant scale (> 0)
    eps : added to sqrt(state_sum) in the denominator
    initial_accumulator_value : starting value of every state_sum element

    Attributes
    ----------
    state_sum : list of ndarrays, the per-element sum of squared gradients
    steps : number of ``step`` calls so far (k in the formula)
    """

    def __init__(self, params: list[np.ndarray], lr: float = 0.01, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0):
        self.params = _check_params(params, "Adagrad")
        _check_hyper("Adagrad", lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value)
        if lr == 0:
            raise ValueError("Adagrad: lr (gamma) = 0 would never move the parameters")
        self.lr, self.eps = float(lr), float(eps)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.state_sum = [np.full_like(p, self.initial_accumulator_value) for p in self.params]
        self.steps = 0

    def effective_lr(self) -> list[np.ndarray]:
        """``eta_ik = lr / (sqrt(state_sum) + eps)`` per element: the rate of step k, the one
        just taken (its sum includes dw_ik), one array per parameter (new arrays)."""
        return [self.lr / (np.sqrt(s) + self.eps) for s in self.state_sum]

    def step(self, grads: list[np.ndarray]) -> None:
        """Accumulate the squared gradients, then update every parameter in place."""
        grads = _check_grads(self.params, grads, "Adagrad")
        for w, g, s in zip(self.params, grads, self.state_sum):
            s += g * g                                   # sum_j dw_ij^2, j = 1..k
            w -= self.lr * (g / (np.sqrt(s) + self.eps))  # eta_ik * dw_ik
        self.steps += 1

    def __repr__(self) -> str:
        return (f"Adagrad(lr={self.lr:g}, eps={self.eps:g}, initial_accumulator_value="
                f"{self.initial_accumulator_value:g}, steps={self.steps}, "
                f"params={[p.shape for p in self.params]})")
