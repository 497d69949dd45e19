"""Auditing a user's own model on their own data: the notebook API, tables, image folders, ONNX, bad input."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import mia_core
from mia_core import TrainingRecipe, views
from mia_core.config import ConfigError, ExperimentConfig
from mia_core.data import DatasetError, load_dataset
from mia_core.experiment import list_runs, load_run
from mia_core.user_models import ModelError


FAST = ExperimentConfig(bootstrap_rounds=20, label_only_queries=200, reference_scored=100, lira_shadows=4)


class ResidualMLP(nn.Module):
    """An architecture the project does not know: inputs in [-2, 2], one residual block."""

    def __init__(self, d: int = 64, k: int = 10, width: int = 96):
        super().__init__()
        self.inp, self.out = nn.Linear(d, width), nn.Linear(width, k)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(width, width))

    def forward(self, x):
        h = self.inp(x.flatten(1) / 2)
        return self.out(torch.relu(h + self.block(h)))


def residual_mlp_factory(input_shape, num_classes):
    return ResidualMLP(int(np.prod(input_shape)), num_classes)


@pytest.fixture(scope="module")
def user_setup():
    """digits rescaled to [-2, 2], 150 members, a residual MLP overfitted on them."""
    ds = load_dataset("digits")
    x = ds.x.reshape(len(ds.x), -1) * 4 - 2
    perm = np.random.default_rng(0).permutation(len(x))
    m, n = perm[:150], perm[150:450]
    torch.manual_seed(0)
    net = ResidualMLP()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    xm, ym = torch.from_numpy(x[m]), torch.from_numpy(ds.y[m])
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xm), ym).backward()
        opt.step()
    return net.eval(), (x[m], ds.y[m]), (x[n], ds.y[n])


def test_a_user_architecture_is_audited_in_its_own_box(user_setup, store):
    net, members, nonmembers = user_setup
    run = mia_core.audit(net, members, nonmembers, bounds=(-2, 2), name="ResidualMLP", config=FAST, store=store)
    rec = run.record
    assert rec.is_audit and rec.audit.bounds == (-2.0, 2.0) and rec.audit.model_kind == "module"
    assert "seeded 50%" in rec.audit.reference and rec.n_members == 150 and rec.n_nonmembers == 150
    assert rec.train_accuracy == 1.0 and rec.test_accuracy < 1.0
    assert rec.attacks["distance_l2"].auc > 0.55 and rec.attacks["loss"].auc > 0.55
    # the distances are valid in the user's box: they flip, stay in [-2, 2], and carry their true norm
    g = run.table["members"]
    x = torch.from_numpy(run.dataset.x[g.index])
    x_adv = torch.from_numpy(np.array(g.artifacts["x_adv_distance_l2"]))  # a copy of the read-only map
    ok = np.isfinite(g.scores["distance_l2"]) & (g.scores["distance_l2"] > 0)
    assert ok.mean() > 0.9
    assert x_adv.min() >= -2 and x_adv.max() <= 2
    with torch.no_grad():
        assert (net(x_adv[ok]).argmax(1).numpy() != g.label[ok]).all()
    np.testing.assert_allclose(g.scores["distance_l2"][ok], (x_adv - x)[ok].double().norm(dim=1).numpy(), rtol=1e-12)
    # no factory: the reference-model attacks are unavailable, with the reason, never dropped
    for a in ("lira_online", "rmia_offline"):
        assert a in rec.attacks and not rec.attacks[a].defined and "model factory" in rec.unavailable[a]
    # the run is in the store like any other and reopens (data and split from the store; a Python module is not
    # rebuilt) with the same scores; the same call again reuses it
    assert [r.run_id for r in list_runs(store)] == [run.run_id]
    again = load_run(run.run_id, store=store)
    assert again.model is None and again.dataset.bounds == (-2.0, 2.0)
    np.testing.assert_array_equal(again.scores("distance_l2", "members"), run.scores("distance_l2", "members"))
    from mia_core.report import report_html

    page = report_html(again)
    assert "Your model: ResidualMLP (a Python nn.Module)" in page and "input box [-2, 2]" in page
    assert "inputs in [-2, 2]" in page  # the histograms name the box the distances are measured in
    assert "Not measured here" in page and "needs reference models of the audited architecture" in page
    assert mia_core.audit(net, members, nonmembers, bounds=(-2, 2), name="ResidualMLP", config=FAST,
                          store=store).reused


def test_a_factory_and_a_recipe_train_reference_models_of_the_users_architecture(user_setup, store):
    net, members, nonmembers = user_setup
    run = mia_core.audit(net, members, nonmembers, bounds=(-2, 2), config=FAST, store=store,
                         model_factory="test_user_audit:residual_mlp_factory",
                         recipe=TrainingRecipe(epochs=30, optimizer="sgd", lr=0.05))
    rec = run.record
    assert rec.config.optimizer == "sgd" and "30 epochs of sgd" in rec.audit.retraining
    for a in ("lira_online", "lira_offline", "rmia_online", "rmia_offline"):
        assert rec.attacks[a].defined and a not in rec.unavailable
    assert rec.attacks["rmia_online"].auc > 0.55
    shadow_dirs = list(run.run_dir.glob("shadows-*/chunk-*"))
    assert shadow_dirs  # cached beside the audit, chunk by chunk


def softmax_mlp_factory(input_shape, num_classes):
    return nn.Sequential(residual_mlp_factory(input_shape, num_classes), nn.Softmax(dim=1))


def test_a_model_that_outputs_probabilities_is_audited_on_its_own_losses(user_setup, tmp_path):
    """A softmax at the end (Keras models, many ONNX exports): log p is read as the logits, so every score is the
    one the same network gives without its softmax, and reference copies of it train on log p."""
    net, members, nonmembers = user_setup
    recipe = TrainingRecipe(epochs=30, optimizer="sgd", lr=0.05)
    plain = mia_core.audit(net, members, nonmembers, bounds=(-2, 2), config=FAST, store=tmp_path / "a",
                           model_factory="test_user_audit:residual_mlp_factory", recipe=recipe)
    ending_in_softmax = nn.Sequential(net, nn.Softmax(dim=1)).eval()
    run = mia_core.audit(ending_in_softmax, members, nonmembers, bounds=(-2, 2), config=FAST, store=tmp_path / "b",
                         model_factory="test_user_audit:softmax_mlp_factory", recipe=recipe)
    assert plain.record.audit.outputs == "logits" and run.record.audit.outputs == "probabilities"
    assert run.record.audit.logits_before_activation  # read through the logits before the softmax
    assert "outputs probabilities" in views.audit_note(run.record)
    for score in ("loss", "confidence", "entropy", "modified_entropy"):
        for group in ("members", "nonmembers"):
            np.testing.assert_allclose(run.scores(score, group), plain.scores(score, group), rtol=1e-4, atol=1e-5)
        assert run.record.attacks[score].auc == pytest.approx(plain.record.attacks[score].auc, abs=1e-3)
    from mia_core.user_models import ProbabilitiesAsLogits

    x = torch.from_numpy(run.dataset.x[:64])  # without a graph to trace, log p itself is read
    untraced = ProbabilitiesAsLogits(ending_in_softmax)
    with torch.no_grad():
        np.testing.assert_allclose(untraced(x).log_softmax(1).numpy(), net(x).log_softmax(1).numpy(), atol=1e-5)
    # the boundary is the network's: the searches' examples flip it, at about the same distances
    g = run.table["members"]
    ok = np.isfinite(g.scores["distance_l2"]) & (g.scores["distance_l2"] > 0)
    with torch.no_grad():
        flipped = ending_in_softmax(torch.from_numpy(np.array(g.artifacts["x_adv_distance_l2"])[ok])).argmax(1)
    assert (flipped.numpy() != g.label[ok]).all()
    assert np.median(g.scores["distance_l2"][ok]) == pytest.approx(
        np.median(plain.scores("distance_l2", "members")[ok]), rel=1e-3)
    # reference copies of the softmax architecture trained on log p: LiRA as strong as with the plain factory
    for attack in ("lira_online", "rmia_online"):
        assert run.record.attacks[attack].auc == pytest.approx(plain.record.attacks[attack].auc, abs=0.01)


def test_affine_user_model_in_a_wide_box_matches_the_closed_form(store):
    """A user's affine model on inputs in [-5, 5]: the audit's L2 distances are the closed-form ones."""
    torch.manual_seed(3)
    lin = nn.Linear(6, 3)
    gen = torch.Generator().manual_seed(4)
    x = (torch.rand(120, 6, generator=gen) * 4 - 2).numpy()
    with torch.no_grad():
        y = lin(torch.from_numpy(x)).argmax(1).numpy()
    run = mia_core.audit(lin, (x[:40], y[:40]), (x[40:], y[40:]), bounds=(-5, 5), config=FAST, store=store)
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    for group in ("members", "nonmembers"):
        g = run.table[group]
        z = torch.from_numpy(run.dataset.x[g.index]).double() @ w.T + b
        yy = torch.from_numpy(g.label)
        dist = (z.gather(1, yy[:, None]) - z) / (w[yy][:, None, :] - w[None]).norm(dim=2).clamp_min(1e-12)
        dist[torch.arange(len(yy)), yy] = math.inf
        exact = dist.min(1).values.numpy()
        inside = exact < 2.5  # the closed-form point stays in the box
        np.testing.assert_allclose(g.scores["distance_l2"][inside], exact[inside], rtol=0.01)


def test_bad_user_input_is_refused_with_a_message_and_nothing_stored(user_setup, store, snapshot):
    net, (xm, ym), (xn, yn) = user_setup
    mia_core.audit(net, (xm, ym), (xn, yn), bounds=(-2, 2), config=FAST, store=store)
    before = snapshot(store)
    cases = [
        (dict(members=(xm, ym + 10)), ModelError, "10 outputs but the labels go up to 19"),
        (dict(nonmembers=(np.concatenate([xn[:20], xm[:5]]), np.r_[yn[:20], ym[:5]])), DatasetError,
         "both among the members"),
        (dict(members=(xm[:5], ym[:5])), DatasetError, "at least 10"),
        (dict(members=(np.where(np.arange(xm.size).reshape(xm.shape) == 7, np.nan, xm), ym)), DatasetError, "NaN"),
        (dict(members=(xm * 3, ym)), DatasetError, "outside the bounds"),
        (dict(members=(xm, ym - 1)), DatasetError, "0..C-1"),
        (dict(model=nn.Linear(64, 5)), ModelError, "5 outputs but the labels go up to 9"),
        (dict(model=nn.Sequential(nn.Linear(64, 10), nn.Unflatten(1, (2, 5)))), ModelError, "must be \\[8, C\\]"),
        (dict(model_factory="no_such_package.module:f"), ModelError, "Cannot import 'no_such_package.module'"),
        (dict(model_factory="numpy:pi"), ModelError, "has no function 'pi'"),
        (dict(model_factory="numpy:zeros"), ModelError, None),
        (dict(model_factory="test_user_audit:not_a_model"), ModelError, "not a torch.nn.Module"),
        (dict(config=FAST.replace(lira_shadows=3)), ConfigError, "even"),
    ]
    for change, error, message in cases:
        kw = dict(model=net, members=(xm, ym), nonmembers=(xn, yn), bounds=(-2, 2), config=FAST, store=store)
        kw.update(change)
        model = kw.pop("model")
        with pytest.raises(error, match=message):
            mia_core.audit(model, **kw)
    assert snapshot(store) == before


def not_a_model(input_shape, num_classes):
    return "a string"


def test_an_audit_of_a_python_module_opens_on_every_page_and_the_table_demo_runs_from_the_app(
        user_setup, tmp_path, monkeypatch):
    """The run of a model the app cannot rebuild (its code is the user's) opens everywhere, labelled as the user's;
    the table demo's button trains the breast-cancer model and its explorer shows feature changes."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import mia_core.config as config_module
    from conftest import finish_jobs

    net, members, nonmembers = user_setup
    run = mia_core.audit(net, members, nonmembers, bounds=(-2, 2), name="ResidualMLP", config=FAST, store=tmp_path)
    monkeypatch.setenv("MIA_STORE", str(tmp_path))
    app = str(Path(__file__).resolve().parents[1] / "app.py")
    for page in ("app_pages/overview.py", "app_pages/distances.py", "app_pages/attacks.py", "app_pages/export.py"):
        at = AppTest.from_file(app, default_timeout=120)
        at.query_params["run"] = run.run_id
        at.run()
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    assert any("your model: ResidualMLP" in c.value for c in at.caption)
    monkeypatch.setattr(config_module, "TABLE_DEMO", config_module.TABLE_DEMO.replace(
        epochs=30, bootstrap_rounds=20, label_only_queries=100, lira_shadows=2, distance_method="deepfool"))
    at = AppTest.from_file(app, default_timeout=120).run()
    at.button(key="demo_table").click().run()
    finish_jobs(at, tmp_path)
    assert not at.exception
    assert "breast_cancer" in [r.record.config.dataset for r in list_runs(tmp_path)]
    at.switch_page("app_pages/distances.py").run()
    changes = [d.value for d in at.dataframe if "at the boundary" in d.value.columns]
    assert changes and changes[0]["feature"].iloc[0] in load_dataset("breast_cancer").feature_names
    options = at.selectbox(key="explore_farthest_members").options  # classes by their names in the table
    assert options and all(("malignant" in o or "benign" in o) and " → " in o for o in options)
    assert not [s for s in at.slider if s.key == "explorer_amplify"]  # no image to amplify


class OneLogitMLP(nn.Module):
    """A binary classifier as BCEWithLogitsLoss trains it: one output, the logit of class 1, shaped [N]."""

    def __init__(self, d: int, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x):
        return self.body(x.flatten(1))[:, 0]


def one_logit_factory(input_shape, num_classes):
    return OneLogitMLP(int(np.prod(input_shape)))


@pytest.fixture(scope="module")
def binary_setup():
    """breast-cancer (two classes, features in [0, 1]): 150 members, a one-logit MLP fitted with binary
    cross-entropy until it is confident on them."""
    ds = load_dataset("breast_cancer")
    perm = np.random.default_rng(0).permutation(len(ds.x))
    m, n = perm[:150], perm[150:450]
    torch.manual_seed(0)
    net = OneLogitMLP(ds.x.shape[1])
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xm, ym = torch.from_numpy(ds.x[m]), torch.from_numpy(ds.y[m]).float()
    for _ in range(200):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(xm), ym).backward()
        opt.step()
    return net.eval(), (ds.x[m], ds.y[m]), (ds.x[n], ds.y[n])


