"""Compare: runs side by side — curves, cost (trainable parameters, seconds per epoch) and test results."""

from __future__ import annotations

import streamlit as st

from cxrdemo import paths
from cxrdemo.runs import examples
from cxrdemo.runs import store as runs
from cxrdemo.views import compare, plots, run_table
from cxrdemo.views import trainer as tv
from app_pages import heatmaps_ui, ui, watch

REFERENCE = paths.DEMO_RUN_NAME  # the shipped demo model's run id when added as a reference (never deleted from here)
REFRESH_S = 5  # how often curves of running jobs are re-read from the run store

def live_section(root, states: dict[str, str], colors: dict[str, str], fixed=()) -> None:
    """Curves and progress of the chosen runs, re-read from the run store on every refresh."""
    with ui.friendly_errors("Refreshing the curves"):  # a fragment rerun is outside the page's own guard
        fresh = compare.fresh_runs(root, list(states), list(fixed))  # examples and the reference never change
        if compare.changed_states(states, fresh):
            st.rerun()  # a job finished or started: the table and the test-result charts must show it too
        for info in fresh:
            if info.state in runs.ACTIVE:
                st.caption(":material/hourglass_top: " + compare.progress_text(info))
        smoothing = st.slider("Smoothing of the curves", 0.0, 0.95, 0.0, 0.05, key="smoothing",
                              help="Exponential moving average; 0 shows the raw values. Hover shows the raw value.")
        left, right = st.columns(2)
        left.plotly_chart(plots.curves_figure(fresh, "loss", smoothing, colors), key="loss_curves")
        right.plotly_chart(plots.curves_figure(fresh, "accuracy", smoothing, colors), key="acc_curves")


def results_section(chosen, colors: dict[str, str]) -> None:
    """The trade-off chart and cost bars, restricted to one class set."""
    st.subheader("Cost vs benefit")
    groups = compare.class_groups(chosen)
    warning = compare.mixing_message(groups)
    class_set = next(iter(groups), None)
    if warning:
        st.warning(warning, icon=":material/balance:")
        class_set = st.selectbox("Class set for the test-metric chart", list(groups), key="class_set")
    same_task = chosen[chosen["classes"] == class_set]
    metric = st.selectbox("Test metric", list(compare.TEST_METRIC_LABELS), key="tradeoff_metric",
                          format_func=compare.TEST_METRIC_LABELS.get)
    st.plotly_chart(plots.tradeoff_figure(same_task, metric), key="tradeoff")
    missing = same_task.loc[same_task[metric].isna(), "name"].tolist()
    if missing:
        st.caption("Not on this chart (still training, stopped, or no test images): " + ", ".join(missing))
    left, right = st.columns(2)
    left.plotly_chart(plots.bar_figure(chosen, "trainable_params", "Trainable parameters", log=True, colors=colors),
                      key="params_bars")
    right.plotly_chart(plots.bar_figure(chosen, "sec_per_epoch", "Seconds per epoch", colors=colors),
                       key="time_bars")


def details_section(infos: dict, chosen_ids: list[str], table) -> None:
    """Confusion matrix, ROC curve and recipe of one chosen run."""
    st.subheader("One run in detail")
    run_id = st.selectbox("Run", chosen_ids, key="detail_run", format_func=lambda r: run_table.run_label(table, r))
    info = infos[run_id]
    test = runs.read_test_metrics(info.path) if not info.damaged else None
    tab_cm, tab_roc, tab_cal, tab_recipe, tab_cams = st.tabs(["Confusion matrix", "ROC curve", "Calibration", "Recipe",
                                                             "Heatmap scorecard"])
    with tab_cm, ui.friendly_errors("Drawing the confusion matrix"):
        if test and watch.gallery_tab(info):
            pass  # the clickable matrix and its images (runs that saved per-image predictions)
        elif test:
            st.plotly_chart(plots.confusion_figure(test), key="confusion")
        else:
            st.info("This run has no test results yet: it is still training, it stopped early, or its dataset "
                    "has no test images.")
    with tab_roc, ui.friendly_errors("Drawing the ROC curve"):
        if test:
            st.plotly_chart(plots.roc_figure(test), key="roc")
            st.caption("The cross marks the operating point: the sensitivity and false-positive rate the run "
                       "actually achieved with its decision rule.")
        else:
            st.info("No ROC curve without test results.")
    with tab_cal, ui.friendly_errors("Drawing the calibration"):
        if test:
            st.plotly_chart(plots.reliability_figure(test), key="reliability")
            rows = compare.coverage_rows(test)
            if rows:
                st.markdown("**Prediction sets on the test split**")
                st.dataframe(rows, hide_index=True)
                for sentence in compare.broken_promises(test):
                    st.warning(sentence)
        else:
            st.info("No calibration without test results.")
    with tab_recipe:
        st.json(compare.run_recipe(info), expanded=1)
    with tab_cams:
        scorecard_section(info)


def scorecard_section(info) -> None:
    """Which heatmap method is most faithful for this run's model: the CAM scorecard and its job."""
    if info.example:
        st.info("Example runs ship without their weights: train the recipe yourself to score its heatmaps.")
        return
    if info.damaged or info.state != "completed":
        st.info("The heatmap scorecard needs a completed run.")
        return
    heatmaps_ui.scorecard_panel(info.path, info.run_id, ui.runs_dir(), key="compare")


