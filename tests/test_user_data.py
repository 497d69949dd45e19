"""A user's own data (tables, image folders) and models (ONNX, a factory) through the loaders and the CLI."""

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mia_core.cli import main
from mia_core.data import DatasetError, load_dataset
from mia_core.experiment import list_runs, load_run
from mia_core.user_audit import audit_onnx
from mia_core.user_data import prepare_user_data, read_image_folder, read_table, read_user_data
from mia_core.user_models import ModelError, converter_ready, load_onnx, onnx_digest

FAST_FLAGS = ["--bootstrap", "20", "--label-only-queries", "150", "--reference-scored", "60", "--lira-shadows", "2",
              "--method", "deepfool"]


@pytest.fixture
def patients(tmp_path):
    """The breast-cancer table as a user would have it: text labels, an id, a category, a membership column."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    rng = np.random.default_rng(0)
    frame["diagnosis"] = np.where(frame.pop("target") == 1, "benign", "malignant")
    frame["clinic"] = rng.choice(["north", "south", "east"], len(frame))
    frame["member"] = (rng.random(len(frame)) < 0.4).astype(int)
    frame.insert(0, "patient_id", [f"p{i:04d}" for i in range(len(frame))])
    path = tmp_path / "patients.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_a_table_is_scaled_one_hot_encoded_and_keeps_its_units(patients, tmp_path):
    path, frame = patients
    data = read_table(path, label_column="diagnosis", membership_column="member", id_column="patient_id")
    ds = data.dataset
    assert ds.x.shape == (569, 30 + 3) and ds.x.min() == 0 and ds.x.max() == 1
    assert ds.class_names == ("benign", "malignant") and ds.num_classes == 2
    assert ds.feature_names[:2] == ("mean radius", "mean texture") and "clinic=north" in ds.feature_names
    np.testing.assert_allclose(ds.in_original_units(ds.x)[:, 0], frame["mean radius"], rtol=1e-5)
    assert (data.members == frame["member"].astype(bool)).all() and data.ids[0] == "p0000"
    # Parquet reads the same
    frame.to_parquet(tmp_path / "patients.parquet")
    again = read_table(tmp_path / "patients.parquet", label_column="diagnosis", membership_column="member",
                       id_column="patient_id")
    np.testing.assert_array_equal(again.dataset.x, ds.x)
    # member ids instead of a column; the reference pool is a seeded share of the rest, said in the run
    ids = tmp_path / "members.txt"
    ids.write_text("patient_id\n" + "\n".join(frame.patient_id[frame.member == 1]) + "\n")
    from mia_core.user_data import read_member_ids

    prepared = prepare_user_data(read_table(path, label_column="diagnosis", id_column="patient_id"),
                                 member_ids=read_member_ids(ids), reference_share=0.25, seed=1)
    assert len(prepared.split.members) == frame.member.sum()
    assert len(prepared.split.reference) == int((569 - frame.member.sum()) * 0.25)
    assert "seeded 25%" in prepared.reference


def test_bad_tables_and_folders_are_refused_with_a_message(patients, tmp_path):
    path, frame = patients
    cases = []
    def table(name, change):
        f = frame.copy()
        change(f)
        p = tmp_path / name
        f.to_csv(p, index=False)
        return p
    cases.append((path, dict(label_column="label"), "no label column 'label'"))
    cases.append((table("nan.csv", lambda f: f.__setitem__("mean radius", f["mean radius"].where(f.index != 3))),
                  {}, "column 'mean radius' has 1 missing, NaN or infinite"))
    cases.append((table("text.csv", lambda f: f.__setitem__("mean area", f["mean area"].astype(object).where(
        f.index != 5, "about 500"))), {}, "column 'mean area' is numeric but row 5 holds 'about 500'"))
    cases.append((table("member.csv", lambda f: f.__setitem__("member", f["member"].astype(object).where(
        f.index != 2, "maybe"))), dict(membership_column="member"), "row 2 has 'maybe'"))
    cases.append((table("one.csv", lambda f: f.__setitem__("diagnosis", "benign")), {}, "needs 2 classes"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    cases.append((garbage, {}, "not a readable parquet table"))
    for p, kw, message in cases:
        with pytest.raises(DatasetError, match=message):
            read_table(p, **{"label_column": "diagnosis", "id_column": "patient_id", **kw})
    with pytest.raises(DatasetError, match="Say who was in training"):
        prepare_user_data(read_table(path, label_column="diagnosis", id_column="patient_id"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        read_image_folder(tmp_path / "empty")


def _image_folder(root, sizes=((8, 8),)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog", "eel")):
        (root / cls).mkdir(parents=True)
        for i in range(30):
            size = sizes[(c * 30 + i) % len(sizes)]
            pixels = np.clip(rng.normal(60 + 70 * c, 30, (*size[::-1], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i:02d}.png")
    return root


def test_an_image_folder_loads_and_mixed_sizes_are_refused(tmp_path):
    data = read_image_folder(_image_folder(tmp_path / "pets"))
    assert data.dataset.x.shape == (90, 3, 8, 8) and data.dataset.class_names == ("cat", "dog", "eel")
    assert data.ids[0] == "cat/00.png" and 0 <= data.dataset.x.min() and data.dataset.x.max() <= 1
    with pytest.raises(DatasetError, match="different sizes"):
        read_image_folder(_image_folder(tmp_path / "mixed", sizes=((8, 8), (9, 8))))


def test_member_ids_of_a_zipped_image_folder_may_be_its_paths_inside_the_zip(tmp_path):
    """The page asks for "an image's path inside the .zip": a zip of the folder itself holds 'pets/cat/00.png',
    while an image's id is 'cat/00.png'. Both name it (and Windows' backslashes, a leading './'); an unknown id is
    refused with what ids look like, for an image folder as for a table."""
    import zipfile

    from mia_core.user_data import read_upload

    root = _image_folder(tmp_path / "pets")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path).as_posix())
    data = read_upload(buf.getvalue(), "pets.zip", tmp_path / "work")
    assert data.ids[0] == "cat/00.png" and data.folder == "pets"
    (tmp_path / "pets.zip").write_bytes(buf.getvalue())  # the command line reads the same .zip the same way
    from_cli = read_user_data(tmp_path / "pets.zip")
    assert from_cli.folder == "pets" and (from_cli.ids == data.ids).all()
    np.testing.assert_array_equal(from_cli.dataset.x, data.dataset.x)
    written = ["path", "pets/cat/00.png", "pets\\dog\\03.png", "./eel/07.png", "cat/11.png"]
    for i in range(12, 22):
        written.append(f"pets/dog/{i:02d}.png")
    prepared = prepare_user_data(data, member_ids=written, reference_share=0.5)
    chosen = set(data.ids[prepared.split.members])
    assert chosen == {"cat/00.png", "dog/03.png", "eel/07.png", "cat/11.png", *(f"dog/{i:02d}.png" for i in range(12, 22))}
    with pytest.raises(DatasetError, match=r"1 of the member ids is not in the data \(e.g. 'pets/cow/01.png'\); ids are "
                                           r"the images' paths inside the folder, like 'cat/00.png'"):
        prepare_user_data(data, member_ids=written + ["pets/cow/01.png"])
    table = read_table(tmp_path / "t.csv", label_column="y", id_column="id") if (tmp_path / "t.csv").write_text(
        "id,a,y\n" + "".join(f"r{i},{i},{i % 2}\n" for i in range(40))) else None
    with pytest.raises(DatasetError, match=r"ids are the id column's values, like 'r0'"):
        prepare_user_data(table, member_ids=["r1", "r2", "x9"])
    # a class folder named as the folder itself keeps its own paths
    same = read_image_folder(_image_folder(tmp_path / "cat"))
    assert set(same.ids[prepare_user_data(same, member_ids=[f"cat/{i:02d}.png" for i in range(12)]).split.members]) \
        == {f"cat/{i:02d}.png" for i in range(12)}


class SmallConvNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _onnx_bytes(model, example):
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (example,), buf, dynamo=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue()


def _pets_with_every_third_a_member(tmp_path):
    """The generated pets folder read as an image folder, every third image a member: (data, dataset, split)."""
    data = read_image_folder(_image_folder(tmp_path / "pets"))
    ds = data.dataset
    members = np.zeros(len(ds.y), dtype=bool)
    members[::3] = True
    return data, ds, prepare_user_data(data.__class__(ds, data.ids, members, data.source))


@pytest.mark.parametrize("exporter", ["legacy", "default"])  # TorchScript-based (opset 17), torch.export-based (18+)
def test_an_onnx_model_is_converted_checked_and_audited_like_the_original(tmp_path, exporter):
    data, ds, prepared = _pets_with_every_third_a_member(tmp_path)
    torch.manual_seed(0)
    net = SmallConvNet()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    members = prepared.split.members
    xm, ym = torch.from_numpy(ds.x[members]), torch.from_numpy(ds.y[members])
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xm), ym).backward()
        opt.step()
    blob = (_onnx_bytes if exporter == "legacy" else _default_exporter_bytes)(net, xm[:2])
    converted = load_onnx(blob, ds.x[:8], num_classes=3)
    assert converted.max_abs_difference < 1e-4 and "Conv" in converted.operators
    with torch.no_grad():
        np.testing.assert_allclose(converted.module(torch.from_numpy(ds.x)).numpy(), net(torch.from_numpy(ds.x)).numpy(),
                                   atol=1e-4)
    store = tmp_path / "store"
    from mia_core.config import ExperimentConfig

    cfg = ExperimentConfig(bootstrap_rounds=20, label_only_queries=150, reference_scored=60, distance_method="deepfool")
    run = audit_onnx(blob, ds, prepared.split, prepared.reference, data_label=data.source, file_name="pets.onnx",
                     config=cfg, store=store)
    rec = run.record
    assert rec.audit.model_kind == "onnx" and rec.audit.onnx_max_difference < 1e-4
    assert "model factory" in rec.unavailable["lira_online"]
    # the same scores as the torch original, sample by sample
    with torch.no_grad():
        logp = torch.log_softmax(net(torch.from_numpy(ds.x[run.table["members"].index])).double(), 1).numpy()
    np.testing.assert_allclose(run.scores("loss", "members"),
                               logp[np.arange(len(logp)), run.table["members"].label], atol=1e-4)
    # reopened from the store: the ONNX file is kept and converted again, without pickle
    again = load_run(run.run_id, store=store)
    assert again.model is not None and again.dataset.x.shape == ds.x.shape


def _default_exporter_bytes(model, example):
    """What `torch.onnx.export(model, (x,), f)` writes with torch's default (torch.export-based) exporter: opset 18+,
    Reshape with allowzero=1, Gelu as one operator."""
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (example,), buf, dynamic_shapes=({0: torch.export.Dim("n")},),
                      input_names=["x"], verbose=False)
    return buf.getvalue()


class GeluNet(nn.Module):
    def __init__(self, approximate):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.GELU(approximate=approximate), nn.Linear(32, 3))

    def forward(self, x):
        return self.body(x.flatten(1))


def test_models_from_torchs_default_exporter_are_converted_and_agree():
    import onnx

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for net, shape, ops in ((SmallConvNet(), (3, 8, 8), {"Reshape", "Conv"}),
                            (GeluNet("none"), (12,), {"Gelu"}), (GeluNet("tanh"), (12,), {"Gelu"})):
        x = rng.random((16, *shape), dtype=np.float32)
        blob = _default_exporter_bytes(net, torch.from_numpy(x[:2]))
        proto = onnx.load_model_from_string(blob)
        assert max(o.version for o in proto.opset_import if o.domain == "") >= 18  # what the converter refuses as is
        converted = load_onnx(blob, x, num_classes=3)
        assert ops <= set(converted.operators) and converted.digest == onnx_digest(blob) and converted.data == blob
        with torch.no_grad():  # the user's model, not only ONNX Runtime's reading of it
            np.testing.assert_allclose(converted.module(torch.from_numpy(x)).numpy(), net(torch.from_numpy(x)).numpy(),
                                       atol=1e-5)
        converter_ready(proto)
        assert proto == onnx.load_model_from_string(blob)  # the user's graph is left as written
        grad_in = torch.from_numpy(x).requires_grad_()  # the white-box searches differentiate it
        converted.module(grad_in).sum().backward()
        assert grad_in.grad is not None and grad_in.grad.abs().sum() > 0


def test_a_reshape_to_a_constant_shape_with_a_zero_keeps_allowzero():
    from onnx import TensorProto, helper, numpy_helper

    def graph(shape):
        node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)
        return helper.make_model(helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape")]),
            opset_imports=[helper.make_opsetid("", 19)])

    allowzero = lambda proto: proto.graph.node[0].attribute[0].i  # noqa: E731
    assert allowzero(converter_ready(graph([-1, 2, 2]))) == 0  # same meaning either way: turned off
    assert allowzero(converter_ready(graph([0, 4]))) == 1  # a 0 here means an empty dimension: kept


def test_an_onnx_model_ending_in_a_softmax_is_audited_and_reopened_on_its_log_probabilities(tmp_path):
    """Read through the logits before its softmax (the converted graph shows them): log p without p's rounding."""
    data, ds, prepared = _pets_with_every_third_a_member(tmp_path)
    torch.manual_seed(0)
    net = nn.Sequential(SmallConvNet(), nn.Softmax(dim=1)).eval()
    blob = _onnx_bytes(net, torch.from_numpy(ds.x[:2]))
    from mia_core.config import ExperimentConfig

    cfg = ExperimentConfig(bootstrap_rounds=20, label_only_queries=150, reference_scored=60, distance_method="deepfool")
    run = audit_onnx(blob, ds, prepared.split, prepared.reference, data_label=data.source, file_name="pets.onnx",
                     config=cfg, store=tmp_path / "store")
    assert run.record.audit.outputs == "probabilities" and run.record.audit.logits_before_activation
    x = torch.from_numpy(ds.x)
    with torch.no_grad():
        log_p = torch.log(net(x)).double().numpy()
        g = run.table["members"]
        np.testing.assert_allclose(run.scores("loss", "members"), log_p[g.index, g.label], atol=1e-4)  # log p_y
        again = load_run(run.run_id, store=tmp_path / "store")  # reopened: read as the audit read it
        np.testing.assert_allclose(again.model(x).log_softmax(1).numpy(), log_p, atol=1e-4)


