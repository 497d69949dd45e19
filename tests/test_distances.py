"""minimal_perturbation: exact on affine models, valid and verified on trained networks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mia_core.distances import METHODS, minimal_perturbation


def affine_model(d=20, k=5, seed=0):
    """z = W (x - 0.5): every class boundary passes near the centre of the box."""
    torch.manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.bias.copy_(-0.5 * lin.weight.sum(1))
    return nn.Sequential(nn.Flatten(), lin)


def closed_form(model, x, p):
    """min_{k != y} (z_y - z_k) / ||w_y - w_k||_q with q the dual norm of p (y the predicted class)."""
    lin = model[1]
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    z = x.double().flatten(1) @ w.T + b
    y = z.argmax(1)
    q = 1.0 if math.isinf(p) else 2.0
    diff_w = w[y][:, None, :] - w[None, :, :]  # [N, K, D]
    dist = (z.gather(1, y[:, None]) - z) / diff_w.norm(p=q, dim=2).clamp_min(1e-12)
    dist[torch.arange(len(y)), y] = torch.inf
    return dist.min(1).values.numpy()


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("norm", [2.0, math.inf])
@pytest.mark.parametrize("batch_size", [64, 512])
def test_matches_closed_form_on_affine_model(method, norm, batch_size):
    model = affine_model()
    gen = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(300, 20, generator=gen)
    exact = closed_form(model, x, norm)
    # Keep samples whose optimal point stays inside the box, where the closed form is the true minimum.
    keep = exact < 0.25
    assert keep.sum() > 100
    res = minimal_perturbation(model, x[keep], norm=norm, method=method, batch_size=batch_size)
    assert res.success.all()
    np.testing.assert_allclose(res.norms, exact[keep], rtol=0.01)


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_fmn_never_looser_than_deepfool(trained_mlp, digits, norm):
    model, split = trained_mlp
    x = torch.from_numpy(digits.x[split.nonmembers[:120]])
    df = minimal_perturbation(model, x, norm=norm, method="deepfool")
    fm = minimal_perturbation(model, x, norm=norm, method="fmn")
    assert np.all(fm.norms <= df.norms * (1 + 1e-4))
    assert np.median(fm.norms) <= np.median(df.norms)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("norm", [2.0, math.inf])
@pytest.mark.parametrize("net", ["trained_mlp", "trained_cnn"])
def test_results_are_verified_on_trained_networks(request, digits, method, norm, net):
    model, split = request.getfixturevalue(net)
    x = torch.from_numpy(digits.x[split.nonmembers[:100]])
    res = minimal_perturbation(model, x, norm=norm, method=method, batch_size=32)
    assert res.success.mean() >= 0.99
    with torch.no_grad():
        pred_clean = model(x).argmax(1).numpy()
        pred_adv = model(res.x_adv).argmax(1).numpy()
    ok = res.success
    # every success flips the prediction, in a fresh forward pass of a different batch size
    assert np.all(pred_adv[ok] != pred_clean[ok])
    assert np.array_equal(res.adv_labels, pred_adv)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    true_norm = (res.x_adv - x).flatten(1).double().norm(p=norm, dim=1).numpy()
    np.testing.assert_allclose(res.norms[ok], true_norm[ok], rtol=1e-6, atol=1e-7)
    assert np.all(np.isinf(res.norms[~ok]))
    assert torch.equal(res.x_adv[torch.from_numpy(~ok)], x[torch.from_numpy(~ok)])
    # the point sits on the boundary: shrinking the perturbation by 2% restores the clean prediction
    with torch.no_grad():
        back = model(x + 0.98 * (res.x_adv - x)).argmax(1).numpy()
    assert np.mean(back[ok] == pred_clean[ok]) > 0.95


def test_true_labels_give_zero_for_misclassified(trained_mlp, digits):
    model, split = trained_mlp
    idx = split.nonmembers[:300]
    x, y = torch.from_numpy(digits.x[idx]), torch.from_numpy(digits.y[idx])
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).numpy()
    assert wrong.any()
    res = minimal_perturbation(model, x, norm=2.0, labels=y, method="deepfool")
    assert np.all(res.norms[wrong] == 0) and np.all(res.success[wrong])
    assert np.all(res.norms[~wrong] > 0)
    assert np.array_equal(res.labels, y.numpy())


def test_deterministic(trained_mlp, digits):
    model, split = trained_mlp
    x = torch.from_numpy(digits.x[split.members[:64]])
    a = minimal_perturbation(model, x, norm=math.inf, method="fmn")
    b = minimal_perturbation(model, x, norm=math.inf, method="fmn")
    assert np.array_equal(a.norms, b.norms)
    assert torch.equal(a.x_adv, b.x_adv)


def test_bad_arguments_are_refused(trained_mlp, digits):
    model, _ = trained_mlp
    x = torch.from_numpy(digits.x[:4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        minimal_perturbation(model, x * 3 - 1)
    with pytest.raises(ValueError, match="norm"):
        minimal_perturbation(model, x, norm=1.0)
    with pytest.raises(ValueError, match="deepfool"):
        minimal_perturbation(model, x, method="nope")
    with pytest.raises(ValueError, match="labels"):
        minimal_perturbation(model, x, labels=torch.zeros(3, dtype=torch.long))
