"""The fifth lesson's tab on the Lessons page: one adult film read by the demo model three ways (no training job).
The film is pydicom-data's RG1 when installed, else one the user uploads (kept in memory only)."""

from __future__ import annotations

import streamlit as st

from cxrdemo import paths
from cxrdemo.data.shrink import display_copy
from cxrdemo.diagnosis import adult_film, predict
from cxrdemo.model.files import has_model
from cxrdemo.views import adult_lesson as al
from app_pages import film, ui

RUN = "demo"


@st.cache_data(max_entries=2, show_spinner="Reading the film…")
def sample() -> predict.Radiograph | None:
    """pydicom-data's adult film, read once (None when the package is not installed)."""
    path = adult_film.sample_film()
    return None if path is None else predict.read_radiograph(path, path.name)


@st.cache_data(max_entries=8, show_spinner="Reading the film with the model…")
def reading(mtime: int, root: str, digest: str, stated_age: float | None,
            _rad: predict.Radiograph) -> adult_film.AdultReading:
    """The film's two readings by the demo model (cached per model version, film and stated age)."""
    return adult_film.read_adult_film(film.load(RUN, mtime, root), _rad, stated_age)


def show(root) -> None:
    """Narrative, the film's source, the three readings, what intended use means, what to look for."""
    st.markdown(al.NARRATIVE)
    if not has_model(paths.demo_run_dir()):  # an installation without the shipped model: say so, calmly
        st.info("This lesson reads films with the shipped demo model, which this installation does not have "
                "(`weights/demo/`).")
        return
    rad = sample()
    st.markdown(al.source_words(rad is not None))
    stated_age = None
    if rad is None:
        up = st.file_uploader("An adult chest film (DICOM, PNG or JPEG)", key="adult-lesson-upload")
        stated_age = st.number_input("Patient's age in years (used when the file has no header age)", min_value=0.0,
                                     max_value=130.0, value=None, step=1.0, key="adult-lesson-age")
        if up is None:
            return
        with ui.friendly_errors("Reading the film"):
            rad = film.read(predict.digest(up.getvalue()), up.name, up.getvalue())
    with ui.friendly_errors("Reading the film with the demo model"):
        model = film.model_for(RUN, str(root))
        r = reading(predict.model_mtime(RUN, str(root)), str(root), rad.digest, stated_age, rad)
        left, right = st.columns([1, 2])
        left.image(display_copy(rad.grey), caption="The film the model reads", clamp=True)
        with right:
            st.markdown(al.pixels_only_words(model, r))
            st.markdown(al.with_age_words(model, r))
            st.markdown(al.distance_words(model, r))
        fig = al.distance_figure(r)
        if fig is not None:
            st.plotly_chart(fig, key="adult-lesson-distances")
    st.markdown(al.INTENDED_USE)
    st.markdown("**What to look for**\n\n" + "\n".join(f"- {p}" for p in al.LOOK_FOR))