def _two_logit_twin(net: OneLogitMLP) -> nn.Module:
    """The same network with an ordinary two-logit head [0, z] (a zero row above the logit's row)."""
    twin = nn.Sequential(nn.Flatten(), net.body[0], net.body[1], nn.Linear(net.body[2].in_features, 2))
    with torch.no_grad():
        twin[3].weight.copy_(torch.cat([torch.zeros_like(net.body[2].weight), net.body[2].weight]))
        twin[3].bias.copy_(torch.cat([torch.zeros_like(net.body[2].bias), net.body[2].bias]))
    return twin.eval()


def test_a_binary_classifier_with_one_logit_is_audited_as_its_two_class_twin(binary_setup, tmp_path):
    """One output z (BCEWithLogitsLoss) is read as the logits [0, z]: every score is the one an ordinary
    two-logit head with the same function gives, the searches' examples flip the one-output model itself, and
    reference copies of the one-output architecture train with LiRA and RMIA defined."""
    net, members, nonmembers = binary_setup
    run = mia_core.audit(net, members, nonmembers, config=FAST, store=tmp_path / "a")
    twin = mia_core.audit(_two_logit_twin(net), members, nonmembers, config=FAST, store=tmp_path / "b")
    assert run.record.audit.outputs == "one logit" and twin.record.audit.outputs == "logits"
    assert "one output, the logit z of class 1" in views.audit_note(run.record)
    assert run.record.train_accuracy == twin.record.train_accuracy >= 0.98
    assert run.record.test_accuracy == twin.record.test_accuracy
    for score in ("loss", "confidence", "entropy", "distance_l2", "distance_linf"):
        for group in ("members", "nonmembers"):  # distances: searches from logits equal up to their last bits
            np.testing.assert_allclose(run.scores(score, group), twin.scores(score, group),
                                       rtol=1e-3 if score.startswith("distance") else 1e-5, atol=1e-6)
    for group in ("members", "nonmembers"):  # the label-only searches see the same labels
        same = np.isclose(run.scores("label_only_l2", group), twin.scores("label_only_l2", group), rtol=1e-3)
        assert same.mean() > 0.95
    g = run.table["members"]
    ok = np.isfinite(g.scores["distance_l2"]) & (g.scores["distance_l2"] > 0)
    assert ok.all()  # a logit does not saturate: every search finds the boundary
    with torch.no_grad():
        z = net(torch.from_numpy(np.array(g.artifacts["x_adv_distance_l2"])))
    assert ((z > 0).numpy().astype(int) != g.label).all()  # the one-output model's own decision flips
    # reference copies of the one-output architecture (the factory is called with the audit's two classes)
    recipe = TrainingRecipe(epochs=40, lr=1e-2)
    with_refs = mia_core.audit(net, members, nonmembers, config=FAST, store=tmp_path / "a",
                               model_factory="test_user_audit:one_logit_factory", recipe=recipe)
    for attack in ("lira_online", "lira_offline", "rmia_online", "rmia_offline"):
        assert with_refs.record.attacks[attack].defined and attack not in with_refs.record.unavailable
        assert np.isfinite(with_refs.scores(attack, "members")).all()
    assert list(with_refs.run_dir.glob("shadows-*/chunk-*"))  # the copies trained, cached beside the audit


