"""Trainer: choose data, network, starting point and freeze level; start background jobs and watch them learn."""

from __future__ import annotations

import streamlit as st

from cxrdemo import data
from cxrdemo.errors import CxrError
from cxrdemo.model import backbones
from cxrdemo.runs import jobs, ray_backend
from cxrdemo.runs.lifecycle import log_tail
from cxrdemo.views import card, host_paths, sweep_cost, words
from cxrdemo.views import population as pv
from cxrdemo.views import classroom as cls
from cxrdemo.views import recipe as rc
from cxrdemo.views import trainer as tv
from cxrdemo.views import trainer_form as form
from cxrdemo.views.text import escape_markdown
from app_pages import ui, watch
from app_pages.form_widgets import KEEP, SPECS, choice, follow_rule, keep, kept, multiselect, restore, widget_rows

FOLDER = "A folder on this computer"


@st.cache_data(ttl=30, show_spinner="Scanning the dataset…")
def scan(path: str, roots: tuple | None = None):
    """The dataset scan (cached briefly: a folder may change while the page is open); `roots`: links stay inside."""
    return data.scan_dataset(path, roots=roots)


ui.notice()
st.title(":material/model_training: Trainer")
root = ui.runs_dir()
with ui.friendly_errors("Checking earlier jobs"):
    jobs.reap(root)
policy = ui.classroom()
asker = policy.asker()  # who queues: every job records its hashed browser id (a reload finds its last recipe)
# A new browser session (a reload): the recipe in the URL, else this browser's last submission (never another's).
restore(lambda: rc.restored_recipe(st.query_params.to_dict(), jobs.list_jobs(root), asker.browser, FOLDER,
                                   policy.shown_roots))
if policy.student:
    st.caption(cls.limits_words(policy.limits))

# ---------------------------------------------------------------- 1. data
st.subheader("1 · Images")
DEMO_SOURCE = "Built-in demo set (chest X-rays, NORMAL vs PNEUMONIA)"
allowed = policy.folder_choices()  # classroom: allow-listed folders by name, no typing
sources = [DEMO_SOURCE, *allowed] + ([FOLDER] if policy.may_type_folders() else [])
kept("source", sources)
source = keep("source", st.radio(SPECS["data"].label, sources, horizontal=True, key="source",
                                 format_func=lambda s: f"Allowed folder: {allowed[s]}" if s in allowed else s))
data_path = "demo" if source == DEMO_SOURCE else source
if source == FOLDER:
    kept("data_path")
    data_path = keep("data_path", st.text_input(
        "Folder path", placeholder="/data/chest_xray  (class folders, or train/val/test)",
        help="Either FOLDER/<class>/images or FOLDER/train|val|test/<class>/images.", key="data_path")).strip()
ds = None
if data_path:
    with ui.friendly_errors("Reading the dataset"):
        ds = scan(policy.check_folder(data_path), policy.scan_roots(data_path))
if ds is not None:
    st.dataframe(form.scan_rows(ds), hide_index=True)
    for note in ds.notes:
        st.info(note)
    if ds.skipped:
        with st.expander(f"{len(ds.skipped)} file(s) will be skipped"):
            st.table([{"file": p, "reason": r} for p, r in ds.skipped_report(200)])
num_classes = len(ds.classes) if ds is not None and ds.classes else 2
with st.expander("Whom the films come from (optional)"):
    st.caption(pv.form_note(ds.population if ds is not None else None))
    population = widget_rows("population")

# ---------------------------------------------------------------- 2. network
st.subheader("2 · Network")
names = backbones.backbone_names()
c1, c2 = st.columns(form.ROW_WIDGETS["network"])
backbone = choice(c1, "backbone", names, SPECS["backbone"].default,
                  format_func=form.backbone_label)
c1.caption(backbones.get_spec(backbone).description)
inits = form.init_options(backbone, jobs.list_jobs(root))
preferred = "imagenet" if "imagenet" in inits and not form.init_problem(backbone, "imagenet") else "scratch"
init = choice(c2, "init", list(inits), preferred, format_func=lambda i: form.init_label(backbone, i, inits[i]))
init_problem = form.init_problem(backbone, init)
note = form.imagenet_note(backbone, show_paths=not policy.student)
if init_problem:
    c2.warning(init_problem, icon=":material/block:")
elif note:
    c2.info(note, icon=":material/inventory_2:")
inherited = form.source_rule(init, list(ds.classes) if ds is not None else [], root)
follow_rule(inherited)  # the source run's operating point, until the user picks another rule
if inherited:
    c2.caption(f"Keeps that run's decision rule ({words.rule_words(inherited)}) unless you choose another under "
               "*More options*.")
freezes = form.freeze_options(backbone)
freeze = choice(c1, "freeze", list(freezes), next(iter(freezes)), format_func=freezes.get)  # "none" first
c1.caption(form.trainable_text(backbone, freeze, num_classes))

# ---------------------------------------------------------------- 3. training
st.subheader("3 · Training")
options = widget_rows("training")
rules = rc.rule_choices(SPECS["threshold"].options, inherited, st.session_state.get(KEEP + "threshold"))
with st.expander("More options"):
    options.update(widget_rows("more", options={"threshold": rules}))
