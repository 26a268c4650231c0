"""Compare-page sections for watching runs learn: seeds, the probe timelapse, the error gallery, paired intervals.

Layout only: every number and figure comes from cxrdemo.views (seeds, timelapse, gallery, checks) and model.paired.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cxrdemo.errors import RunError
from cxrdemo.model import paired, predictions
from cxrdemo.runs import store as runs
from cxrdemo.views import checks, gallery, numbers, seeds, timelapse, words
from cxrdemo.views.text import escape_markdown
from app_pages import ui

GALLERY_SHOWN = 8


def seeds_section(infos: list[runs.RunInfo], table) -> None:
    """Runs that differ only in seed: mean ± sd per recipe, and the mean validation curve with a band."""
    groups = seeds.seed_groups(infos)
    if not groups:
        return
    st.subheader("Same recipe, several seeds")
    st.caption("Each row gathers runs whose settings differ only in their seed: the spread shows how much of a "
               "difference between recipes could be luck.")
    st.dataframe(seeds.seed_table(table, groups), hide_index=True, key="seed_table")
    st.plotly_chart(seeds.band_figure(groups, "val_acc"), key="seed_bands")


def timelapse_section(infos: dict[str, runs.RunInfo], chosen_ids: list[str], colors: dict[str, str]) -> None:
    """Probe images of up to three runs, epoch by epoch (a plotly slider: no rerun)."""
    st.subheader("Watch them learn")
    with ui.friendly_errors("Reading the probe images"):
        dirs = {r: infos[r].path for r in chosen_ids}
        available = _timelines(tuple((r, str(d)) for r, d in dirs.items()), timelapse.stamp(dirs))
        if not available:
            st.info("None of the chosen runs kept probe images (they were trained before probes existed, or with "
                    "probes set to 0).")
            return
        shown = st.multiselect("Runs side by side (up to three)", list(available), default=list(available)[:3],
                               max_selections=timelapse.MAX_RUNS, key="probe_runs",
                               format_func=lambda r: words.run_name(r, infos[r].example))
        if not shown:
            return
        picked = {r: dirs[r] for r in shown}
        names = tuple(zip(picked, words.run_names(list(picked), [infos[r].example for r in picked])))
        timeline_fig, probability_fig = _figures(tuple((r, str(d)) for r, d in picked.items()),
                                                 timelapse.stamp(picked), tuple(sorted(colors.items())), names)
        st.caption("Each image is a validation image the run followed: the heatmap shows where the model looked "
                   "for the class it predicted, the label the probability it gave the true class. Move the slider "
                   "or press play.")
        st.plotly_chart(timeline_fig, key="probe_timelapse")
        st.plotly_chart(probability_fig, key="probe_probs")


# Every rerun of Compare (each widget touched) would re-read the probe files and re-encode every thumbnail of the
# timelapse: cached on the runs and their newest probe file, so only a new epoch draws it again.
@st.cache_data(max_entries=16, show_spinner=False)
def _timelines(run_dirs: tuple[tuple[str, str], ...], stamp: tuple[int, ...]) -> dict:
    return timelapse.read_timelines({r: Path(d) for r, d in run_dirs})


@st.cache_data(max_entries=16, show_spinner="Drawing the probe images…")
def _figures(run_dirs: tuple[tuple[str, str], ...], stamp: tuple[int, ...], colors: tuple[tuple[str, str], ...],
             names: tuple[tuple[str, str], ...] = ()):
    picked = _timelines(run_dirs, stamp)
    return (timelapse.timelapse_figure(picked, names=dict(names)),
            timelapse.probability_figure(picked, dict(colors), dict(names)))


def gallery_tab(info: runs.RunInfo) -> bool:
    """The confusion matrix as clickable cells; a chosen cell opens its test images. False: no per-image file."""
    try:
        preds = predictions.read(info.path / predictions.FILE)
    except RunError:
        return False
    event = st.plotly_chart(gallery.confusion_markers_figure(preds), key=f"cm_markers_{info.run_id}",
                            on_select="rerun", selection_mode="points")
    cell = gallery.selected_cell(event.selection.points if event else [])
    if cell is None:
        st.caption("Click a cell to see its test images.")
        return True
    rows = gallery.cell_images(preds, *cell)
    st.markdown(escape_markdown(gallery.cell_caption(preds, *cell, len(rows))))
    st.caption(gallery.probability_note(preds))
    root = gallery.data_root(info.config.get("data"))
    show_maps = st.toggle("Show heatmaps", key=f"gallery_maps_{info.run_id}",
                          help="Computed now from the run's model; needs the dataset on this machine.")
    cols = st.columns(4)
    for n, row in enumerate(rows.head(GALLERY_SHOWN).itertuples()):
        with cols[n % 4]:
            path = gallery.image_file(root, row.image, row.hash)
            caption = escape_markdown(f"{row.image} · p({row.predicted_class}) = {numbers.percent(row.p_predicted)}")
            if path is None:
                st.caption(caption + " (image not on this machine)")
            elif show_maps:
                with ui.friendly_errors("Drawing the heatmap"):
                    st.image(gallery.heatmap_png(info.path, path), caption=caption)
            else:
                st.image(str(path), caption=caption)
    st.dataframe(rows, hide_index=True, key=f"gallery_table_{info.run_id}")
    return True


def paired_section(infos: dict[str, runs.RunInfo], chosen_ids: list[str]) -> None:
    """Is B better than A? Paired bootstrap intervals on their common test images."""
    with_preds = [r for r in chosen_ids if (infos[r].path / predictions.FILE).is_file()]
    if len(with_preds) < 2:
        return
    st.subheader("Is the difference real?")
    a_col, b_col = st.columns(2)
    def name(r: str) -> str:
        return words.run_name(r, infos[r].example)

    a = a_col.selectbox("Run A", with_preds, index=0, key="paired_a", format_func=name)
    b = b_col.selectbox("Run B", with_preds, index=1, key="paired_b", format_func=name)
    if a == b:
        st.info("Choose two different runs.")
        return
    with ui.friendly_errors("Comparing the two runs"):
        files = [infos[r].path / predictions.FILE for r in (a, b)]
        try:
            result = _compare(*(str(f) for f in files), *(f.stat().st_mtime_ns for f in files))
        except paired.NotPairable as exc:  # a fact about the two runs chosen, not something that went wrong
            st.info(str(exc), icon=":material/info:")
            return
        for d in result.differences:
            st.markdown("- " + checks.difference_sentence(d, result.n, escape_markdown(name(a)), escape_markdown(name(b))))
        if result.unmatched:
            st.caption(f"{result.unmatched} test image(s) were seen by one run only and are left out.")


@st.cache_data(max_entries=32, show_spinner="Resampling the test images…")
def _compare(file_a: str, file_b: str, _mtime_a: int, _mtime_b: int) -> paired.Comparison:
    return paired.compare(predictions.read(file_a), predictions.read(file_b))


def probe_strip(run_id: str, path) -> None:
    """The Trainer's live strip: the probe images after the latest finished epoch."""
    with ui.friendly_errors("Reading the probe images"):
        found = timelapse.read_timelines({run_id: path})
        if found:
            st.plotly_chart(timelapse.timelapse_figure(found, animate=False), key=f"probes-{run_id}")
