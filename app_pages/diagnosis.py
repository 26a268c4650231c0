"""Diagnosis: a model's prediction and Grad-CAM heatmap for one radiograph (uploaded or a built-in example)."""

from __future__ import annotations

import dataclasses

import streamlit as st

from cxrdemo.data.shrink import display_copy
from cxrdemo.diagnosis import assessment, cam_cost, explain, predict
from cxrdemo.views import diagnosis as dv
from cxrdemo.views import heatmaps, plots, words
from cxrdemo.views.text import escape_markdown as md
from app_pages import heatmaps_ui, ui

PREDICTED = "The predicted class"
MAX_COMPARE = 4
KEPT = "diagnosis:image"  # (name, decoded radiograph <= 2048 px): the upload widget forgets across page switches


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def load(run: str, mtime: int, root: str) -> predict.LoadedModel:
    """A model, loaded once per run and model.pt version (mtime is part of the key)."""
    return predict.load_model(run, root)


@st.cache_data(max_entries=4, show_spinner="Reading the image…")
def read(digest: str, name: str, _raw: bytes) -> predict.Radiograph:
    """The upload read in memory, once per content (digest): bytes are never written to disk."""
    return predict.read_radiograph(_raw, name)


@st.cache_data(ttl=3600, show_spinner=False)
def expected_seconds(run: str, mtime: int, root: str, method: str) -> float | None:
    """How long `method` takes with this model here (None for the fast methods), measured once per model."""
    return cam_cost.expected_seconds(load(run, mtime, root), method)


@st.cache_data(max_entries=32, show_spinner=False)
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
    return assessment.assess(model, predict.prepare(model, _rad.grey), level, _rad.looks_like_cxr)


def model_panel(model: predict.LoadedModel) -> None:
    """The chosen model's recipe and test results."""
    s = predict.model_summary(model)
    r = {k: md(v) for k, v in s["recipe"].items()}  # a hand-edited config or a folder name is not Markdown
    line, details = dv.decision_line(dataclasses.replace(model, classes=tuple(md(c) for c in model.classes)))
    st.caption(f"**{r.get('backbone', '?')}**, {dv.start_words(s['recipe'].get('init', '?'), root)}, "
               f"{r.get('epochs', '?')} epoch{'' if s['recipe'].get('epochs') == 1 else 's'} at "
               f"{r.get('img_size', model.img_size)} px · {line}", help=details)
    headline_numbers(model, compact=False)


def headline_numbers(model: predict.LoadedModel, compact: bool) -> None:
    """How good the model is: its most shifted evaluation set first (the honest headline), then in-distribution,
    with 95% intervals; a warning when it does no better than chance. Compact: for a column of the comparison."""
    hs = predict.model_summary(model)["headlines"]
    if not hs:
        st.caption("This model has no test results.")
    for h in hs:
        cells = dv.headline_cells(h)
        if compact:
            title = dv.headline_title({**h, "set": md(h["set"])})  # a folder name is not Markdown
            st.markdown(f"**{title}**  \n" + "  \n".join(f"{lbl} {v}" + (f" ({ci})" if ci else "")
                                                          for lbl, v, ci in cells), help=md(dv.headline_sentence(h)))
            continue
        for col, (lbl, value, ci) in zip(st.columns(len(cells)), cells):  # the interval under the number: it fits
            col.metric(lbl, value, delta=ci, delta_color="off", delta_arrow="off")
        st.caption(md(dv.headline_sentence(h)) + (" 95% intervals under the numbers." if h["ci95"] else ""))
    chance = dv.model_chance(model)
    if chance:
        st.warning(f"This model {md(chance)}.", icon=":material/warning:")


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


def heatmap_words(model: predict.LoadedModel, res: explain.Explanation) -> str:
    """The heatmap's caption (class names escaped)."""
    return dv.heatmap_caption(res.method, [md(c) for c in model.classes], res.probs, res.predicted, res.target,
                              res.class_specific)


