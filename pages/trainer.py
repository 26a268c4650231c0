"""Trainer: choose data, network, starting point and freeze level; start background jobs and watch them learn."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from cxrdemo import data
from cxrdemo.model import backbones
from cxrdemo.runs import jobs, ray_backend
from cxrdemo.runs.lifecycle import log_tail
from cxrdemo.views import trainer as tv
from cxrdemo.views import trainer_form as form
from cxrdemo.views import sweep_cost, words
from pages import ui

SPECS = {spec.name: spec for spec in form.widget_specs()}


@st.cache_data(ttl=30, show_spinner="Scanning the dataset…")
def scan(path: str):
    """The dataset scan (cached briefly: a folder may change while the page is open)."""
    return data.scan_dataset(path)


def link(page: str, label: str, icon: str, run_id: str) -> None:
    """A page link carrying the run id (?run=); a caption when this page runs on its own (no router)."""
    try:
        st.page_link(page, label=label, icon=icon, query_params={"run": run_id})
    except StreamlitAPIException:
        st.caption(f"{icon} {label}: open it from the app's sidebar.")


def widget(spec: form.WidgetSpec, where=st):
    """The widget a declared option asks for (a number field or a choice), keyed by the option's name."""
    if spec.kind == "select":
        return where.selectbox(spec.label, spec.options, index=spec.options.index(spec.default),
                               format_func=spec.word, key=spec.name, help=spec.help)
    return where.number_input(spec.label, spec.min, spec.max, spec.default, step=spec.step, format=spec.format,
                              key=spec.name, help=spec.help)


def widget_rows(group: str) -> dict:
    """Every declared option of `group`, four to a row; their values by option name."""
    specs = [s for s in SPECS.values() if s.group == group]
    values = {}
    for i in range(0, len(specs), 4):
        for col, spec in zip(st.columns(4), specs[i:i + 4]):
            values[spec.name] = widget(spec, col)
    return values


ui.notice()
st.title(":material/model_training: Trainer")
root = ui.runs_dir()
with ui.friendly_errors("Checking earlier jobs"):
    jobs.reap(root)

# ---------------------------------------------------------------- 1. data
st.subheader("1 · Images")
source = st.radio(SPECS["data"].label,
                  ["Built-in demo set (chest X-rays, NORMAL vs PNEUMONIA)", "A folder on this computer"],
                  horizontal=True, key="source")
data_path = "demo"
if source.startswith("A folder"):
    data_path = st.text_input("Folder path", placeholder="/data/chest_xray  (class folders, or train/val/test)",
                              help="Either FOLDER/<class>/images or FOLDER/train|val|test/<class>/images.",
                              key="data_path").strip()
ds = None
if data_path:
    with ui.friendly_errors("Reading the dataset"):
        ds = scan(data_path)
if ds is not None:
    st.dataframe(form.scan_rows(ds), hide_index=True)
    for note in ds.notes:
        st.info(note)
    if ds.skipped:
        with st.expander(f"{len(ds.skipped)} file(s) will be skipped"):
            st.table([{"file": p, "reason": r} for p, r in ds.skipped[:200]])
num_classes = len(ds.classes) if ds is not None and ds.classes else 2

# ---------------------------------------------------------------- 2. network
st.subheader("2 · Network")
names = backbones.backbone_names()
c1, c2 = st.columns(2)
backbone = c1.selectbox(SPECS["backbone"].label, names, index=names.index(SPECS["backbone"].default), key="backbone",
                        format_func=lambda n: f"{n} — {backbones.get_spec(n).description} "
                                              f"({backbones.param_counts(n, num_classes)[0]:,} parameters)")
inits = form.init_options(backbone, jobs.list_jobs(root))
preferred = "imagenet" if "imagenet" in inits and backbones.find_imagenet_weights(backbone) else "scratch"
init = c2.selectbox(SPECS["init"].label, list(inits), index=list(inits).index(preferred), format_func=inits.get,
                    key=f"init-{backbone}")
note = form.imagenet_note(backbone)
if note:
    c2.info(note, icon=":material/inventory_2:")
freezes = form.freeze_options(backbone)
freeze = c1.selectbox(SPECS["freeze"].label, list(freezes), format_func=freezes.get, key=f"freeze-{backbone}")
c1.caption(form.trainable_text(backbone, freeze, num_classes))

# ---------------------------------------------------------------- 3. training
st.subheader("3 · Training")
options = widget_rows("training")
with st.expander("More options"):
    options.update(widget_rows("more"))
name = st.text_input("Label (optional, added to the run id)", max_chars=40, key="run_name")
recipe = {"data": data_path or "", "backbone": backbone, "init": init, "freeze": freeze, **options}


