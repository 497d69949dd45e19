"""The CUDA path (skipped where there is no GPU; run on a lent GPU machine)."""

import math

import numpy as np
import pytest
import torch

from mia_core.distances import SEARCHES, PRECISIONS, minimal_perturbation, strict_float32
from mia_core.experiment import ExperimentConfig, run_experiment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("method", list(SEARCHES))
@pytest.mark.parametrize("norm", [2.0, math.inf])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_distances_on_cuda_are_verified_and_match_cpu(trained_cnn, digits, method, norm, precision):
    model, split = trained_cnn
    x = torch.from_numpy(digits.x[split.nonmembers[:200]])
    cpu = minimal_perturbation(model, x, norm=norm, method=method)
    gpu_model = model.to("cuda")
    try:
        xg = x.cuda()
        res = minimal_perturbation(gpu_model, xg, norm=norm, method=method, precision=precision)
        assert res.x_adv.device.type == "cuda"
        n = 150  # re-check in strict float32, in a batch of another size than the search used
        with torch.no_grad(), strict_float32():
            flipped = (gpu_model(res.x_adv[:n]).argmax(1) != gpu_model(xg[:n]).argmax(1)).cpu().numpy()
        assert res.success.mean() >= 0.99 and np.all(flipped[res.success[:n]])
        true = (res.x_adv - xg).flatten(1).double().norm(p=norm, dim=1).cpu().numpy()
        np.testing.assert_allclose(res.norms[res.success], true[res.success], rtol=1e-6, atol=1e-7)
        ok = res.success & cpu.success
        assert np.median(np.abs(res.norms[ok] - cpu.norms[ok]) / cpu.norms[ok]) < 0.01
    finally:
        model.to("cpu")


def test_experiment_runs_on_cuda(tmp_path):
    cfg = ExperimentConfig(width=64, members=150, epochs=15, bootstrap_rounds=20, reference_scored=100,
                           device="cuda", lira_shadows=4, label_only_queries=300)
    r = run_experiment(cfg, store=tmp_path)
    assert r.record.environment.device.startswith("cuda")
    assert r.record.train_accuracy >= r.record.test_accuracy > 0.8