def test_reference_models_are_re_initialized_copies_of_the_onnx_graph(tmp_path):
    """LiRA and RMIA for an ONNX model: its graph re-initialized layer by layer is the architecture itself (the
    original's weights loaded into a copy give its outputs), starts from PyTorch's own initialization (the same
    weights a fresh nn.Sequential of the same layers draws from the same seed), and an audit with it trains the same
    reference models as an audit given the torch architecture as a factory: the same scores."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from user_files import onnx_for_table, patients_csv

    from mia_core.config import ExperimentConfig, TrainingRecipe
    from mia_core.user_audit import audit_prepared
    from mia_core.user_data import prepare_user_data, read_table
    from mia_core.user_models import fresh_onnx_copy

    csv = tmp_path / "patients.csv"
    patients_csv(csv)
    blob, net, x, y = onnx_for_table(csv, epochs=100)
    layers = lambda: nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 2))  # noqa: E731
    torch.manual_seed(3)
    copy = fresh_onnx_copy(blob)
    torch.manual_seed(3)
    fresh = layers()
    assert [p.detach().numpy().tolist() for p in copy.parameters()] == [p.detach().numpy().tolist()
                                                                         for p in fresh.parameters()]
    copy.load_state_dict(dict(zip(copy.state_dict(), net.state_dict().values())))
    with torch.no_grad():
        np.testing.assert_allclose(copy(torch.from_numpy(x)).numpy(), net(torch.from_numpy(x)).numpy(), atol=1e-5)

    data = read_table(csv, label_column="diagnosis", membership_column="member", id_column="patient_id")
    prepared = prepare_user_data(data)
    cfg = ExperimentConfig(bootstrap_rounds=20, label_only_queries=100, reference_scored=60,
                           distance_method="deepfool", lira_shadows=4,
                           shadow_training="stacked")  # float32: a plain MLP's own fast path and vmap give one result
    recipe = TrainingRecipe(epochs=20)
    from_onnx = audit_onnx(blob, prepared.dataset, prepared.split, prepared.reference, data_label="patients",
                           file_name="clinic.onnx", config=cfg, store=tmp_path / "a", recipe=recipe)
    rec = from_onnx.record
    assert rec.audit.retraining.startswith("copies of clinic.onnx's graph, re-initialized")
    given = audit_prepared(net, prepared.dataset, prepared.split, prepared.reference, model_label="net",
                           model_kind="module", model_digest="net", data_label="patients", short_name="net",
                           model_factory=layers, recipe=recipe, config=cfg, store=tmp_path / "b")
    for attack in ("lira_online", "lira_offline", "rmia_online", "rmia_offline"):
        assert rec.attacks[attack].defined
        np.testing.assert_allclose(from_onnx.scores(attack, "members"), given.scores(attack, "members"), atol=1e-3)
        assert rec.attacks[attack].auc == pytest.approx(given.record.attacks[attack].auc, abs=2e-3)
    # without a recipe the run says how to get them
    plain = audit_onnx(blob, prepared.dataset, prepared.split, prepared.reference, data_label="patients",
                       file_name="clinic.onnx", config=cfg, store=tmp_path / "a")
    assert "--onnx-references" in plain.record.unavailable["lira_online"]


def batch_norm_cnn():
    """Conv, batch norm, ReLU twice, as ResNets are written (digits' 8x8 images)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 2 * 2, 10))


def test_reference_copies_of_an_onnx_cnn_get_back_the_batch_norms_its_exporter_folded(tmp_path, capsys):
    """Exporters fold each batch norm into the convolution before it. With `batch_norm`, the copies get them back
    (each convolution without its bias, then a batch norm): the original architecture itself, so a copy draws
    the weights a fresh torch model does from the same seed, takes the trained model's state and answers as it
    does, and an audit trains the same reference models as one given the torch architecture as a factory."""
    from mia_core.config import ExperimentConfig, TrainingRecipe
    from mia_core.user_audit import audit_dataset, audit_prepared
    from mia_core.user_models import fresh_onnx_copy

    ds = load_dataset("digits")
    perm = np.random.default_rng(0).permutation(len(ds.x))
    m, n = perm[:200], perm[200:500]
    torch.manual_seed(0)
    net = batch_norm_cnn()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(ds.x[m])), torch.from_numpy(ds.y[m])).backward()
        opt.step()
    blob = _onnx_bytes(net.eval(), torch.from_numpy(ds.x[:2]))
    assert "BatchNormalization" not in load_onnx(blob, ds.x[:8]).operators  # folded by the exporter
    folded = fresh_onnx_copy(blob)
    torch.manual_seed(3)
    restored = fresh_onnx_copy(blob, batch_norm=True)
    torch.manual_seed(3)
    original = batch_norm_cnn()
    assert [p.detach().numpy().tolist() for p in restored.parameters()] == [p.detach().numpy().tolist()
                                                                            for p in original.parameters()]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    restored.load_state_dict(dict(zip(restored.state_dict(), net.state_dict().values())))
    with torch.no_grad():
        x = torch.from_numpy(ds.x[:64])
        np.testing.assert_array_equal(restored.eval()(x).numpy(), net(x).numpy())
    with pytest.raises(ModelError, match="no convolution"):
        fresh_onnx_copy(_onnx_bytes(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), torch.from_numpy(ds.x[:2])),
                        batch_norm=True)

    data, split, how = audit_dataset((ds.x[m], ds.y[m]), (ds.x[n], ds.y[n]))
    cfg = ExperimentConfig(bootstrap_rounds=20, label_only_queries=50, reference_scored=60, lira_shadows=2,
                           distance_method="deepfool")
    recipe = TrainingRecipe(epochs=5, lr=3e-3)
    run = audit_onnx(blob, data, split, how, data_label="digits", file_name="bn.onnx", config=cfg,
                     store=tmp_path / "a", recipe=recipe, batch_norm=True)
    assert "a batch norm restored after each convolution" in run.record.audit.retraining
    given = audit_prepared(net, data, split, how, model_label="net", model_kind="module", model_digest="net",
                           data_label="digits", short_name="net", model_factory=batch_norm_cnn, recipe=recipe,
                           config=cfg, store=tmp_path / "b")
    for attack in ("lira_online", "lira_offline", "rmia_online", "rmia_offline"):  # float noise of the graph
        np.testing.assert_allclose(run.scores(attack, "members"), given.scores(attack, "members"), rtol=1e-4,
                                   atol=1e-3)
        assert run.record.attacks[attack].auc == pytest.approx(given.record.attacks[attack].auc, abs=2e-3)
    assert main(["audit", "--data", str(tmp_path / "x.csv"), "--onnx", str(tmp_path / "m.onnx"),
                 "--onnx-batch-norm"]) == 2
    assert "--onnx-batch-norm needs --onnx-references" in capsys.readouterr().err


