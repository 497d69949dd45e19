"""The core's contracts: one registry per concept (a new attack is one entry), the config as the single source of
keys, flags and validation, typed records that round-trip, the store object, and the view models."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from mia_core import views
from mia_core.attacks import ATTACKS, AttackSpec
from mia_core.cli import build_parser, config_from_args, format_table, main
from mia_core.config import ConfigError, ExperimentConfig, Stage
from mia_core.data import DATASETS
from mia_core.defenses import DEFENSES
from mia_core.distances import SEARCHES
from mia_core.experiment import list_runs, load_run, run_experiment
from mia_core.metrics import AttackMetrics
from mia_core.models import MODELS
from mia_core.records import RunRecord, ScoreTable
from mia_core.registry import UnknownName
from mia_core.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
FAST = ExperimentConfig(width=64, members=120, epochs=10, bootstrap_rounds=20, reference_scored=60,
                        distance_method="deepfool", lira_shadows=2, label_only_queries=100)


def _input_norm(ctx):
    """A toy attack: the L1 norm of the input (knows nothing about the model)."""
    return ctx.x.flatten(1).abs().sum(1).cpu().numpy().astype(float)


TOY = AttackSpec("toy_input_norm", "Toy: input L1 norm", "experimental", "the input's L1 norm (a test attack)",
                 _input_norm)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    store = tmp_path_factory.mktemp("toy")
    with ATTACKS.registered(TOY):  # registered while the run is computed; each test registers it as it needs
        run = run_experiment(FAST, store=store)
    return store, run


def test_a_registered_attack_reaches_the_record_the_scores_and_the_cli(toy_run, capsys):
    store, run = toy_run
    assert list(run.record.attacks)[-1] == "toy_input_norm"
    m, n = run.table.member_nonmember("toy_input_norm")
    ds = run.dataset
    np.testing.assert_allclose(m, np.abs(ds.x[run.split.members]).reshape(len(m), -1).sum(1), rtol=1e-5)
    assert run.record.attacks["toy_input_norm"].auc == pytest.approx(
        __import__("sklearn.metrics", fromlist=["roc_auc_score"]).roc_auc_score(
            np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]))
    assert "toy_input_norm" in format_table(run.record)
    # the CLI reuses the stored evaluation and prints the toy attack's row
    with ATTACKS.registered(TOY):
        rc = main(["run", "--width", "64", "--members", "120", "--epochs", "10", "--bootstrap", "20",
                   "--reference-scored", "60", "--method", "deepfool", "--lira-shadows", "2",
                   "--label-only-queries", "100", "--store", str(store)])
    assert rc == 0
    out = capsys.readouterr()
    assert "toy_input_norm" in out.out and "reused the stored run" in out.err


def test_a_registered_attack_appears_on_the_attacks_page(toy_run, monkeypatch):
    store, run = toy_run
    monkeypatch.setenv("MIA_STORE", str(store))
    with ATTACKS.registered(TOY):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params["run"] = run.run_id
        at.run()
        at.switch_page("app_pages/attacks.py").run()
        assert not at.exception, at.exception
        table = [df.value for df in at.dataframe if "AUC 95% CI" in df.value.columns][0]
        assert "toy_input_norm" in list(table["id"]) and "Toy: input L1 norm" in list(table["attack"])


def test_a_new_attack_is_a_new_evaluation_key():
    before = FAST.eval_key()
    with ATTACKS.registered(TOY):
        assert FAST.eval_key() != before
    assert FAST.eval_key() == before


def test_registries_refuse_unknown_names_listing_the_valid_ones():
    for reg, known in ((ATTACKS, "loss"), (DEFENSES, "dp_sgd"), (DATASETS, "digits"), (MODELS, "mlp"),
                       (SEARCHES, "fmn")):
        assert known in reg
        with pytest.raises(UnknownName, match=known):
            reg.get("no-such-thing")
    with pytest.raises(ValueError, match="registered already"):
        ATTACKS.register(ATTACKS.get("loss"))


def test_config_fields_carry_stage_help_and_range():
    params = ExperimentConfig.params()
    assert set(params) == set(ExperimentConfig.__dataclass_fields__)
    assert all(p.help for p in params.values())
    assert set(ExperimentConfig.stage_fields(Stage.EVALUATION)) == {
        "distance_method", "distance_steps", "reference_scored", "reference_searched", "bootstrap_rounds",
        "label_only_queries", "label_only_linf_queries", "label_only_start", "label_only_linf", "label_only_probes",
        "lira_shadows", "shadow_training", "rmia_gamma", "rmia_offline_a", "output_mask"}
    assert set(ExperimentConfig.stage_fields(Stage.RUNTIME)) == {"data_dir", "device", "shadow_executor", "ray_address"}
    cfg = ExperimentConfig()
    # an evaluation field changes only the evaluation key; a training field only the training key
    assert cfg.replace(distance_method="deepfool").train_key("fp") == cfg.train_key("fp")
    assert cfg.replace(distance_method="deepfool").eval_key() != cfg.eval_key()
    assert cfg.replace(epochs=3).train_key("fp") != cfg.train_key("fp")
    assert cfg.replace(epochs=3).eval_key() == cfg.eval_key()
    # where the work runs changes no key; a field added later changes the key only away from its default
    assert cfg.replace(shadow_executor="ray", ray_address="auto").train_key("fp") == cfg.train_key("fp")
    assert cfg.replace(optimizer="sgd").train_key("fp") != cfg.train_key("fp")
    assert cfg.replace(device="cpu").train_key("fp") == cfg.train_key("fp")


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "epochs must be in [1"),
    ({"batch_size": 0}, "batch_size must be in [1"),
    ({"width": 0}, "width must be in [1"),
    ({"distance_steps": 0}, "distance_steps must be in [1"),
    ({"lira_shadows": 3}, "lira_shadows must be even"),
    ({"defense": "dp_sgd", "defense_strength": 0.0}, "dp_sgd must be in [0.01"),
    ({"defense": "label_smoothing", "defense_strength": 5.0}, "label_smoothing must be in [0, 1]"),
    ({"model": "transformer"}, "model must be one of linear, mlp, cnn, resnet18"),
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"distance_method": "cw"}, "distance_method must be one of deepfool, superdeepfool, fmn"),
    ({"lr": float("nan")}, "lr must be finite"),
    ({"device": "foo"}, "device must be auto, cpu"),
])
def test_validate_refuses_bad_values_before_any_work(change, message, tmp_path):
    cfg = ExperimentConfig().replace(**change)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        cfg.validate()
    with pytest.raises(ConfigError):
        run_experiment(cfg, store=tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_validate_lists_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(epochs=0, width=0, members=5).validate()
    assert all(f in str(err.value) for f in ("epochs", "width", "members"))


def test_cli_flags_are_derived_from_the_config(capsys):
    parser = build_parser()
    run_actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["run"]._actions}
    assert set(ExperimentConfig.params()) <= set(run_actions)
    # old short names stay as aliases of the derived flags
    a = parser.parse_args(["run", "--method", "deepfool", "--bootstrap", "7", "--steps", "9", "--strength", "0.2",
                           "--defense", "mixup"])
    cfg = config_from_args(a)
    assert (cfg.distance_method, cfg.bootstrap_rounds, cfg.distance_steps, cfg.defense_strength) == \
        ("deepfool", 7, 9, 0.2)
    a = parser.parse_args(["run", "--defense", "pgd_at"])
    assert config_from_args(a).defense_strength == DEFENSES.get("pgd_at").default_strength
    # an optional number with a default says "none" for what its help gives None
    assert config_from_args(parser.parse_args(["run"])).label_only_linf_queries == 200
    for text, value in (("none", None), ("None", None), ("150", 150)):
        a = parser.parse_args(["run", "--label-only-linf-queries", text])
        assert config_from_args(a).label_only_linf_queries == value
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--label-only-linf-queries", "many"])
    assert "invalid int value (or none): 'many'" in capsys.readouterr().err
    for bad in (["--epochs", "0"], ["--batch-size", "0"], ["--width", "0"], ["--device", "foo"],
                ["--label-only-linf-queries", "0"]):
        assert main(["run", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: Invalid configuration") and "Traceback" not in err


def test_record_and_table_round_trip(toy_run, tmp_path):
    _, run = toy_run
    rec = run.record
    text = json.dumps(rec.to_json(), allow_nan=False)  # valid JSON: no NaN / Infinity
    back = RunRecord.from_json(json.loads(text))
    assert back.to_json() == rec.to_json()
    assert list(back.attacks) == list(rec.attacks) and list(back.thresholds) == list(rec.thresholds)
    assert back.attacks["loss"].tpr_at_fpr[0.01] == rec.attacks["loss"].tpr_at_fpr[0.01]
    run.table.to_npz(tmp_path / "t.npz")
    t2 = ScoreTable.from_npz(tmp_path / "t.npz")
    for g in run.table:
        for a in run.table[g].scores:
            np.testing.assert_array_equal(t2.scores(a, g), run.table.scores(a, g))
        assert set(t2[g].artifacts) == set(run.table[g].artifacts)
    light = ScoreTable.from_npz(tmp_path / "t.npz", artifacts=False)
    assert not light["members"].artifacts and light.attacks() == run.table.attacks()
    # scores and artifacts never share a namespace
    assert not set(run.table["members"].scores) & set(run.table["members"].artifacts)


def test_a_stored_run_keeps_its_adversarial_examples_beside_the_scores_and_maps_them(toy_run):
    """The app shows eight adversarial examples: it must not read a whole evaluation's x_adv to do it."""
    _, run = toy_run
    with np.load(run.eval_dir / "scores.npz") as z:
        assert not [n for n in z.files if "/artifact/x_adv_" in n]  # not inside the compressed scores
        assert "members/artifact/adv_label_distance_l2" in z.files  # small artifacts stay there
    beside = sorted(p.name for p in run.eval_dir.glob("*.npy"))
    assert beside == [f"{g}.x_adv_{d}.npy" for g in ("members", "nonmembers") for d in ("distance_l2", "distance_linf")]
    x_adv = run.table["members"].artifacts["x_adv_distance_l2"]
    assert isinstance(x_adv, np.memmap) and not x_adv.flags.writeable  # mapped read-only, not loaded
    assert x_adv.shape == (len(run.table["members"]), *run.dataset.input_shape)
    # what is mapped is what was computed: the stored example flips the model and has the reported norm
    pick = np.flatnonzero(np.isfinite(run.table.scores("distance_l2", "members")))[:8]
    xa = torch.from_numpy(np.array(x_adv[pick]))
    x = torch.from_numpy(run.dataset.x[run.table["members"].index[pick]])
    assert (run.model(xa).argmax(1).numpy() != run.table["members"].label[pick]).all()
    np.testing.assert_allclose((xa - x).flatten(1).double().norm(dim=1).numpy(),
                               run.table.scores("distance_l2", "members")[pick], rtol=1e-5)
    light = ScoreTable.load(run.eval_dir, artifacts=False)
    assert not light["members"].artifacts


