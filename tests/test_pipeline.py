"""The evaluation's steps one by one, on a trained model: groups, scores, metrics, thresholds, record, store."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mia_core.attacks import ATTACKS
from mia_core.config import ExperimentConfig
from mia_core.metrics import threshold_at_fpr
from mia_core.evaluation import (
    EvaluationInputs, calibrate_thresholds, compute_metrics, score_groups, scored_groups, store_evaluation, summarise,
    validation_indices,
)
from mia_core.records import GroupScores, RunRecord, ScoreTable, TrainingRecord
from mia_core.store import folder_problem, read_json

CFG = ExperimentConfig(members=300, width=64, reference_scored=150, lira_shadows=2, label_only_queries=60,
                       distance_method="deepfool", bootstrap_rounds=10, epochs=20)


@pytest.fixture(scope="module")
def scored(trained_mlp, digits, tmp_path_factory):
    model, split = trained_mlp
    folder = tmp_path_factory.mktemp("stages")
    inputs = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"), shadow_dir=folder / "shadows",
                              stage_dir=folder)
    return inputs, score_groups(inputs, scored_groups(split, CFG))


def test_scored_groups_are_disjoint_and_never_touch_the_defenders_validation_set(trained_mlp):
    _, split = trained_mlp
    groups = scored_groups(split, CFG)
    val = validation_indices(split, CFG.validation_size, CFG.seed)
    assert len(groups["reference"]) == CFG.reference_scored
    assert not set(groups["reference"]) & set(val)
    assert not set(groups["reference"]) & (set(split.members) | set(split.nonmembers))
    assert groups["members"] is split.members and groups["nonmembers"] is split.nonmembers


def test_score_groups_scores_every_registered_attack_for_every_sample(scored, digits):
    inputs, result = scored
    table = result.table
    assert list(table) == ["members", "nonmembers", "reference"]
    for g in table:
        gs = table[g]
        assert list(gs.scores) == list(ATTACKS) and all(v.shape == (len(gs),) for v in gs.scores.values())
        logp = torch.log_softmax(inputs.model(torch.from_numpy(digits.x[gs.index])).double(), 1).detach().numpy()
        np.testing.assert_allclose(gs.scores["loss"], logp[np.arange(len(gs)), gs.label], atol=1e-6)
        assert np.array_equal(gs.prediction, logp.argmax(1))
    assert np.isnan(table.scores("lira_online", "reference")).all()  # not in the shadows' pool
    assert np.isfinite(table.scores("lira_online", "members")).all()
    assert "x_adv_distance_l2" in table["members"].artifacts and "x_adv_distance_l2" not in table["reference"].artifacts
    assert result.distance_seconds > 0 and result.label_only_seconds > 0


def test_the_searches_score_a_seeded_subset_of_the_reference_group(scored, trained_mlp, digits):
    """config.reference_searched: the per-sample searches (distances, label-only, I_A, local variation) score only
    that many of the reference samples, the same values as searched alone, NaN (not scored) elsewhere; every
    other attack scores them all; the calibrated thresholds and the exposure read the scored ones only."""
    from mia_core.evaluation import searched_positions
    from mia_core.distances import minimal_perturbation
    from mia_core import views

    model, split = trained_mlp
    cfg = CFG.replace(reference_searched=40)
    inputs = EvaluationInputs(cfg, digits, split, model, torch.device("cpu"))
    result = score_groups(inputs, scored_groups(split, cfg))
    table, full = result.table, scored[1].table
    pos = searched_positions(cfg.reference_scored, cfg)
    assert len(pos) == 40 and np.array_equal(pos, np.unique(pos)) and np.array_equal(pos, searched_positions(150, cfg))
    searching = {s.name for s in ATTACKS.specs() if s.searches}
    assert searching == {"distance_l2", "distance_linf", "label_only_l2", "label_only_linf", "adv_confidence",
                         "local_variation"}
    inside = np.zeros(cfg.reference_scored, dtype=bool)
    inside[pos] = True
    for a in ATTACKS:
        ref = table.scores(a, "reference")
        if a in searching:
            assert not np.isnan(ref[inside]).any() and np.isnan(ref[~inside]).all(), a
            assert np.array_equal(table.reference_scores(a), ref[inside])
        elif ATTACKS.get(a).has_reference_scores:
            np.testing.assert_array_equal(ref, full.scores(a, "reference"))  # unchanged: all 150 scored
        for g in ("members", "nonmembers"):  # the evaluation itself is untouched
            np.testing.assert_array_equal(table.scores(a, g), full.scores(a, g))
    # the subset's searches are those samples' own: DeepFool alone on them gives the same distances
    x = torch.from_numpy(digits.x[table["reference"].index[pos]])
    alone = minimal_perturbation(model, x, norm=2.0, labels=torch.from_numpy(digits.y[table["reference"].index[pos]]),
                                 method="deepfool")
    np.testing.assert_allclose(table.scores("distance_l2", "reference")[pos], alone.norms, rtol=1e-5)
    queries = table["reference"].artifacts["label_only_l2_queries"]
    assert np.isnan(queries[~inside]).all() and (queries[inside] > 0).all()
    metrics = compute_metrics(table, bootstrap_rounds=0, seed=0)
    for f, cal in metrics["label_only_l2"].calibrated.items():
        assert cal.threshold == threshold_at_fpr(table.scores("label_only_l2", "reference")[pos], f)
    assert metrics["loss"].calibrated == compute_metrics(full, bootstrap_rounds=0, seed=0)["loss"].calibrated
    exposure = views.vulnerability_table(table)["exposure (FPR)"]
    assert exposure.between(0, 1).all()
    rules = [r.rule for r in views.threshold_rows(table, "label_only_l2", 0.0, 0.1, 0.5)]
    assert rules[1] == "calibrated on 40 reference samples (0.1)"
    assert views.threshold_rows(table, "loss", 0.0, 0.1, 0.5)[1].rule == "calibrated on 150 reference samples (0.1)"
    # 300 + 300 + 40 samples searched once per norm, not 300 + 300 + 150
    assert result.searched == 2 * (300 + 300 + 40)


def test_compute_metrics_matches_scikit_learn_and_marks_undefined_attacks(scored):
    _, result = scored
    metrics = compute_metrics(result.table, bootstrap_rounds=10, seed=0)
    m, n = result.table.member_nonmember("loss")
    assert metrics["loss"].auc == pytest.approx(roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]))
    assert metrics["loss"].calibrated and not metrics["lira_online"].calibrated  # LiRA: no reference scores
    nan = {g: GroupScores(gs.index, gs.label, gs.prediction, {**gs.scores, "loss": np.full(len(gs), np.nan)})
           for g, gs in result.table.groups.items()}
    assert not compute_metrics(ScoreTable(nan), bootstrap_rounds=0, seed=0)["loss"].defined


def test_calibrated_thresholds_mark_the_oracle_rules(scored):
    inputs, result = scored
    rules = calibrate_thresholds(inputs, result)
    assert {k for k, v in rules.items() if v.oracle} == {k for k in rules if "ORACLE" in k}
    assert all(0 <= v.tpr <= 1 and 0 <= v.fpr <= 1 for v in rules.values())


def test_summarise_and_store_write_a_record_that_reads_back(scored, tmp_path):
    inputs, result = scored
    metrics = compute_metrics(result.table, bootstrap_rounds=0, seed=0)
    training = TrainingRecord(1.0, 0.9, 0.9, 1.0, "cpu")
    record = summarise(inputs, result, metrics, calibrate_thresholds(inputs, result), training, "k")
    assert (record.n_members, record.n_nonmembers, record.n_reference_scored) == (300, 300, 150)
    assert record.timings.label_only_seconds == result.label_only_seconds
    store_evaluation(tmp_path / "eval-x", result.table, record)
    assert folder_problem(tmp_path / "eval-x") is None
    assert RunRecord.from_json(read_json(tmp_path / "eval-x" / "summary.json")).to_json() == record.to_json()


def test_first_results_come_before_the_expensive_attacks_and_change_no_number(trained_mlp, digits, tmp_path):
    """evaluate(first_results=...) stores the members' and non-members' softmax scores first, then those with
    the white-box searches, then the same evaluation as without them, array for array; the first results'
    folders are gone when the run is done."""
    from mia_core.evaluation import evaluate
    from mia_core.store import Store

    def opened(st, run_id):
        path = st.eval_path(run_id)
        assert folder_problem(path) is None
        return RunRecord.from_json(read_json(path / "summary.json")), ScoreTable.from_npz(path / "scores.npz")

    model, split = trained_mlp
    training = TrainingRecord(1.0, 0.9, 0.9, 1.0, "cpu")
    ends = {}
    for staged in (False, True):
        st = Store(tmp_path / f"staged-{staged}")
        seen = []

        def first(run_id, st=st, seen=seen):
            seen.append(opened(st, run_id) + (run_id,))
            assert not list((st.root / "k").glob("eval-*"))  # the full evaluation is not there yet
            assert not list((st.root / "k").glob("label-only-*"))  # nor any expensive stage
            assert [p.name for p in (st.root / "k").glob("first*")] == [run_id.split("/")[1]]  # one at a time

        inputs = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"))
        ends[staged] = evaluate(inputs, training, st, "k", first_results=first if staged else None)
        if staged:
            assert [s[2].split("-")[0] for s in seen] == ["k/first0", "k/first1"]
            for level, (early, early_table, early_id) in enumerate(seen):
                pending = {a for a in ATTACKS if ATTACKS.get(a).cost > level}
                assert early.is_first_results and set(early.pending) == pending
                assert len(early_table["reference"]) == 0
                assert set(early.defined_attacks()) == set(ATTACKS) - pending
                assert not early.unavailable  # pending is not unavailable
            assert {"loss", "confidence"} <= set(seen[0][0].defined_attacks())
            assert "distance_l2" in seen[0][0].pending and "distance_l2" in seen[1][0].defined_attacks()
            assert seen[1][0].attacks["loss"].auc == seen[0][0].attacks["loss"].auc
            assert not list((st.root / "k").glob("first-*"))
            # robust accuracy is white-box work: not in the first results, measured by the second
            assert seen[0][0].defense.robust_accuracy is None
            assert seen[1][0].defense == ends[True].defense
            assert 0 <= ends[True].defense.robust_accuracy <= ends[True].defense.robust_train_accuracy <= 1
            assert len(list((st.root / "k").glob("robust-*"))) == 1
    a, ta = opened(Store(tmp_path / "staged-False"), ends[False].run_id)
    b, tb = opened(Store(tmp_path / "staged-True"), ends[True].run_id)
    for g in ("members", "nonmembers", "reference"):
        assert ta[g].scores.keys() == tb[g].scores.keys() and ta[g].artifacts.keys() == tb[g].artifacts.keys()
        for name in ta[g].scores:
            np.testing.assert_array_equal(ta[g].scores[name], tb[g].scores[name])
        for name in ta[g].artifacts:
            np.testing.assert_array_equal(ta[g].artifacts[name], tb[g].artifacts[name])
    ja, jb = a.to_json(), b.to_json()
    for j in (ja, jb):
        j.pop("timings"), j.pop("environment")
    assert ja == jb
    # and the first results' AUCs are the final ones
    for name in early.defined_attacks():
        assert early.attacks[name].auc == b.attacks[name].auc


def test_robust_accuracy_is_measured_once_per_model_from_its_own_seed(trained_mlp, digits, tmp_path, monkeypatch):
    """The evaluation measures an undefended model's robust accuracy (PGD at adv_epsilon) once and keeps it beside
    the model: a second evaluation of it reads the stored figure (counted calls of the real PGD evaluation);
    the figure depends on the configured seed, not on what the global generator drew before; a training record
    that has the figure (measured while training by earlier versions) keeps it; other defenses get none."""
    import dataclasses

    from mia_core import evaluation
    from mia_core.adversarial import robust_accuracy
    from mia_core.evaluation import SharedWork

    model, split = trained_mlp
    training = TrainingRecord(1.0, 0.9, 0.9, 1.0, "cpu")
    calls = []
    real = evaluation.robust_accuracy
    monkeypatch.setattr(evaluation, "robust_accuracy", lambda *a, **k: calls.append(k) or real(*a, **k))

    def measured(cfg, record=training, stage="model"):
        inputs = EvaluationInputs(cfg, digits, split, model, torch.device("cpu"), stage_dir=tmp_path / stage)
        (tmp_path / stage).mkdir(exist_ok=True)
        return SharedWork(inputs).robustness(record).defense

    torch.manual_seed(1)
    first = measured(CFG)
    assert len(calls) == 2 and {c["seed"] for c in calls} == {CFG.seed}  # non-members, then members
    torch.manual_seed(2)
    assert measured(CFG) == first and len(calls) == 2  # read back from the stage folder
    torch.manual_seed(3)
    assert measured(CFG, stage="elsewhere") == first and len(calls) == 4  # computed again: the same figure
    xn, yn = torch.from_numpy(digits.x[split.nonmembers]), torch.from_numpy(digits.y[split.nonmembers])
    assert first.robust_accuracy == robust_accuracy(model, xn, yn, eps=CFG.adv_epsilon, steps=20, seed=CFG.seed)
    assert robust_accuracy(model, xn, yn, eps=0.0, seed=0) == pytest.approx(
        float((model(xn).argmax(1) == yn).float().mean()))  # a ball of radius 0: the accuracy itself
    weaker = measured(CFG.replace(adv_epsilon=0.3), stage="wider")
    assert weaker.robust_accuracy < first.robust_accuracy  # a larger ball, a lower robust accuracy
    old = dataclasses.replace(training, defense=dataclasses.replace(training.defense, robust_accuracy=0.25,
                                                                   robust_train_accuracy=0.5))
    assert measured(CFG, old, stage="old").robust_accuracy == 0.25
    assert measured(CFG.replace(defense="mixup", defense_strength=1.0), stage="mixup").robust_accuracy is None


def test_white_box_distances_are_a_stage_that_evaluations_sharing_the_search_reuse(trained_mlp, digits, tmp_path,
                                                                                     monkeypatch):
    """Each group's minimal perturbations are kept beside the model (`distances-<key>/`): an evaluation that
    differs only in its attacks' settings (more reference models) reads them instead of searching (counted calls
    of the real search) and reports exactly what a cold evaluation of its configuration reports; another search
    searches again; a damaged stage is searched again, to the same numbers. The evaluation folder's adversarial
    examples are the stage's files, hard-linked (one copy on disk)."""
    from mia_core import evaluation
    from mia_core.evaluation import evaluate
    from mia_core.store import Store

    model, split = trained_mlp
    training = TrainingRecord(1.0, 0.9, 0.9, 1.0, "cpu")
    calls = []
    real = evaluation.minimal_perturbation
    monkeypatch.setattr(evaluation, "minimal_perturbation", lambda *a, **k: calls.append(k["method"]) or real(*a, **k))

    def evaluated(cfg, st):
        record = evaluate(EvaluationInputs(cfg, digits, split, model, torch.device("cpu")), training, st, "k")
        path = st.eval_path(record.run_id)
        return record, ScoreTable.load(path)

    warm, cold = Store(tmp_path / "warm"), Store(tmp_path / "cold")
    first, _ = evaluated(CFG, warm)
    assert len(calls) == 6  # members, non-members and reference samples, L2 and L-inf
    stages = sorted((warm.root / "k").glob("distances-*"))
    assert len(stages) == 6 and all(folder_problem(p) is None for p in stages)
    # the evaluation's adversarial examples are the stages' files, linked, not a second copy on disk
    files = [warm.eval_path(first.run_id) / f"{g}.x_adv_distance_{n}.npy" for g in ("members", "nonmembers")
             for n in ("l2", "linf")]
    assert {f.stat().st_ino for f in files} <= {(p / "x_adv.npy").stat().st_ino for p in stages}
    assert folder_problem(warm.eval_path(first.run_id)) is None
    more = CFG.replace(lira_shadows=4)
    reused, reused_table = evaluated(more, warm)
    assert len(calls) == 6 and reused.eval_key != first.eval_key  # nothing searched again
    fresh, fresh_table = evaluated(more, cold)
    assert len(calls) == 12
    assert math.isnan(reused.timings.distance_samples_per_second) and fresh.timings.distance_samples_per_second > 0
    ja, jb = reused.to_json(), fresh.to_json()
    for j in (ja, jb):
        j.pop("timings"), j.pop("environment")
    assert ja == jb
    for g in ("members", "nonmembers", "reference"):
        assert reused_table[g].artifacts.keys() == fresh_table[g].artifacts.keys()
        for name in fresh_table[g].scores:
            np.testing.assert_array_equal(reused_table[g].scores[name], fresh_table[g].scores[name])
        for name in fresh_table[g].artifacts:
            np.testing.assert_array_equal(reused_table[g].artifacts[name], fresh_table[g].artifacts[name])
    evaluated(CFG.replace(distance_method="superdeepfool"), warm)
    assert calls[12:] == ["superdeepfool"] * 6 and len(list((warm.root / "k").glob("distances-*"))) == 12
    with open(stages[0] / "x_adv.npy", "r+b") as fh:  # a damaged stage: its manifest no longer matches
        fh.truncate(64)
    again, again_table = evaluated(CFG.replace(lira_shadows=6), warm)
    assert calls[18:] == ["deepfool"] and folder_problem(stages[0]) is None
    for g in ("members", "nonmembers", "reference"):
        for name in ("distance_l2", "distance_linf"):
            np.testing.assert_array_equal(again_table[g].scores[name], fresh_table[g].scores[name])


