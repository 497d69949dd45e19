"""Datasets, splits and clear errors for bad input."""

import numpy as np
import pytest

from mia_core.data import DatasetError, load_dataset, make_split


@pytest.mark.parametrize("name,shape,k", [("digits", (1, 8, 8), 10), ("mnist5k", (1, 28, 28), 10),
                                          ("moons", (2,), 2), ("blobs", (2,), 3)])
def test_embedded_datasets(name, shape, k):
    ds = load_dataset(name)
    assert ds.input_shape == shape and ds.num_classes == k
    assert ds.x.dtype == np.float32 and ds.x.min() >= 0 and ds.x.max() <= 1
    assert np.bincount(ds.y).min() > 0.5 * len(ds) / k  # every class is really there


def test_split_is_disjoint_seeded_and_sized(digits):
    a = make_split(digits, members=400, seed=3)
    b = make_split(digits, members=400, seed=3)
    c = make_split(digits, members=400, seed=4)
    assert len(a.members) == len(a.nonmembers) == 400
    assert len(a.reference) == len(digits) - 800
    allidx = np.concatenate([a.members, a.nonmembers, a.reference])
    assert len(np.unique(allidx)) == len(digits)
    assert np.array_equal(a.members, b.members) and not np.array_equal(a.members, c.members)
    with pytest.raises(DatasetError, match="cannot take"):
        make_split(digits, members=1000)


def test_unknown_dataset_lists_choices():
    with pytest.raises(DatasetError, match="digits"):
        load_dataset("imagenet")


def test_missing_torchvision_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match=r"python -m mia_core download --dataset fashion_mnist"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_user_npz(tmp_path):
    r = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=r.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8), y=r.integers(0, 4, 50))
    ds = load_dataset(f"npz:{path}")
    assert ds.input_shape == (3, 6, 6) and ds.x.max() <= 1 and ds.num_classes <= 4


@pytest.mark.parametrize("content,match", [
    (dict(x=np.zeros((10, 3))), "must contain"),
    (dict(x=np.zeros((10, 3)), y=np.zeros(9, int)), "expected x"),
    (dict(x=np.full((10, 3), 2.0), y=np.arange(10) % 2), r"\[0, 1\]"),
    (dict(x=np.zeros((10, 3)), y=np.array([0.5] * 10)), "integers"),
    (dict(x=np.array([object()] * 10, dtype=object), y=np.zeros(10, int)), "not a readable"),
])
def test_malformed_npz_is_refused(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(DatasetError, match=match):
        load_dataset(str(path))


def test_corrupt_npz_is_refused(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(str(path))