def show_result(label: str, model: predict.LoadedModel, rad: predict.Radiograph, res: explain.Explanation,
                a: assessment.Assessment, opacity: float, full: bool) -> None:
    """Predicted class, probabilities, image and overlay; compact in the comparison row (the overlay first, so
    that the images of the row line up)."""
    grey = display_copy(rad.grey)  # the browser gets at most 1024 px: the networks saw 299 at most
    ov = explain.overlay(grey, res.cam, opacity)
    what = heatmap_words(model, res)
    if not full:
        st.image(ov, caption=what, width="stretch", output_format="PNG")
    # Class names are folder names: the sentence is built from escaped copies (the CLI prints them as they are).
    shown = dataclasses.replace(model, classes=tuple(md(c) for c in model.classes))
    st.markdown(dv.decision_sentence(shown, a))
    if full:
        st.plotly_chart(plots.probability_figure(model.classes, a.probs, a.predicted, a.threshold), key="probs")
    st.markdown(dv.set_sentence(shown, a))
    if a.in_domain:
        st.caption(a.domain_sentence)
    if full:
        left, right = st.columns(2)
        left.image(grey, caption="The image as read", clamp=True, width="stretch", output_format="PNG")
        right.image(ov, caption=what, width="stretch", output_format="PNG")
        footer = dv.overlay_footer(label, res.method, model.classes, res.probs, res.predicted, res.target)
        st.download_button("Download the overlay (PNG)", data=lambda: explain.to_png_bytes(dv.with_footer(ov, footer)),
                           mime="image/png", on_click="ignore", key="dl_overlay",
                           file_name=dv.overlay_filename(label, res.method, model.classes, res.predicted, res.target))
    if res.flat:
        st.caption(f"The heatmap is empty: no region raised the score of {md(model.classes[res.target])}.")


# ---------------------------------------------------------------- can I trust this heatmap? (issue 16)

@st.cache_data(max_entries=64, show_spinner=False)
def faithfulness_of(run: str, mtime: int, root: str, digest: str, method: str, target: str | None,
                    _rad: predict.Radiograph) -> heatmaps.faithfulness.Faithfulness:
    """ROAD of one model's heatmap for one image (a few seconds: computed after everything else is drawn)."""
    model = load(run, mtime, root)
    res = diagnose(run, mtime, root, digest, method, target, _rad)
    return heatmaps.score(model, predict.prepare(model, _rad.grey), res, heatmaps.busy_threads(root))


def faithfulness_slot(run: str, mtime: int, root: str, rad: predict.Radiograph, method: str,
                      target: str | None) -> tuple:
    """A place beside a heatmap for its faithfulness line, filled by faithfulness_section at the end of the page."""
    return st.empty(), (run, mtime, root, rad.digest, method, target, rad)


def faithfulness_section(pending: list[tuple]) -> None:
    """Fill each heatmap's place with its faithfulness number and reading, one after the other."""
    for slot, args in pending:
        with slot.container():
            with st.spinner("Scoring the heatmap's faithfulness (ROAD: removes what it highlights)…"):
                with ui.friendly_errors("The faithfulness score"):
                    f = faithfulness_of(*args)
                    shown = dataclasses.replace(f, class_name=md(f.class_name))
                    st.caption(heatmaps.faithfulness_line(shown), help=FAITHFULNESS_HELP)


FAITHFULNESS_HELP = ("ROAD (Rong et al. 2022): the probability of the explained class after removing (and "
                     "filling in) the most highlighted 20% of the pixels, against removing the least highlighted "
                     "20%. Compared with 5 random heatmaps: a map only 'points at what the model uses' when it "
                     "beats them by more than their spread.")


def preselect_method(run: str, root: str) -> None:
    """Start with the scorecard's most faithful fast method when the chosen model has a scorecard (once per model)."""
    if st.session_state.get("method_for") == run:
        return
    st.session_state["method_for"] = run
    with ui.friendly_errors("Reading the CAM scorecard"):
        best = heatmaps.preselect(heatmaps.read_table(run_folder(run, root)), list(explain.CAM_METHODS))
        if best:
            st.session_state["method"] = best


def run_folder(run: str, root: str):
    """The folder of a run or of the demo model."""
    from cxrdemo.runs import store

    return store.run_dir(run, root)


def scorecard_section(run: str, root: str) -> None:
    """Which heatmap method is most faithful for this model: the table, and the job that computes it."""
    with st.expander("Which heatmap method is most faithful for this model? (CAM scorecard)"):
        heatmaps_ui.scorecard_panel(run_folder(run, root), run, root, key="diagnosis")


def sanity_section(run: str, mtime: int, root: str, model: predict.LoadedModel, rad: predict.Radiograph,
                   res: explain.Explanation) -> None:
    """Randomise and look again: the heatmap as the model's layers are re-initialised, head first (on a button)."""
    st.markdown("**Randomise and look again**")
    if res.method in heatmaps.STRIP_SKIPS:
        st.caption(f"{res.method} takes half a minute per map on this machine: choose another method to see how "
                   "its map changes as the model is destroyed.")
        return
    key = ("sanity", run, mtime, rad.digest, res.method, res.target)
    if st.button("Randomise and look again", key="sanity_button",
                 help="Re-initialises the model's layers from the head down (on a copy) and draws the heatmap "
                      "again after each step. A few seconds."):
        with st.spinner("Re-initialising the layers and drawing the maps…"), ui.friendly_errors("The sanity check"):
            st.session_state["sanity"] = (key, heatmaps.randomise(model, predict.prepare(model, rad.grey),
                                                                  res.method, res.target))
    saved = st.session_state.get("sanity")
    if not saved or saved[0] != key:
        st.caption("Would this map change if the model were destroyed? Re-initialise its layers, from the head "
                   "down, and look again.")
        return
    check = saved[1]
    images = heatmaps.strip(check, display_copy(rad.grey))
    for col, (img, caption) in zip(st.columns(len(images)), images):
        col.image(img, caption=caption, width="stretch", output_format="PNG")
    st.caption(check.sentence + " ρ: rank correlation with the original map; SSIM: structural similarity.")


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
        ui.model_card_expander(model.path, key="diagnosis")