class ChannelsLastNet(nn.Module):
    """A Keras-style model (as tf2onnx writes it): images come in as [N, H, W, C]."""

    def __init__(self):
        super().__init__()
        self.body = SmallConvNet()

    def forward(self, x):
        return self.body(x.permute(0, 3, 1, 2))


def test_an_onnx_model_that_takes_channels_last_images_is_given_them_so(tmp_path):
    """The data is read as [N, C, H, W]; a graph that declares [N, H, W, C] gets its images permuted (the same
    distances: a permutation of coordinates), is checked against ONNX Runtime in its own layout, and its
    reference copies take the same layout."""
    from mia_core.config import ExperimentConfig, TrainingRecipe
    from mia_core.user_models import fresh_onnx_copy, takes_channels_last

    data, ds, prepared = _pets_with_every_third_a_member(tmp_path)
    torch.manual_seed(0)
    net = ChannelsLastNet().eval()
    blob = _onnx_bytes(net, torch.from_numpy(ds.x[:2]).permute(0, 2, 3, 1))
    converted = load_onnx(blob, ds.x[:8], num_classes=3)
    assert converted.channels_last and converted.max_abs_difference < 1e-4
    nhwc = torch.from_numpy(ds.x).permute(0, 2, 3, 1)
    with torch.no_grad():
        np.testing.assert_allclose(converted.module(torch.from_numpy(ds.x)).numpy(), net(nhwc).numpy(), atol=1e-5)
    cfg = ExperimentConfig(bootstrap_rounds=20, label_only_queries=100, reference_scored=60,
                           distance_method="deepfool", lira_shadows=2)
    run = audit_onnx(blob, ds, prepared.split, prepared.reference, data_label=data.source, file_name="keras.onnx",
                     config=cfg, store=tmp_path / "store", recipe=TrainingRecipe(epochs=5))
    assert run.record.audit.model == "keras.onnx (ONNX, images given as [N, H, W, C])"
    assert run.record.attacks["lira_online"].defined
    g = run.table["members"]
    with torch.no_grad():
        logp = torch.log_softmax(net(nhwc[g.index]).double(), 1).numpy()
    np.testing.assert_allclose(g.scores["loss"], logp[np.arange(len(g.index)), g.label], atol=1e-4)
    assert fresh_onnx_copy(blob, True)(torch.from_numpy(ds.x[:4])).shape == (4, 3)
    # the layout is told by the declared sizes; a square image with as many channels as pixels a side is not
    assert not takes_channels_last([None, 3, 8, 8], (4, 3, 8, 8)) and takes_channels_last([None, 8, 8, 3], (4, 3, 8, 8))
    assert not takes_channels_last([None, 3, 3, 3], (4, 3, 3, 3)) and not takes_channels_last([None, None, None, None],
                                                                                              (4, 3, 8, 8))


