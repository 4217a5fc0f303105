"""The convolution layer, from the lecture's formulas to a fast im2col GEMM.

Reading order
-------------
1. ``conv_output_size`` and ``conv_param_count``: the lecture's "Convolution
   Summary" slide, ``W2 = (W1 - F + 2P)/S + 1`` and ``(F*F*D1)*K`` weights.
2. ``pad2d``: the "Padding example" slide (a 7x7 input with P=2 is 11x11).
3. ``conv2d_naive``: the definition, four loops. Slow, obviously right.
4. ``im2col`` / ``col2im``: "Convolution as a Matrix Operation"; exactly
   ``torch.nn.functional.unfold`` / ``fold``'s layout (N, C*KH*KW, L).
5. ``conv2d_im2col``: convolution = im2col + a batched matrix multiply (one
   small matmul per image), in that layout.
6. ``conv2d``: the same rows with the whole batch side by side in the columns,
   so ONE large GEMM covers every image; what the benchmark measures. Its
   copies are split over the cores (``course_lib.threads``) and its big
   temporaries reuse scratch memory (``_scratch``).
7. ``conv2d_backward``: dx, dw, db by the same matrix multiplies, transposed.

Conventions follow PyTorch (NCHW input, (K, C, KH, KW) weights, padding P on
each side, stride and padding an int or an (H, W) pair), so each function
equals its ``torch.nn.functional`` twin. Like PyTorch, ``conv2d`` floors the
output size when ``(W - F + 2P)/S`` is not an integer (the last columns that
do not fit a whole window are dropped); ``conv_output_size`` itself is strict,
as the lecture is, and says so with the arithmetic.

Symbols are those of ``course_lib`` (N, C, H, W, K, KH, KW, S, P, H_out, W_out, L).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from course_lib.checks import check_array, pair
from course_lib.threads import for_each_slice


# The 7x7 input of the lecture's "Padding example" slide (P = 2 makes it 11x11).
LECTURE_PADDING_EXAMPLE = np.array([
    [6, 3, 4, 4, 5, 0, 3],
    [4, 7, 4, 0, 4, 0, 4],
    [7, 0, 2, 3, 4, 5, 2],
    [3, 7, 5, 0, 3, 0, 7],
    [5, 8, 1, 2, 5, 4, 2],
    [8, 0, 1, 0, 6, 0, 0],
    [6, 4, 1, 3, 0, 4, 5]], dtype=np.float64)
LECTURE_PADDING_EXAMPLE.flags.writeable = False


# --------------------------------------------------------------------------
# 1. Sizes and parameter counts (the "Convolution Summary" slide)
# --------------------------------------------------------------------------

def conv_output_size(W: int, F: int, P: int = 0, S: int = 1, *, floor: bool = False,
                     window: str = "filter", axis: str = "width") -> int:
    """Output width of a convolution: ``W2 = (W1 - F + 2P)/S + 1`` (lecture 5).

    Parameters
    ----------
    W : input width (or height), W1 on the slide
    F : filter width (or height)
    P : zero padding added on each side
    S : stride
    floor : if False (the lecture's rule) a non-integer result is an error;
        if True, round down as PyTorch does (windows that do not fit are dropped).
    window : what slides, for the error messages ("filter"; pooling says "pooling window")
    axis : "width" or "height", the axis the error messages name (the input
        size is then called W or H)

    Returns
    -------
    W2 : int, at least 1

    Raises
    ------
    ValueError, showing the arithmetic, if the result is not a positive integer.
    """
    if axis not in ("width", "height"):
        raise ValueError(f"conv_output_size: axis must be 'width' or 'height', got {axis!r}")
    X, size = ("W", "size") if axis == "width" else ("H", "height")   # for the messages
    for name, value, low in ((X, W, 1), ("F", F, 1), ("P", P, 0), ("S", S, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"conv_output_size: {name} must be an int, got {value!r} "
                            f"({type(value).__name__})")
        if value < low:
            what = {X: f"input {size}", "F": f"{window} {size}", "P": "padding", "S": "stride"}[name]
            raise ValueError(f"conv_output_size: {what} {name} = {value} must be >= {low}")
    formula = f"({X} - F + 2P)/S + 1 = ({W} - {F} + 2*{P})/{S} + 1"
    padded = W + 2 * P
    if F > padded:
        advice = f"a smaller {window}" + (" or more padding" if window == "filter" else "")
        raise ValueError(f"{window} {size} F = {F} is larger than the padded input {X} + 2P = "
                         f"{W} + 2*{P} = {padded}: {formula} = {(W - F + 2 * P) / S + 1:g} "
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
    for name, value in (("F", F), ("D1", D1), ("K", K)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"conv_param_count: {name} must be a positive int, got {value!r}")
    return ParamCount(weights=int(F * F * D1 * K), biases=int(K))


# --------------------------------------------------------------------------
# Input checks: every public function below goes through these, once.
# --------------------------------------------------------------------------

def _conv_geometry(x: np.ndarray, KH: int, KW: int, stride, padding):
    """Check stride/padding and return ``(SH, SW), (PH, PW), (H_out, W_out)``, PyTorch's floor rule."""
    (SH, SW), (PH, PW) = pair(stride, "stride", 1), pair(padding, "padding", 0)
    H, W = x.shape[2:]
    W_out = conv_output_size(W, KW, PW, SW, floor=True)      # the width first: the lecture's W
    H_out = conv_output_size(H, KH, PH, SH, floor=True, axis="height")
    return (SH, SW), (PH, PW), (H_out, W_out)


def _check_conv(x, w, b=None):
    """Shapes, dtypes and the channel match of a convolution's operands."""
    x = check_array(x, "x", 4, "(N, C, H, W)")
    w = check_array(w, "w", 4, "(K, C, KH, KW)")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"channel mismatch: x has C = {x.shape[1]} channels (shape {x.shape}) "
                         f"but w expects {w.shape[1]} (shape {w.shape} is (K, C, KH, KW))")
    if b is not None:
        b = check_array(b, "b", 1, "(K,)")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b has {b.shape[0]} entries but there are K = {w.shape[0]} filters")
    return x, w, b


