"""One film's view, read off its one result: the cached model, result and heatmap, the verdict, the bar, the
prediction set, the checks, the image and its overlay, the download. Used by Diagnosis (one model or several)."""

from __future__ import annotations

import dataclasses

import streamlit as st

from cxrdemo.data.shrink import display_copy
from cxrdemo.diagnosis import cam_cost, explain, predict, result
from cxrdemo.views import diagnosis as dv
from cxrdemo.views import plots
from cxrdemo.views import population as pv
from cxrdemo.views.text import escape_markdown as md
from app_pages import slow_maps


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def load(run: str, mtime: int, root: str) -> predict.LoadedModel:
    """A model, loaded once per run and model.pt version (mtime is part of the key)."""
    return predict.load_model(run, root)


def model_for(run: str, root: str) -> predict.LoadedModel:
    """The cached model of `run` as its model.pt is now."""
    return load(run, predict.model_mtime(run, root), root)


@st.cache_data(max_entries=4, show_spinner="Reading the image…")
def read(digest: str, name: str, _raw: bytes) -> predict.Radiograph:
    """The upload read in memory, once per content (digest): bytes are never written to disk."""
    return predict.read_radiograph(_raw, name)


@st.cache_data(max_entries=32, show_spinner="Reading the film with the model…")
def answer(run: str, mtime: int, root: str, digest: str, stated_age: float | None,
           _rad: predict.Radiograph) -> result.ImageResult:
    """The one result of one model for one image: every number shown for it comes from here."""
    return result.assess(load(run, mtime, root), _rad, stated_age=stated_age)


def result_for(run: str, root: str, rad: predict.Radiograph, stated_age: float | None = None) -> result.ImageResult:
    """The cached result of `run` for `rad` (`stated_age`: the patient's age the user typed, if any)."""
    return answer(run, predict.model_mtime(run, root), root, rad.digest, stated_age, rad)


@st.cache_data(max_entries=32, show_spinner=False)
def heat(run: str, mtime: int, root: str, digest: str, method: str, target: str | None,
         _res: result.ImageResult) -> explain.Heatmap:
    """The heatmap of one result; a slider move reuses it."""
    model = load(run, mtime, root)
    k = model.classes.index(target) if target in model.classes else None
    return explain.heatmap(model, _res, method, k)


def heatmap_for(run: str, root: str, rad: predict.Radiograph, method: str, target: str | None,
                res: result.ImageResult) -> explain.Heatmap:
    """The cached heatmap of `res` (a slow method shows its progress as it is made)."""
    if method in cam_cost.SLOW_METHODS:
        return slow_maps.heatmap(run, root, model_for(run, root), rad, method, target, res)
    mtime = predict.model_mtime(run, root)
    with st.spinner(dv.wait_text(method, None)):
        return heat(run, mtime, root, rad.digest, method, target, res)


def shown(model: predict.LoadedModel) -> predict.LoadedModel:
    """The model with its class names escaped for Markdown (they are folder names)."""
    return dataclasses.replace(model, classes=tuple(md(c) for c in model.classes))


def escaped(res: result.ImageResult) -> result.ImageResult:
    """The result with its class names escaped for Markdown."""
    return dataclasses.replace(res, classes=tuple(md(c) for c in res.classes))


def verdict(model: predict.LoadedModel, res: result.ImageResult, level: float, full: bool) -> None:
    """The decision sentence, the probability bar (full view), the prediction set and the in-domain line."""
    r = escaped(res)
    st.markdown(dv.decision_sentence(shown(model), r))
    if full:
        st.plotly_chart(plots.probability_figure(model.classes, res.probs, res.predicted, res.threshold),
                        key="probs")
    st.markdown(dv.set_sentence(r, level, model.run_id))
    if res.in_domain:
        st.caption(dv.domain_words(model, res))
    if res.population is not None and res.population.in_population is not False:  # False: warned above
        st.caption(md(pv.population_reason(res.population)))


def checks(model: predict.LoadedModel, rad: predict.Radiograph, res: result.ImageResult) -> bool:
    """The checks' warnings and the 'run anyway' gate, with the film shown (a radiologist judges the warning by
    looking at it); True when the page may go on."""
    if res.population is not None and res.population.in_population is False:
        st.warning(md(pv.population_reason(res.population)), icon=":material/person_off:")
    if not res.looks_like_cxr:
        st.warning(res.quality_warning, icon=":material/warning:")
    if res.in_domain is False:  # the features say what the pixels' statistics could not: unlike the training images
        st.warning(dv.domain_words(model, res), icon=":material/explore_off:")
    if not res.flagged:
        return True
    st.image(display_copy(rad.grey), caption="The image as read", clamp=True, width=360, output_format="PNG")
    # one acknowledgement per image: a second odd image is not run on the first one's say-so
    return st.checkbox("I understand: run the model on this image anyway",
                       key=f"run_anyway_{rad.digest[:16]}")


def images(label: str, model: predict.LoadedModel, rad: predict.Radiograph, res: result.ImageResult,
           hm: explain.Heatmap, level: float, opacity: float, full: bool, pictures: bool = True) -> None:
    """The image and its overlay (full view) or the overlay alone (a comparison column), and the download
    (`pictures` False: the viewer shows the film, only the download and notes follow)."""
    grey = display_copy(rad.grey)  # the browser gets at most 1024 px: the networks saw 299 at most
    ov = explain.overlay(grey, hm.cam, opacity)
    what = dv.heatmap_caption(hm.method, [md(c) for c in model.classes], res.probs, res.predicted, hm.target,
                              hm.class_specific)
    if not full:
        st.image(ov, caption=what, width="stretch", output_format="PNG")
        return
    if pictures:
        left, right = st.columns(2)
        left.image(grey, caption="The image as read", clamp=True, width="stretch", output_format="PNG")
        right.image(ov, caption=what, width="stretch", output_format="PNG")
    else:
        st.caption(what)
    footer = dv.overlay_footer(label, res, hm.method, hm.target, level)
    st.download_button("Download the overlay (PNG)", data=lambda: explain.to_png_bytes(dv.with_footer(ov, footer)),
                       mime="image/png", on_click="ignore", key="dl_overlay",
                       file_name=dv.overlay_filename(label, hm.method, model.classes, res.predicted, hm.target))
    if hm.flat:
        st.caption(f"The heatmap is empty: no region raised the score of {md(model.classes[hm.target])}.")


def headline_numbers(model: predict.LoadedModel, compact: bool) -> None:
    """How good the model is: its most shifted evaluation set first (the honest headline), then in-distribution,
    with 95% intervals, as lines that stay readable in a narrow column; a warning when it does no better than
    chance."""
    hs = predict.model_summary(model)["headlines"]
    if not hs:
        st.caption("This model has no test results.")
    for h in hs:
        title = dv.headline_title({**h, "set": md(h["set"])})  # a folder name is not Markdown
        lines = [f"{lbl} {v}" for lbl, v in dv.headline_cells(h, [md(c) for c in model.classes])]
        body = ("  \n" if compact else " · ").join(lines)
        st.markdown(f"**{title}**  \n{body}", help=md(dv.headline_sentence(h))
                    + (" 95% intervals in brackets." if h["ci95"] else ""))
    chance = dv.model_chance(model)
    if chance:
        st.warning(f"This model {md(chance)}.", icon=":material/warning:")
