"""Model Evaluation: every figure computed from the stored evaluation records."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import cache, charts, components, paths
from dashboard.evaluation import (
    BASE_MODELS,
    ENSEMBLE,
    after_training,
    comparison_table,
    evaluation_provenance,
    meta_in_sample,
    model_label,
    paired_comparison,
    record_disagrees,
    report_table,
    risk_coverage_long,
    robustness_table,
    selective_table,
    stale_weights,
    training_phases,
)
from ensemble.intensity import REFERENCE_FOLDER, describe_reference
from ensemble.quality import REFERENCE_FOLDER as QUALITY_FOLDER
from ensemble.quality import describe_reference as describe_quality
from ensemble.review import FALLBACK_THRESHOLD, review_caption
from ensemble.shortcut import SHORTCUT_RECORD
from ensemble.shortcut import describe as describe_shortcut
from neurostack.errors import ArtifactError

components.page_setup("Model Evaluation", ":material/monitoring:")
st.title(":material/monitoring: Model Evaluation")
st.caption("Every number and curve on this page is computed from the stored evaluation "
           "records (`predictions.csv`, `metrics.json`, `training_log.csv`) — none is typed in.")

runs = cache.classification_runs()
if not runs:
    st.warning(f"No classification evaluation run found: expected "
               f"`{paths.classification_eval_dir()}/<run>/predictions.csv`. Run "
               "`python -m ensemble.evaluate … --out artifacts/evaluation/classification/<run>`.",
               icon=":material/extension_off:")
    st.stop()

run = st.selectbox("Evaluation run", runs, key="me_run") if len(runs) > 1 else runs[0]
run_dir = paths.classification_eval_dir() / run
record = cache.json_record(run_dir / "metrics.json") or {}
try:
    evals = cache.model_evaluations(run)
except (OSError, ValueError, KeyError) as exc:
    st.error(f"`{run_dir / 'predictions.csv'}` could not be read: {exc}")
    st.stop()
if not evals:
    st.error("The predictions file has no complete set of probability columns.")
    st.stop()

facts = [f"run **{run}**", f"**{evals[0].n}** images with known labels"]
split = record.get("split")
if isinstance(split, dict):
    split = ", ".join(f"{k} {v}" for k, v in split.items() if v not in (None, ""))
if split:
    facts.append(f"split: {split}")
if record.get("n_failed"):
    facts.append(f"{record['n_failed']} unreadable file(s) skipped")
if record.get("ensemble_method"):
    facts.append(f"ensemble: {record['ensemble_method']}")
st.markdown(" · ".join(facts))
stale, reused_note = evaluation_provenance(record, cache.shipped_weights())
if stale:
    st.warning("This run was made with other weights than those shipped now ("
               + ", ".join(model_label(m) for m in stale) + "): its numbers do not describe "
               "the models the dashboard runs. Rerun `python -m ensemble.evaluate`.",
               icon=":material/history:")
if reused_note:
    st.caption(reused_note)

in_sample = None
for meta_dir in paths.meta_dirs():  # the default meta-learner and the single-crop one
    in_sample = meta_in_sample(run_dir / "predictions.csv",
                               cache.json_record(meta_dir / "config.json"),
                               cache.json_record(meta_dir / "metrics.json"), paths.REPO_ROOT)
    if in_sample is not None:
        break
if in_sample is not None and any(e.name == ENSEMBLE for e in evals):
    cv = ("not recorded" if in_sample.cv_accuracy is None
          else f"**{in_sample.cv_accuracy:.3f}**")
    folds = ", ".join(f"{a:.3f}" for a in in_sample.cv_fold_accuracies)
    st.warning(
        "The meta-learner was **fitted on this run's predictions**, so its scores on this "
        "page are in-sample, not an evaluation. Its cross-validated accuracy on these "
        f"slices is {cv}" + (f" (folds: {folds}; {in_sample.cv_folds})" if folds else "")
        + ". The base models' scores here are held out; the test run scores all five.",
        icon=":material/warning:")

st.subheader("Comparison of all models")
table = comparison_table(evals, frozenset({ENSEMBLE}) if in_sample is not None else frozenset())
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in table.columns if c not in ("model", "images")})
components.chart(charts.comparison_bars(
    table, ["accuracy", "macro F1", "macro ROC AUC"],
    intervals={"accuracy": ("accuracy 95% CI low", "accuracy 95% CI high")}), "me_compare")
st.caption("Accuracy intervals: 95 % Wilson score intervals over the images of this run.")

paired = paired_comparison(evals)
if len(paired):
    st.markdown(f"**Paired comparison with the {model_label(ENSEMBLE).lower()}** — the same "
                "images, so only those where exactly one of the two was right can tell them apart")
    st.dataframe(paired, hide_index=True, width="stretch", column_config={
        "accuracy difference": st.column_config.NumberColumn(format="%+.4f"),
        "McNemar p": st.column_config.NumberColumn(format="%.3g")})
    st.caption(f"Two-sided exact McNemar test on the discordant images, one per base model "
               f"({len(paired)} tests, not corrected for multiple comparisons); p ≥ 0.05 means "
               "the difference is within what chance alone would often produce.")
    if in_sample is not None:
        st.warning("On this run the meta-learner was fitted on these very slices, so its side "
                   "of every comparison is in-sample and flattered; only the test runs "
                   "compare it fairly.", icon=":material/warning:")

st.subheader("Which answers to review")
try:
    flagged = cache.review_on_run(run)
except (ArtifactError, ValueError, OSError) as exc:
    flagged = None
    st.warning(f"The review flag could not be scored on this run: {exc}")
point = None if not flagged or flagged["accuracy_unflagged"] is None else (
    flagged["coverage"], flagged["accuracy_unflagged"],
    f"{flagged['n_flagged']} flagged for review")
components.chart(charts.risk_coverage_figure(risk_coverage_long(evals), point), "me_risk")
selective = selective_table(evals)
st.dataframe(selective, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in selective.columns if c != "model"})
if flagged:
    st.caption(review_caption(flagged, cache.review_record() or {}))
    st.dataframe(pd.DataFrame(flagged["by_class"]), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("accuracy flagged", "accuracy unflagged")})
    st.caption("By the class the ensemble answered: how many of its answers the flag sends "
               "for review, and how often the flagged and the other answers were right.")
else:
    st.caption("No review-flag record (`artifacts/classification/review.json`, "
               "`python -m ensemble.review fit`): the pipeline warns below a fixed "
               f"{FALLBACK_THRESHOLD}.")
if in_sample is not None:
    st.caption("On this run the ensemble's curve is in-sample (its meta-learner was fitted "
               "here); the flag's threshold was chosen on out-of-fold outputs instead.")

st.subheader("Per-model results")
tabs = st.tabs([model_label(e.name) + (" (in-sample)" if in_sample is not None
                                        and e.name == ENSEMBLE else "") for e in evals])
for tab, ev in zip(tabs, evals, strict=True):
    with tab:
        k1, k2, k3, k4 = st.columns(4)
        k1.metric("Accuracy", f"{ev.metrics['accuracy']:.3f}")
        k2.metric("Macro F1", f"{ev.metrics['macro_f1']:.3f}")
        macro_auc = ev.metrics["roc_auc"].get("macro")
        k3.metric("Macro ROC AUC", "—" if macro_auc is None else f"{macro_auc:.3f}")
        k4.metric("ECE (10 bins)", f"{ev.ece:.3f}")
        c1, c2 = st.columns(2)
        components.chart(charts.confusion_heatmap(ev.confusion, ev.name), f"me_cm_{ev.name}", c1)
        components.chart(charts.confusion_heatmap(ev.confusion_normalised, ev.name,
                                                  normalised=True), f"me_cmn_{ev.name}", c2)
        c3, c4 = st.columns(2)
        components.chart(charts.roc_figure(ev), f"me_roc_{ev.name}", c3)
        components.chart(charts.pr_figure(ev), f"me_pr_{ev.name}", c4)
        c5, c6 = st.columns([3, 2])
        with c5:
            st.markdown("**Classification report**")
            st.dataframe(report_table(ev), hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.3f")
                                        for c in ("precision", "recall", "F1", "ROC AUC",
                                                  "average precision")})
            if record_disagrees(record, ev.name, ev.metrics["accuracy"]):
                st.warning("metrics.json disagrees with predictions.csv for this model; "
                           "the page shows values recomputed from predictions.csv.")
        components.chart(charts.reliability_figure(ev), f"me_rel_{ev.name}", c6)

st.subheader("Robustness to acquisition shift")
robust = cache.robustness_summary()
if robust is None:
    st.info("No robustness run found: expected "
            f"`{paths.robustness_dir()}/summary.csv` from `python -m ensemble.robustness …`.")
else:
    rec = cache.json_record(paths.robustness_dir() / "metrics.json") or {}
    changed = stale_weights(rec, cache.shipped_weights((*BASE_MODELS, "meta")))
    if changed:
        st.warning("This robustness run was made with other weights than those shipped now ("
                   + ", ".join(model_label(m) for m in changed) + "); rerun "
                   "`python -m ensemble.robustness` to refresh it.", icon=":material/history:")
    n = int(robust["n"].max())
    st.caption(
        f"The same {n} test slices ({rec.get('settings', {}).get('per_class', '?')} per class, "
        "sampled once) classified unchanged (severity 0) and under simulated scanner and "
        "site differences at two severities, through the full pipeline. With this many "
        "slices an accuracy is uncertain (the ensemble's 95 % Wilson interval is in the "
        "table); the change in predictions is paired and more telling.")
    components.chart(charts.robustness_figure(robust), "me_robust")
    shift_table = robustness_table(robust)
    st.dataframe(shift_table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(
                     format="%.2g" if c.startswith("p vs") else "%.3f")
                     for c in shift_table.columns if c != "condition"})
    described = rec.get("corruptions") or {}
    if described:
        st.caption("Severities 1 / 2: " + "; ".join(
            f"**{k.replace('_', ' ')}**: {v.get('description', '')}"
            for k, v in described.items()) + ".")
shortcut = cache.json_record(paths.classification_eval_dir() / SHORTCUT_RECORD)
if shortcut:
    st.info(describe_shortcut(shortcut), icon=":material/contrast:")
reference = cache.json_record(paths.classifier_dir(REFERENCE_FOLDER) / "config.json")
if reference and "n_reference" in reference:
    st.info("**Input check** (a warning on each analysed slice; `python -m ensemble.intensity`). "
            + describe_reference(reference), icon=":material/rule:")
    for part in ("val", "test"):
        fixed = cache.json_record(paths.classification_eval_dir()
                                  / f"intensity_correction_{part}.json")
        if fixed and fixed.get("table"):
            st.caption(f"Correction of flagged slices ({fixed['part']}, "
                       f"{fixed['per_class']} per class; `scripts/intensity_correction.py`): "
                       "the pipeline analyses each flagged slice as a copy with its grey "
                       "levels mapped to the training curve; `accuracy` is its decision, "
                       "`accuracy_as_given` the ensemble on the slices as given.")
            st.dataframe(fixed["table"], hide_index=True, width="stretch",
                         key=f"me_correction_{part}")

quality = cache.json_record(paths.classifier_dir(QUALITY_FOLDER) / "config.json")
if quality and "n_reference" in quality:
    st.info("**Noise and detail check** (a warning on each analysed slice; "
            "`python -m ensemble.quality`). " + describe_quality(quality),
            icon=":material/grain:")
    flags = cache.json_record(paths.robustness_dir() / "quality_flags.json")
    if flags and flags.get("table"):
        st.caption("The same check on the shifted slices of the robustness run "
                   "(`scripts/intensity_flags.py --check quality`): `accuracy_flagged` is the "
                   "ensemble on the flagged slices, `flagged_called_notumor` the share of them "
                   "it calls notumor.")
        st.dataframe(flags["table"], hide_index=True, width="stretch", key="me_quality_flags")

st.subheader("Training curves")
logs = {name: cache.training_log(paths.classifier_dir(name)) for name in BASE_MODELS}
meta_log = cache.training_log(paths.classifier_dir("meta"))
if meta_log is not None:
    logs["meta"] = meta_log
available = {k: v for k, v in logs.items() if v is not None}
if not available:
    st.info("No training logs found (`artifacts/classification/<model>/training_log.csv`).")
else:
    log_tabs = st.tabs([model_label(k) for k in available])
    for tab, (name, log) in zip(log_tabs, available.items(), strict=True):
        with tab:
            curves = charts.training_curves(log, f"Training curves — {model_label(name)}", [
                ("Accuracy", "accuracy", "val_accuracy"), ("Loss", "loss", "val_loss")])
            components.chart(curves, f"me_log_{name}")
            phases = training_phases(log)
            if phases:
                st.caption("Phases: " + "; ".join(phases) + ". Dotted lines mark phase changes.")
            folder = paths.classifier_dir(name)
            steps = after_training(cache.json_record(folder / "config.json"))
            if steps:
                st.markdown("**After this training** (the shipped weights include these "
                            "steps, so the curves above end below the shipped accuracy):")
                st.markdown("\n".join(f"- {step}" for step in steps))
            refit_log = cache.training_log(folder, "head_refit_log.csv")
            if steps and refit_log is not None:
                components.chart(charts.training_curves(
                    refit_log, f"Head refit — {model_label(name)}",
                    [("Accuracy", "train_accuracy", "holdout_accuracy"),
                     ("Loss", "train_loss", "holdout_loss")]), f"me_refit_{name}")
                st.caption("Validation curve here: the refit's own hold-out of training "
                           "slices; the validation split chose whether to keep it.")
    st.caption("How every shipped model was chosen, session by session: "
               "`docs/results_history.md` in the repository.")
missing = [model_label(k) for k, v in logs.items() if v is None and k in BASE_MODELS]
if missing and available:
    st.caption("No training log for: " + ", ".join(missing) + ".")
