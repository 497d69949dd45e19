import streamlit as st

from dashboard import state
from mia_core import experiment as ex
from mia_core import figures, views
from mia_core.attacks import ATTACKS
from mia_core.defenses import DEFENSES
from mia_core.metrics import pareto_front
from mia_core.reproduce import reproduce, reproduce_points

st.title("Defenses and the trade-off")
st.caption("Train defended models, then compare test accuracy against leakage over every run in the store.")

with st.expander("Train defended models", expanded=False):
    opened = state.current_run()
    base = (opened.config if opened else ex.DEFAULT_CONFIG).replace(checkpoint=None)
    st.write("Base experiment: " + views.describe(base))
    chosen = st.multiselect("defenses", [d for d in DEFENSES if d != "none"], default=["pgd_at", "mmd_mixup"],
                            help="; ".join(f"{s.name}: {s.help}" for s in DEFENSES.specs()), key="def_chosen")
    strengths = {}
    cols = st.columns(max(len(chosen), 1))
    for col, d in zip(cols, chosen):
        spec = DEFENSES.get(d)
        lo, hi, step = spec.slider
        strengths[d] = col.slider(f"{d}: {spec.strength_label}", lo, hi, float(spec.default_strength), step=step,
                                  help=spec.help, key=f"def_strength_{d}")
    seeds = st.slider("seeds per point", 1, 5, 1, key="def_seeds")
    if st.button("Train", type="primary", key="def_train"):
        configs = [base.replace(defense=d, defense_strength=s, seed=seed)
                   for d, s in [("none", 0.0), *strengths.items()] for seed in range(seeds)]
        try:
            jobs = [state.submit(cfg, f"{cfg.defense} {cfg.defense_strength:g} seed {cfg.seed}", follow=False)
                    for cfg in configs]
            st.success(f"{len(jobs)} runs queued in the background (the **Jobs** page shows them); the charts "
                       "below include each one as it finishes.")
        except state.RUN_ERRORS as err:
            state.show_error(err)
    st.divider()
    preset = reproduce_points(ex.DEFAULT_CONFIG)
    past = [r.record for r in state.all_runs()]
    stored = {r.record.config.replace(device="auto", data_dir=None) for r in state.all_runs()}
    todo = [p.config for p in preset if p.config.replace(device="auto", data_dir=None) not in stored]
    guesses = [views.estimate_seconds(c, past).seconds for c in todo]
    when = ("all stored: opens at once" if not todo else
            views.format_seconds(sum(guesses)) + " for the runs not stored yet" if None not in guesses else
            f"{len(todo)} of {len(preset)} runs to compute (no stored run to estimate from yet)")
    st.write("**Reproduce the papers' findings** on the embedded data (natural, PGD-AT, TRADES, MMD + mix-up, "
             f"DP-SGD; three seeds): {when}.")
    if todo and st.button("Run the reproduction preset", key="def_reproduce"):
        try:
            for c in todo:
                state.submit(c, f"reproduce: {c.defense} seed {c.seed}", follow=False)
            st.success(f"{len(todo)} runs queued in the background (the **Jobs** page shows them); the table "
                       "appears here when they are all stored.")
        except state.RUN_ERRORS as err:
            state.show_error(err)
    if not todo:  # every point is stored: the findings come from the store at once
        st.markdown(reproduce(ex.DEFAULT_CONFIG, store=state.store(), executor="serial"))

runs = state.all_runs()
if not runs:
    st.info("The store is empty: train some models first.")
    st.stop()

c1, c2, c3 = st.columns(3)
attack = c1.selectbox("leakage measured by", ["best attack", *ATTACKS], key="def_attack",
                      format_func=lambda a: a if a == "best attack" else views.attack_title(a))
measure = c2.radio("leakage metric", ["AUC", "TPR at 1% FPR"], horizontal=True, key="def_measure")
metric = views.AUC if measure == "AUC" else views.tpr_at(0.01)
table = views.runs_frame(runs, metric, None if attack == "best attack" else attack)
families = views.defense_families(table)
if not len(families):
    st.info("Only checkpoint evaluations are stored: train a model to compare defenses.")
    st.stop()
keys = list(zip(families["dataset"], families["model"], families["members"]))
options = [f"{d} · {m} · {n} members" for d, m, n in keys]
current = state.current_run()
key = (current.config.dataset, current.config.model, current.config.members) if current else None
pick = c3.selectbox("experiment family", options, index=keys.index(key) if key in keys else 0, key="def_family",
                    help="Runs that differ only in defense, strength and seed are compared together "
                         "(checkpoint evaluations are not trained configurations and are left out).")
d, m, n = keys[options.index(pick)]
sub = table[(table["dataset"] == d) & (table["model"] == m) & (table["members"] == n) & ~table["checkpoint"]]
sub = sub.reset_index(drop=True)

front = pareto_front(sub["test accuracy"].to_numpy(), sub["leakage"].to_numpy())
labels = list(sub["label"])
st.plotly_chart(figures.tradeoff_figure(sub["test accuracy"].to_numpy(), sub["leakage"].to_numpy(), labels, front,
                                        leak_name=f"{attack} {measure}", groups=list(sub["defense"])),
                width="stretch")

agg = views.aggregate_over_seeds(sub)
labels_by_defense = {s.name: s.strength_label for s in DEFENSES.specs()}
st.plotly_chart(figures.strength_figure(agg, x="strength", y="leakage", group="defense", error="leakage_sd",
                                        y_title=f"{attack} {measure}<br>(mean ± sd over seeds)",
                                        strength_labels=labels_by_defense), width="stretch")
st.plotly_chart(figures.strength_figure(agg, x="strength", y="accuracy", group="defense", error="accuracy_sd",
                                        y_title="test accuracy<br>(mean ± sd over seeds)",
                                        strength_labels=labels_by_defense), width="stretch")
shown = agg.assign(robust=[f"{v:.3f}" if v == v else "not measured" for v in agg["robust"]])
st.dataframe(shown, hide_index=True, width="stretch", key="def_aggregate",
             column_config={"robust": st.column_config.TextColumn(
                 "robust accuracy", help="Accuracy on non-members under a 20-step PGD attack at adv_epsilon "
                                         "(measured for undefended and adversarially trained models).")})

st.subheader("Two runs side by side")
ids = list(sub["run"])
names = dict(zip(ids, labels))
l, r = st.columns(2)
left = l.selectbox("left", ids, format_func=names.get, index=0, key="def_left")
right = r.selectbox("right", ids, format_func=names.get, index=min(1, len(ids) - 1), key="def_right")
shown = ("distance_l2", "loss", "adv_confidence")
for col, rid in ((l, left), (r, right)):
    run = state.open_run(str(state.store().root), rid)
    col.plotly_chart(figures.distance_histogram(*run.table.member_nonmember("distance_l2"), title=names[rid]),
                     width="stretch", key=f"hist_{col is l}")
    col.plotly_chart(figures.roc_figure(state.rocs(run, shown), aucs={a_: run.record.attacks[a_].auc for a_ in shown}),
                     width="stretch", key=f"roc_{col is l}")
