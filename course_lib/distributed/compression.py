"""Gradient compression: send fewer bits, remember what was not sent.

Lecture 5, "Parameter and Gradient Compression" (Strom 2015; Ben-Nun and
Hoefler 2018, Sec. 7.3): quantization and sparsification.

Reading order
-------------
1. ``Compressed``: what goes on the wire, and its size in bytes.
2. The three compressors. Each takes the gradient g and the residual e left
   over from the previous step ("error feedback"), compresses c = g + e and
   returns the message and the new residual e' = c - decompress(message):
   nothing is lost, only delayed.

   * ``sign_compress`` (1-bit quantization with error feedback, Seide et al.
     2014, who reconstruct each column from two values; here the scaled sign
     of Karimireddy et al. 2019, one scale for the whole tensor): send sign(c)
     and one float, the mean |c|. 1 bit per element.
   * ``threshold_compress`` (Strom 2015): send only the elements with
     |c| >= tau, each as +tau or -tau, packed as a 31-bit index and a sign bit
     (32 bits per element sent).
   * ``topk_compress`` (top-k sparsification; Aji and Heafield 2017): send the
     k largest |c| exactly, as (32-bit index, 32-bit value) pairs.

3. ``decompress``: back to a dense array.
4. ``bytes_per_step``: bytes on the wire for one reduction, dense or
   compressed, for a ring and for a parameter server (``cost.py``'s
   2N(P-1)/P and 2N(P-1)). A compressed gradient cannot be summed in
   compressed form, so the compressed ring is an *allgather* of everyone's
   messages: each rank sends P - 1 messages (its own, then the others'
   forwarded round the ring), (P - 1) * m bytes.
Gradients are float32 (4 bytes per element when dense). Lesson 12's experiment,
data-parallel SGD on P simulated workers each with its own residual, is
``course_lib.experiments.compression.train_compressed`` (not the lecture).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cost import ps_bytes_at_server, ring_bytes_per_rank

DENSE_ITEMSIZE = 4  # float32


# --------------------------------------------------------------------------
# 1. The message
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Compressed:
    """One compressed gradient of ``size`` elements.

    kind : "sign", "threshold" or "topk"
    indices : int64 (m,), positions sent (None for "sign": every position)
    values : float32 (m,) values sent ("topk"), or int8 signs (+1/-1) ("sign", "threshold")
    scale : the float every sign is multiplied by (mean |c| for "sign", tau for "threshold")
    """
    kind: str
    size: int
    indices: np.ndarray | None
    values: np.ndarray
    scale: float = 1.0

    @property
    def nbytes(self) -> int:
        """Bytes on the wire (packed as the papers do)."""
        if self.kind == "sign":
            return -(-self.size // 8) + 4              # ceil(n / 8) bytes of bits + the scale
        if self.kind == "threshold":
            return 4 * len(self.values)                # 31-bit index + sign bit per element
        return 8 * len(self.values)                    # 32-bit index + float32 value


def _residual_input(g, error) -> np.ndarray:
    """c = g + e, checked, as float32 (a new array)."""
    g = np.asarray(g)
    if g.ndim != 1 or not np.issubdtype(g.dtype, np.floating):
        raise ValueError(f"compress a flat float gradient of shape (n,); got shape {g.shape}, "
                         f"dtype {g.dtype} (flatten with g.ravel())")
    if error is None:
        return g.astype(np.float32)
    if np.shape(error) != g.shape:
        raise ValueError(f"residual has shape {np.shape(error)} but the gradient {g.shape}")
    return (g + error).astype(np.float32)


# --------------------------------------------------------------------------
# 2. The compressors (each returns the message and the new residual)
# --------------------------------------------------------------------------

def sign_compress(g: np.ndarray, error: np.ndarray | None = None) -> tuple[Compressed, np.ndarray]:
    """1-bit quantization with error feedback.

        c = g + e;   q = mean(|c|) * sign(c);   e' = c - q

    Parameters
    ----------
    g : float ndarray, shape (n,); error : same shape, or None (zeros)

    Returns
    -------
    message : Compressed of kind "sign" (n bits + one float)
    new_error : float32 ndarray, shape (n,)
    """
    c = _residual_input(g, error)
    signs = np.where(c >= 0, 1, -1).astype(np.int8)      # sign(0) sent as +1: one bit has no zero
    message = Compressed("sign", c.size, None, signs, float(np.mean(np.abs(c))) if c.size else 0.0)
    return message, c - decompress(message)


def threshold_compress(g: np.ndarray, error: np.ndarray | None, tau: float) -> tuple[Compressed, np.ndarray]:
    """Strom's threshold quantization with error feedback.

        c = g + e;   send i with |c_i| >= tau, as tau * sign(c_i);   e' = c - sent

    Elements below tau stay in the residual and grow until they are sent.
    """
    if not tau > 0:
        raise ValueError(f"the threshold tau must be > 0, got {tau}")
    c = _residual_input(g, error)
    idx = np.flatnonzero(np.abs(c) >= tau)                 # (m,)
    message = Compressed("threshold", c.size, idx, np.sign(c[idx]).astype(np.int8), float(tau))
    return message, c - decompress(message)


def topk_compress(g: np.ndarray, error: np.ndarray | None, k: int) -> tuple[Compressed, np.ndarray]:
    """Top-k sparsification with error feedback.

        c = g + e;   send the k entries of largest |c|, exactly;   e' = c - sent
    """
    c = _residual_input(g, error)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c.size:
        raise ValueError(f"k must be an int in [1, n] = [1, {c.size}], got {k!r}")
    idx = np.sort(np.argpartition(np.abs(c), c.size - k)[c.size - k:])   # (k,), any order -> sorted
    message = Compressed("topk", c.size, idx, c[idx].copy())
    return message, c - decompress(message)


# --------------------------------------------------------------------------
# 3. Back to dense
# --------------------------------------------------------------------------

def decompress(message: Compressed) -> np.ndarray:
    """The dense float32 array, shape (size,), a message stands for."""
    if message.kind == "sign":
        return message.scale * message.values.astype(np.float32)
    dense = np.zeros(message.size, dtype=np.float32)
    if message.kind == "threshold":
        dense[message.indices] = message.scale * message.values
    elif message.kind == "topk":
        dense[message.indices] = message.values
    else:
        raise ValueError(f"unknown kind {message.kind!r}; expected 'sign', 'threshold' or 'topk'")
    return dense


# --------------------------------------------------------------------------
# 4. Bytes on the wire
# --------------------------------------------------------------------------

def bytes_per_step(n_params: int, world_size: int, message_bytes: int | None = None) -> dict:
    """Bytes of one gradient reduction over P = ``world_size`` workers.

    Dense (``message_bytes=None``): the ring sends 2N(P-1)/P per rank and the
    PS moves 2N(P-1) (``cost.py``), N in float32 bytes.

    Compressed (each worker's message is ``message_bytes``): the ring becomes
    an allgather, (P-1) * message_bytes per rank; at the PS, the P-1 workers'
    messages come in compressed, (P-1) * message_bytes, and the dense sum goes
    back, N(P-1) float32 (the sum of sparse messages is not sparse).

    Returns
    -------
    {"ring_per_rank": float (mean over ranks), "ps_at_server": int}
    """
    P = int(world_size)
    if message_bytes is None:
        return {"ring_per_rank": float(np.mean(ring_bytes_per_rank(n_params, P, DENSE_ITEMSIZE))),
                "ps_at_server": int(ps_bytes_at_server(n_params, P, DENSE_ITEMSIZE))}
    down = ps_bytes_at_server(n_params, P, DENSE_ITEMSIZE) // 2           # N(P-1) dense, back
    return {"ring_per_rank": float((P - 1) * message_bytes),
            "ps_at_server": int((P - 1) * message_bytes + down)}

