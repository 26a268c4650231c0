"""Diagnosis: a model's prediction and Grad-CAM heatmap for one radiograph (uploaded or a built-in example)."""

from __future__ import annotations

import streamlit as st

from cxrdemo.diagnosis import explain, predict
from cxrdemo.runs import store
from cxrdemo.views import diagnosis as dv
from cxrdemo.views import population as pv
from cxrdemo.views import words
from cxrdemo.views.text import escape_markdown as md
from app_pages import film, heatmaps_ui, ui, viewer, worklist_ui

PREDICTED = "The predicted class"
MAX_COMPARE = 4
KEPT = "diagnosis:image"  # (name, decoded radiograph <= 2048 px): the upload widget forgets across page switches


def model_panel(model: predict.LoadedModel, root: str) -> None:
    """The chosen model's recipe and test results."""
    s = predict.model_summary(model)
    r = {k: md(v) for k, v in s["recipe"].items()}  # a hand-edited config or a folder name is not Markdown
    line, details = dv.decision_line(film.shown(model))
    st.caption(f"**{r.get('backbone', '?')}**, {dv.start_words(s['recipe'].get('init', '?'), root)}, "
               f"{r.get('epochs', '?')} epoch{'' if s['recipe'].get('epochs') == 1 else 's'} at "
               f"{r.get('img_size', model.img_size)} px · {line}", help=details)
    film.headline_numbers(model, compact=False)


def image_source() -> tuple[bytes, str] | None:
    """The uploaded file's bytes, else the chosen example's, else None."""
    up = st.file_uploader("Upload a chest radiograph (PNG, JPEG or DICOM)", key="upload",
                          help="The file stays in this app's memory; it is never saved to disk. "
                               "DICOM files are read for their pixels only: names, IDs and dates are never shown.")
    if up is not None:
        return up.getvalue(), up.name
    examples = predict.example_images()
    pick = st.radio("…or try a built-in example (real test images the demo model never saw)", list(examples),
                    index=None, horizontal=True, key="example") if examples else None
    if pick is not None:
        return examples[pick].read_bytes(), examples[pick].name
    kept = st.session_state.get(KEPT)
    if kept is not None:  # back from another page: the image chosen before (decoded and shrunk, not the file)
        st.caption(f"Showing the image chosen before ({md(kept[0])}); upload another or pick an example to replace it.")
        if not st.button("Clear this image", key="clear_image"):
            return kept[1], kept[0]
        del st.session_state[KEPT]
    if not examples:
        st.info("Upload a radiograph to start.")
    return None




def compare_section(label: str, labels: list[str], choices: dict, root: str, rad: predict.Radiograph,
                    stated_age: float | None, method: str, target: str | None, level: float, opacity: float,
                    pending: list) -> None:
    """The same image through up to MAX_COMPARE other models, a column each: numbers first, then the results."""
    st.subheader("Compare models on this image")
    candidates = [lb for lb in labels if lb != label]
    others = st.multiselect("Other models", candidates, max_selections=MAX_COMPARE, key="compare",
                            placeholder="Choose up to 4 models" if candidates else "Train a model first (Trainer page)",
                            disabled=not candidates)
    if not others:
        return
    names, loaded = [label, *others], {}
    # two rows: every model's name and numbers, then every model's result, so that the images line up
    for col, lb in zip(st.columns(len(names)), names):
        with col, ui.friendly_errors("This model"):
            st.markdown(f"**{md(lb)}**")
            loaded[lb] = film.model_for(choices[lb], root)
            film.headline_numbers(loaded[lb], compact=True)
    for col, lb in zip(st.columns(len(names)), names):
        if lb not in loaded:
            continue
        with col, ui.friendly_errors("This model"):
            res = film.result_for(choices[lb], root, rad, stated_age)
            hm = film.heatmap_for(choices[lb], root, rad, method, target, res)
            film.images(lb, loaded[lb], rad, res, hm, level, opacity, full=False)
            film.verdict(loaded[lb], res, level, full=False)
            pending.append(heatmaps_ui.faithfulness_slot(choices[lb], root, res, hm))
    st.caption(dv.COMPARE_NOTE)


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
        model = film.model_for(run, root)
        model_panel(model, root)
        ui.model_card_expander(model.path, key="diagnosis")