# --------------------------------------------------------------------------
# 2. Padding
# --------------------------------------------------------------------------

def pad2d(x: np.ndarray, P) -> np.ndarray:
    """Zero-pad the last two axes by P on each side ("a padding of size P
    increases both the length and width of input by 2P").

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    P : int or (PH, PW), padding per side

    Returns
    -------
    xp : new ndarray, shape (N, C, H + 2PH, W + 2PW); x is not modified
    """
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"pad2d expects an ndarray of shape (N, C, H, W), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    PH, PW = pair(P, "padding", 0)
    return np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))


# --------------------------------------------------------------------------
# 3. The definition
# --------------------------------------------------------------------------

def conv2d_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                 stride=1, padding=0) -> np.ndarray:
    """Convolution by its definition: for every image, filter and output
    position, the dot product of the filter with the window under it, plus bias.

        out[n, k, i, j] = b[k] + sum_{c, u, v} xp[n, c, i*SH + u, j*SW + v] * w[k, c, u, v]

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (K, C, KH, KW)
    b : ndarray, shape (K,), or None
    stride, padding : int or (height, width) pair

    Returns
    -------
    out : ndarray, shape (N, K, H_out, W_out), H_out = (H - KH + 2PH)//SH + 1
    """
    x, w, b = _check_conv(x, w, b)
    N, K, (KH, KW) = x.shape[0], w.shape[0], w.shape[2:]
    (SH, SW), (PH, PW), (H_out, W_out) = _conv_geometry(x, KH, KW, stride, padding)
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


# --------------------------------------------------------------------------
# 4. im2col / col2im: convolution as a matrix operation
# --------------------------------------------------------------------------

def _windows(xp: np.ndarray, KH: int, KW: int, SH: int, SW: int, H_out: int, W_out: int) -> np.ndarray:
    """A read-only *view* of every window of a padded input: no data is copied.

    xp : (N, C, Hp, Wp), any strides
    returns : (N, C, KH, KW, H_out, W_out); element [n, c, u, v, i, j] is
              xp[n, c, i*SH + u, j*SW + v], pixel (u, v) of the window of output (i, j)
    """
    sN, sC, sH, sW = xp.strides
    return as_strided(xp, shape=(*xp.shape[:2], KH, KW, H_out, W_out),
                      strides=(sN, sC,
                               sH, sW,              # inside the window: the next row, the next column
                               sH * SH, sW * SW),   # the next window: SH rows down, SW columns right
                      writeable=False)


