"""Widgets and messages shared by every page (layout only: all logic is in cxrdemo)."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import streamlit as st

from cxrdemo import paths
from cxrdemo.errors import CxrError
from cxrdemo.views.words import NOTICE

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
