"""The convolution layer, from the lecture's formulas to im2col and its backward pass.

Reading order: 1. ``conv_output_size``, ``conv_param_count`` ("Convolution Summary": ``W2 = (W1 - F + 2P)/S + 1``,
``(F*F*D1)*K`` weights), ``receptive_field_sizes`` (r_q = r_{q-1} + (F_q - 1)*S_1*...*S_{q-1}), ``receptive_field_1d``;
2. ``pad2d`` ("Padding example"); 3. ``conv2d_naive``, the definition in four loops; 4. ``im2col`` / ``col2im``
("Convolution as a Matrix Operation"), exactly ``F.unfold`` / ``F.fold``'s layout (N, C*KH*KW, L); 5. ``conv2d_im2col``;
6. ``conv2d_backward_naive`` (the loops, differentiated) beside ``conv2d_backward_im2col`` (matrix multiplies).

The tuned ``conv2d`` / ``conv2d_backward`` of LeNet-5 and the benchmarks compute the same faster, in
``course_lib.machinery.fast_conv`` (not in the reading order). Conventions are PyTorch's (the convolutions
floor the output size as it does; ``conv_output_size`` is strict, as the lecture is), symbols ``course_lib``'s.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from course_lib.checks import check_array, check_conv, check_int, check_positive, pair

LECTURE_PADDING_EXAMPLE = np.array([      # the 7x7 input of the "Padding example" slide (P = 2: 11x11)
    [6, 3, 4, 4, 5, 0, 3],
    [4, 7, 4, 0, 4, 0, 4],
    [7, 0, 2, 3, 4, 5, 2],
    [3, 7, 5, 0, 3, 0, 7],
    [5, 8, 1, 2, 5, 4, 2],
    [8, 0, 1, 0, 6, 0, 0],
    [6, 4, 1, 3, 0, 4, 5]], dtype=np.float64)
LECTURE_PADDING_EXAMPLE.flags.writeable = False


# ---------------------------------------- 1. Sizes, parameter counts ("Convolution Summary"), receptive field

def conv_output_size(W: int, F: int, P: int = 0, S: int = 1, *, floor: bool = False,
                     window: str = "filter", axis: str = "width") -> int:
    """Output width of a convolution: ``W2 = (W1 - F + 2P)/S + 1`` (lecture 5).

    W, F, P, S : input width W1 (or height), filter width (or height), zero
        padding on each side, stride
    floor : False (the lecture's rule): a non-integer result is a ValueError
        showing the arithmetic; True: round down as PyTorch does
    window, axis : what slides ("filter", "pooling window") and along which
        axis ("width": W, "height": H), as the error messages name them
    returns : W2, an int >= 1
    """
    if axis not in ("width", "height"):
        raise ValueError(f"conv_output_size: axis must be 'width' or 'height', got {axis!r}")
    X, size = ("W", "size") if axis == "width" else ("H", "height")   # for the messages
    for name, value, low in ((f"input {size} {X}", W, 1), (f"{window} {size} F", F, 1),
                             ("padding P", P, 0), ("stride S", S, 1)):
        check_int(value, name, low)
    formula = f"({X} - F + 2P)/S + 1 = ({W} - {F} + 2*{P})/{S} + 1"
    if F > W + 2 * P:
        advice = f"a smaller {window}" + (" or more padding" if window == "filter" else "")
        raise ValueError(f"{window} {size} F = {F} is larger than the padded input {X} + 2P = "
                         f"{W} + 2*{P} = {W + 2 * P}: {formula} = {(W - F + 2 * P) / S + 1:g} "
                         f"windows; use {advice}")
    steps, remainder = divmod(W - F + 2 * P, S)
    if remainder and not floor:
        lost = "column(s)" if axis == "width" else "row(s)"
        raise ValueError(f"output {axis} {formula} = {(W - F + 2 * P) / S + 1:.2f} is not an "
                         f"integer; the {window} does not tile the input evenly. Change padding "
                         f"or stride (PyTorch would silently drop the last {remainder} {lost})")
    return int(steps + 1)


class ParamCount(NamedTuple):
    """Learnable parameters of a convolution layer."""
    weights: int
    biases: int
    @property
    def total(self) -> int:
        return self.weights + self.biases


def conv_param_count(F: int, D1: int, K: int) -> ParamCount:
    """Parameters of a conv layer with K filters of size F x F x D1 (lecture 5).

    "With parameter sharing, it introduces F*F*D1 weights per filter, for a
    total of (F*F*D1)*K weights and K biases."

    >>> conv_param_count(5, 1, 6)      # LeNet-5's C1
    ParamCount(weights=150, biases=6)
    """
    F, D1, K = (check_positive(value, name, integer=True) for name, value in (("F", F), ("D1", D1), ("K", K)))
    return ParamCount(weights=F * F * D1 * K, biases=K)


def receptive_field_sizes(kernel_sizes: list[int], strides: list[int]) -> list[int]:
    """Receptive field r_q, in input pixels along one axis, after each layer q = 1, 2, ... (lecture 5):
    layer q's filter widens it by F_q - 1 steps of the layer below, a step being the product of the
    strides under it:      r_0 = 1,   r_q = r_{q-1} + (F_q - 1) * S_1 * ... * S_{q-1}"""
    if len(kernel_sizes) != len(strides):
        raise ValueError(f"{len(kernel_sizes)} kernel sizes but {len(strides)} strides")
    r, jump, sizes = 1, 1, []                  # jump = S_1 * ... * S_{q-1}: input pixels per step of layer q-1
    for F, S in zip(kernel_sizes, strides):
        r += (check_int(F, "filter size F", 1) - 1) * jump
        jump *= check_int(S, "stride S", 1)
        sizes.append(r)
    return sizes


def receptive_field_1d(n_inputs: int, F: int, S: int, n_layers: int) -> list[list[int]]:
    """Which neurons of each layer feed the middle neuron of the top one (1-D, no padding): ``cone[q]``,
    sorted indices in layer q; ``cone[0]`` is the receptive field in the input, ``cone[-1]`` the neuron."""
    widths = [n_inputs]                                        # neurons per layer, the input first
    for _ in range(n_layers):
        widths.append(conv_output_size(widths[-1], F, 0, S, floor=True))
    cone = [[widths[-1] // 2]]
    for _ in range(n_layers):  # neuron j of a layer reads j*S .. j*S + F - 1 of the layer below
        cone.insert(0, sorted({j * S + u for j in cone[0] for u in range(F)}))
    return cone


def conv_geometry(x: np.ndarray, KH: int, KW: int, stride, padding):
    """Check stride/padding; return ``(SH, SW), (PH, PW), (H_out, W_out)`` by PyTorch's floor rule."""
    (SH, SW), (PH, PW) = pair(stride, "stride", 1), pair(padding, "padding", 0)
    W_out = conv_output_size(x.shape[3], KW, PW, SW, floor=True)    # the width first: the lecture's W
    H_out = conv_output_size(x.shape[2], KH, PH, SH, floor=True, axis="height")
    return (SH, SW), (PH, PW), (H_out, W_out)


def check_conv_backward(dout, x, w, stride, padding):
    """``check_conv``, then dout against the forward output's shape; returns ``dout, x, w, geometry``."""
    x, w, _ = check_conv(x, w)
    dout = check_array(dout, "dout", 4, "(N, K, H_out, W_out)")
    geometry = conv_geometry(x, *w.shape[2:], stride, padding)
    out_shape = (x.shape[0], w.shape[0], *geometry[2])
    if dout.shape != out_shape:
        raise ValueError(f"dout has shape {dout.shape}, but the forward output of x {x.shape} "
                         f"and w {w.shape} has shape {out_shape}")
    return dout, x, w, geometry


# ---------------------------------------- 2. Padding and 3. the definition

def pad2d(x: np.ndarray, P) -> np.ndarray:
    """Zero-pad x (N, C, H, W) by P (an int or (PH, PW)) on each side: a new (N, C, H + 2PH, W + 2PW).

    "A padding of size P increases both the length and width of input by 2P."
    """
    x = check_array(x, "x", 4, "(N, C, H, W)", "zero padding")
    PH, PW = pair(P, "padding", 0)
    return np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))