class CheckedSigmoid(nn.Module):
    """A sigmoid head that checks its outputs (control flow on values: torch.fx cannot trace it)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        p = torch.sigmoid(self.net(x))
        if not torch.isfinite(p).all():
            raise ValueError("non-finite output")
        return p


def test_a_binary_classifier_ending_in_a_sigmoid_is_read_through_its_logit(binary_setup, tmp_path):
    """One output p in [0, 1] (a sigmoid at the end, as Keras binary classifiers have). Where its graph shows the
    logit before the sigmoid, that logit is read, so the audit is the one-logit network's, bit for bit: float32
    rounds p to exactly 1 for the members it is most confident on, where log(1 - p) and every gradient through p
    vanish. Where it cannot be traced, p is read as [log(1 - p), log p]: its decision is p > 1/2 and its losses
    the logit's up to the rounding of p, finite even where p is exactly 1."""
    net, members, nonmembers = binary_setup
    logit = mia_core.audit(net, members, nonmembers, config=FAST, store=tmp_path)
    run = mia_core.audit(nn.Sequential(net, nn.Sigmoid()).eval(), members, nonmembers, config=FAST, store=tmp_path)
    assert run.record.audit.outputs == "one probability" and run.record.audit.logits_before_activation
    assert "before that sigmoid" in views.audit_note(run.record) and run.run_id != logit.run_id
    for group in ("members", "nonmembers"):
        for score, values in logit.table[group].scores.items():
            np.testing.assert_array_equal(run.scores(score, group), values, err_msg=score)
    checked = mia_core.audit(CheckedSigmoid(net).eval(), members, nonmembers, config=FAST, store=tmp_path)
    assert checked.record.audit.outputs == "one probability" and not checked.record.audit.logits_before_activation
    assert "[log(1 - p), log p] is read" in views.audit_note(checked.record)
    assert checked.record.test_accuracy == logit.record.test_accuracy
    saturated = 0
    for group in ("members", "nonmembers"):
        x = torch.from_numpy(checked.dataset.x[checked.table[group].index])
        with torch.no_grad():
            z, p = net(x).double(), torch.sigmoid(net(x))
        unsaturated = (z.abs() < 12).numpy()  # where float32 p keeps its digits
        np.testing.assert_allclose(checked.scores("loss", group)[unsaturated],
                                   logit.scores("loss", group)[unsaturated], rtol=1e-4, atol=1e-6)
        assert np.isfinite(checked.scores("loss", group)).all()
        saturated += int((p == 1).sum())
    assert saturated > 10  # the case the logit is read for


