"""Max pooling, forward and backward: the lecture's "Max Pooling" slide.

    "Pooling operates on square regions of size P x P in each of the
    activation maps of the input and returns maximum of the values in those
    regions. Pooling preserves the depth; depth of output is same as input.
    Pooling is a subsampling technique." (lecture 5)

(The slide's P is the pool size, ``kernel_size`` here; in this kit P is the
padding, as in PyTorch.) The output size follows the convolution formula,
``W_out = (W - KW + 2P)/S + 1`` rounded down, and the depth C is unchanged.

Reading order
-------------
1. ``pool_output_shape``: sizes, and the checks every function shares.
2. ``max_pool2d_naive``: the definition, a loop over output positions.
3. ``max_pool2d``: no loop over the output; a running ``np.maximum`` over the
   KH*KW strided views "the element at offset (u, v) of every window".
4. ``max_pool2d_backward_naive``: each output's gradient goes back to the one
   input that won its window (summed where overlapping windows share a
   winner), one window at a time.
5. ``max_pool2d_backward``: the same with no loop over the output: the mirror
   image of ``max_pool2d``, KH*KW masked additions into strided views.
6. ``next_layer_params``: why subsample: the weights of the fully connected
   layer after the pooling, for each pool size.

The tuned backward that LeNet-5 and the benchmark use is
``course_lib.machinery.fast_pool.max_pool2d_backward_fast`` (the same
result, without the additions' temporaries), outside the reading order.

Tie rule (the same as PyTorch's CPU and CUDA kernels): when several elements
of a window hold the maximum, the FIRST one in row-major window order (top
row first, left to right) wins and receives the whole gradient. Padding is
-inf and never wins: when every input in a window is -inf too, the window's
first input element (not padding) wins, as in PyTorch. The ``P <= KH/2``
rule (PyTorch's) guarantees every window holds some input. NaN inputs are
not supported.

Equal to ``torch.nn.functional.max_pool2d(x, kernel_size, stride, padding)``
and its autograd gradient. Symbols as in ``course_lib`` (N, C, H, W, KH, KW,
S, P, H_out, W_out).
"""

from __future__ import annotations

import numpy as np

from course_lib.checks import check_array, check_positive, pair
from course_lib.conv import conv_output_size, offset_view


def pool_output_shape(x_shape: tuple, kernel_size, stride=None, padding=0):
    """Check a pooling's hyper-parameters; return ``(KH, KW), (SH, SW), (PH, PW), (H_out, W_out)``.

    ``stride`` defaults to ``kernel_size`` (non-overlapping windows, the
    lecture's subsampling). As in PyTorch, padding may be at most half the
    kernel, and a window that does not fit at the end is dropped (floor).
    """
    KH, KW = pair(kernel_size, "kernel_size", 1)
    SH, SW = (KH, KW) if stride is None else pair(stride, "stride", 1)
    PH, PW = pair(padding, "padding", 0)
    if 2 * PH > KH or 2 * PW > KW:
        raise ValueError(f"padding {(PH, PW)} is more than half the kernel {(KH, KW)}: a window "
                         f"could then hold only padding (-inf) and no input; use padding <= "
                         f"kernel_size // 2 = {(KH // 2, KW // 2)}")
    H, W = x_shape[-2:]
    W_out = conv_output_size(W, KW, PW, SW, floor=True, window="pooling window")
    H_out = conv_output_size(H, KH, PH, SH, floor=True, window="pooling window", axis="height")
    return (KH, KW), (SH, SW), (PH, PW), (H_out, W_out)


def check_pool_backward(dout, x, kernel_size, stride, padding, argmax):
    """The checks every max-pooling backward pass shares; returns ``dout, x, pool_output_shape(...)``."""
    x = check_array(x, "x", 4, "(N, C, H, W)", "max pooling")
    dout = check_array(dout, "dout", 4, "(N, C, H_out, W_out)", "max pooling")
    geometry = (KH, KW), (SH, SW), (PH, PW), (H_out, W_out) = pool_output_shape(x.shape, kernel_size,
                                                                                 stride, padding)
    out_shape = (*x.shape[:2], H_out, W_out)
    if dout.shape != out_shape:
        raise ValueError(f"dout has shape {dout.shape}, but pooling x {x.shape} with kernel "
                         f"{(KH, KW)}, stride {(SH, SW)}, padding {(PH, PW)} gives {out_shape}")
    if argmax is not None and argmax.shape != dout.shape:
        raise ValueError(f"argmax has shape {argmax.shape}; it must match dout {dout.shape}")
    return dout, x, geometry