kept("run_name")
name = keep("run_name", st.text_input("Label (optional, added to the run id)", max_chars=40, key="run_name"))
recipe = {"data": data_path or "", "backbone": backbone, "init": init, "freeze": freeze, **options, **population}
# A reload restores this recipe; other parameters of the address (the classroom's browser id) stay.
st.query_params.from_dict(rc.query_for(recipe, st.query_params.to_dict(), policy.shown_roots))


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

blocked = "Choose a dataset that can be read first." if ds is None else init_problem
if st.button("Start training", type="primary", disabled=bool(blocked), key="start", help=blocked):
    with ui.friendly_errors("Starting the job"):
        run_id = jobs.submit(form.make_config(recipe), root, name=name, asker=asker, **where)
        st.success(f"Queued run **{run_id}**; it appears below and keeps training if you close this tab.")

with st.expander("Sweep: queue a grid of backbones × freeze levels (× seeds)"):
    sweep_nets = multiselect("Backbones", names, [backbone], "sweep_backbones")
    sweep_freezes = multiselect("Freeze levels", form.SWEEP_FREEZES, ["none", "head"], "sweep_freezes")
    sweep_seeds = int(st.number_input("Seeds per recipe", 1, 10, 1, key="sweep_seeds",
                                      help="Repeat each recipe with seeds seed, seed+1, ...: Compare shows their "
                                           "mean ± standard deviation, so a difference can be told from luck."))
    configs, notes = [], []
    if ds is not None:
        with ui.friendly_errors("Preparing the sweep"):
            base = form.make_config(recipe)
            st.markdown(form.sweep_summary(base))
            configs, notes = form.sweep_configs(base, sweep_nets, sweep_freezes, sweep_seeds)
    for n in notes:
        st.caption(n)
    if ds is not None and configs:
        totals = ds.summary()["totals"]
        st.caption(sweep_cost.sweep_cost_text(configs, totals.get("train", 0), totals.get("val", 0), root))
    refused = policy.refusal(root, configs, "sweep") if configs and policy.student else None
    if refused:
        st.caption(f":material/block: {refused}")
    if st.button(f"Queue {len(configs)} run(s)", disabled=ds is None or not configs, key="sweep"):
        with ui.friendly_errors("Queueing the sweep"):  # all of the sweep or none of it, checked at the queue
            ids = jobs.submit_all([(c, name or "sweep") for c in configs], root, asker=asker, kind="sweep", **where)
            st.success(f"Queued {len(ids)} runs; they train one after another.")


# ---------------------------------------------------------------- 4. jobs
@st.fragment(run_every=2)
def jobs_panel() -> None:
    """Live progress of every job, read from the run store (any tab sees the same)."""
    st.subheader("4 · Jobs")
    infos = jobs.list_jobs(root)
    if policy.on:  # a classroom: this browser's jobs, the others' on request
        infos = tv.own_first(infos, asker.browser, ui.kept_toggle("Everyone's jobs", "everyone_jobs", False,
                                                                  help="Also show the jobs of other browsers."))
    rows = tv.panel_rows(infos, browser=asker.browser if policy.on else "", roots=policy.shown_roots)
    again_problem = st.session_state.setdefault("again_problem", {})
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
            elif (row.state in ("failed", "cancelled", "interrupted") and not row.repeat_problem
                  and action.button("Start again", key=f"again-{row.run_id}", help="A new run with the same settings")):
                again_problem.pop(row.run_id, None)
                try:
                    jobs.resubmit(row.run_id, root, asker=asker)
                except cls.Refused as exc:  # kept until the next click: the panel redraws every 2 s
                    again_problem[row.run_id] = cls.refusal_words(exc.refusal)
                except CxrError as exc:
                    again_problem[row.run_id] = host_paths.without_host_paths(str(exc), [row.data], policy.shown_roots)
            if row.run_id in again_problem:
                st.error(escape_markdown(again_problem[row.run_id]), icon=":material/block:")
            if row.latest:
                for col, (label, value) in zip(st.columns(len(tv.LATEST_METRICS)), tv.latest_texts(row.latest)):
                    col.metric(label, value)
                st.plotly_chart(card.card_figure(row.path), key=f"curve-{row.run_id}",
                                config={"displayModeBar": False})
                watch.probe_strip(row.run_id, row.path)
            if row.state in ("failed", "interrupted") and row.error:
                st.error(escape_markdown(row.error), icon=":material/error:")  # it may name folders
                if row.repeat_problem and row.repeat_problem not in row.error:
                    st.caption(f"Starting it again would fail the same way: {row.repeat_problem}")
                with st.expander("Log"):
                    st.code(host_paths.without_host_paths(log_tail(row.path, 40), [row.data], policy.shown_roots)
                            or "(empty)")
            if row.state == "completed":
                c1, c2 = st.columns(2)
                with c1:
                    ui.run_link("app_pages/compare.py", "Compare with other runs", ":material/monitoring:", row.run_id)
                with c2:
                    ui.run_link("app_pages/diagnosis.py", "Diagnose an image", ":material/radiology:", row.run_id)


jobs_panel()
