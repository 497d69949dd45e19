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


def test_batch_norm_reference_models_train_in_mixed_precision_on_cuda():
    """ResNet-18's batch norm cannot run stacked under vmap with bfloat16 autocast on CUDA (its backward pass
    refuses float32 running statistics): such models must train one by one, not fail."""
    from mia_core.lira import train_shadow_chunk
    from mia_core.models import build_model

    g = torch.Generator().manual_seed(0)
    protos = torch.rand(10, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    x = (0.7 * protos[y] + 0.3 * torch.rand(512, 3, 32, 32, generator=g)).cuda()
    subsets = torch.stack([torch.randperm(512, generator=g)[:256] for _ in range(2)]).cuda()
    logp, _ = train_shadow_chunk(lambda: build_model("resnet18", (3, 32, 32), 10), x, y.cuda(), subsets,
                                 epochs=3, batch_size=64, lr=2e-3, weight_decay=0.0, seed=0, training="mixed")
    assert logp.shape == (2, 512, 10) and torch.isfinite(logp).all()
    assert (logp.argmax(-1).cpu() == y).float().mean() > 0.5