def conv2d_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                 stride=1, padding=0) -> np.ndarray:
    """Convolution by its definition: for every image, filter and output
    position, the dot product of the filter with the window under it, plus bias.

        out[n, k, i, j] = b[k] + sum_{c, u, v} xp[n, c, i*SH + u, j*SW + v] * w[k, c, u, v]

    x : ndarray, shape (N, C, H, W);  w : ndarray, shape (K, C, KH, KW)
    b : ndarray, shape (K,), or None;  stride, padding : int or (height, width) pair
    returns : out, ndarray, shape (N, K, H_out, W_out), H_out = (H - KH + 2PH)//SH + 1
    """
    x, w, b = check_conv(x, w, b)
    N, K, (KH, KW) = x.shape[0], w.shape[0], w.shape[2:]
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    xp = pad2d(x, (PH, PW))
    out = np.zeros((N, K, H_out, W_out), dtype=np.result_type(x, w))
    for n in range(N):
        for k in range(K):
            for i in range(H_out):
                for j in range(W_out):
                    window = xp[n, :, i * SH:i * SH + KH, j * SW:j * SW + KW]  # (C, KH, KW)
                    out[n, k, i, j] = np.sum(window * w[k])
            if b is not None:
                out[n, k] += b[k]
    return out


# ---------------------------------------- 4. and 5. Convolution as a matrix operation: im2col, col2im, one matmul