def delete_section(table) -> None:
    """Delete one run after an explicit confirmation (in classroom mode, only with the teacher's passphrase)."""
    deletable = compare.deletable(table)  # never the shipped demo model nor a read-only example run
    if not deletable:
        return
    # kept open once the deletion is confirmed: a rerun must not fold the Delete button away from under the pointer
    with st.expander("Delete a run", expanded=bool(st.session_state.get("delete_confirm"))):
        if not POLICY.may_delete():
            st.info("In classroom mode deleting runs needs the teacher: enter the teacher passphrase in the sidebar.",
                    icon=":material/lock:")
            return
        run_id = st.selectbox("Run to delete", deletable, key="delete_run",
                              format_func=lambda r: run_table.run_label(table, r))
        sure = st.checkbox(f"Yes, permanently delete run {run_id} and all its files", key="delete_confirm")
        if st.button("Delete run", type="primary", disabled=not sure, key="delete_button"):
            with ui.friendly_errors("Deleting the run"):
                runs.delete_run(run_id, ui.runs_dir())
                st.session_state["deleted_msg"] = f"Run {run_id} was deleted, with all its files."
                st.session_state.pop("delete_confirm", None)
                st.rerun()


st.title(":material/monitoring: Compare runs")
st.caption("Learning curves, what each recipe cost (trainable parameters, seconds per epoch) and what it bought "
           "(test accuracy, recall, AUROC). Runs still training update by themselves.")
root = ui.runs_dir()
if msg := st.session_state.pop("deleted_msg", None):
    st.success(msg, icon=":material/delete:")
POLICY = ui.classroom()
with ui.friendly_errors("Reading the runs"):
    all_infos = runs.list_runs(root)
    if POLICY.on:  # a classroom: this browser's runs first; the others' on request
        all_infos = tv.own_first(all_infos, POLICY.browser, ui.kept_toggle(
            "Everyone's runs", "everyone_runs", False, help="Also show the runs of other browsers."))
    reference = compare.demo_reference()
    if reference is not None and ui.kept_toggle("Add the shipped demo model as a reference", "with_demo", False):
        all_infos = [reference, *all_infos]
    shipped = examples.list_examples()
    if shipped and ui.kept_toggle(f"Show the {len(shipped)} example runs shipped with the project", "with_examples",
                                  True, help=run_table.EXAMPLES_HELP):
        all_infos = compare.with_examples(all_infos, shipped)
    if not all_infos:
        where = "" if POLICY.student else f" in {root}"  # a student is never shown a server path
        st.info(f"No runs yet{where}. Start one on the Trainer page; it will appear here while it trains.")
        ui.page_link("app_pages/trainer.py", "Open the Trainer page", ":material/model_training:")
        st.stop()
    table = compare.runs_table(all_infos, POLICY.shown_roots)
    if damaged := run_table.damaged_sentence(table):
        st.warning(damaged, icon=":material/healing:")

    f1, f2, f3 = st.columns(3)
    datasets = f1.multiselect("Dataset", sorted(set(table["dataset"]) - {""}), placeholder="All datasets",
                              key="filter_dataset")
    nets = f2.multiselect("Backbone", sorted(set(table["backbone"]) - {""}), placeholder="All backbones",
                          key="filter_backbone")
    states = f3.multiselect("Status", sorted(set(table["status"])), placeholder="All states", key="filter_status")
    shown = compare.filter_table(table, datasets, nets, states)
    every = st.toggle("Show every column", key="all_columns", help="The compact view fits a projector; every column "
                      "adds parameters, timing and dataset details.")
    if not every:
        st.caption("Accuracy, AUROC, sensitivity (Sens.) and specificity (Spec.) on each run's test split; "
                   "*Show every column* adds precision, F1, parameters, timing and the dataset.")
    st.dataframe(compare.styled_table(shown), hide_index=True,
                 column_config=ui.column_config(run_table.column_specs(compact=not every)),
                 key="runs_table", column_order=None if every else compare.COMPACT_COLUMNS)

    options = shown.loc[shown["status"] != "damaged", "run_id"].tolist()
    if "chosen" in st.session_state:  # keep only choices the current filters still show
        st.session_state["chosen"] = [r for r in st.session_state["chosen"] if r in options]
    chosen_ids = st.multiselect("Runs to compare", options, default=None if "chosen" in st.session_state
                                else compare.default_choice(options, all_infos), key="chosen",
                                format_func=lambda r: run_table.run_label(table, r))
    if not chosen_ids:
        st.info("Choose one or more runs above to compare them.")
        delete_section(table)
        st.stop()
    infos = {i.run_id: i for i in all_infos}
    chosen = shown.set_index("run_id").loc[chosen_ids].reset_index()
    for sentence in run_table.problem_sentences(chosen):  # the compact table leaves the problem column out
        st.warning(sentence, icon=":material/warning:")
    colors = plots.run_colors(chosen_ids)

    st.subheader("Learning curves")
    active = any(infos[r].state in runs.ACTIVE for r in chosen_ids)
    states = {r: infos[r].state for r in chosen_ids}
    fixed = [i for i in all_infos if i.example or i.run_id == REFERENCE]
    st.fragment(run_every=REFRESH_S if active else None)(live_section)(root, states, colors, fixed)
    results_section(chosen, colors)
    details_section(infos, chosen_ids, table)
    watch.paired_section(infos, chosen_ids)
    watch.timelapse_section(infos, chosen_ids, colors)
    watch.seeds_section([infos[r] for r in chosen_ids], table)
    ui.model_cards_section([infos[r] for r in chosen_ids])

    st.subheader("Export")
    e1, e2 = st.columns(2)
    e1.download_button("Download the table (CSV)", compare.to_csv(chosen), "runs.csv", "text/csv", key="dl_table")
    curves = compare.curves_frame([infos[r] for r in chosen_ids])
    e2.download_button("Download the curves (CSV)", compare.to_csv(curves), "curves.csv", "text/csv", key="dl_curves")
    delete_section(table)
