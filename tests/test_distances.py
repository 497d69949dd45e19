"""minimal_perturbation: exact on affine models, valid and verified on trained networks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mia_core.distances import SEARCHES, minimal_perturbation, search_batch


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


@pytest.mark.parametrize("method", list(SEARCHES))
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


def box_closed_form(model, x, p):
    """Exact minimal L2 / L-inf distance inside [0, 1]^d for an affine model, where the box binds: for each
    class k the smallest s with (w_k - w_y) . s >= z_y - z_k and x + s in the box moves every coordinate along
    sign(w) until it meets the box, s(lam) = sign(w) min(lam |w|^(p=2), room); lam by float64 bisection."""
    lin = model[1]
    W, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    out = np.full(len(x), np.inf)
    for n, x0 in enumerate(x.double().flatten(1).numpy()):
        z = W @ x0 + b
        y = z.argmax()
        for k in range(len(z)):
            w, need = W[k] - W[y], z[y] - z[k]
            room = np.where(w > 0, 1 - x0, np.where(w < 0, x0, 0.0))

            def s_of(lam, w=w, room=room):
                return np.sign(w) * np.minimum(lam * (np.abs(w) if p == 2 else 1.0), room)

            lo, hi = 0.0, 1e6
            if k == y or w @ s_of(hi) < need:
                continue
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if w @ s_of(mid) >= need else (mid, hi)
            out[n] = min(out[n], np.linalg.norm(s_of(hi), ord=p))
    return out


@pytest.mark.parametrize("method", list(SEARCHES))
@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_near_the_box_minimum_where_the_box_binds(method, norm):
    """Inputs with many coordinates at 0 (like a black background): the box is part of the problem."""
    model = affine_model()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(300, 20, generator=gen)
    x = torch.where(torch.rand(300, 20, generator=gen) < 0.4, 0.0, x)
    exact = box_closed_form(model, x, norm)
    unconstrained = closed_form(model, x, norm)
    assert np.mean(exact > unconstrained * 1.05) > 0.3  # the box does bind for many samples
    res = minimal_perturbation(model, x, norm=norm, method=method)
    assert res.success.all()
    rel = res.norms / exact
    assert rel.min() >= 1 - 1e-5  # never below the true minimum: every reported point is real
    assert np.median(rel) <= 1.001
    assert np.mean(rel <= 1.01) >= 0.97


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_tighter_searches_are_never_looser(trained_cnn, digits, norm):
    """fmn starts from superdeepfool, which starts like deepfool: each is at least as tight as the last."""
    model, split = trained_cnn
    x = torch.from_numpy(digits.x[split.nonmembers[:120]])
    df, sdf, fm = (minimal_perturbation(model, x, norm=norm, method=m) for m in ("deepfool", "superdeepfool", "fmn"))
    assert np.all(fm.norms <= sdf.norms * (1 + 1e-4))
    assert np.median(fm.norms) < np.median(sdf.norms) < np.median(df.norms)


def test_the_callers_model_is_left_as_it_was(trained_cnn, digits):
    """The CPU search runs on a channels-last copy; the caller's model keeps its layout, grads and mode."""
    model, split = trained_cnn
    x = torch.from_numpy(digits.x[split.nonmembers[:40]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    minimal_perturbation(model, x, norm=2.0, method="superdeepfool")
    assert model.training
    model.eval()
    for name, p in model.named_parameters():
        assert p.requires_grad and p.is_contiguous(), name
        assert torch.equal(p, before[name]), name


def test_the_search_copy_answers_in_chunks_with_the_same_bits(trained_mnist_cnn):
    """On the CPU a CNN is searched through a channels-last copy that answers at most CPU_CONV_ROWS samples a
    pass (half with gradients) and rectifies in place after its pooling and linear layers: a sample's logits and
    input gradient are the same bits whichever samples share its chunk (the search's answers do not depend on how
    a batch is composed), and within float noise of one pass over all samples (the same bits on an AVX512-BF16
    CPU; on others oneDNN may take another kernel for 512 samples of a narrow convolution) and of the model's own;
    the model keeps its out-of-place ReLUs."""
    from torch import nn

    from mia_core.data import load_dataset
    from mia_core.models import CPU_CONV_ROWS, RowChunks, search_model

    model, _ = trained_mnist_cnn
    x = torch.from_numpy(load_dataset("mnist5k").x[: 4 * CPU_CONV_ROWS])
    fast = search_model(model, x)
    assert isinstance(fast, RowChunks) and fast.rows == CPU_CONV_ROWS
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert all(m.inplace for m in fast.modules() if isinstance(m, nn.ReLU))  # each follows a pool or linear layer
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        chunked = fast(x)
        assert torch.equal(fast(x[perm]), chunked[perm])  # other neighbours in every chunk: the same bits
        torch.testing.assert_close(chunked, fast.model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(chunked, model(x), rtol=1e-5, atol=1e-5)

    def gradient(net, xx):
        xx = xx.clone().requires_grad_(True)
        return torch.autograd.grad(torch.log_softmax(net(xx), 1)[:, 0].sum(), xx)[0]

    assert torch.equal(gradient(fast, x[perm]), gradient(fast, x)[perm])
    torch.testing.assert_close(gradient(fast, x), gradient(fast.model, x), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradient(fast, x), gradient(model, x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", list(SEARCHES))
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


@pytest.mark.parametrize("method", list(SEARCHES))
@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_matches_closed_form_in_a_box_other_than_the_unit_box(method, norm):
    """A user's model on inputs in [-2, 3]: distances are measured in that space and match the closed form."""
    from mia_core.label_only import label_only_distance

    lo, hi = -2.0, 3.0
    torch.manual_seed(0)
    lin = nn.Linear(20, 5)
    with torch.no_grad():
        lin.bias.copy_(-0.5 * lin.weight.sum(1))  # boundaries through the box's centre (0.5, ..., 0.5)
    model = nn.Sequential(nn.Flatten(), lin)
    gen = torch.Generator().manual_seed(1)
    x = 0.5 + 5.0 * (0.4 * torch.rand(300, 20, generator=gen) - 0.2)
    exact = closed_form(model, x, norm)
    keep = exact < 0.25 * 5.0
    assert keep.sum() > 100
    res = minimal_perturbation(model, x[keep], norm=norm, method=method, bounds=(lo, hi))
    assert res.success.all()
    np.testing.assert_allclose(res.norms, exact[keep], rtol=0.01)
    assert res.x_adv.min() >= lo and res.x_adv.max() <= hi
    with torch.no_grad():
        assert (model(res.x_adv).argmax(1) != model(x[keep]).argmax(1)).all()
    true_norm = (res.x_adv - x[keep]).double().flatten(1).norm(p=norm, dim=1).numpy()
    np.testing.assert_allclose(res.norms, true_norm, rtol=1e-12)
    if method == "fmn":  # the label-only search in the same box: valid upper bounds of the exact distance
        y = model(x[keep]).argmax(1)
        lo_res = label_only_distance(model, x[keep], y, norm=norm, max_queries=400, bounds=(lo, hi))
        assert lo_res.success.all() and lo_res.x_adv.min() >= lo and lo_res.x_adv.max() <= hi
        assert (lo_res.norms >= exact[keep] * (1 - 1e-6)).all()
        with torch.no_grad():
            assert (model(lo_res.x_adv).argmax(1) != y).all()
        np.testing.assert_allclose(
            lo_res.norms, (lo_res.x_adv - x[keep]).double().flatten(1).norm(p=norm, dim=1).numpy(), rtol=1e-12)


def test_inputs_outside_the_bounds_are_refused():
    model = affine_model()
    x = torch.full((4, 20), 2.0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        minimal_perturbation(model, x)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        minimal_perturbation(model, x, bounds=(-1, 1))
    with pytest.raises(ValueError, match="low < high"):
        minimal_perturbation(model, x, bounds=(3, 1))
    assert minimal_perturbation(model, x, bounds=(0, 2)).success.all()


class _SavedBytes:
    """Bytes of the tensors autograd graphs hold for their backward passes: now and at the most (saved-tensor
    hooks; a packed tensor is released with the graph that saved it)."""

    def __init__(self):
        self.live = self.peak = 0

    def __enter__(self):
        import weakref

        class Held:
            def __init__(self, t):
                self.t = t

        def pack(t):
            held, size = Held(t), t.numel() * t.element_size()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(held, self._release, size)
            return held

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.t)
        self._hooks.__enter__()
        return self

    def _release(self, size):
        self.live -= size

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def test_a_search_holds_one_chunks_graph_at_a_time_with_the_same_bits(trained_mnist_cnn):
    """The CPU search copy's searches (FMN, DeepFool's linearisations, PGD) differentiate a batch chunk by chunk
    (models.gradient_slices): the gradients are bit for bit those of one backward pass through the whole batch,
    and what autograd holds at once is one chunk's graph, not the batch's (a 512-sample batch held 600 MB)."""
    from mia_core.adversarial import _loss_gradient, pgd
    from mia_core.data import load_dataset
    from mia_core.distances.deepfool import _linearised, _vjps
    from mia_core.distances.fmn import _margin_gradient
    from mia_core.models import CPU_CONV_ROWS, gradient_slices, search_model
    from mia_core.tensors import margin

    model, _ = trained_mnist_cnn
    ds = load_dataset("mnist5k")
    x, y = torch.from_numpy(ds.x[:512]), torch.from_numpy(ds.y[:512])
    fast = search_model(model, x)
    rows = gradient_slices(fast, len(x))
    assert len(rows) == 512 // (CPU_CONV_ROWS // 2) and gradient_slices(model, 512) == [slice(0, 512)]
    delta = torch.rand_like(x) * 0.1

    def whole(objective):  # one graph over the whole batch, as the searches differentiated before
        d = delta.clone().requires_grad_(True)
        logits = fast(x + d)
        return logits.detach(), torch.autograd.grad(objective(logits).sum(), d)[0]

    logits, grad = _margin_gradient(fast, x, delta, y)
    logits_whole, grad_whole = whole(lambda z: margin(z, y))
    assert torch.equal(logits, logits_whole) and torch.equal(grad, grad_whole)
    ce = torch.cat([_loss_gradient(fast, x[r], y[r], delta[r], None) for r in rows])
    assert torch.equal(ce, whole(lambda z: torch.nn.functional.cross_entropy(z, y, reduction="none"))[1])
    xa = (x + delta).clamp(0, 1)
    parts = [_linearised(fast, xa[r], y[r], torch.zeros(r.stop - r.start, dtype=torch.bool), 3) for r in rows]
    w = torch.cat([p[3] for p in parts], dim=1)
    classes = torch.cat([p[2] for p in parts])
    xg = xa.clone().requires_grad_(True)
    out = fast(xg)
    grad_out = torch.zeros(2, *out.shape)
    grad_out.scatter_(2, classes[:, 1:].T[:, :, None], 1.0)
    grad_out.scatter_(2, classes[None, :, :1].expand(2, -1, -1), -1.0)
    assert torch.equal(w, _vjps(out, xg, grad_out))

    with _SavedBytes() as one:
        _margin_gradient(fast, x[rows[0]], delta[rows[0]], y[rows[0]])
    with _SavedBytes() as batch:
        whole(lambda z: margin(z, y))
    for search in (lambda: minimal_perturbation(model, x, norm=2.0, method="fmn"),
                   lambda: minimal_perturbation(model, x, norm=math.inf, method="superdeepfool"),
                   lambda: pgd(fast, x, y, eps=0.1, steps=2)):
        with _SavedBytes() as held:
            search()
        assert held.peak <= 1.5 * one.peak < batch.peak / 4


def test_large_inputs_are_searched_in_batches_that_fit(monkeypatch):
    """A search batch keeps a dozen per-sample tensors alive: 512 samples of a 224x224 RGB image hold about
    300 MB each (6.2 GB peak measured for 512 samples, 2.3 GB bounded). The batch shrinks with the input so that
    one such tensor stays under SEARCH_BATCH_BYTES; inputs up to 16,384 values keep 512. The bounded search is the
    search run in those batches, exact on an affine model."""
    assert search_batch((3, 64, 64), 512) == 512 and search_batch((1, 28, 28), 512) == 512
    assert search_batch((3, 224, 224), 512) == 32 * 2**20 // (3 * 224 * 224 * 4) == 55
    assert search_batch((3, 8192, 8192), 512) == 1
    model = affine_model(d=3 * 32 * 32, k=4)
    gen = torch.Generator().manual_seed(4)
    x = 0.45 + 0.1 * torch.rand(50, 3, 32, 32, generator=gen)
    exact = closed_form(model, x, 2.0)
    monkeypatch.setattr("mia_core.distances.SEARCH_BATCH_BYTES", 20 * 3 * 32 * 32 * 4)  # 20 samples a batch
    assert search_batch((3, 32, 32), 512) == 20
    reported = []
    res = minimal_perturbation(model, x, norm=2.0, method="deepfool", progress=lambda _, f: reported.append(f))
    assert reported == [0.4, 0.8, 1.0]  # one report a batch: 20, 20 and 10 samples
    assert res.success.all()
    np.testing.assert_allclose(res.norms, exact, rtol=0.01, atol=1e-5)  # past the boundary by a hair
    with torch.no_grad():
        assert (model(res.x_adv).argmax(1) != model(x).argmax(1)).all()
    np.testing.assert_allclose(res.norms, (res.x_adv - x).double().flatten(1).norm(dim=1).numpy(), rtol=1e-6)
    explicit = minimal_perturbation(model, x, norm=2.0, method="deepfool", batch_size=20)
    np.testing.assert_array_equal(res.norms, explicit.norms)


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-2.0, 3.0)])
def test_adversarial_examples_stream_into_a_given_array_with_the_same_bits(trained_cnn, digits, tmp_path, bounds):
    """`out` (a memory-mapped .npy file here, as the evaluation passes it) receives each verified batch: the same
    points, norms and verdicts, bit for bit, as the search that keeps them in memory, over several batches, in the
    unit box and in a user's box searched through its unit-box view; `x_adv` is then that array, and an
    eval-mode model stays in eval mode (a search in another box used to leave it in training mode)."""
    from mia_core.box import Box

    model, split = trained_cnn
    box = Box.of(bounds)
    x = box.from_unit(torch.from_numpy(digits.x[split.nonmembers[:150]]))
    user_model = model if box.is_unit else nn.Sequential(_ToUnit(box), model).eval()
    model.eval()
    kept = minimal_perturbation(user_model, x, norm=2.0, method="superdeepfool", batch_size=64, bounds=bounds)
    assert not user_model.training
    out = np.lib.format.open_memmap(tmp_path / "x_adv.npy", mode="w+", dtype=np.float32, shape=tuple(x.shape))
    streamed = minimal_perturbation(user_model, x, norm=2.0, method="superdeepfool", batch_size=64, bounds=bounds,
                                    out=out)
    assert not user_model.training and kept.success.mean() > 0.9
    assert np.shares_memory(streamed.x_adv.numpy(), out)
    for name in ("norms", "success", "labels", "adv_labels"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(kept, name))
    np.testing.assert_array_equal(np.load(tmp_path / "x_adv.npy"), kept.x_adv.numpy())
    with torch.no_grad():  # what was written flips the model at the reported norm
        ok = streamed.success
        assert (user_model(streamed.x_adv[ok]).argmax(1).numpy() != streamed.labels[ok]).all()
    np.testing.assert_allclose((streamed.x_adv - x).flatten(1).double().norm(dim=1).numpy()[ok],
                               streamed.norms[ok], rtol=1e-12)
    with pytest.raises(ValueError, match="out must be a float32 array"):
        minimal_perturbation(user_model, x, out=np.zeros((3, *x.shape[1:]), np.float32), bounds=bounds)


class _ToUnit(nn.Module):
    """A user's model whose inputs live in `box`: it maps them to [0, 1] before a network trained there."""

    def __init__(self, box):
        super().__init__()
        self.box = box

    def forward(self, x):
        return (x - self.box.low) / self.box.width


def test_the_box_is_checked_slice_by_slice_with_the_same_verdicts(monkeypatch):
    """`Box.check` reads at most CHECK_VALUES values at a time (a whole group at once held about 5 bytes a value of
    temporaries): a value out of the box or not finite in the last slice is still found, the message gives the
    whole range, and the comparison stays in the inputs' own precision (float32(0.1) lies in [-1, 0.1])."""
    from mia_core.box import Box

    monkeypatch.setattr("mia_core.box.CHECK_VALUES", 40)  # two rows of 20 values a slice
    x = torch.rand(9, 20)
    Box.of((0.0, 1.0)).check(x)
    x[8, 19] = 1.5
    with pytest.raises(ValueError, match=r"range over \[0(\.\d+)?(e-\d+)?, 1.5\]"):
        Box.of((0.0, 1.0)).check(x)
    x[8, 19] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        Box.of((0.0, 1.0)).check(x)
    Box.of((-1.0, 0.1)).check(torch.full((5, 20), 0.1))  # float32(0.1) > 0.1 as a double, not as a float32
    Box.of((0.0, 1.0)).check(torch.tensor(0.5))