def offset_view(xp: np.ndarray, u: int, v: int, SH: int, SW: int, H_out: int, W_out: int) -> np.ndarray:
    """Element (u, v) of every window, ``xp[:, :, i*SH + u, j*SW + v]``: a view (N, C, H_out, W_out), no copy."""
    return xp[:, :, u:u + SH * (H_out - 1) + 1:SH, v:v + SW * (W_out - 1) + 1:SW]


def im2col(x: np.ndarray, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Unroll every receptive field into a column: ``torch.nn.functional.unfold``.

    x : ndarray, shape (N, C, H, W);  kernel_size, stride, padding : int or (height, width) pair
    returns : cols, a new ndarray, shape (N, C*KH*KW, L) with L = H_out*W_out.
        Row ``c*KH*KW + u*KW + v`` holds input pixel (c, u, v) of each window;
        column ``i*W_out + j`` is the window of output position (i, j).
        Every input pixel is copied once per window that covers it, up to
        KH*KW times: that is the memory price of turning convolution into GEMM.
    """
    x = check_array(x, "x", 4, "(N, C, H, W)")
    KH, KW = pair(kernel_size, "kernel_size", 1)
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    N, C = x.shape[:2]
    xp = pad2d(x, (PH, PW))
    cols = np.empty((N, C, KH, KW, H_out, W_out), dtype=x.dtype)      # [n, c, u, v, i, j]
    for u in range(KH):
        for v in range(KW):                                           # pixel (u, v) of every window
            cols[:, :, u, v] = offset_view(xp, u, v, SH, SW, H_out, W_out)
    return cols.reshape(N, C * KH * KW, H_out * W_out)                # (N, C*KH*KW, L)


def col2im(cols: np.ndarray, output_size, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Fold columns back into an image, summing overlaps: ``torch.nn.functional.fold``, the adjoint of
    ``im2col``: every number goes back to the pixel it was copied from (a pixel in several windows: their sum).

    cols : ndarray, shape (N, C*KH*KW, L), im2col's layout
    output_size : (H, W) of the unpadded image;  kernel_size, stride, padding : as given to im2col
    returns : a new ndarray, shape (N, C, H, W). ``col2im(im2col(x))`` is x times
        the number of windows covering each pixel, not x itself.
    """
    cols = check_array(cols, "cols", 3, "(N, C*KH*KW, L)")
    H, W = pair(output_size, "output_size", 1)
    KH, KW = pair(kernel_size, "kernel_size", 1)
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(np.empty((1, 1, H, W)), KH, KW, stride, padding)  # shape only
    N, CKK, L = cols.shape
    if CKK % (KH * KW) or L != H_out * W_out:
        raise ValueError(f"cols has shape {cols.shape}, but a {KH}x{KW} kernel over {H}x{W} with stride "
                         f"{(SH, SW)} and padding {(PH, PW)} gives (N, C*{KH * KW}, {H_out}*{W_out} = {H_out * W_out})")
    C = CKK // (KH * KW)
    windows = cols.reshape(N, C, KH, KW, H_out, W_out)                # [n, c, u, v, i, j]
    xp = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=cols.dtype)
    for u in range(KH):
        for v in range(KW):                                           # add pixel (u, v) of every window back
            offset_view(xp, u, v, SH, SW, H_out, W_out)[...] += windows[:, :, u, v]
    return xp[:, :, PH:PH + H, PW:PW + W].copy()                      # drop the padding


