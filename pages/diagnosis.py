"""Diagnosis: a model's prediction and Grad-CAM heatmap for one radiograph (uploaded or a built-in example)."""

from __future__ import annotations

import dataclasses

import streamlit as st

from cxrdemo.data.shrink import display_copy
from cxrdemo.diagnosis import assessment, explain, predict
from cxrdemo.views import diagnosis as dv
from cxrdemo.views import plots, words
from cxrdemo.views.text import escape_markdown as md
from pages import ui

PREDICTED = "The predicted class"
MAX_COMPARE = 4


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def load(run: str, mtime: int, root: str) -> predict.LoadedModel:
    """A model, loaded once per run and model.pt version (mtime is part of the key)."""
    return predict.load_model(run, root)


@st.cache_data(max_entries=4, show_spinner="Reading the image…")
def read(digest: str, name: str, _raw: bytes) -> predict.Radiograph:
    """The upload read in memory, once per content (digest): bytes are never written to disk."""
    return predict.read_radiograph(_raw, name)


@st.cache_data(max_entries=32, show_spinner="Computing the prediction and the heatmap…")
def diagnose(run: str, mtime: int, root: str, digest: str, method: str, target: str | None,
             _rad: predict.Radiograph) -> explain.Explanation:
    """Prediction + heatmap of one model for one image; a slider move reuses it."""
    model = load(run, mtime, root)
    k = model.classes.index(target) if target in model.classes else None
    return explain.explain(model, predict.prepare(model, _rad.grey), method, k)


@st.cache_data(max_entries=32, show_spinner="Checking the image against the model's training images…")
def assess(run: str, mtime: int, root: str, digest: str, level: float,
           _rad: predict.Radiograph) -> assessment.Assessment:
    """Calibrated probabilities, verdict, prediction set and in-domain check of one model for one image."""
    model = load(run, mtime, root)
    return assessment.assess(model, predict.prepare(model, _rad.grey), level)


def model_panel(model: predict.LoadedModel) -> None:
    """The chosen model's recipe and test results."""
    s = predict.model_summary(model)
    r = {k: md(v) for k, v in s["recipe"].items()}  # a hand-edited config or a folder name is not Markdown
    st.caption(f"**{r.get('backbone', '?')}**, initialised from {r.get('init', '?')}, freeze {r.get('freeze', '?')}, "
               f"{r.get('epochs', '?')} epoch{'' if s['recipe'].get('epochs') == 1 else 's'} at {r.get('img_size', model.img_size)} px · classes: "
               f"{', '.join(md(c) for c in s['classes'])} · decides: {md(s['decision'])}")
    if not s["headlines"]:
        st.caption("This model has no test results.")
    for h in s["headlines"]:  # the most shifted set first: the honest headline; in-distribution second
        shown = [(k, lbl) for k, lbl in dv.HEADLINE_METRICS if isinstance(h["metrics"].get(k), float)]
        for col, (k, lbl) in zip(st.columns(len(shown)), shown):
            col.metric(lbl, dv.headline_value(h, k))
        st.caption(md(dv.headline_sentence(h)) + (" 95% intervals in brackets." if h["ci95"] else ""))


def image_source() -> tuple[bytes, str] | None:
    """The uploaded file's bytes, else the chosen example's, else None."""
    up = st.file_uploader("Upload a chest radiograph (PNG, JPEG or DICOM)", key="upload",
                          help="The file stays in this app's memory; it is never saved to disk. "
                               "DICOM files are read for their pixels only: names, IDs and dates are never shown.")
    if up is not None:
        return up.getvalue(), up.name
    examples = predict.example_images()
    if not examples:
        st.info("Upload a radiograph to start.")
        return None
    pick = st.radio("…or try a built-in example (real test images the demo model never saw)", list(examples),
                    index=None, horizontal=True, key="example")
    if pick is None:
        return None
    return examples[pick].read_bytes(), examples[pick].name