def test_a_stage_another_process_finished_meanwhile_is_kept_not_pulled_away(trained_mlp, digits, tmp_path,
                                                                            monkeypatch):
    """Two evaluations of one model (two sessions, two workers) search the same stage at once: the one that
    finishes second keeps the first one's folder (its readers hold its files memory-mapped) and discards its own
    copy, leaving no temporary behind; a damaged folder is still replaced."""
    from mia_core import evaluation
    from mia_core.evaluation import GroupScoring, SharedWork
    from mia_core.store import atomic_folder, discard_damaged

    model, split = trained_mlp
    inputs = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"), stage_dir=tmp_path)
    idx = split.members[:40]
    real, other = evaluation.minimal_perturbation, {}

    def search_while_another_process_stores_it(*a, **k):
        p = real(*a, **k)
        if not other:  # the other process: the same stage, searched and stored while this search ran
            other["ctx"] = GroupScoring("members", idx, inputs, SharedWork(inputs), 0)
            other["p"] = other["ctx"].perturbation(2.0)
            (folder,) = tmp_path.glob("distances-*")
            other["inode"] = (folder / "x_adv.npy").stat().st_ino
        return p

    monkeypatch.setattr(evaluation, "minimal_perturbation", search_while_another_process_stores_it)
    mine = GroupScoring("members", idx, inputs, SharedWork(inputs), 0).perturbation(2.0)
    (folder,) = tmp_path.glob("distances-*")
    assert (folder / "x_adv.npy").stat().st_ino == other["inode"] and folder_problem(folder) is None
    assert not list(tmp_path.glob(".tmp-*"))
    np.testing.assert_array_equal(mine.norms, other["p"].norms)
    np.testing.assert_array_equal(np.asarray(other["ctx"].artifacts["x_adv_distance_l2"]), mine.x_adv.numpy())
    # discard_damaged: an intact folder stays, a damaged one goes
    discard_damaged(folder)
    assert folder.is_dir()
    with open(folder / "x_adv.npy", "r+b") as fh:
        fh.truncate(64)
    discard_damaged(folder)
    assert not folder.exists() and not list(tmp_path.glob(".tmp-*"))
    with atomic_folder(folder) as tmp:  # and the stage can be written again
        (tmp / "x").write_text("1")
    assert folder_problem(folder) is None