def test_an_undefined_attack_is_written_as_null_and_read_back_as_nan(toy_run):
    _, run = toy_run
    rec = dataclasses.replace(run.record, attacks={**run.record.attacks, "loss": AttackMetrics.undefined()})
    text = json.dumps(rec.to_json(), allow_nan=False)  # would raise on NaN
    loss = [a for a in json.loads(text)["attacks"] if a["name"] == "loss"][0]
    assert loss["auc"] is None and loss["tpr_at_fpr"]["0.01"] is None
    back = RunRecord.from_json(json.loads(text))
    assert not back.attacks["loss"].defined and math.isnan(back.attacks["loss"].tpr_at_fpr[0.01])
    assert views.best_attack(back) != "loss"


def test_store_resolves_its_root_once_for_every_caller(tmp_path, monkeypatch):
    monkeypatch.setenv("MIA_STORE", str(tmp_path / "env"))
    assert Store.resolve().root == tmp_path / "env"
    assert Store.resolve(tmp_path / "flag").root == tmp_path / "flag"
    monkeypatch.delenv("MIA_STORE")
    assert Store.resolve().root == Path("mia_runs")


def test_sweep_and_reproduce_honour_mia_store(tmp_path):
    """`MIA_STORE=elsewhere python -m mia_core sweep ...` used to write into ./mia_runs."""
    env = {**os.environ, "MIA_STORE": str(tmp_path / "elsewhere")}
    proc = subprocess.run([sys.executable, "-m", "mia_core", "sweep", "--grid", "none", "--width", "32",
                           "--members", "100", "--epochs", "3", "--bootstrap", "0", "--reference-scored", "50",
                           "--method", "deepfool", "--lira-shadows", "2", "--label-only-queries", "50",
                           "--executor", "serial"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(list_runs(tmp_path / "elsewhere")) == 1 and not (tmp_path / "mia_runs").exists()


def test_run_ids_resolve_only_inside_the_store(toy_run, tmp_path):
    store, run = toy_run
    st = Store(store)
    assert st.eval_path(run.run_id) == run.eval_dir
    for bad in (str(run.eval_dir), "../x/eval-1", "/etc/passwd", run.record.train_key, "a/b", "./eval-x",
                ".tmp-a/eval-b", "a/eval-missing", f"{run.record.train_key}/../{run.run_id}"):
        with pytest.raises(StoreError):
            st.eval_path(bad)
    assert load_run(run.run_id, store=st).record.to_json() == run.record.to_json()


def test_view_models_without_streamlit(toy_run):
    _, run = toy_run
    rec = run.record
    table = views.metrics_table(rec)
    assert list(table["id"]) == list(rec.attacks)
    assert table.loc[table["id"] == "lira_online_fixed", "attack"].item() == "LiRA online, fixed variance"
    assert table.loc[table["id"] == "loss", "TPR@1%"].item() == rec.attacks["loss"].tpr_at_fpr[0.01]
    ranking = views.vulnerability_table(run.table)
    assert len(ranking) == rec.n_members + rec.n_nonmembers and ranking["exposure (FPR)"].is_monotonic_increasing
    rows = views.threshold_rows(run.table, "lira_online", 0.0, 0.01, 0.5)
    assert [r.rule for r in rows] == ["yours", "ORACLE (not achievable)"]  # no reference scores, no calibration
    rows = views.threshold_rows(run.table, "loss", 0.0, 0.01, 0.5)
    assert rows[1].rule == f"calibrated on {rec.n_reference_scored} reference samples (0.01)" and rows[1].fpr <= 0.1
    far = views.extreme_samples(np.array([0.0, 3.0, np.inf, 1.0, 2.0]), "farthest", 2)
    assert list(far) == [1, 4]
    assert list(views.extreme_samples(np.array([0.0, 3.0, np.inf, 1.0, 2.0]), "nearest", 2)) == [3, 4]


def test_defense_families_and_seed_aggregation():
    import pandas as pd

    frame = pd.DataFrame([
        dict(run="a", dataset="digits", model="mlp", members=200, defense="none", strength=0.0, seed=0,
             checkpoint=False, **{"test accuracy": 0.9, "leakage": 0.6, "robust accuracy": 0.5}),
        dict(run="b", dataset="digits", model="mlp", members=200, defense="none", strength=0.0, seed=0,
             checkpoint=False, **{"test accuracy": 0.9, "leakage": 0.6, "robust accuracy": 0.5}),  # 2nd search
        dict(run="c", dataset="digits", model="mlp", members=200, defense="none", strength=0.0, seed=1,
             checkpoint=False, **{"test accuracy": 0.8, "leakage": 0.7, "robust accuracy": 0.4}),
        dict(run="d", dataset="digits", model="mlp", members=200, defense="none", strength=0.0, seed=0,
             checkpoint=True, **{"test accuracy": 0.97, "leakage": 0.5, "robust accuracy": 0.5}),
    ])
    fam = views.defense_families(frame)
    assert fam["runs"].tolist() == [3]  # the checkpoint evaluation joins no family
    agg = views.aggregate_over_seeds(frame[~frame["checkpoint"]])
    assert agg["seeds"].tolist() == [2] and agg["leakage"].item() == pytest.approx(0.65)