# ---------------------------------------------------------------- where jobs train (Ray cluster, issue #9)
@st.cache_data(ttl=30, show_spinner="Contacting the Ray cluster…")
def cluster_problem(address: str) -> str | None:
    """None when the cluster answers, else the sentence why not (asked again after 30 s)."""
    return ray_backend.cluster_problem(address)


where: dict = {}  # empty: jobs.submit's own default (this computer unless CXRDEMO_RAY_ADDRESS is set)
ray_address = ray_backend.configured_address()
if ray_address:
    problem = cluster_problem(ray_address)
    if problem:
        st.warning(problem, icon=":material/cloud_off:")
    targets, default_target = form.backend_options(ray_address, problem)
    where = {"backend": st.radio("Train on", list(targets), index=list(targets).index(default_target),
                                 format_func=targets.get, horizontal=True, key="backend")}
# ---------------------------------------------------------------- end of where jobs train

if st.button("Start training", type="primary", disabled=ds is None, key="start",
             help=None if ds is not None else "Choose a dataset that can be read first."):
    with ui.friendly_errors("Starting the job"):
        run_id = jobs.submit(form.make_config(recipe), root, name=name, **where)
        st.success(f"Queued run **{run_id}**; it appears below and keeps training if you close this tab.")

with st.expander("Sweep: queue a grid of backbones × freeze levels"):
    sweep_nets = st.multiselect("Backbones", names, default=[backbone], key="sweep_backbones")
    sweep_freezes = st.multiselect("Freeze levels", form.SWEEP_FREEZES, default=["none", "head"], key="sweep_freezes")
    configs, notes = [], []
    if ds is not None:
        with ui.friendly_errors("Preparing the sweep"):
            configs, notes = form.sweep_configs(form.make_config(recipe), sweep_nets, sweep_freezes)
    for n in notes:
        st.caption(n)
    if ds is not None and configs:
        totals = ds.summary()["totals"]
        st.caption(sweep_cost.sweep_cost_text(configs, totals.get("train", 0), totals.get("val", 0)))
    if st.button(f"Queue {len(configs)} run(s)", disabled=ds is None or not configs, key="sweep"):
        with ui.friendly_errors("Queueing the sweep"):
            ids = [jobs.submit(c, root, name=name or "sweep", **where) for c in configs]
            st.success(f"Queued {len(ids)} runs; they train one after another.")


# ---------------------------------------------------------------- 4. jobs
@st.fragment(run_every=2)
def jobs_panel() -> None:
    """Live progress of every job, read from the run store (any tab sees the same)."""
    st.subheader("4 · Jobs")
    rows = tv.panel_rows(jobs.list_jobs(root))
    if not rows:
        st.info("No training jobs yet. Choose the options above and press **Start training**.")
    for row in rows:
        with st.container(border=True):
            head, action = st.columns([5, 1])
            head.markdown(f"{words.STATE_ICONS.get(row.state, '')} **{row.run_id}** · {row.title}  \n{row.status_text}")
            if row.active:
                st.progress(row.fraction, text=" · ".join(t for t in (row.progress_text, row.eta_text) if t))
                if action.button("Cancel", key=f"cancel-{row.run_id}"):
                    with ui.friendly_errors("Cancelling"), st.spinner("Stopping the job…"):
                        jobs.cancel(row.run_id, root)
            elif row.state in ("failed", "cancelled", "interrupted"):
                if action.button("Start again", key=f"again-{row.run_id}", help="A new run with the same settings"):
                    with ui.friendly_errors("Starting again"):
                        jobs.resubmit(row.run_id, root)
            if row.latest:
                cols = st.columns(4)
                for col, (key, label) in zip(cols, (("train_loss", "train loss"), ("val_loss", "val loss"),
                                                    ("train_acc", "train accuracy"), ("val_acc", "val accuracy"))):
                    value = row.latest.get(key)
                    col.metric(label, "–" if value is None else (f"{value:.1%}" if "acc" in key else f"{value:.4f}"))
                st.line_chart(tv.loss_curves(row.path), height=160, x_label="epoch", y_label="loss")
            if row.state in ("failed", "interrupted") and row.error:
                st.error(row.error)
                with st.expander("Log"):
                    st.code(log_tail(row.path, 40) or "(empty)")
            if row.state == "completed":
                c1, c2 = st.columns(2)
                with c1:
                    link("pages/compare.py", "Compare with other runs", ":material/monitoring:", row.run_id)
                with c2:
                    link("pages/diagnosis.py", "Diagnose an image", ":material/radiology:", row.run_id)


jobs_panel()