def show_result(label: str, model: predict.LoadedModel, rad: predict.Radiograph, res: explain.Explanation,
                a: assessment.Assessment, opacity: float, full: bool) -> None:
    """Predicted class, probabilities, image and overlay; compact in the comparison row."""
    if not full:
        st.markdown(f"**{md(label)}**")
    # Class names are folder names: the sentence is built from escaped copies (the CLI prints them as they are).
    shown = dataclasses.replace(model, classes=tuple(md(c) for c in model.classes))
    st.markdown(dv.decision_sentence(shown, a))
    if full:
        st.plotly_chart(plots.probability_figure(model.classes, a.probs, a.predicted, a.threshold), key="probs")
    st.markdown(dv.set_sentence(shown, a))
    if a.in_domain:
        st.caption(a.domain_sentence)
    grey = display_copy(rad.grey)  # the browser gets at most 1024 px: the networks saw 299 at most
    ov = explain.overlay(grey, res.cam, opacity)
    what = f"{res.method} for {md(model.classes[res.target])}" if res.class_specific else f"{res.method} (any class)"
    if full:
        left, right = st.columns(2)
        left.image(grey, caption="The image as read", clamp=True, width="stretch", output_format="PNG")
        right.image(ov, caption=what, width="stretch", output_format="PNG")
        st.download_button("Download the overlay (PNG)", data=lambda: explain.to_png_bytes(ov), mime="image/png",
                           file_name=f"cxrdemo-{model.run_id}-{res.method}.png", on_click="ignore", key="dl_overlay")
    else:
        st.image(ov, caption=what, width="stretch", output_format="PNG")
    if res.flat:
        st.caption(f"The heatmap is empty: no region raised the score of {md(model.classes[res.target])}.")


st.title(":material/radiology: Diagnosis")
ui.notice()
st.caption("See what a trained model predicts for one radiograph and, with a heatmap, which regions drove "
           "that prediction.")
root = str(ui.runs_dir())
choices = words.model_choices(root)
if not choices:
    st.info("There is no trained model yet. Train one on the **Trainer** page (a few minutes on the built-in "
            "demo data); it will be offered here as soon as it has finished.")
    st.stop()

labels = list(choices)
pick_image, pick_model = st.columns(2, gap="large")
with pick_model:
    wanted = st.query_params.get("run")  # the Trainer's "Diagnose an image" link names its run
    label = st.selectbox("Model", labels, index=next((i for i, lb in enumerate(labels) if choices[lb] == wanted), 0),
                         key="model",
                         help="The shipped demo model when present, else your most recent completed run.")
    run = choices[label]
    model = None
    with ui.friendly_errors("Loading the model"):
        model = load(run, predict.model_mtime(run, root), root)
        model_panel(model)
with pick_image:
    source = image_source()
if model is None:
    st.stop()

c1, c2, c3 = st.columns(3)
method = c1.selectbox("Heatmap method", list(explain.CAM_METHODS), key="method",
                      help="How the heatmap is computed. GradCAM is the usual choice.")
c1.caption(words.CAM_NOTES[method])
target = c2.selectbox("Class to explain", [PREDICTED, *model.classes], key="target",
                      help="Which class the heatmap argues for: by default the one the model predicted.")
opacity = c3.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
coverage = st.radio("Prediction set coverage", list(dv.COVERAGE_CHOICES), horizontal=True, key="coverage",
                    help="How often the set should hold the true class, as measured on validation images: a higher "
                         "coverage answers 'both' more often.")
level = dv.COVERAGE_CHOICES[coverage]

if source is None:
    st.stop()
raw, name = source
rad = None
with ui.friendly_errors("Reading the image"):
    rad = read(predict.digest(raw), name, raw)
if rad is None:
    st.stop()
m = rad.meta
st.caption(f"Read as {m.format.upper()}, {m.width} × {m.height} px, {m.bits}-bit {md(m.mode)}"
           + (f" · {'; '.join(m.notes)}" if m.notes else ""))
a = None
with ui.friendly_errors("Checking the image"):
    a = assess(run, predict.model_mtime(run, root), root, rad.digest, level, rad)
if a is None:
    st.stop()
if not rad.looks_like_cxr:
    st.warning(rad.warning, icon="🩻")
if a.in_domain is False:  # the features say what the pixels' statistics could not: unlike the training images
    st.warning(a.domain_sentence, icon="🧭")
# one acknowledgement per image: a second odd image is not run on the first one's say-so
if (not rad.looks_like_cxr or a.in_domain is False) and not st.checkbox(
        "I understand: run the model on this image anyway", key=f"run_anyway_{rad.digest[:16]}"):
    st.stop()

key_target = None if target == PREDICTED else target
with ui.friendly_errors("The prediction"):
    res = diagnose(run, predict.model_mtime(run, root), root, rad.digest, method, key_target, rad)
    show_result(label, model, rad, res, a, opacity, full=True)

st.subheader("Compare models on this image")
others = st.multiselect("Other models", [lb for lb in labels if lb != label], max_selections=MAX_COMPARE,
                        key="compare", placeholder="Choose up to 4 models")
if others:
    for col, lb in zip(st.columns(1 + len(others)), [label, *others]):
        with col, ui.friendly_errors("This model"):
            r = choices[lb]
            mt = predict.model_mtime(r, root)
            other = load(r, mt, root)
            show_result(lb, other, rad, diagnose(r, mt, root, rad.digest, method, key_target, rad),
                        assess(r, mt, root, rad.digest, level, rad), opacity, False)
    st.caption("Each model explains its own predicted class unless the class chosen above is one of its classes.")
