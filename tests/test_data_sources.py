"""Every data source, and the errors for data that does not fit."""

import gzip
import struct

import numpy as np
import pytest

from workbench.data import open_data
from workbench.data.dataset import Dataset, fit_to_input
from workbench.core.errors import DataError, InputFileError


def test_builtin_digits_split_is_fixed_and_disjoint():
    tr, te = open_data("digits:train"), open_data("digits:test")
    assert len(tr) + len(te) == 1797 and len(te) == 449
    assert tr.x.shape[1:] == (8, 8, 1) and 0 <= tr.x.min() and tr.x.max() <= 1
    assert np.array_equal(open_data("digits:test").x, te.x)


def test_builtin_fashion_mnist():
    te = open_data("fashion-mnist", split="test")
    assert te.x.shape == (10000, 28, 28, 1) and te.y.max() == 9


def test_npz_with_custom_keys_and_limit(tmp_path, rng):
    p = tmp_path / "d.npz"
    np.savez(p, images=rng.random((30, 4, 4, 1), dtype=np.float32), labels=np.arange(30) % 3)
    ds = open_data(f"{p}#x=images,y=labels", limit=10, seed=1)
    assert len(ds) == 10 and ds.y.dtype == np.int64
    with pytest.raises(DataError) as e:
        open_data(str(p))
    assert "no array 'x'" in str(e.value) and "images" in str(e.value)


def test_npy_and_seeded_shuffle(tmp_path, rng):
    p = tmp_path / "x.npy"
    np.save(p, rng.random((20, 3), dtype=np.float32))
    a, b = open_data(str(p), limit=5, seed=3), open_data(str(p), limit=5, seed=3)
    assert np.array_equal(a.x, b.x)
    assert not np.array_equal(a.x, open_data(str(p), limit=5, seed=4).x)


def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_idx_files_with_labels(tmp_path, rng):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (7, 5, 5)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(7))
    ds = open_data(str(tmp_path / "train-images-idx3-ubyte.gz"))
    assert ds.x.shape == (7, 5, 5) and ds.x.max() <= 1.0 and list(ds.y) == list(range(7))


def test_truncated_idx(tmp_path):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(struct.pack(">BBBB3I", 0, 0, 8, 3, 10, 5, 5) + b"\0" * 20)
    with pytest.raises(DataError) as e:
        open_data(str(p))
    assert "truncated" in str(e.value)


def test_image_folder_with_preprocessing(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), 40 * i + 10, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = open_data(f"{tmp_path}#size=4x4,gray=1")
    assert ds.x.shape == (4, 4, 4, 1) and ds.classes == ("cat", "dog") and list(ds.y) == [0, 0, 1, 1]


def test_callable_source(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    for i in range(3):\n"
        "        yield np.full((2, 4), i, np.float32), np.array([i, i])\n")
    monkeypatch.chdir(tmp_path)
    ds = open_data("mydata:batches")
    assert ds.x.shape == (6, 4) and list(ds.y) == [0, 0, 1, 1, 2, 2]


def test_nan_is_refused():
    with pytest.raises(DataError) as e:
        Dataset(x=np.array([[np.nan, 1.0], [1.0, 2.0]], np.float32), y=None, name="bad")
    assert "NaN" in str(e.value) and "1 of 2" in str(e.value)


def test_shape_mismatch_says_expected_and_found():
    with pytest.raises(DataError) as e:
        fit_to_input(np.zeros((3, 28, 28, 1), np.float32), (1, 8, 8, 1), "NHWC", "fashion")
    assert "(28, 28, 1)" in str(e.value) and "(8, 8, 1)" in str(e.value)


def test_layout_is_adapted_to_nchw():
    x = fit_to_input(np.zeros((3, 8, 8, 1), np.float32), (1, 1, 8, 8), "NCHW", "d")
    assert x.shape == (3, 1, 8, 8)


def test_missing_data_lists_builtins():
    with pytest.raises(InputFileError) as e:
        open_data("no/such/file.npz")
    assert "digits" in str(e.value)


def test_spec_file(root):
    ds = open_data(str(root / "calibration" / "digits.yaml"))
    assert len(ds) == 200
