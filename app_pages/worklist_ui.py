"""Diagnosis's worklist: several films (files, a folder or the built-in example worklist) read one at a time with a
progress bar, a table with the films that need a look first, a click that opens one film in the single view
below, CSV / JSON exports and the PDF report; and the one-film report button."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitAPIException

from cxrdemo import paths
from cxrdemo.diagnosis import explain, pointing, predict, result, worklist
from cxrdemo.views import heatmaps, report, report_pdf
from cxrdemo.views import worklist as wv
from app_pages import ui, viewer

FILMS = "worklist:films"  # {"key": (run, model version), "films": {digest: Film}}: read once per model
PDF_MIME = "application/pdf"


def wanted() -> bool:
    """The page's choice between one film and a worklist."""
    return st.radio("Films", wv.MODES, horizontal=True, key="worklist_mode",
                    label_visibility="collapsed") == wv.MODES[1]


def _uploader(kind: str):
    mode = "directory" if kind == "A folder" else True
    try:
        return st.file_uploader(wv.UPLOAD_LABEL[kind], accept_multiple_files=mode, key=f"worklist_upload_{kind}",
                                help=wv.UPLOAD_HELP)
    except (StreamlitAPIException, TypeError):  # a Streamlit without folder upload
        st.caption(wv.NO_FOLDER)
        return st.file_uploader(wv.UPLOAD_LABEL["Files"], accept_multiple_files=True, key="worklist_upload_Files",
                                help=wv.UPLOAD_HELP)


def sources() -> list[worklist.Source]:
    """The files chosen: uploads (files or a folder; hidden files left out), else the built-in example worklist."""
    kind = st.radio("Upload", wv.UPLOAD_KINDS, horizontal=True, key="worklist_kind", label_visibility="collapsed")
    ups = [u for u in (_uploader(kind) or []) if not Path(u.name).name.startswith(".")]
    if ups:
        return [(u.name, u.getvalue()) for u in ups]
    if st.toggle(wv.EXAMPLE_LABEL, key="worklist_example"):
        return worklist.folder_sources(paths.EXAMPLES_DIR)
    return []


def _films(model: predict.LoadedModel, run: str, root: str, items: list[worklist.Source]) -> list[worklist.Film]:
    """Every film of `items`, read once per model and content (kept in this session); a progress bar and the
    table so far while new ones are read."""
    key = (run, predict.model_mtime(run, root))  # a retrained model reads every film again
    kept = st.session_state.get(FILMS)
    if kept is None or kept["key"] != key:
        kept = st.session_state[FILMS] = {"key": key, "films": {}}
    known: dict = kept["films"]
    bar, live = st.empty(), st.empty()
    done: list[worklist.Film] = []

    def show(i: int, n: int, f: worklist.Film) -> None:
        fresh = f.digest not in known
        if f.digest:  # an unreadable file too: the same bytes give the same sentence
            known[f.digest] = f
        done.append(f)
        if fresh and i < n:  # only while new films are read: a rerun of a read worklist draws nothing here
            bar.progress(i / n, text=wv.progress_text(i, n, f))
            if i % 5 == 0:
                live.dataframe(wv.table(wv.ordered(done), thumbnails=False), hide_index=True)

    films = list(worklist.iter_films(model, items, progress=show, known=known,
                                     threads=heatmaps.busy_threads(root)))
    bar.empty()
    live.empty()
    current = {f.digest for f in films}
    for d in [d for d in known if d not in current]:  # memory stays bounded by the files now chosen
        del known[d]
    return films


def section(model: predict.LoadedModel, label: str, run: str, root: str, items: list[worklist.Source],
            level: float, method: str) -> tuple[bytes, str] | None:
    """The worklist table; the chosen row's file as the page's source (bytes, name), or None."""
    with ui.friendly_errors("The worklist"):
        return _section(model, label, run, root, items, level, method)
    return None


def user_marks() -> dict[str, pointing.Mark]:
    """The boxes drawn in the single view's viewer, per content hash (a copy: the downloads read it later)."""
    return dict(viewer.marks())


def _section(model: predict.LoadedModel, label: str, run: str, root: str, items: list[worklist.Source],
             level: float, method: str) -> tuple[bytes, str] | None:
    if not items:
        st.info(wv.EMPTY)
        return None
    films = _films(model, run, root, items)
    marks = user_marks()
    st.subheader("Worklist")
    st.caption(wv.summary(films, len(items)))
    order = st.selectbox("Order", wv.ORDERS, key="worklist_order")
    shown = wv.ordered(films, order)
    df = wv.table(shown, level, marks)
    # the selection belongs to this order of these films: another order or list starts with none selected
    key = "worklist_table_" + hashlib.sha256(repr((order, [f.digest for f in shown])).encode()).hexdigest()[:12]
    event = st.dataframe(df, hide_index=True, on_select="rerun", selection_mode="single-row", key=key,
                         column_config={wv.THUMB: st.column_config.ImageColumn(wv.THUMB, width="small")})
    st.caption(wv.TABLE_HELP)
    _downloads(model, label, films, marks, level, method)
    rows = event.selection.rows if event is not None else []
    if not rows:
        return None
    chosen = shown[rows[0]]
    name, src = items[chosen.index]
    return (src if isinstance(src, bytes) else Path(src).read_bytes()), Path(str(name)).name


def _downloads(model, label: str, films: list[worklist.Film], marks: dict, level: float, method: str) -> None:
    """CSV, JSON and the PDF report of the whole worklist (each made when its button is clicked)."""
    used = report.report_method(method)
    c1, c2, c3 = st.columns(3)
    c1.download_button("Download the table (CSV)", data=lambda: wv.to_csv(films, marks), mime="text/csv",
                       file_name="cxrdemo-worklist-NOT-FOR-CLINICAL-USE.csv", on_click="ignore", key="worklist_csv")
    c2.download_button("Download the table (JSON)", data=lambda: wv.to_json(films, marks), mime="application/json",
                       file_name="cxrdemo-worklist-NOT-FOR-CLINICAL-USE.json", on_click="ignore",
                       key="worklist_json")
    c3.download_button("Download report (PDF)", data=lambda: report_pdf.write(report.build(
                           model, films, label=label, method=used, level=level, marks=marks)),
                       mime=PDF_MIME, file_name=report.file_name(), on_click="ignore",
                       key="worklist_pdf", help=wv.report_note(method, used))


def one_report(model: predict.LoadedModel, label: str, rad: predict.Radiograph, res: result.ImageResult,
               heat: explain.Heatmap, level: float) -> None:
    """'Download report (PDF)' for the film on screen: its page with the heatmap shown and the faithfulness
    reading (a few seconds, when clicked)."""
    marks = user_marks()
    st.download_button("Download report (PDF)", data=lambda: report_pdf.write(report.build(
                           model, [worklist.film_of(rad, res)], label=label, method=heat.method, level=level,
                           faithfulness=True, marks=marks, heatmaps={rad.digest: heat})),
                       mime=PDF_MIME, on_click="ignore", key="one_report_pdf",
                       file_name=report.file_name(rad.name))
