"""Scale: shadow / reference models as Ray tasks (a local two-worker Ray instance) write the same chunks into the
store as local training, and either resumes the other."""

import functools
import shutil

import numpy as np
import pytest
import torch

from mia_core.data import load_dataset
from mia_core.lira import shadow_set
from mia_core.models import build_model


def test_shadow_chunks_on_a_local_ray_match_local_training_and_resume_it(tmp_path):
    ray = pytest.importorskip("ray")
    ds = load_dataset("digits")
    x, y = torch.from_numpy(ds.x[:240]), torch.from_numpy(ds.y[:240])
    population = torch.from_numpy(ds.x[240:300])
    build = functools.partial(build_model, "mlp", ds.input_shape, ds.num_classes, width=32)
    kw = dict(n_models=4, epochs=3, batch_size=64, lr=1e-3, weight_decay=0.0, seed=0, chunk=2, population=population)
    local = shadow_set(build, x, y, cache_dir=tmp_path / "local", **kw)
    shutil.copytree(tmp_path / "local" / "chunk-000", tmp_path / "ray" / "chunk-000")  # an interrupted run's part
    seen = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = shadow_set(build, x, y, cache_dir=tmp_path / "ray", executor="ray",
                            progress=lambda stage, f: seen.append(f), **kw)
    finally:
        ray.shutdown()
    assert seen == [1.0]  # only the missing chunk was trained, on Ray
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["chunk-000", "chunk-001"]
    np.testing.assert_array_equal(remote.inside, local.inside)
    np.testing.assert_allclose(remote.logp, local.logp, atol=1e-4)  # one thread per Ray worker: float noise only
    np.testing.assert_allclose(remote.population_logp, local.population_logp, atol=1e-4)