def test_one_output_is_a_binary_classifiers_and_untrained_heads_are_read_right(binary_setup, store):
    net, members, nonmembers = binary_setup
    xm, ym = members
    with pytest.raises(ModelError, match="one output \\(a binary classifier's\\) but the labels go up to 2"):
        mia_core.audit(net, (xm, np.where(ym == 1, 2, ym)), nonmembers, config=FAST, store=store)
    assert not store.exists()
    from mia_core.user_models import output_reading

    probe = torch.from_numpy(xm[:64])
    torch.manual_seed(5)
    logit_head = nn.Linear(30, 1)
    with torch.no_grad():  # untrained, centred at 0.5: its outputs on the data all lie in [0, 1]
        logit_head.weight.mul_(0.01)
        logit_head.bias.fill_(0.5)
        assert ((logit_head(probe) > 0) & (logit_head(probe) < 1)).all()
    for head, reading in ((logit_head, "one logit"), (nn.Sequential(nn.Linear(30, 1), nn.Sigmoid()), "one probability"),
                          (nn.Sequential(nn.Linear(30, 3), nn.Softmax(1)), "probabilities"),
                          (nn.Linear(30, 3), "logits")):
        assert output_reading(head.eval(), probe) == reading


class SqueezedSigmoid(nn.Module):
    """The usual BCE head: `torch.sigmoid(...).squeeze(1)` (a reshape after the activation)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(30, 1)

    def forward(self, x):
        return torch.sigmoid(self.lin(x)).squeeze(1)


def test_the_logit_before_a_final_sigmoid_or_softmax_is_found_through_reshapes_and_checked(binary_setup):
    from mia_core.user_models import read_as, through_logits

    _, (xm, _), _ = binary_setup
    x = torch.from_numpy(xm[:64])
    torch.manual_seed(0)
    head = SqueezedSigmoid().eval()
    with torch.no_grad():
        head.lin.weight.mul_(400)  # confident: p rounds to 1 for some inputs
        p = head(x).double()
        z = head.lin(x).double()[:, 0]
    read = read_as(head, "one probability", x)
    assert through_logits(read) and (p == 1).any()
    with torch.no_grad():
        logp = read(x).double().log_softmax(1)
    np.testing.assert_allclose(logp[:, 1].numpy(), nn.functional.logsigmoid(z).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logp[:, 0].numpy(), nn.functional.logsigmoid(-z).numpy(), rtol=1e-5, atol=1e-7)
    assert (logp[:, 0][p == 1] < -np.log(2**24)).all()  # below what 1 - p can say in float32
    assert not through_logits(read_as(CheckedSigmoid(head.lin).eval(), "one probability", x))  # untraceable
    import io

    from mia_core.user_models import as_logits, load_onnx

    buf = io.BytesIO()  # the same head as ONNX: Sigmoid, then Squeeze (onnx2torch's own module)
    torch.onnx.export(head, (x[:2],), buf, dynamo=False, input_names=["x"], output_names=["p"],
                      dynamic_axes={"x": {0: "n"}, "p": {0: "n"}})
    converted = as_logits(load_onnx(buf.getvalue(), xm[:8], num_classes=2).module.eval(), x)
    assert through_logits(converted)
    with torch.no_grad():
        np.testing.assert_allclose(converted(x).double().log_softmax(1).numpy(), logp.numpy(), rtol=1e-5, atol=1e-6)


def test_a_hugging_face_classifier_is_audited_on_its_logits(tmp_path, monkeypatch):
    """A model that answers with a `ModelOutput` (Hugging Face's ViT, built from a config: nothing downloaded) is
    read through its `.logits`, with reference copies from a factory of the same config. Its attention reshapes
    cannot take an empty batch, which the label-only search used to ask for (no sample left to bisect)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import ViTConfig, ViTForImageClassification

    ds = load_dataset("digits")
    perm = np.random.default_rng(0).permutation(len(ds.x))
    m, n = perm[:200], perm[200:500]
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    vit = ViTForImageClassification(config)
    opt = torch.optim.Adam(vit.parameters(), 3e-3)
    xm, ym = torch.from_numpy(ds.x[m]), torch.from_numpy(ds.y[m])
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(vit(xm).logits, ym).backward()
        opt.step()
    vit.eval()
    run = mia_core.audit(vit, (ds.x[m], ds.y[m]), (ds.x[n], ds.y[n]), config=FAST.replace(lira_shadows=2),
                         store=tmp_path, model_factory=lambda: ViTForImageClassification(config),
                         recipe=TrainingRecipe(epochs=10, lr=3e-3))
    rec = run.record
    assert rec.audit.model == "ViTForImageClassification (a Python nn.Module)" and rec.train_accuracy >= 0.95
    for attack in ("lira_online", "rmia_online", "label_only_l2", "distance_l2"):
        assert rec.attacks[attack].defined
    g = run.table["members"]
    with torch.no_grad():
        logp = vit(torch.from_numpy(run.dataset.x[g.index])).logits.double().log_softmax(1).numpy()
        np.testing.assert_allclose(run.scores("loss", "members"), logp[np.arange(len(g.index)), g.label], atol=1e-5)
        assert np.isfinite(g.scores["distance_l2"]).all()
        flipped = vit(torch.from_numpy(np.array(g.artifacts["x_adv_distance_l2"]))).logits.argmax(1).numpy()
    assert (flipped != g.label).all()