with pick_image:
    if model is not None:
        st.caption(pv.population_line(model.population, md))  # whom the model is for, before any upload
    many = worklist_ui.wanted()  # a worklist: each film's own header age only (one typed age fits no list)
    files = worklist_ui.sources() if many else []
    source = None if many else image_source()
    stated_age = None if many else st.number_input(
        "Patient's age in years (optional)", min_value=0.0, max_value=130.0, value=None, step=1.0, key="age",
        help="Checked against the ages the model learnt from. A DICOM file's own header age is used first; the age "
             "is kept only in this page, never stored.")
if model is None:
    st.stop()

heatmaps_ui.preselect_method(store.run_dir(run, root), run)
c1, c2, c3 = st.columns(3)
method = c1.selectbox("Heatmap method", list(explain.CAM_METHODS), key="method",
                      help="How the heatmap is computed. GradCAM is the usual choice.")
c1.caption(words.CAM_NOTES[method])  # a slow method's time shows as it runs (measured progress), not timed before
target = c2.selectbox("Class to explain", [PREDICTED, *model.classes], key="target",
                      help="Which class the heatmap argues for: by default the one the model predicted.")
key_target = None if target == PREDICTED else target
opacity = c3.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
with st.expander("Which heatmap method is most faithful for this model? (CAM scorecard)"):
    heatmaps_ui.scorecard_panel(store.run_dir(run, root), run, root, key="diagnosis")
coverage = st.radio("Prediction set coverage", list(dv.COVERAGE_CHOICES), horizontal=True, key="coverage",
                    help="How often the set should hold the true class, as measured on validation images: a higher "
                         "coverage answers 'both' more often, never less (the 95% set always holds the 90% one).")
level = dv.COVERAGE_CHOICES[coverage]
if many:  # the chosen row becomes the film shown below
    source = worklist_ui.section(model, label, run, root, files, level, method)

if source is None:
    st.stop()
raw, name = source
rad = None
if isinstance(raw, predict.Radiograph):
    rad = raw
else:
    with ui.friendly_errors("Reading the image"):
        rad = dv.kept_copy(film.read(predict.digest(raw), name, raw))
        st.session_state[KEPT] = (name, rad)
if rad is None:
    st.stop()
m = rad.meta
st.caption(f"Read as {m.format.upper()}, {m.width} × {m.height} px, {m.bits}-bit {md(m.mode)}"
           + (f" · {'; '.join(m.notes)}" if m.notes else ""))
res = None
with ui.friendly_errors("Checking the image"):
    res = film.result_for(run, root, rad, stated_age)
if res is None or not film.checks(model, rad, res):
    st.stop()

pending: list = []
slot = st.empty()  # replaces the previous overlay at once: nothing stale stays on screen while this computes
with slot.container(), ui.friendly_errors("The prediction"):
    film.verdict(model, res, level, full=True)
    hm = film.heatmap_for(run, root, rad, method, key_target, res)
    in_viewer = viewer.section(run, root, model, rad, res, hm, key_target, opacity)
    film.images(label, model, rad, res, hm, level, opacity, full=True, pictures=not in_viewer)
    pending.append(heatmaps_ui.faithfulness_slot(run, root, res, hm))
    worklist_ui.one_report(model, label, rad, res, hm, level)
    with ui.friendly_errors("The sanity check"):
        heatmaps_ui.sanity_section(model, rad, res, hm)

compare_section(label, labels, choices, root, rad, stated_age, method, key_target, level, opacity, pending)
heatmaps_ui.faithfulness_section(pending)  # last: the prediction and heatmaps are on screen while it scores