def test_a_groups_adversarial_examples_go_into_the_stage_file_batch_by_batch_and_stay_mapped(
        trained_mlp, digits, tmp_path, monkeypatch):
    """A white-box search with a stage folder writes each batch's adversarial examples into the stage's
    `x_adv.npy` (a memory-mapped file in the folder being built), and the group's perturbation is a map of the
    finished stage's file, not a copy in memory: the group's set is never held whole. The label-only searches
    keep only their distances. The stored points are those of a search without a store, bit for bit."""
    from pathlib import Path

    from mia_core import evaluation
    from mia_core.distances import minimal_perturbation
    from mia_core.evaluation import GroupScoring, SharedWork

    model, split = trained_mlp
    inputs = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"), stage_dir=tmp_path)
    idx = split.members[:150]
    outs = []
    real = evaluation.minimal_perturbation
    monkeypatch.setattr(evaluation, "minimal_perturbation", lambda *a, **k: outs.append(k.get("out")) or real(*a, **k))
    monkeypatch.setattr("mia_core.distances.SEARCH_BATCH_BYTES", 64 * 4 * digits.x[0].size)  # batches of 64
    ctx = GroupScoring("members", idx, inputs, SharedWork(inputs), 0)
    p = ctx.perturbation(2.0)
    (out,) = outs
    assert isinstance(out, np.memmap) and Path(out.filename).parent.name.startswith(".tmp-distances-")
    (folder,) = tmp_path.glob("distances-*")
    address = p.x_adv.data_ptr()
    with open("/proc/self/maps") as fh:  # the tensor's memory is a mapping of the stage's file
        spans = [line.split()[0].split("-") for line in fh if line.rstrip().endswith(str(folder / "x_adv.npy"))]
    assert any(int(lo, 16) <= address < int(hi, 16) for lo, hi in spans)
    x = torch.from_numpy(digits.x[idx])
    alone = minimal_perturbation(model, x, norm=2.0, labels=torch.from_numpy(digits.y[idx]), method=CFG.distance_method,
                                 steps=CFG.distance_steps)
    np.testing.assert_array_equal(p.x_adv.numpy(), alone.x_adv.numpy())
    np.testing.assert_array_equal(p.norms, alone.norms)
    assert ctx.label_only(2.0).x_adv.numel() == 0 and np.isfinite(ctx.label_only(2.0).norms).mean() > 0.9