with pick_image:
    source = image_source()
if model is None:
    st.stop()

preselect_method(run, root)
c1, c2, c3 = st.columns(3)
method = c1.selectbox("Heatmap method", list(explain.CAM_METHODS), key="method",
                      help="How the heatmap is computed. GradCAM is the usual choice.")
eta = expected_seconds(run, predict.model_mtime(run, root), root, method)
c1.caption(words.CAM_NOTES[method] + (f" About {max(1, round(eta))} s for this model on this machine."
                                      if eta is not None else ""))
target = c2.selectbox("Class to explain", [PREDICTED, *model.classes], key="target",
                      help="Which class the heatmap argues for: by default the one the model predicted.")
opacity = c3.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
scorecard_section(run, root)
coverage = st.radio("Prediction set coverage", list(dv.COVERAGE_CHOICES), horizontal=True, key="coverage",
                    help="How often the set should hold the true class, as measured on validation images: a higher "
                         "coverage answers 'both' more often.")
level = dv.COVERAGE_CHOICES[coverage]

if source is None:
    st.stop()
raw, name = source
rad = None
if isinstance(raw, predict.Radiograph):
    rad = raw
else:
    with ui.friendly_errors("Reading the image"):
        rad = dv.kept_copy(read(predict.digest(raw), name, raw))
        st.session_state[KEPT] = (name, rad)
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
    st.warning(rad.warning, icon=":material/warning:")
if a.in_domain is False:  # the features say what the pixels' statistics could not: unlike the training images
    st.warning(a.domain_sentence, icon=":material/explore_off:")
if not rad.looks_like_cxr or a.in_domain is False:
    # one acknowledgement per image: a second odd image is not run on the first one's say-so
    if not st.checkbox("I understand: run the model on this image anyway", key=f"run_anyway_{rad.digest[:16]}"):
        st.stop()

key_target = None if target == PREDICTED else target
res = None
result = st.empty()  # replaces the previous overlay at once: nothing stale stays on screen while this computes
with result.container(), ui.friendly_errors("The prediction"):
    with st.spinner(dv.wait_text(method, eta)):
        res = diagnose(run, predict.model_mtime(run, root), root, rad.digest, method, key_target, rad)
    show_result(label, model, rad, res, a, opacity, full=True)
pending = []
if res is not None:
    pending.append(faithfulness_slot(run, predict.model_mtime(run, root), root, rad, method, key_target))
    with ui.friendly_errors("The sanity check"):
        sanity_section(run, predict.model_mtime(run, root), root, model, rad, res)

st.subheader("Compare models on this image")
candidates = [lb for lb in labels if lb != label]
others = st.multiselect("Other models", candidates, max_selections=MAX_COMPARE, key="compare",
                        placeholder="Choose up to 4 models" if candidates else "Train a model first (Trainer page)",
                        disabled=not candidates)
if others:
    shown, loaded = [label, *others], {}
    # two rows: every model's name and numbers, then every model's result, so that the images line up
    for col, lb in zip(st.columns(len(shown)), shown):
        with col, ui.friendly_errors("This model"):
            st.markdown(f"**{md(lb)}**")
            loaded[lb] = load(choices[lb], predict.model_mtime(choices[lb], root), root)
            headline_numbers(loaded[lb], compact=True)
    for col, lb in zip(st.columns(len(shown)), shown):
        if lb not in loaded:
            continue
        with col, ui.friendly_errors("This model"):
            r, mt = choices[lb], predict.model_mtime(choices[lb], root)
            with st.spinner(dv.wait_text(method, expected_seconds(r, mt, root, method))):
                res_other = diagnose(r, mt, root, rad.digest, method, key_target, rad)
            show_result(lb, loaded[lb], rad, res_other, assess(r, mt, root, rad.digest, level, rad), opacity, False)
            pending.append(faithfulness_slot(r, mt, root, rad, method, key_target))
    st.caption(dv.COMPARE_NOTE)

faithfulness_section(pending)  # last: the prediction and heatmaps are on screen while it scores