def _pad_neg_inf(x: np.ndarray, PH: int, PW: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H + 2PH, W + 2PW), padded with -inf (x itself when P = 0)."""
    if PH == 0 and PW == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=-np.inf)


def _first_input_index(out_shape: tuple, kernel: tuple, stride: tuple, padding: tuple) -> np.ndarray:
    """(N, C, H_out, W_out): ``u*KW + v`` of each window's first element that is input, not padding.

    It wins when every input in the window is -inf (no element is strictly
    greater than the padding), as in PyTorch's kernel. Window (i, j) starts
    at padded row i*SH, so its first input row is u0 = max(0, PH - i*SH).
    """
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    H_out, W_out = out_shape[2:]
    u0 = np.maximum(0, PH - SH * np.arange(H_out))                  # (H_out,)
    v0 = np.maximum(0, PW - SW * np.arange(W_out))                  # (W_out,)
    first = (u0[:, None] * KW + v0).astype(np.min_scalar_type(-KH * KW))   # (H_out, W_out)
    return np.broadcast_to(first, out_shape).copy()


def max_pool2d_naive(x: np.ndarray, kernel_size, stride=None, padding=0) -> np.ndarray:
    """Max pooling by its definition: for every output position, the max of its window.

        out[n, c, i, j] = max_{u < KH, v < KW} xp[n, c, i*SH + u, j*SW + v]

    Parameters and result as ``max_pool2d``.
    """
    x = check_array(x, "x", 4, "(N, C, H, W)", "max pooling")
    (KH, KW), (SH, SW), (PH, PW), (H_out, W_out) = pool_output_shape(x.shape, kernel_size, stride, padding)
    xp = _pad_neg_inf(x, PH, PW)
    out = np.empty(x.shape[:2] + (H_out, W_out), dtype=x.dtype)
    for i in range(H_out):
        for j in range(W_out):
            window = xp[:, :, i * SH:i * SH + KH, j * SW:j * SW + KW]  # (N, C, KH, KW)
            out[:, :, i, j] = window.max(axis=(2, 3))
    return out


def max_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0,
               return_indices: bool = False):
    """Max pooling with no loop over the output: ``torch.nn.functional.max_pool2d``.

    The maximum over a window is the running maximum over its KH*KW elements;
    element (u, v) of *every* window at once is one strided view of the input,
    so the whole pooling is KH*KW vectorised ``np.maximum`` calls.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), floating point
    kernel_size : int or (KH, KW), the pool size (the slide's P x P)
    stride : int or (SH, SW); default kernel_size (non-overlapping windows)
    padding : int or (PH, PW), -inf added on each side, at most kernel_size // 2
    return_indices : also return ``argmax``, the winner's position in its
        window, ``u*KW + v`` (row-major), int8/int16/int32 by window size; give it to
        ``max_pool2d_backward`` to skip recomputing it (PyTorch instead returns
        flat indices into the H*W plane)

    Returns
    -------
    out : ndarray, shape (N, C, H_out, W_out), H_out = (H - KH + 2PH)//SH + 1;
        the depth C is preserved
    argmax : ndarray, shape (N, C, H_out, W_out), only if return_indices
    """
    x = check_array(x, "x", 4, "(N, C, H, W)", "max pooling")
    (KH, KW), (SH, SW), (PH, PW), (H_out, W_out) = pool_output_shape(x.shape, kernel_size, stride, padding)
    xp = _pad_neg_inf(x, PH, PW)
    out = offset_view(xp, 0, 0, SH, SW, H_out, W_out).copy()            # (N, C, H_out, W_out)
    argmax = _first_input_index(out.shape, (KH, KW), (SH, SW), (PH, PW)) if return_indices else None
    for u in range(KH):
        for v in range(KW):
            if u == v == 0:
                continue
            view = offset_view(xp, u, v, SH, SW, H_out, W_out)           # element (u, v) of every window
            if return_indices:
                np.copyto(argmax, u * KW + v, where=view > out)          # strictly greater: first max wins
            np.maximum(out, view, out=out)
    return (out, argmax) if return_indices else out


def max_pool2d_backward_naive(dout: np.ndarray, x: np.ndarray, kernel_size, stride=None, padding=0,
                              argmax: np.ndarray | None = None) -> np.ndarray:
    """Gradient of max pooling by its definition: one window at a time, its gradient to its winner.

        dx[n, c, i*SH + u, j*SW + v] += dout[n, c, i, j]   where (u, v) = argmax of window (i, j)

    The winner is the first maximum of the window in row-major order that is
    an input, not padding. Every other input gets zero; an input that wins
    several overlapping windows gets the sum of their gradients.
    Parameters and result as ``max_pool2d_backward``.
    """
    dout, x, geometry = check_pool_backward(dout, x, kernel_size, stride, padding, argmax)
    (KH, KW), (SH, SW), (PH, PW), (H_out, W_out) = geometry
    N, C, H, W = x.shape
    xp = _pad_neg_inf(x, PH, PW)
    is_input = np.pad(np.ones((H, W), dtype=bool), ((PH, PH), (PW, PW)))    # (Hp, Wp), False on padding
    dxp = np.zeros(xp.shape, dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    rows, cols = slice(i * SH, i * SH + KH), slice(j * SW, j * SW + KW)
                    window = xp[n, c, rows, cols]                                 # (KH, KW)
                    if argmax is None:
                        first = np.argmax((window == window.max()) & is_input[rows, cols])  # first True
                    else:
                        first = argmax[n, c, i, j]
                    u, v = divmod(int(first), KW)
                    dxp[n, c, i * SH + u, j * SW + v] += dout[n, c, i, j]
    return dxp[:, :, PH:PH + H, PW:PW + W].copy()


def max_pool2d_backward(dout: np.ndarray, x: np.ndarray, kernel_size, stride=None, padding=0,
                        argmax: np.ndarray | None = None) -> np.ndarray:
    """Gradient of max pooling: each output's gradient flows to its window's winner.

        dx[n, c, i*SH + u, j*SW + v] += dout[n, c, i, j]   where (u, v) = argmax of window (i, j)

    Every other input gets zero. When windows overlap (stride < kernel), an
    input that wins several windows receives the sum of their gradients, as
    in autograd. Ties go to the first maximum in row-major window order.

    No loop over the output: the mirror image of ``max_pool2d``. Element
    (u, v) of every window is one strided view of the (padded) gradient, and
    it receives ``dout`` where (u, v) won its window, 0 elsewhere. KH*KW
    masked additions; the additions (not assignments) sum what overlapping
    windows send to one input.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H_out, W_out), dLoss/dout
    x : ndarray, shape (N, C, H, W), the forward input
    kernel_size, stride, padding : as in the forward pass
    argmax : optional, from ``max_pool2d(..., return_indices=True)``;
        recomputed from x when None

    Returns
    -------
    dx : new ndarray, shape (N, C, H, W), dout's dtype
    """
    dout, x, geometry = check_pool_backward(dout, x, kernel_size, stride, padding, argmax)
    (KH, KW), (SH, SW), (PH, PW), (H_out, W_out) = geometry
    N, C, H, W = x.shape
    if argmax is None:
        _, argmax = max_pool2d(x, (KH, KW), (SH, SW), (PH, PW), return_indices=True)
    dxp = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=dout.dtype)   # pixels in no window stay 0
    for u in range(KH):
        for v in range(KW):                                            # element (u, v) of every window
            won = argmax == u * KW + v                                 # (N, C, H_out, W_out)
            offset_view(dxp, u, v, SH, SW, H_out, W_out)[...] += np.where(won, dout, 0)
    return dxp[:, :, PH:PH + H, PW:PW + W].copy()


def next_layer_params(H: int, C: int, pool_sizes, next_units: int = 84) -> list[dict]:
    """Weights of a fully connected layer of ``next_units`` units after F x F max pooling (stride F)
    of an H x H x C volume, for each F in ``pool_sizes`` (F = 1: no pooling): ``C * H_out * W_out * next_units``.

    Returns one dict per F: ``{"pool": F, "output": (C, H_out, W_out), "weights": int}``.
    """
    C, next_units = check_positive(C, "C", integer=True), check_positive(next_units, "next_units", integer=True)
    rows = []
    for F in pool_sizes:
        _, _, _, (H_out, W_out) = pool_output_shape((H, H), F, F)
        rows.append({"pool": F, "output": (C, H_out, W_out), "weights": C * H_out * W_out * next_units})
    return rows
