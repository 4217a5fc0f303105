"""Handwritten digits for LeNet-5, with nothing to download.

Reading order
-------------
1. ``load_digits``: scikit-learn's bundled digits (1,797 real handwritten
   digits of 8x8 pixels, 17 grey levels 0..16; UCI "optdigits"), scaled up and
   padded to LeNet-5's 32x32 input. The default data set of the course.
2. ``read_idx`` and ``load_mnist``: MNIST from the four standard IDX files,
   when the student already has them (a folder given as ``path`` or in the
   environment variable ``COURSE_MNIST_DIR``). Nothing is ever downloaded.

Both return a ``Digits`` tuple: x of shape (N, 1, size, size), float32 in
[0, 1], and y of shape (N,), int64 labels 0..9: NCHW, as the conv layers and
PyTorch expect.

The resize is bilinear with PyTorch's ``align_corners=False`` rule (each
output pixel samples the input at its centre), written as two small matrix
products so that no image library is needed. The 8x8 digit is scaled to 3/4
of the canvas (never below 8x8: a canvas of 8 is filled)
and centred, to leave room at the borders as LeNet-5 does: MNIST's digits,
at most 20x20 and centred in 28x28, sit in the middle of its 32x32 input
(LeCun et al. 1998).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

MNIST_ENV_VAR = "COURSE_MNIST_DIR"
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class Digits(NamedTuple):
    """A train/test split of digit images.

    x_train : (N_train, 1, size, size) float32 in [0, 1]
    y_train : (N_train,) int64 in 0..9
    x_test, y_test : likewise for the test images
    """
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __repr__(self) -> str:
        return (f"Digits(x_train {self.x_train.shape} {self.x_train.dtype}, y_train "
                f"{self.y_train.shape}, x_test {self.x_test.shape}, y_test {self.y_test.shape})")


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix R with ``R @ v`` = v resized bilinearly to n_out samples.

    Output sample i sits at input coordinate ``(i + 0.5) * n_in / n_out - 0.5``
    (PyTorch's ``align_corners=False``), clamped to the edges; it mixes the two
    input samples around it in proportion to its distance from each.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bilinear_matrix: sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)  # (n_out,)
    left = np.floor(pos).astype(int)
    right = np.minimum(left + 1, n_in - 1)
    frac = pos - left
    R = np.zeros((n_out, n_in))
    R[np.arange(n_out), left] += 1 - frac
    R[np.arange(n_out), right] += frac
    return R


def resize_and_pad(images: np.ndarray, inner: int, size: int) -> np.ndarray:
    """Resize square images to inner x inner, then centre them on a size x size zero canvas.

    images : (N, h, h)  ->  (N, size, size) float32
    """
    if inner > size:
        raise ValueError(f"resize_and_pad: the digit ({inner}x{inner}) does not fit the "
                         f"canvas ({size}x{size})")
    N, h, w = images.shape
    R, Rw = bilinear_matrix(h, inner), bilinear_matrix(w, inner)
    resized = R @ images @ Rw.T                       # (inner, h) @ (N, h, w) @ (w, inner) -> (N, inner, inner)
    top = (size - inner) // 2
    out = np.zeros((N, size, size), dtype=np.float32)
    out[:, top:top + inner, top:top + inner] = resized
    return out


def load_digits(size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """scikit-learn's bundled handwritten digits, ready for LeNet-5.

    Parameters
    ----------
    size : side of the square output images (LeNet-5 takes 32)
    test_fraction : share of the 1,797 images held out for testing
    seed : seed of the (stratified) shuffle that splits train from test

    Returns
    -------
    Digits with x of shape (N, 1, size, size) float32 in [0, 1], y int64.
    With the defaults: 1,347 training and 450 test images, every digit
    represented in the same proportion in both.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"load_digits: size = {size!r} must be an int >= 8 (the digits are 8x8)")
    if not 0 < test_fraction < 1:
        raise ValueError(f"load_digits: test_fraction = {test_fraction!r} must be between 0 and 1")
    raw = sklearn_digits()                            # bundled with scikit-learn: no network
    images = raw.images / 16.0                        # (1797, 8, 8), grey levels 0..16 -> [0, 1]
    x = resize_and_pad(images, inner=max(8, round(size * 3 / 4)), size=size)[:, None]  # (N, 1, size, size)
    y = raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Digits(np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test)


# --------------------------------------------------------------------------
# MNIST from IDX files
# --------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (MNIST's format; ``.gz`` accepted).

    The header is two zero bytes, a type code (0x08 = unsigned byte), the
    number of dimensions d, then d big-endian 32-bit sizes; the data follows.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: it should start with bytes 00 00 <type> "
                         f"<ndim>, got {data[:4].hex(' ')}")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    offset, expected = 4 + 4 * ndim, int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes of data) but the "
                         f"file holds {len(data) - offset}; is it truncated?")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx")):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def load_mnist(path=None, size: int = 32) -> Digits:
    """MNIST from the four standard IDX files, padded to ``size`` (LeNet-5: 28 -> 32).

    Parameters
    ----------
    path : folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
        t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may be .gz);
        if None, the folder named by the environment variable COURSE_MNIST_DIR
    size : side of the output images (>= 28); the 28x28 digits are centred

    Returns
    -------
    Digits with x (N, 1, size, size) float32 in [0, 1] and y int64.

    Raises
    ------
    FileNotFoundError naming the folder and the files it lacks. Nothing is downloaded.
    """
    if path is None:
        path = os.environ.get(MNIST_ENV_VAR)
        if not path:
            raise FileNotFoundError(
                f"load_mnist: no folder given; pass path=... or set {MNIST_ENV_VAR} to a folder "
                f"holding the four MNIST files {', '.join(MNIST_FILES.values())} (optionally .gz). "
                f"Nothing is downloaded; load_digits() needs no files.")
    folder = Path(path)
    found = {key: _find(folder, name) for key, name in MNIST_FILES.items()}
    missing = [MNIST_FILES[key] for key, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"load_mnist: {folder} lacks {', '.join(missing)}; the four expected files are "
            f"{', '.join(MNIST_FILES.values())} (optionally .gz). Nothing is downloaded; "
            f"load_digits() needs no files.")
    arrays = {key: read_idx(p) for key, p in found.items()}
    for split in ("train", "test"):
        n_x, n_y = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_x != n_y:
            raise ValueError(f"load_mnist: {n_x} {split} images but {n_y} {split} labels")
    h = arrays["x_train"].shape[1]
    if size < h:
        raise ValueError(f"load_mnist: size = {size} is smaller than the {h}x{h} images")
    pad = ((0, 0), (0, 0), ((size - h) // 2, size - h - (size - h) // 2),
           ((size - h) // 2, size - h - (size - h) // 2))

    def images(a):  # (N, 28, 28) uint8 -> (N, 1, size, size) float32
        return np.pad(a[:, None].astype(np.float32) / 255.0, pad)

    return Digits(images(arrays["x_train"]), arrays["y_train"].astype(np.int64),
                  images(arrays["x_test"]), arrays["y_test"].astype(np.int64))
