"""The tuned max-pooling backward pass: ``max_pool2d_backward_fast``, as LeNet-5 and the benchmark use it.

Not the lecture: ``course_lib.pooling.max_pool2d_backward`` is the algorithm
(KH*KW masked additions into strided views). This module gives the same
result, bit for bit where no two windows share an input, faster:

* windows that do not overlap (stride >= kernel, the lecture's subsampling):
  each element of the gradient is *written* once, with no temporary. The
  select "dout where (u, v) won, else 0" is an integer multiply of dout's bit
  patterns by 0 or 1 written straight into the strided view: exact, where a
  float multiply would turn inf*0 into NaN and -g*0 into -0.0;
* overlapping windows: one scatter, like PyTorch's kernel: the flat position
  of each winner in the (padded) input, then ``np.add.at``, which adds
  repeated positions up (``dx[target] += dout`` would keep only one of them).

Symbols as in ``course_lib`` (N, C, H, W, KH, KW, S, P, H_out, W_out).
"""

from __future__ import annotations

import numpy as np

from course_lib.conv import offset_view
from course_lib.pooling import check_pool_backward, max_pool2d


def _winner_flat_index(argmax: np.ndarray, padded_shape: tuple, kernel: tuple, stride: tuple) -> np.ndarray:
    """Where each window's winner sits in the flattened padded input (N*C*Hp*Wp,).

    Window (n, c, i, j) has its top-left corner at ``((n*C + c)*Hp + i*SH)*Wp + j*SW``;
    its element (u, v), number ``u*KW + v`` in ``argmax``, is ``u*Wp + v`` further on.
    """
    N, C, Hp, Wp = padded_shape
    (KH, KW), (SH, SW) = kernel, stride
    H_out, W_out = argmax.shape[2:]
    corner = (np.arange(N * C, dtype=np.int64).reshape(N, C, 1, 1) * (Hp * Wp)   # start of plane (n, c)
              + (np.arange(H_out) * (SH * Wp))[:, None]                         # + row i*SH
              + np.arange(W_out) * SW)                                          # + column j*SW
    step_in_window = (np.arange(KH)[:, None] * Wp + np.arange(KW)).ravel()      # (KH*KW,): u*Wp + v
    return corner + step_in_window[argmax]                                      # (N, C, H_out, W_out)


def max_pool2d_backward_fast(dout: np.ndarray, x: np.ndarray, kernel_size, stride=None, padding=0,
                             argmax: np.ndarray | None = None) -> np.ndarray:
    """``course_lib.pooling.max_pool2d_backward``, tuned: the same arguments and result.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H_out, W_out), dLoss/dout
    x : ndarray, shape (N, C, H, W), the forward input
    kernel_size, stride, padding : as in the forward pass
    argmax : optional, from ``max_pool2d(..., return_indices=True)``; recomputed when None

    Returns
    -------
    dx : new ndarray, shape (N, C, H, W), dout's dtype, C-contiguous
    """
    dout, x, geometry = check_pool_backward(dout, x, kernel_size, stride, padding, argmax)
    (KH, KW), (SH, SW), (PH, PW), (H_out, W_out) = geometry
    N, C, H, W = x.shape
    if argmax is None:
        _, argmax = max_pool2d(x, (KH, KW), (SH, SW), (PH, PW), return_indices=True)
    Hp, Wp = H + 2 * PH, W + 2 * PW
    if SH >= KH and SW >= KW and dout.dtype.itemsize in (2, 4, 8):   # windows do not overlap
        tiled = (SH, SW) == (KH, KW) and (Hp, Wp) == (H_out * SH, W_out * SW)
        dxp = (np.empty if tiled else np.zeros)((N, C, Hp, Wp), dtype=dout.dtype)  # zeros: pixels in no window
        bits = np.dtype(f"u{dout.dtype.itemsize}")                   # select by multiplying the bit patterns
        g, dxp_bits = dout.view(bits), dxp.view(bits)                # by 0 or 1: exact, where a float multiply
        for u in range(KH):                                          # makes inf*0 = NaN and -g*0 = -0.0
            for v in range(KW):                                      # each window's element (u, v), once
                np.multiply(g, argmax == u * KW + v, out=offset_view(dxp_bits, u, v, SH, SW, H_out, W_out))
    else:                                                            # overlapping windows: add.at sums
        target = _winner_flat_index(argmax, (N, C, Hp, Wp), (KH, KW), (SH, SW))  # (N, C, H_out, W_out)
        dxp = np.zeros(N * C * Hp * Wp, dtype=dout.dtype)            # the padded gradient, flat
        np.add.at(dxp, target.ravel(), dout.ravel())                 # repeated targets (a plain += would not)
        dxp = dxp.reshape(N, C, Hp, Wp)
    return np.ascontiguousarray(dxp[:, :, PH:PH + H, PW:PW + W])