def im2col(x: np.ndarray, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Unroll every receptive field into a column: ``torch.nn.functional.unfold``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size, stride, padding : int or (height, width) pair

    Returns
    -------
    cols : ndarray, shape (N, C*KH*KW, L) with L = H_out*W_out.
        Row ``c*KH*KW + u*KW + v`` holds input pixel (c, u, v) of each window;
        column ``i*W_out + j`` is the window of output position (i, j).
        Every input pixel is copied once per window that covers it, up to
        KH*KW times: that is the memory price of turning convolution into GEMM.
    """
    x = check_array(x, "x", 4, "(N, C, H, W)")
    KH, KW = pair(kernel_size, "kernel_size", 1)
    (SH, SW), (PH, PW), (H_out, W_out) = _conv_geometry(x, KH, KW, stride, padding)
    N, C = x.shape[:2]
    windows = _windows(pad2d(x, (PH, PW)), KH, KW, SH, SW, H_out, W_out)  # (N, C, KH, KW, H_out, W_out), a view
    cols = np.empty((N, C * KH * KW, H_out * W_out), dtype=x.dtype)       # (N, C*KH*KW, L)
    cols.reshape(N, C, KH, KW, H_out, W_out)[...] = windows               # the copy (always: never a view)
    return cols


def col2im(cols: np.ndarray, output_size, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Fold columns back into an image, summing overlaps: ``torch.nn.functional.fold``.

    Parameters
    ----------
    cols : ndarray, shape (N, C*KH*KW, L), im2col's layout
    output_size : (H, W) of the unpadded image
    kernel_size, stride, padding : as given to im2col

    Returns
    -------
    x : ndarray, shape (N, C, H, W). ``col2im(im2col(x))`` is x times the
        number of windows covering each pixel, not x itself.
    """
    cols = check_array(cols, "cols", 3, "(N, C*KH*KW, L)")
    H, W = pair(output_size, "output_size", 1)
    KH, KW = pair(kernel_size, "kernel_size", 1)
    probe = np.empty((1, 1, H, W), dtype=cols.dtype)  # only its shape is read
    (SH, SW), (PH, PW), (H_out, W_out) = _conv_geometry(probe, KH, KW, stride, padding)
    N, CKK, L = cols.shape
    if CKK % (KH * KW) or L != H_out * W_out:
        raise ValueError(f"cols has shape {cols.shape}, but a {KH}x{KW} kernel over {H}x{W} with "
                         f"stride {(SH, SW)} and padding {(PH, PW)} gives (N, C*{KH * KW}, "
                         f"{H_out}*{W_out} = {H_out * W_out})")
    dcols = cols.reshape(N, CKK // (KH * KW), KH, KW, H_out, W_out)     # [n, c, u, v, i, j]
    return _fold_batched(dcols.transpose(1, 2, 3, 0, 4, 5), H, W, SH, SW, PH, PW)


# --------------------------------------------------------------------------
# 5. and 6. Convolution as one matrix multiply
# --------------------------------------------------------------------------

def conv2d_im2col(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                  stride=1, padding=0) -> np.ndarray:
    """Convolution as im2col + matrix multiply, in ``F.unfold``'s layout.

        out[n] = W_row @ cols[n] + b,   W_row = w.reshape(K, C*KH*KW)

    Parameters and result as ``conv2d_naive``. Correct and readable; its N
    small per-image matmuls are why ``conv2d`` puts the whole batch in the
    columns of one matrix and makes a single large GEMM instead.
    """
    x, w, b = _check_conv(x, w, b)
    N, K, (KH, KW) = x.shape[0], w.shape[0], w.shape[2:]
    _, _, (H_out, W_out) = _conv_geometry(x, KH, KW, stride, padding)
    cols = im2col(x, (KH, KW), stride, padding)              # (N, C*KH*KW, L)
    out = w.reshape(K, -1) @ cols                             # (K, C*KH*KW) @ (N, C*KH*KW, L) -> (N, K, L)
    if b is not None:
        out += b[:, None]
    return out.reshape(N, K, H_out, W_out)


_scratch_arrays = threading.local()   # per thread: {role: 1-D uint8 buffer}


def _scratch(role: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array for a temporary, reused from call to call (per thread).

    Fresh memory is not free: the operating system maps it in one page
    fault (and one zeroed 4 KiB page) at a time. With fresh temporaries,
    LeNet C1's backward pass (64 images) took 1,750 page faults per call on
    the course machine, and 6.6 ms instead of 3.0 ms. So the big temporaries
    (columns, their gradient, the GEMM's output) live in one buffer per role
    that grows to the largest size seen, like cuDNN's "workspace". Nothing
    returned to the caller lives here. The price: the buffers stay allocated
    while the thread lives (260 MiB after the benchmark's ResNet layer at
    batch 16; 12 MiB after LeNet-5's C1 and C3 at batch 64).
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffers = _scratch_arrays.__dict__
    if role not in buffers or buffers[role].nbytes < nbytes:
        buffers[role] = np.empty(nbytes, dtype=np.uint8)
    return buffers[role][:nbytes].view(dtype).reshape(shape)


def release_scratch() -> int:
    """Free this thread's scratch buffers (see ``_scratch``); returns how many bytes they held."""
    held = sum(buf.nbytes for buf in _scratch_arrays.__dict__.values())
    _scratch_arrays.__dict__.clear()
    return held


def _unfold_batched(x: np.ndarray, KH: int, KW: int, SH: int, SW: int, PH: int, PW: int,
                    H_out: int, W_out: int) -> np.ndarray:
    """im2col of the whole batch as ONE matrix: ``F.unfold``'s rows, with the batch in the columns.

    x : (N, C, H, W)
    returns : cols (C*KH*KW, N*L), L = H_out*W_out, a scratch array (see ``_scratch``).
              Row (c, u, v), column (n, i, j) holds xp[n, c, i*SH + u, j*SW + v],
              where xp is x zero-padded. Rows are ordered like ``w.reshape(K, C*KH*KW)``.

    Row (c, u, v) is the input plane c shifted by (u, v) and subsampled by
    the stride, so (at stride 1) it is gathered in contiguous runs of W_out
    numbers. The images are split between the cores (``for_each_slice``).
    """
    N, C, H, W = x.shape
    xp = x
    if PH or PW:
        xp = _scratch("padded", (N, C, H + 2 * PH, W + 2 * PW), x.dtype)

        def pad(s: slice) -> None:               # zero the border, copy the inside
            xp[s, :, :PH] = 0
            xp[s, :, PH + H:] = 0
            xp[s, :, PH:PH + H, :PW] = 0
            xp[s, :, PH:PH + H, PW + W:] = 0
            xp[s, :, PH:PH + H, PW:PW + W] = x[s]
        for_each_slice(pad, N, 2 * xp.nbytes)
    windows = _windows(xp, KH, KW, SH, SW, H_out, W_out).transpose(1, 2, 3, 0, 4, 5)  # a view [c, u, v, n, i, j]
    cols = _scratch("cols", windows.shape, x.dtype)

    def copy(s: slice) -> None:
        cols[:, :, :, s] = windows[:, :, :, s]
    for_each_slice(copy, N, 2 * cols.nbytes)
    return cols.reshape(C * KH * KW, N * H_out * W_out)


def _fold_batched(dcols: np.ndarray, H: int, W: int, SH: int, SW: int, PH: int, PW: int) -> np.ndarray:
    """The adjoint of im2col (``col2im``'s core): add every window element back to its pixel.

    dcols : (C, KH, KW, N, H_out, W_out), any strides (``col2im`` passes a transposed view)
    returns : new (N, C, H, W), C-contiguous; a pixel covered by several windows gets their sum
    """
    C, KH, KW, N, H_out, W_out = dcols.shape
    padded = (N, C, H + 2 * PH, W + 2 * PW)    # (the "padded" buffer may be the one _unfold_batched
    dxp = _scratch("padded", padded, dcols.dtype) if PH or PW else np.empty(padded, dtype=dcols.dtype)
    #                                             filled: cols was copied out of it long before)

    def add(s: slice) -> None:   # KH*KW slice additions for this thread's images
        dxp[s] = 0
        for u in range(KH):
            for v in range(KW):
                dxp[s, :, u:u + SH * (H_out - 1) + 1:SH, v:v + SW * (W_out - 1) + 1:SW] += \
                    dcols[:, u, v, s].transpose(1, 0, 2, 3)
    for_each_slice(add, N, 2 * dcols.nbytes)
    if not (PH or PW):
        return dxp
    dx = np.empty((N, C, H, W), dtype=dxp.dtype)

    def crop(s: slice) -> None:
        dx[s] = dxp[s, :, PH:PH + H, PW:PW + W]
    for_each_slice(crop, N, 2 * dx.nbytes)
    return dx


def _swap_batch_and_channels(a: np.ndarray, bias: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """(A, B, L) -> C-contiguous (B, A, L), plus ``bias[a]`` if given; the B rows split between cores.

    Moves between the GEMM's (K, N*L) output and NCHW's (N, K, L), in both
    directions. ``out``: where to write, a new array when None.
    """
    A, B, L = a.shape
    if out is None:
        out = np.empty((B, A, L), dtype=a.dtype)   # a float64 bias does not promote a float32 output

    def swap(s: slice) -> None:
        if bias is None:
            out[s] = a[:, s].transpose(1, 0, 2)
        else:
            np.add(a[:, s].transpose(1, 0, 2), bias[:, None], out=out[s])
    for_each_slice(swap, B, 2 * out.nbytes)
    return out


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
           stride=1, padding=0) -> np.ndarray:
    """Fast convolution: im2col of the whole batch, then ONE matrix multiply.

        out[:, n] = W_row @ cols[:, n-th block] + b,    W_row = w.reshape(K, C*KH*KW)

    ``conv2d_im2col`` multiplies N small matrices, one per image. Here the
    batch moves into the columns of one matrix, so a single GEMM covers it:
      1. cols = (C*KH*KW, N*L): ``F.unfold``'s rows, the N images side by side;
      2. one GEMM, W_row (K, C*KH*KW) @ cols -> (K, N*L);
      3. swap the K and N axes back to NCHW, adding the bias on the way.
    Steps 1 and 3 are copies that numpy would do on one core while the GEMM
    uses them all; they are split between the cores, the images shared out
    among them (``course_lib.threads``).
    Equal to ``F.conv2d`` (float32: to rounding).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (K, C, KH, KW)
    b : ndarray, shape (K,), or None
    stride, padding : int or (height, width) pair

    Returns
    -------
    out : ndarray, shape (N, K, H_out, W_out), C-contiguous
    """
    x, w, b = _check_conv(x, w, b)
    N, K, (KH, KW) = x.shape[0], w.shape[0], w.shape[2:]
    (SH, SW), (PH, PW), (H_out, W_out) = _conv_geometry(x, KH, KW, stride, padding)
    cols = _unfold_batched(x, KH, KW, SH, SW, PH, PW, H_out, W_out)   # (C*KH*KW, N*L), the copy
    w_row = w.reshape(K, -1)                                          # (K, C*KH*KW)
    out_mat = _scratch("out", (K, cols.shape[1]), np.result_type(w, cols))
    np.matmul(w_row, cols, out=out_mat)                               # (K, N*L), the one GEMM
    out = _swap_batch_and_channels(out_mat.reshape(K, N, H_out * W_out), b)   # new (N, K, L), + b
    return out.reshape(N, K, H_out, W_out)


# --------------------------------------------------------------------------
# 7. Backward pass
# --------------------------------------------------------------------------

def conv2d_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray,
                    stride=1, padding=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a convolution, given the upstream gradient ``dout``.

    With ``cols`` and ``W_row`` as in ``conv2d`` (forward: out = W_row @ cols + b,
    out as a (K, N*L) matrix), the matrix-multiply rule (for Y = A @ B:
    dA = dY @ B.T and dB = A.T @ dY) gives

        dW_row = dout_mat @ cols.T      db = dout summed over N, H_out, W_out
        dcols  = W_row.T @ dout_mat     dx = col2im(dcols)   (overlaps summed)

    with ``dout_mat`` = dout as a (K, N*L) matrix.

    Parameters
    ----------
    dout : ndarray, shape (N, K, H_out, W_out), dLoss/dout
    x : ndarray, shape (N, C, H, W), the forward input
    w : ndarray, shape (K, C, KH, KW)
    stride, padding : as in the forward pass

    Returns
    -------
    dx : (N, C, H, W), x's dtype;  dw : (K, C, KH, KW), w's dtype;  db : (K,), dout's dtype
    """
    x, w, _ = _check_conv(x, w)
    dout = check_array(dout, "dout", 4, "(N, K, H_out, W_out)")
    (N, C, H, W), K, (KH, KW) = x.shape, w.shape[0], w.shape[2:]
    (SH, SW), (PH, PW), (H_out, W_out) = _conv_geometry(x, KH, KW, stride, padding)
    if dout.shape != (N, K, H_out, W_out):
        raise ValueError(f"dout has shape {dout.shape}, but the forward output of x {x.shape} "
                         f"and w {w.shape} has shape {(N, K, H_out, W_out)}")
    cols = _unfold_batched(x, KH, KW, SH, SW, PH, PW, H_out, W_out)       # (C*KH*KW, N*L)
    L = H_out * W_out
    dout_mat = _swap_batch_and_channels(dout.reshape(N, K, L),            # (K, N*L)
                                        out=_scratch("dout", (K, N, L), dout.dtype)).reshape(K, N * L)
    db = dout_mat.sum(axis=1)                                             # (K,)
    dw = np.asarray((cols @ dout_mat.T).T, dtype=w.dtype, order="C")      # dW_row, as (dW_row.T).T:
    dw = dw.reshape(K, C, KH, KW)                                         # OpenBLAS is faster at cols @ dout_mat.T
    w_row = w.reshape(K, -1)                                              # (K, C*KH*KW)
    dcols = _scratch("dcols", cols.shape, x.dtype)                        # each gradient in its variable's dtype
    np.matmul(w_row.T, dout_mat, out=dcols)                               # (C*KH*KW, N*L)
    dx = _fold_batched(dcols.reshape(C, KH, KW, N, H_out, W_out), H, W, SH, SW, PH, PW)
    return dx, dw, db