def test_a_graph_with_weights_outside_resettable_layers_is_refused_for_reference_copies():
    from onnx import TensorProto, helper, numpy_helper

    from mia_core.user_models import fresh_onnx_copy

    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [weight])
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert load_onnx(blob, np.ones((2, 4), dtype=np.float32), num_classes=3) is not None  # auditable as it is
    with pytest.raises(ModelError, match="Reference models cannot be built from this ONNX graph.*--model-factory"):
        fresh_onnx_copy(blob)

    class Standardized(nn.Module):  # a normalization inside the model: constants along one dimension, kept
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.head(self.conv(x - self.mean).flatten(1))

    copy = fresh_onnx_copy(_onnx_bytes(Standardized(), torch.rand(2, 3, 8, 8)))
    assert any(b.shape == (1, 3, 1, 1) and (b == 0.5).all() for b in copy.buffers())


def test_bad_onnx_files_are_refused_and_nothing_is_stored(tmp_path, monkeypatch, snapshot):
    sample = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    good = _onnx_bytes(SmallConvNet(), torch.from_numpy(sample[:2]))
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_onnx(b"\x80\x04\x95 a pickle, not a protobuf", sample)
    with pytest.raises(ModelError, match="cannot run the model on inputs of shape \\[4, 1, 8, 8\\]"):
        load_onnx(good, sample[:, :1])
    with pytest.raises(ModelError, match="3 outputs but the labels go up to 9"):
        load_onnx(good, sample, num_classes=10)
    monkeypatch.setenv("MIA_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(ModelError, match="the limit is 0 MB"):
        load_onnx(good, sample)
    monkeypatch.delenv("MIA_MAX_UPLOAD_MB")
    # an operator the converter does not know
    from onnx import TensorProto, helper

    node = helper.make_node("Hardmax", ["x"], ["y"], axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    odd = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    with pytest.raises(ModelError, match="does not support.*Hardmax|Hardmax"):
        load_onnx(odd, sample[:, 0, 0, :3])


def test_the_cli_audits_a_csv_with_a_users_factory(patients, tmp_path, capsys, monkeypatch):
    path, frame = patients
    (tmp_path / "clinic_models.py").write_text(textwrap.dedent("""
        import math
        from torch import nn
        def mlp(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 64), nn.ReLU(),
                                 nn.Linear(64, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    store = tmp_path / "store"
    args = ["audit", "--data", str(path), "--label-column", "diagnosis", "--membership-column", "member",
            "--id-column", "patient_id", "--model-factory", "clinic_models:mlp", "--epochs", "20",
            "--store", str(store), "--out", str(tmp_path / "out"), *FAST_FLAGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "distance_l2" in out and "rmia_online" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["audit"]["model_kind"] == "factory" and "trained here" in summary["audit"]["model"]
    assert summary["audit"]["retraining"].startswith("copies of clinic_models:mlp")
    assert summary["attacks"][[a["name"] for a in summary["attacks"]].index("lira_online")]["auc"] is not None
    run = list_runs(store)[0]
    assert run.record.config.model == "your model: mlp" and run.record.n_members == frame.member.sum()
    # bad input: a clear message, exit 2, the store untouched
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    for bad, message in (
        (["--label-column", "nope"], "no label column 'nope'"),
        (["--model-factory", "clinic_models:nothing"], "has no function 'nothing'"),
        (["--membership-column", "mean radius"], "must hold 1/0"),
        (["--onnx", str(path)], "Name the model"),
    ):
        argv = list(args)
        for flag, value in zip(bad[::2], bad[1::2]):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    # the same factory trains a run of the product on an embedded table (its shadows are copies of it)
    assert main(["run", "--dataset", "breast_cancer", "--members", "100", "--epochs", "20", "--model-factory",
                 "clinic_models:mlp", "--store", str(store), *FAST_FLAGS]) == 0
    trained = [r for r in list_runs(store) if r.record.audit is None][0].record
    assert trained.config.model == "factory:clinic_models:mlp" and trained.attacks["lira_online"].defined


def test_binary_classifiers_with_one_output_run_through_the_cli(patients, tmp_path, capsys, monkeypatch):
    """A one-logit factory (BCEWithLogitsLoss's form) trains a run of the product and an audit, and a Keras-style
    ONNX model ending in Dense(1) + sigmoid is audited with reference copies of its graph: the copies and the
    model are read through the logit before the sigmoid, and every reference-model attack is defined."""
    path, frame = patients
    (tmp_path / "binary_models.py").write_text(textwrap.dedent("""
        import math
        from torch import nn
        def one_logit(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 32), nn.ReLU(), nn.Linear(32, 1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    store = tmp_path / "store"
    assert main(["run", "--dataset", "breast_cancer", "--members", "100", "--epochs", "20", "--model-factory",
                 "binary_models:one_logit", "--store", str(store), *FAST_FLAGS]) == 0
    trained = list_runs(store)[0].record
    assert trained.attacks["lira_online"].defined and trained.test_accuracy > 0.85
    table = ["--data", str(path), "--label-column", "diagnosis", "--membership-column", "member",
             "--id-column", "patient_id", "--store", str(store), *FAST_FLAGS]
    assert main(["audit", *table, "--model-factory", "binary_models:one_logit", "--epochs", "20"]) == 0
    audited = [r.record for r in list_runs(store) if r.record.audit is not None][0]
    assert audited.audit.outputs == "one logit" and audited.attacks["rmia_online"].defined
    data = read_table(path, label_column="diagnosis", membership_column="member", id_column="patient_id")
    x, y = torch.from_numpy(data.dataset.x), torch.from_numpy(data.dataset.y).float()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid())
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    m = torch.from_numpy(data.members.copy())
    for _ in range(150):
        opt.zero_grad()
        nn.functional.binary_cross_entropy(net(x[m])[:, 0], y[m]).backward()
        opt.step()
    (tmp_path / "clinic.onnx").write_bytes(_onnx_bytes(net.eval(), x[:2]))
    capsys.readouterr()
    assert main(["audit", *table, "--onnx", str(tmp_path / "clinic.onnx"), "--onnx-references", "--epochs", "20",
                 "--out", str(tmp_path / "out")]) == 0
    assert "the logit z before that sigmoid is read" in " ".join(capsys.readouterr().out.split())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["audit"]["outputs"] == "one probability" and summary["audit"]["logits_before_activation"]
    run = load_run([r for r in list_runs(store) if r.record.audit and r.record.audit.model_kind == "onnx"][0].run_id,
                   store=store)
    assert all(run.record.attacks[a].defined for a in ("lira_online", "lira_offline", "rmia_online"))
    with torch.no_grad():
        z = net[:3](torch.from_numpy(run.dataset.x)).double()[:, 0].numpy()
    g = run.table["members"]
    p1 = 1 / (1 + np.exp(-z[g.index]))
    np.testing.assert_allclose(np.exp(run.scores("loss", "members")), np.where(g.label == 1, p1, 1 - p1), rtol=1e-4)
    assert (z[g.index] > 15).sum() > 5  # members whose float32 p is exactly 1: their distances are found all the same
    assert np.isfinite(run.scores("distance_l2", "members")).all()
    from mia_core.user_models import through_logits

    assert through_logits(run.model)  # reopened from the store: read as the audit read it
    with torch.no_grad():
        np.testing.assert_allclose(run.model(torch.from_numpy(run.dataset.x)).double()[:, 1].numpy(), z, rtol=1e-5,
                                   atol=1e-5)


def test_breast_cancer_is_embedded_and_runs_with_the_table_models(tmp_path):
    from mia_core.config import TABLE_DEMO
    from mia_core.experiment import run_experiment

    ds = load_dataset("breast_cancer")
    assert ds.x.shape == (569, 30) and ds.is_table and ds.class_names == ("malignant", "benign")
    for model in ("linear", "mlp"):
        cfg = TABLE_DEMO.replace(model=model, epochs=20, bootstrap_rounds=20, label_only_queries=100,
                                 lira_shadows=2, distance_method="deepfool")
        rec = run_experiment(cfg, store=tmp_path).record
        assert rec.test_accuracy > 0.85 and all(rec.attacks[a].defined for a in ("distance_l2", "label_only_l2",
                                                                               "lira_online", "rmia_offline"))
