"""course_lib.data: bundled digits for LeNet-5 and the MNIST IDX reader."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from course_lib.data import (MNIST_ENV_VAR, Digits, bilinear_matrix, load_digits, load_mnist,
                             read_idx, resize_and_pad)


@pytest.fixture(scope="module")
def digits() -> Digits:
    return load_digits()


def test_digits_shapes_dtypes_and_split(digits):
    assert digits.x_train.shape == (1347, 1, 32, 32) and digits.x_test.shape == (450, 1, 32, 32)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.y_train.shape == (1347,) and digits.y_test.shape == (450,)
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
    # stratified: every digit in the test set, in about a tenth of it
    counts = np.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 40 and counts.max() <= 50, counts


def test_digits_are_centred_with_an_empty_border(digits):
    # 8x8 -> 24x24 centred on 32x32: a 4-pixel zero border on every side
    x = digits.x_train
    assert np.all(x[..., :4, :] == 0) and np.all(x[..., -4:, :] == 0)
    assert np.all(x[..., :4] == 0) and np.all(x[..., -4:] == 0)
    assert x[..., 4:28, 4:28].max() > 0.9


def test_digits_are_the_sklearn_images_upscaled():
    from sklearn.datasets import load_digits as sk
    raw = sk()
    # size 8 (inner 8 = no resize) must give back exactly the bundled 8x8 images
    d = load_digits(size=8, test_fraction=0.5, seed=1)
    both = np.concatenate([d.x_train, d.x_test])[:, 0]
    ref = {img.astype(np.float32).tobytes() for img in (raw.images / 16.0).astype(np.float32)}
    assert all(img.tobytes() in ref for img in both)


def test_digits_split_is_seeded():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)


@settings(max_examples=30, deadline=None)
@given(n_in=st.integers(1, 12), n_out=st.integers(1, 40))
def test_bilinear_matrix_equals_torch_interpolate(n_in, n_out):
    rng = np.random.default_rng(n_in * 100 + n_out)
    img = rng.random((2, n_in, n_in))
    ours = bilinear_matrix(n_in, n_out) @ img @ bilinear_matrix(n_in, n_out).T
    ref = F.interpolate(torch.tensor(img)[:, None], size=(n_out, n_out), mode="bilinear",
                        align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_resize_and_pad_errors():
    with pytest.raises(ValueError, match="does not fit"):
        resize_and_pad(np.zeros((1, 8, 8)), inner=40, size=32)
    with pytest.raises(ValueError, match="size"):
        load_digits(size=4)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)


# --------------------------------------------------------------------------
# MNIST IDX: small files written here, byte by byte, as the format specifies
# --------------------------------------------------------------------------

def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_fake_mnist(folder, n_train=5, n_test=3, compress=False, skip=()):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        if name not in skip:
            write_idx(folder / name, a, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_reads_idx_files(tmp_path, compress):
    arrays = write_fake_mnist(tmp_path, compress=compress)
    d = load_mnist(tmp_path)
    assert d.x_train.shape == (5, 1, 32, 32) and d.x_test.shape == (3, 1, 32, 32)
    assert d.x_train.dtype == np.float32 and d.y_test.dtype == np.int64
    np.testing.assert_allclose(d.x_train[:, 0, 2:30, 2:30] * 255,
                               arrays["train-images-idx3-ubyte"], atol=1e-4)
    assert np.all(d.x_train[:, :, :2] == 0) and np.all(d.x_train[..., 30:] == 0)
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist_from_environment_variable(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path)
    monkeypatch.setenv(MNIST_ENV_VAR, str(tmp_path))
    assert load_mnist(size=28).x_train.shape == (5, 1, 28, 28)


def test_load_mnist_names_the_missing_files(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, skip=("t10k-labels-idx1-ubyte",))
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte") as info:
        load_mnist(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in str(info.value)
    monkeypatch.delenv(MNIST_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=MNIST_ENV_VAR):
        load_mnist()


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short", np.zeros((4, 3), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


# --------------------------------------------------------------------------
# ---- behaviour pinned down by mutation testing
# --------------------------------------------------------------------------

def test_odd_margins_put_the_extra_row_at_the_bottom_right(tmp_path):
    # the digits and MNIST follow one rule: top/left margin (size - inner) // 2, the rest bottom/right
    out = resize_and_pad(np.ones((1, 8, 8)), inner=8, size=11)          # margin 3: 1 above, 2 below
    assert out[0, 1:9, 1:9].min() == 1 and out[0].sum() == 64
    arrays = write_fake_mnist(tmp_path)
    d = load_mnist(tmp_path, size=31)                                    # margin 3 around 28x28
    assert d.x_train.shape == (5, 1, 31, 31)
    np.testing.assert_allclose(d.x_train[:, 0, 1:29, 1:29] * 255, arrays["train-images-idx3-ubyte"], atol=1e-4)


def test_mnist_labels_are_int64_for_both_splits(tmp_path):
    write_fake_mnist(tmp_path)
    d = load_mnist(tmp_path)
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64   # torch's cross_entropy wants int64


def test_read_idx_big_endian_types(tmp_path):
    # IDX stores multi-byte values big-endian; read_idx returns them in native byte order
    values = np.array([[-2, 70000], [3, -40000]], dtype=np.int32)
    header = bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 2, 2)
    (tmp_path / "ints").write_bytes(header + values.astype(">i4").tobytes())
    read = read_idx(tmp_path / "ints")
    np.testing.assert_array_equal(read, values)
    assert read.dtype == np.int32 and read.dtype.isnative
    (tmp_path / "bad_type").write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad_type")


def test_load_mnist_accepts_dotted_names_and_checks_counts(tmp_path):
    # some mirrors name the files train-images.idx3-ubyte (a dot instead of the dash)
    arrays = write_fake_mnist(tmp_path)
    for name in arrays:
        (tmp_path / name).rename(tmp_path / name.replace("-idx", ".idx"))
    assert load_mnist(tmp_path).x_train.shape == (5, 1, 32, 32)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2))        # 3 test images, 2 labels
    with pytest.raises(ValueError, match="3 test images but 2 test labels"):
        load_mnist(tmp_path)


def test_size_checks_name_their_own_limits():
    with pytest.raises(ValueError, match=r"must be an int >= 8"):
        load_digits(size=7)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=0.0)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        bilinear_matrix(0, 4)
