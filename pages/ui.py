"""Widgets and messages shared by every page (layout only: all logic is in cxrdemo)."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import streamlit as st

from cxrdemo import paths
from cxrdemo.errors import CxrError
from cxrdemo.runs import store as runs

NOTICE = ("**Research and teaching demo — not for clinical use.** Predictions and heatmaps are not a diagnosis "
          "and must not guide patient care.")
log = logging.getLogger("cxrdemo.app")


def notice() -> None:
    """The not-for-clinical-use banner."""
    st.warning(NOTICE, icon=":material/warning:")


@contextlib.contextmanager
def friendly_errors(what: str = "That") -> Iterator[None]:
    """Show CxrError messages as they are and any other failure as a sentence; never a traceback."""
    try:
        yield
    except CxrError as exc:
        st.error(str(exc), icon=":material/error:")
    except Exception:  # noqa: BLE001 - the page must keep working; details go to the console log
        log.exception("unexpected error")
        st.error(f"{what} did not work because of an unexpected problem. The details were written to the app's "
                 "console; the rest of the app keeps working.", icon=":material/error:")


def runs_dir():
    """The run store every page reads."""
    return paths.runs_dir()


def model_choices() -> dict[str, str]:
    """Label -> run reference for every model that can predict: the demo model first, then completed runs."""
    choices: dict[str, str] = {}
    if (paths.demo_run_dir() / "model.pt").is_file():
        choices["Demo model (shipped)"] = paths.DEMO_RUN_NAME
    for info in reversed(runs.list_runs(runs_dir())):
        if info.state == "completed" and (info.path / "model.pt").is_file():
            c = info.config
            choices[f"{info.run_id} ({c.get('backbone')}, {c.get('init')}, freeze {c.get('freeze')})"] = info.run_id
    return choices