def test_a_search_stopped_half_way_leaves_no_stage_and_the_next_one_finishes_it(trained_mlp, digits, tmp_path,
                                                                                monkeypatch):
    """A job cancelled while a group's adversarial examples are being written into the stage's file: the
    half-written folder is removed (no stage, no temporary left to be read as one), and the next evaluation
    searches again and stores what an uninterrupted search stores."""
    from mia_core.evaluation import GroupScoring, SharedWork

    class Cancelled(Exception):
        pass

    def cancel_after_the_first_batch(stage, fraction):
        if stage.startswith("distances") and 0 < fraction < 1:
            raise Cancelled

    model, split = trained_mlp
    monkeypatch.setattr("mia_core.distances.SEARCH_BATCH_BYTES", 64 * 4 * digits.x[0].size)  # batches of 64
    idx = split.members[:150]
    stopped = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"), stage_dir=tmp_path,
                               progress=cancel_after_the_first_batch)
    with pytest.raises(Cancelled):
        GroupScoring("members", idx, stopped, SharedWork(stopped), 0).perturbation(2.0)
    assert not list(tmp_path.iterdir())
    inputs = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"), stage_dir=tmp_path)
    p = GroupScoring("members", idx, inputs, SharedWork(inputs), 0).perturbation(2.0)
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("distances-") and folder_problem(folder) is None
    alone = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"))
    q = GroupScoring("members", idx, alone, SharedWork(alone), 0).perturbation(2.0)
    np.testing.assert_array_equal(p.norms, q.norms)
    np.testing.assert_array_equal(np.load(folder / "x_adv.npy"), q.x_adv.numpy())