def conv2d_im2col(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                  stride=1, padding=0) -> np.ndarray:
    """Convolution as im2col + matrix multiply, in ``F.unfold``'s layout.

        out[n] = W_row @ cols[n] + b,   W_row = w.reshape(K, C*KH*KW)

    Parameters and result as ``conv2d_naive``. Its N small per-image matmuls are
    why the tuned ``conv2d`` puts the whole batch in ONE matrix and ONE GEMM.
    """
    x, w, b = check_conv(x, w, b)
    N, K, (KH, KW) = x.shape[0], w.shape[0], w.shape[2:]
    _, _, (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    cols = im2col(x, (KH, KW), stride, padding)              # (N, C*KH*KW, L)
    out = w.reshape(K, -1) @ cols                             # (K, C*KH*KW) @ (N, C*KH*KW, L) -> (N, K, L)
    if b is not None:
        out += b[:, None]
    return out.reshape(N, K, H_out, W_out)


# ---------------------------------------- 6. Backward pass: the definition, then matrix multiplies

def conv2d_backward_naive(dout: np.ndarray, x: np.ndarray, w: np.ndarray,
                          stride=1, padding=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a convolution by its definition: ``conv2d_naive``'s loops, differentiated.

    Output (n, k, i, j) is ``b[k] + sum(window * w[k])``, so its upstream gradient g = dout[n, k, i, j]
    adds g * window to dw[k], g * w[k] to the window's pixels in dxp (dx, padded) and g to db[k].

    dout : ndarray, shape (N, K, H_out, W_out), dLoss/dout;  stride, padding : as in the forward pass
    x : ndarray, shape (N, C, H, W), the forward input;  w : ndarray, shape (K, C, KH, KW)
    returns : dx (N, C, H, W), x's dtype;  dw (K, C, KH, KW), w's dtype;  db (K,), dout's dtype
    """
    dout, x, w, ((SH, SW), (PH, PW), (H_out, W_out)) = check_conv_backward(dout, x, w, stride, padding)
    (N, _, H, W), (K, _, KH, KW) = x.shape, w.shape
    xp = pad2d(x, (PH, PW))
    dxp, dw, db = np.zeros_like(xp), np.zeros_like(w), np.zeros(K, dtype=dout.dtype)
    for n in range(N):
        for k in range(K):
            for i in range(H_out):
                for j in range(W_out):
                    g, rows, cols = dout[n, k, i, j], slice(i * SH, i * SH + KH), slice(j * SW, j * SW + KW)
                    dw[k] += g * xp[n, :, rows, cols]                 # (C, KH, KW)
                    dxp[n, :, rows, cols] += g * w[k]
                    db[k] += g
    return dxp[:, :, PH:PH + H, PW:PW + W].copy(), dw, db


def conv2d_backward_im2col(dout: np.ndarray, x: np.ndarray, w: np.ndarray,
                           stride=1, padding=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a convolution by matrix multiplies (parameters and results as ``conv2d_backward_naive``).

    With the N images' im2col columns side by side, cols (C*KH*KW, N*L), the
    forward pass is out_mat = W_row @ cols + b (out as a (K, N*L) matrix), and
    the matrix-multiply rule (for Y = A @ B: dA = dY @ B.T, dB = A.T @ dY) gives

        dW_row = dout_mat @ cols.T      db = dout summed over N, H_out, W_out
        dcols  = W_row.T @ dout_mat     dx = col2im(dcols)   (overlaps summed)
    """
    dout, x, w, (_, _, (H_out, W_out)) = check_conv_backward(dout, x, w, stride, padding)
    (N, C, H, W), (K, _, KH, KW), L = x.shape, w.shape, H_out * W_out
    cols = im2col(x, (KH, KW), stride, padding)                          # (N, C*KH*KW, L)
    cols = cols.transpose(1, 0, 2).reshape(C * KH * KW, N * L)           # (C*KH*KW, N*L), images side by side
    dout_mat = dout.reshape(N, K, L).transpose(1, 0, 2).reshape(K, N * L)   # (K, N*L)
    w_row = w.reshape(K, C * KH * KW)                                    # (K, C*KH*KW)
    dw = (dout_mat @ cols.T).reshape(K, C, KH, KW)                       # dW_row, as (K, C, KH, KW)
    db = dout_mat.sum(axis=1)                                            # (K,)
    dcols = w_row.T @ dout_mat                                           # (C*KH*KW, N*L)
    dcols = dcols.reshape(C * KH * KW, N, L).transpose(1, 0, 2)          # (N, C*KH*KW, L), im2col's layout
    dx = col2im(dcols, (H, W), (KH, KW), stride, padding)                # (N, C, H, W)
    return dx.astype(x.dtype, copy=False), dw.astype(w.dtype, copy=False), db
