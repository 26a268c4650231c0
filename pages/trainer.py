"""Trainer: choose data, network, starting point and freeze level; start background jobs and watch them learn."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from cxrdemo.config import (
    AUGMENTATIONS,
    BALANCING,
    HEADS,
    INTENSITY,
    OPTIMIZERS,
    PRECISIONS,
    SELECTIONS,
    THRESHOLDS,
    TrainConfig,
    threshold_words,
)
from cxrdemo.data import dataset as data
from cxrdemo.model import backbones
from cxrdemo.runs import jobs, ray_backend
from cxrdemo.runs.lifecycle import log_tail
from cxrdemo.views import trainer as tv
from pages import ui

DEFAULTS = TrainConfig()
AUG_LABELS = {"none": "none", "light": "light (flips, small shifts and rotations, as in the papers)",
              "acquisition": "acquisition (also contrast, blur, noise: robust to other scanners)"}
INTENSITY_LABELS = {"none": "as recorded", "equalize": "histogram-equalised"}
HEAD_LABELS = {"linear": "one linear layer", "fc512": "two 512-unit layers (papers)"}
PRECISION_LABELS = {"auto": "automatic (fastest this machine runs well)", "fp32": "full (float32)",
                    "bf16": "mixed (bfloat16)"}
SELECT_LABELS = {"val_loss": "lowest validation loss", "val_auroc": "best validation AUROC (ranking)"}
BAL_LABELS = {"sampler": "oversample the rarer class", "loss": "weight the loss by class", "none": "no balancing"}
IMG_SIZES = [64, 128, 160, 224, 299]
SWEEP_FREEZES = ["none", "head", "1", "2", "3", "gradual:1", "gradual:2"]


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


ui.notice()
st.title(":material/model_training: Trainer")
root = ui.runs_dir()
with ui.friendly_errors("Checking earlier jobs"):
    jobs.reap(root)

# ---------------------------------------------------------------- 1. data
st.subheader("1 · Images")
source = st.radio("Dataset", ["Built-in demo set (chest X-rays, NORMAL vs PNEUMONIA)", "A folder on this computer"],
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
    st.dataframe(tv.scan_rows(ds), hide_index=True)
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
backbone = c1.selectbox("Backbone", names, index=names.index(DEFAULTS.backbone), key="backbone",
                        format_func=lambda n: f"{n} — {backbones.get_spec(n).description} "
                                              f"({backbones.param_counts(n, num_classes)[0]:,} parameters)")
inits = tv.init_options(backbone, jobs.list_jobs(root))
preferred = "imagenet" if "imagenet" in inits and backbones.find_imagenet_weights(backbone) else "scratch"
init = c2.selectbox("Starting weights", list(inits), index=list(inits).index(preferred), format_func=inits.get,
                    key=f"init-{backbone}")
note = tv.imagenet_note(backbone)
if note:
    c2.info(note, icon=":material/inventory_2:")
freezes = tv.freeze_options(backbone)
freeze = c1.selectbox("Freeze level (which layers stay fixed)", list(freezes), format_func=freezes.get,
                      key=f"freeze-{backbone}")
c1.caption(tv.trainable_text(backbone, freeze, num_classes) + (" in the first epochs" if ":" in freeze else ""))

# ---------------------------------------------------------------- 3. training
st.subheader("3 · Training")
c1, c2, c3, c4 = st.columns(4)
epochs = c1.number_input("Epochs", 1, 1000, DEFAULTS.epochs, key="epochs")
lr = c2.number_input("Learning rate", 1e-6, 1.0, DEFAULTS.lr, format="%.5f", step=1e-4, key="lr")
batch_size = c3.number_input("Batch size", 1, 512, DEFAULTS.batch_size, key="batch_size")
img_size = c4.selectbox("Image size (pixels)", IMG_SIZES, index=IMG_SIZES.index(DEFAULTS.img_size), key="img_size")
c1, c2, c3, c4 = st.columns(4)
augment = c1.selectbox("Augmentation", AUGMENTATIONS, format_func=AUG_LABELS.get, key="augment")
balance = c2.selectbox("Class balancing", BALANCING, format_func=BAL_LABELS.get, key="balance")
patience = c3.number_input("Early-stopping patience (0 = off)", 0, 1000, DEFAULTS.patience, key="patience")
max_images = c4.number_input("Images per split (0 = all)", 0, 100000, DEFAULTS.max_images,
                             help="A smaller stratified subset gives a quick demo run.", key="max_images")
with st.expander("More options"):
    c1, c2, c3, c4 = st.columns(4)
    intensity = c1.selectbox("Intensity", INTENSITY, format_func=INTENSITY_LABELS.get, key="intensity",
                             help="Histogram equalisation evens out exposure differences between scanners; "
                                  "the model repeats it on every image it is shown later.")
    threshold = c2.selectbox("Decision rule", THRESHOLDS, format_func=threshold_words, key="threshold",
                             help="For two classes. A fixed specificity or sensitivity on validation moves less "
                                  "than a balanced cut when the model meets another site's images.")
    ema = c3.number_input("Weight averaging (0 = off)", 0.0, 0.9999, DEFAULTS.ema, format="%.4f", key="ema",
                          help="Keep a moving average of the weights (e.g. 0.998) and save that: steadier results.")
    head = c4.selectbox("Head", HEADS, format_func=HEAD_LABELS.get, key="head")
    c1, c2, c3, c4 = st.columns(4)
    dropout = c1.number_input("Dropout on the head", 0.0, 0.9, DEFAULTS.dropout, step=0.1, key="dropout")
    weight_decay = c2.number_input("Weight decay", 0.0, 1.0, DEFAULTS.weight_decay, format="%.5f", step=1e-4,
                                   key="weight_decay")
    optimizer = c3.selectbox("Optimiser", OPTIMIZERS, format_func=str.capitalize, key="optimizer")
    seed = c4.number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed, key="seed")
    c1, c2, _, _ = st.columns(4)
    select = c2.selectbox("Keep the epoch with", SELECTIONS, format_func=SELECT_LABELS.get, key="select",
                          help="Early stopping watches the same score. AUROC suits a threshold tuned on validation.")
    precision = c1.selectbox("Arithmetic precision", PRECISIONS, format_func=PRECISION_LABELS.get, key="precision",
                             help="Mixed precision trains 2-3x faster on recent Intel CPUs (AMX) and on GPUs; "
                                  "the saved model and every prediction stay full precision.")
name = st.text_input("Label (optional, added to the run id)", max_chars=40, key="run_name")


def make_config(**changes) -> TrainConfig:
    """The form as a validated TrainConfig (ConfigError carries the sentence)."""
    form = dict(data=data_path or "", backbone=backbone, init=init, freeze=freeze, epochs=int(epochs), lr=float(lr),
                batch_size=int(batch_size), img_size=int(img_size), augment=augment, balance=balance,
                patience=int(patience), max_images=int(max_images), intensity=intensity, threshold=threshold,
                ema=float(ema), head=head, dropout=float(dropout), weight_decay=float(weight_decay),
                optimizer=optimizer, seed=int(seed), precision=precision, select=select)
    return TrainConfig(**{**form, **changes})


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
    targets, default_target = tv.backend_options(ray_address, problem)
    where = {"backend": st.radio("Train on", list(targets), index=list(targets).index(default_target),
                                 format_func=targets.get, horizontal=True, key="backend")}
# ---------------------------------------------------------------- end of where jobs train

if st.button("Start training", type="primary", disabled=ds is None, key="start",
             help=None if ds is not None else "Choose a dataset that can be read first."):
    with ui.friendly_errors("Starting the job"):
        run_id = jobs.submit(make_config(), root, name=name, **where)
        st.success(f"Queued run **{run_id}**; it appears below and keeps training if you close this tab.")

with st.expander("Sweep: queue a grid of backbones × freeze levels"):
    sweep_nets = st.multiselect("Backbones", names, default=[backbone], key="sweep_backbones")
    sweep_freezes = st.multiselect("Freeze levels", SWEEP_FREEZES, default=["none", "head"], key="sweep_freezes")
    configs, notes = [], []
    if ds is not None:
        with ui.friendly_errors("Preparing the sweep"):
            configs, notes = tv.sweep_configs(make_config(init="scratch" if init.startswith("run:") else init),
                                              sweep_nets, sweep_freezes)
    for n in notes:
        st.caption(n)
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
            head.markdown(f"{tv.STATE_ICONS.get(row.state, '')} **{row.run_id}** · {row.title}  \n{row.status_text}")
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
