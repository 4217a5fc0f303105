"""The tuned convolution: ``conv2d`` and ``conv2d_backward``, as LeNet-5 and the benchmarks use them.

Not the lecture. ``course_lib.conv`` holds the algorithm (im2col, one matrix
multiply, its transposes for the backward pass); this module computes the same
thing, faster, in four ways a student need not read:

* the whole batch in the columns of ONE matrix, so one large GEMM covers it
  (``unfold_batched``), instead of ``conv2d_im2col``'s N small ones;
* on wide, tall layers (``takes_row_shift``) each pixel is copied KW times instead
  of KH*KW times (``conv2d_row_shift``): im2col along the width only, then KH
  matrix multiplies that add into one output; at stride 1 the backward pass
  too (``conv2d_backward_row_shift``), with no column matrix of its gradient;
* the copies before and after the GEMM split over the cores
  (``course_lib.machinery.threads``): numpy would do them on one core while
  the GEMM uses them all;
* the big temporaries in a ``Workspace`` the caller may lend and reuse from
  call to call, instead of fresh memory on every call (page faults).

``conv2d(..., workspace=None)`` allocates fresh temporaries; the results are
the same bit for bit with or without a workspace, and never live in one.
Equal to ``F.conv2d`` and its autograd gradients (float32: to rounding).
Symbols are those of ``course_lib`` (N, C, H, W, K, KH, KW, S, P, H_out, W_out, L).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from course_lib.checks import check_conv
from course_lib.conv import check_conv_backward, conv_geometry
from course_lib.machinery.threads import for_each_slice

ROW_SHIFT_MIN_DEPTH = 128  # C*KW from which conv2d may take conv2d_row_shift (LeNet's 5, 30 and 80 stay below)
ROW_SHIFT_MIN_ROWS = 16    # output rows H_out it needs: each image adds (KH-1)//SH rows no output uses


class Workspace:
    """Scratch memory for ``conv2d`` / ``conv2d_backward``, reused from call to call.

    Fresh memory is not free: the operating system maps it in one page fault
    (and one zeroed 4 KiB page) at a time; on a small layer the faults can take
    as long as the arithmetic (measured in docs/benchmarks.md). A caller that convolves again and
    again (``LeNet5`` owns one) may lend a Workspace: the big temporaries
    (columns, their gradient, the GEMM's output) then live in one buffer per
    role that grows to the largest size seen, like cuDNN's "workspace".
    Nothing returned to the caller lives here. The price: the buffers stay
    allocated while the Workspace lives (``nbytes``). One thread at a time:
    give each thread its own.
    """

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}    # role -> 1-D uint8 buffer

    def array(self, role: str, shape: tuple, dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype`` in the buffer of ``role`` (grown if needed)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if role not in self.buffers or self.buffers[role].nbytes < nbytes:
            self.buffers[role] = np.empty(nbytes, dtype=np.uint8)
        return self.buffers[role][:nbytes].view(dtype).reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold."""
        return sum(buf.nbytes for buf in self.buffers.values())

    def __repr__(self) -> str:
        roles = ", ".join(f"{role}: {buf.nbytes:,} B" for role, buf in self.buffers.items())
        return f"Workspace({roles})"


def _temporary(workspace: Workspace | None, role: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised temporary: from ``workspace`` when one is lent, else fresh memory."""
    if workspace is None:
        return np.empty(shape, dtype=dtype)
    return workspace.array(role, shape, dtype)


def _pad_into(dst: np.ndarray, src: np.ndarray, PH: int, PW: int) -> None:
    """Zero padding into memory that exists: dst[..., PH:PH+h, PW:PW+w] = src, zeros around it.

    dst : (..., Hd, Wd), any strides;  src : (..., h, w), the rest of the shape as dst's
    (``conv.pad2d`` does the same into a new array, with np.pad)
    """
    h, w = src.shape[-2:]
    dst[..., :PH, :] = 0
    dst[..., PH + h:, :] = 0
    dst[..., PH:PH + h, :PW] = 0
    dst[..., PH:PH + h, PW + w:] = 0
    dst[..., PH:PH + h, PW:PW + w] = src


def window_view(xp: np.ndarray, KH: int, KW: int, SH: int, SW: int, H_out: int, W_out: int) -> np.ndarray:
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


def unfold_batched(x: np.ndarray, KH: int, KW: int, SH: int, SW: int, PH: int, PW: int,
                   H_out: int, W_out: int, workspace: Workspace | None = None) -> np.ndarray:
    """im2col of the whole batch as ONE matrix: ``F.unfold``'s rows, with the batch in the columns.

    x : (N, C, H, W)
    returns : cols (C*KH*KW, N*L), L = H_out*W_out, in ``workspace`` when one is lent.
              Row (c, u, v), column (n, i, j) holds xp[n, c, i*SH + u, j*SW + v],
              where xp is x zero-padded. Rows are ordered like ``w.reshape(K, C*KH*KW)``.

    Row (c, u, v) is the input plane c shifted by (u, v) and subsampled by
    the stride, so (at stride 1) it is gathered in contiguous runs of W_out
    numbers. The images are split between the cores (``for_each_slice``).
    """
    N, C, H, W = x.shape
    xp = x
    if PH or PW:
        xp = _temporary(workspace, "padded", (N, C, H + 2 * PH, W + 2 * PW), x.dtype)
        for_each_slice(lambda s: _pad_into(xp[s], x[s], PH, PW), N, 2 * xp.nbytes)
    windows = window_view(xp, KH, KW, SH, SW, H_out, W_out).transpose(1, 2, 3, 0, 4, 5)  # a view [c, u, v, n, i, j]
    cols = _temporary(workspace, "cols", windows.shape, x.dtype)

    def copy(s: slice) -> None:
        cols[:, :, :, s] = windows[:, :, :, s]
    for_each_slice(copy, N, 2 * cols.nbytes)
    return cols.reshape(C * KH * KW, N * H_out * W_out)


def _fold_batched(dcols: np.ndarray, H: int, W: int, SH: int, SW: int, PH: int, PW: int,
                  workspace: Workspace | None) -> np.ndarray:
    """The adjoint of ``unfold_batched`` (``col2im``'s work): add every window element back to its pixel.

    dcols : (C, KH, KW, N, H_out, W_out), any strides
    returns : new (N, C, H, W), C-contiguous; a pixel covered by several windows gets their sum
    """
    C, KH, KW, N, H_out, W_out = dcols.shape
    padded = (N, C, H + 2 * PH, W + 2 * PW)    # (the "padded" buffer may be the one unfold_batched
    dxp = _temporary(workspace, "padded", padded, dcols.dtype) if PH or PW else np.empty(padded, dtype=dcols.dtype)
    #                                            filled: cols was copied out of it long before)

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


def _swap_batch_and_channels(a: np.ndarray, bias: np.ndarray | None = None,
                             out: np.ndarray | None = None) -> np.ndarray:
    """(A, B, ...) -> C-contiguous (B, A, ...), plus ``bias[a]`` if given; the B rows split between cores.

    Moves between the GEMM's (K, N*L) output and NCHW's (N, K, L), in both
    directions; ``a`` may be any view (``conv2d_row_shift`` passes one that skips
    the rows no output uses). ``out``: where to write, a new array when None.
    """
    A, B, *rest = a.shape
    order = (1, 0, *range(2, a.ndim))
    if out is None:
        out = np.empty((B, A, *rest), dtype=a.dtype)   # a float64 bias does not promote a float32 output

    def swap(s: slice) -> None:
        if bias is None:
            out[s] = a[:, s].transpose(order)
        else:
            np.add(a[:, s].transpose(order), bias.reshape(A, *[1] * len(rest)), out=out[s])
    for_each_slice(swap, B, 2 * out.nbytes)
    return out


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
           stride=1, padding=0, workspace: Workspace | None = None) -> np.ndarray:
    """Fast convolution: im2col of the whole batch, then ONE matrix multiply.

        out[:, n] = W_row @ cols[:, n-th block] + b,    W_row = w.reshape(K, C*KH*KW)

    ``conv2d_im2col`` multiplies N small matrices, one per image. Here the
    batch moves into the columns of one matrix, so a single GEMM covers it:
      1. cols = (C*KH*KW, N*L): ``F.unfold``'s rows, the N images side by side;
      2. one GEMM, W_row (K, C*KH*KW) @ cols -> (K, N*L);
      3. swap the K and N axes back to NCHW, adding the bias on the way.
    Steps 1 and 3 are copies that numpy would do on one core while the GEMM
    uses them all; they are split between the cores, the images shared out
    among them (``course_lib.machinery.threads``). On wide layers whose kernel rows
    share image rows (``takes_row_shift``: deep and tall enough, KH > SH)
    ``conv2d_row_shift`` computes the same copying each window row once for all KH
    kernel rows. Equal to ``F.conv2d`` (float32: to rounding).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (K, C, KH, KW)
    b : ndarray, shape (K,), or None
    stride, padding : int or (height, width) pair
    workspace : a ``Workspace`` for the temporaries, reused from call to call; None: fresh memory

    Returns
    -------
    out : new ndarray, shape (N, K, H_out, W_out), C-contiguous
    """
    x, w, b = check_conv(x, w, b)
    KH, KW = w.shape[2:]
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    route = conv2d_row_shift if takes_row_shift(x, w, SH, H_out) else conv2d_batched_im2col
    return route(x, w, b, SH, SW, PH, PW, H_out, W_out, workspace)


def conv2d_batched_im2col(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, SH: int, SW: int, PH: int, PW: int,
                          H_out: int, W_out: int, workspace: Workspace | None = None) -> np.ndarray:
    """``conv2d``'s route on narrow layers, steps 1 to 3 of its docstring: the whole batch's
    columns, one GEMM, back to NCHW. Same arguments as ``conv2d_row_shift``; new (N, K, H_out, W_out)."""
    N, K, (KH, KW) = x.shape[0], w.shape[0], w.shape[2:]
    cols = unfold_batched(x, KH, KW, SH, SW, PH, PW, H_out, W_out, workspace)   # (C*KH*KW, N*L), the copy
    w_row = w.reshape(K, -1)                                                     # (K, C*KH*KW)
    out_mat = _temporary(workspace, "out", (K, cols.shape[1]), np.result_type(w, cols))
    np.matmul(w_row, cols, out=out_mat)                                          # (K, N*L), the one GEMM
    out = _swap_batch_and_channels(out_mat.reshape(K, N, H_out * W_out), b)      # new (N, K, L), + b
    return out.reshape(N, K, H_out, W_out)


def conv2d_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray, stride=1, padding=0,
                    workspace: Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a convolution, given the upstream gradient ``dout``: ``conv2d_backward_im2col``, fast.

    With ``cols`` and ``W_row`` as in ``conv2d`` (forward: out = W_row @ cols + b,
    out as a (K, N*L) matrix), the matrix-multiply rule (for Y = A @ B:
    dA = dY @ B.T and dB = A.T @ dY) gives

        dW_row = dout_mat @ cols.T      db = dout summed over N, H_out, W_out
        dcols  = W_row.T @ dout_mat     dx = col2im(dcols)   (overlaps summed)

    with ``dout_mat`` = dout as a (K, N*L) matrix. On wide stride-1 layers
    (``takes_row_shift``) ``conv2d_backward_row_shift`` computes the same without ``cols``.

    Parameters
    ----------
    dout : ndarray, shape (N, K, H_out, W_out), dLoss/dout
    x : ndarray, shape (N, C, H, W), the forward input
    w : ndarray, shape (K, C, KH, KW)
    stride, padding : as in the forward pass
    workspace : as in ``conv2d``

    Returns
    -------
    dx : (N, C, H, W), x's dtype;  dw : (K, C, KH, KW), w's dtype;  db : (K,), dout's dtype
    """
    dout, x, w, ((SH, SW), (PH, PW), (H_out, W_out)) = check_conv_backward(dout, x, w, stride, padding)
    KH, KW = w.shape[2:]
    if takes_row_shift(x, w, SH, H_out) and SH == SW == 1 and PH < KH and PW < KW and dout.dtype == x.dtype:
        return conv2d_backward_row_shift(dout, x, w, PH, PW, workspace)
    return conv2d_backward_batched_im2col(dout, x, w, SH, SW, PH, PW, workspace)


def conv2d_backward_batched_im2col(dout: np.ndarray, x: np.ndarray, w: np.ndarray, SH: int, SW: int,
                                   PH: int, PW: int, workspace: Workspace | None = None
                                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``conv2d_backward``'s route on narrow layers, the rule in its docstring: the whole batch's
    columns, two GEMMs, col2im. Same results as ``conv2d_backward`` after its checks."""
    (N, C, H, W), K, (KH, KW) = x.shape, w.shape[0], w.shape[2:]
    H_out, W_out = dout.shape[2:]
    cols = unfold_batched(x, KH, KW, SH, SW, PH, PW, H_out, W_out, workspace)   # (C*KH*KW, N*L)
    L = H_out * W_out
    dout_mat = _swap_batch_and_channels(dout.reshape(N, K, L),                  # (K, N*L)
                                        out=_temporary(workspace, "dout", (K, N, L), dout.dtype)).reshape(K, N * L)
    db = dout_mat.sum(axis=1)                                                   # (K,)
    dw = np.asarray((cols @ dout_mat.T).T, dtype=w.dtype, order="C")            # dW_row, as (dW_row.T).T: OpenBLAS
    dw = dw.reshape(K, C, KH, KW)                                               # is faster at cols @ dout_mat.T
    w_row = w.reshape(K, -1)                                                    # (K, C*KH*KW)
    dcols = _temporary(workspace, "dcols", cols.shape, x.dtype)                 # each gradient in its variable's dtype
    np.matmul(w_row.T, dout_mat, out=dcols)                                     # (C*KH*KW, N*L)
    dx = _fold_batched(dcols.reshape(C, KH, KW, N, H_out, W_out), H, W, SH, SW, PH, PW, workspace)
    return dx, dw, db


def takes_row_shift(x: np.ndarray, w: np.ndarray, SH: int, H_out: int) -> bool:
    """Whether ``conv2d`` takes ``conv2d_row_shift`` (and, at stride 1, ``conv2d_backward`` takes
    ``conv2d_backward_row_shift``): kernel rows that share image rows (KH > SH: else there is
    nothing to reuse, only an extra copy), products at least ``ROW_SHIFT_MIN_DEPTH`` deep (C*KW:
    shallower ones run slower than one deep product), at least ``ROW_SHIFT_MIN_ROWS`` output rows
    (on short images the rows no output uses are a large share: on LeNet's C5, one output row
    and four unused, the route is several times slower), x and w of one float dtype, and a
    batch and filters to compute. The thresholds come from timings in docs/benchmarks.md."""
    (N, C), (K, _, KH, KW) = x.shape[:2], w.shape
    return (KH > SH and C * KW >= ROW_SHIFT_MIN_DEPTH and H_out >= ROW_SHIFT_MIN_ROWS and N > 0 and K > 0
            and x.dtype == w.dtype and x.dtype in (np.float32, np.float64))


def row_shift_columns(x: np.ndarray, KH: int, KW: int, SH: int, SW: int, PH: int, PW: int,
                      H_out: int, W_out: int, workspace: Workspace | None = None) -> list[np.ndarray]:
    """im2col along the width only, in channels-last order: one matrix per row phase.

    x : (N, C, H, W)
    returns : min(SH, KH) matrices ``cols[a]`` (one per row phase a), each (N*Hq*W_out, KW*C), Hq = H_out + (KH-1)//SH;
              row (n, q, j), column (v, c) holds xp[n, c, SH*q + a, SW*j + v] (xp: x zero-padded,
              zero past its bottom edge too). Each row is KW*C numbers that lie side by side in
              a channels-last copy of xp, so every window row is one contiguous copy.
    """
    N, C, H, W = x.shape
    Hq = H_out + (KH - 1) // SH
    Hx, Wx = SH * Hq, SW * (W_out - 1) + KW          # the padded rows and columns some tap reads
    rows, columns = max(0, min(H, Hx - PH)), max(0, min(W, Wx - PW))
    xh = _temporary(workspace, "channels_last", (N, Hx, Wx, C), x.dtype)
    sN, sH, sW, sC = xh.strides
    windows = [as_strided(xh[:, a:], shape=(N, Hq, W_out, KW, C), strides=(sN, sH * SH, sW * SW, sW, sC),
                          writeable=False) for a in range(min(SH, KH))]
    cols = [_temporary(workspace, f"row_phase_{a}", view.shape, x.dtype) for a, view in enumerate(windows)]

    def copy(s: slice) -> None:
        for n in range(s.start, s.stop):   # one image at a time: its channels-last copy is still in cache
            _pad_into(xh[n].transpose(2, 0, 1), x[n, :, :rows, :columns], PH, PW)   # (C, Hx, Wx) view
            for phase, view in zip(cols, windows):
                phase[n] = view[n]
    for_each_slice(copy, N, 2 * sum(phase.nbytes for phase in cols))
    return [phase.reshape(N * Hq * W_out, KW * C) for phase in cols]


def row_shift_products(cols: list[np.ndarray], w: np.ndarray, SH: int, W_out: int,
                       workspace: Workspace | None = None) -> np.ndarray:
    """The KH matrix multiplies of ``conv2d_row_shift``, added into one (K, M) matrix by BLAS itself.

    cols : from ``row_shift_columns``;  w : (K, C, KH, KW), cols' dtype
    returns : acc (K, M), M = N*Hq*W_out - (KH-1)//SH * W_out, in ``workspace`` when one is lent;
              acc[k, (n, i, j)] is output (n, k, i, j) less the bias, for i < H_out

    Tap row u reads phase u % SH, u // SH rows further down: W_u (K, KW*C) times the
    columns shifted by (u // SH) * W_out positions. numpy's matmul cannot add into
    its output; BLAS's GEMM can (beta = 1), through scipy's interface to it.
    """
    from scipy.linalg.blas import get_blas_funcs   # here, not at the top: importing scipy.linalg is slow
    K, C, KH, KW = w.shape
    M = cols[0].shape[0] - (KH - 1) // SH * W_out
    acc = _temporary(workspace, "acc", (K, M), cols[0].dtype)
    gemm = get_blas_funcs("gemm", (cols[0],))
    for u in range(KH):
        shifted = cols[u % SH][(u // SH) * W_out:(u // SH) * W_out + M]          # (M, KW*C), contiguous
        w_u = np.ascontiguousarray(w[:, :, u, :].transpose(0, 2, 1)).reshape(K, KW * C)   # (K, (v, c))
        # acc.T (M, K), Fortran order, += shifted @ w_u.T: the same memory as acc
        done = gemm(1.0, shifted.T, w_u.T, trans_a=1, beta=0.0 if u == 0 else 1.0, c=acc.T, overwrite_c=1)
        if not np.may_share_memory(done, acc):
            raise RuntimeError("BLAS wrote the product to a copy of the output: scipy's GEMM interface changed")
    return acc


def conv2d_row_shift(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, SH: int, SW: int, PH: int, PW: int,
                     H_out: int, W_out: int, workspace: Workspace | None = None) -> np.ndarray:
    """``conv2d`` on wide layers: each pixel copied KW times instead of KH*KW times.

        out[n, :, i, j] = sum over u of  W_u @ (row SH*i + u of the padded image, windows of width KW)

    The KH rows of a window differ only by which image row they start at, so one
    width-only im2col (``row_shift_columns``) serves every tap row u, shifted by
    u rows; the KH products add up in one output matrix (``row_shift_products``),
    which is then turned back into NCHW with the bias added. Measured against
    the one-GEMM path in docs/benchmarks.md. Same arguments as ``conv2d`` after
    its checks (x and w of one float dtype); returns new (N, K, H_out, W_out).
    """
    N, K, KH, KW = x.shape[0], w.shape[0], w.shape[2], w.shape[3]
    cols = row_shift_columns(x, KH, KW, SH, SW, PH, PW, H_out, W_out, workspace)
    acc = row_shift_products(cols, w, SH, W_out, workspace)                   # (K, M)
    item, Hq = acc.itemsize, H_out + (KH - 1) // SH
    valid = as_strided(acc, shape=(K, N, H_out, W_out),                        # positions (n, i < H_out, j)
                       strides=(acc.strides[0], Hq * W_out * item, W_out * item, item), writeable=False)
    return _swap_batch_and_channels(valid, b)                                  # new (N, K, H_out, W_out), + b


def conv2d_backward_row_shift(dout: np.ndarray, x: np.ndarray, w: np.ndarray, PH: int, PW: int,
                              workspace: Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``conv2d_backward`` on wide stride-1 layers, without the KH*KW-fold column matrix.

        dW_u = D @ (the width-only columns of x, shifted u rows)     one (K, KW*C) block per tap row u
        dx   = conv2d(dout, w flipped and with K and C swapped, padding KH-1-PH, KW-1-PW)

    The first line is ``row_shift_products``'s forward rule with the matrix-multiply gradient
    (dB = A.T @ dY for each of the KH products): D is dout as a (K, positions) matrix, zero at
    the positions no output uses; the KH products are done as one, D shifted u rows for each u
    and stacked, (KH*K, positions) @ columns. The second is the transposed convolution: at
    stride 1 input pixel (r, t) collects w[k, c, u, v] * dout[n, k, r+PH-u, t+PW-v] over k, u, v,
    a convolution of dout with the filters turned 180 degrees, so it takes ``conv2d``'s own route.
    Same arguments and results as ``conv2d_backward`` after its checks (stride 1, PH < KH,
    PW < KW, dout, x and w of one float dtype).
    """
    N, C, H, W = x.shape
    K, _, KH, KW = w.shape
    H_out, W_out = dout.shape[2:]
    Hq = H_out + KH - 1
    cols = row_shift_columns(x, KH, KW, 1, 1, PH, PW, H_out, W_out, workspace)[0]   # (N*Hq*W_out, KW*C)
    positions = N * Hq * W_out
    D_shifted = _temporary(workspace, "dout_shifted", (KH, K, positions), dout.dtype)
    D = D_shifted[0].reshape(K, N, Hq, W_out)                                   # dout at positions (n, q, j)
    db = np.empty(K, dtype=dout.dtype)

    def spread(s: slice) -> None:              # this thread's filters k
        D[s, :, :H_out] = dout[:, s].transpose(1, 0, 2, 3)
        D[s, :, H_out:] = 0                    # the rows no output uses
        db[s] = D_shifted[0, s].sum(axis=1)    # dout summed over n, i, j, while in the cache
        for u in range(1, KH):                 # D_shifted[u, k, m] = D[k, m - u*W_out], zero before
            D_shifted[u, s, :u * W_out] = 0
            D_shifted[u, s, u * W_out:] = D_shifted[0, s, :positions - u * W_out]
    for_each_slice(spread, K, 2 * D_shifted.nbytes)
    dw_rows = D_shifted.reshape(KH * K, positions) @ cols                      # (KH*K, KW*C): dW_u[k, (v, c)]
    dw = np.ascontiguousarray(dw_rows.reshape(KH, K, KW, C).transpose(1, 3, 0, 2), dtype=w.dtype)
    w_turned = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, K, KH, KW)
    dx = conv2d(dout, w_turned, None, 1, (KH - 1 - PH, KW - 1 - PW), workspace)  # after dW: same buffers
    return dx, dw, db
