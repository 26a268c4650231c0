"""Widgets and messages shared by every page (layout only: all logic is in cxrdemo)."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import streamlit as st
from streamlit import config as st_config
from streamlit.errors import StreamlitAPIException

from cxrdemo import paths
from cxrdemo.errors import CxrError
from cxrdemo.views import classroom as cls
from cxrdemo.views import model_card
from cxrdemo.views.text import escape_markdown
from cxrdemo.views.words import NOTICE

log = logging.getLogger("cxrdemo.app")


def notice() -> None:
    """The not-for-clinical-use banner; every page also keeps this browser's id in its address (a reload on any
    page then finds this browser's last Trainer recipe)."""
    st.warning(NOTICE, icon=":material/warning:")
    browser_id()


@contextlib.contextmanager
def friendly_errors(what: str = "That") -> Iterator[None]:
    """Show CxrError messages as they are and any other failure as a sentence; never a traceback."""
    try:
        yield
    except cls.Refused as exc:  # the classroom policy at the queue: a code and numbers, worded here
        st.error(cls.refusal_words(exc.refusal), icon=":material/block:")
    except CxrError as exc:  # its words may hold folder and class names: shown as text, never as Markdown
        st.error(escape_markdown(str(exc)), icon=":material/error:")
    except Exception:  # noqa: BLE001 - the page must keep working; details go to the console log
        log.exception("unexpected error")
        st.error(f"{what} did not work because of an unexpected problem. The details were written to the app's "
                 "console; the rest of the app keeps working.", icon=":material/error:")


_COLUMN_KINDS = {"text": st.column_config.TextColumn, "number": st.column_config.NumberColumn,
                 "checkbox": st.column_config.CheckboxColumn, "datetime": st.column_config.DatetimeColumn}


def column_config(specs: dict[str, dict]) -> dict:
    """Streamlit's column configuration for plain column specs (views: kind, label, help, format, width, pinned)."""
    return {name: _COLUMN_KINDS[spec["kind"]](**{k: v for k, v in spec.items() if k != "kind"})
            for name, spec in specs.items()}


def run_link(page: str, label: str, icon: str, run_id: str) -> None:
    """A page link carrying the run id (?run=); a caption when the page runs on its own (no router)."""
    if not page_link(page, label, icon, query_params={"run": run_id}):
        st.caption(f"{icon} {label}: open it from the app's sidebar.")


def kept_toggle(label: str, key: str, default: bool, **kwargs) -> bool:
    """A toggle that keeps this session's choice across page switches (Streamlit forgets hidden pages' widgets)."""
    value = st.toggle(label, key=key, value=bool(st.session_state.get(f"keep:{key}", default)), **kwargs)
    st.session_state[f"keep:{key}"] = value
    return value


def page_link(page: str, label: str, icon: str, **kwargs) -> bool:
    """A link to another page; False (and nothing shown) when this page runs on its own, without the router."""
    try:
        st.page_link(page, label=label, icon=icon, **kwargs)
    except StreamlitAPIException:
        return False
    return True


def runs_dir():
    """The run store every page reads."""
    return paths.runs_dir()


def _secret_passphrase() -> str | None:
    try:
        value = st.secrets.get(cls.PASSPHRASE_SECRET)
    except FileNotFoundError:  # no secrets.toml: the passphrase may come from the environment instead
        return None
    return str(value) if value else None


def classroom() -> cls.Classroom:
    """This page view's classroom policy (off when the server is bound to loopback): the teacher when this browser's
    signed unlock holds (teacher_box, in the sidebar of every page), else a student."""
    address = st_config.get_option("server.address")
    tag = cls.browser_tag(browser_id())
    policy = cls.classroom(address, browser=tag)
    if not policy.on:
        return policy
    return cls.classroom(address, browser=tag, unlocked=_unlocked(tag))


def _passphrase() -> str:
    return cls.teacher_passphrase(_secret_passphrase())


def _token() -> str | None:
    """This browser's unlock: this session's, else the one in the address (a reload)."""
    return st.session_state.get(_TOKEN_KEY) or st.query_params.get(cls.TOKEN_PARAM)


def _ip() -> str:
    ip = st.context.ip_address
    return ip if isinstance(ip, str) else ""  # None without a browser connection (and in AppTest)


def _holder(tag: str) -> str:
    # The unlock is signed for this browser on this machine: an address copied from the projector to another
    # computer does not carry it.
    return f"{tag}@{_ip()}"


def _unlocked(tag: str) -> bool:
    return cls.token_valid(_token(), _passphrase(), _holder(tag))


_TOKEN_KEY, _MESSAGE_KEY = "teacher_token", "teacher_message"


def _try_passphrase() -> None:
    """on_change of the passphrase box: unlock for this browser, or count a wrong try (rate-limited, logged)."""
    given = st.session_state.get("teacher_passphrase", "")
    st.session_state["teacher_passphrase"] = ""  # the passphrase never stays in the page
    tag = cls.browser_tag(browser_id())
    who = _ip() or tag  # another browser id from the same machine does not reset the count
    wait = cls.TRIES.wait_s(who)
    if wait:
        st.session_state[_MESSAGE_KEY] = cls.tries_words(wait)
    elif cls.check_passphrase(given, _passphrase()):
        st.session_state[_TOKEN_KEY] = cls.teacher_token(_passphrase(), _holder(tag))
    elif given:
        cls.TRIES.failed(who)
        st.session_state[_MESSAGE_KEY] = "That is not the teacher passphrase."


def _lock() -> None:
    st.session_state.pop(_TOKEN_KEY, None)
    st.query_params.pop(cls.TOKEN_PARAM, None)


def teacher_box() -> None:
    """The sidebar's classroom corner (the router draws it on every page): the teacher badge and Lock, else the
    passphrase box. The unlock is kept in this session and, signed and expiring, in the address for a reload."""
    if not cls.is_networked(st_config.get_option("server.address")):
        return
    tag = cls.browser_tag(browser_id())
    with st.sidebar:
        if _unlocked(tag):
            token = _token()
            st.session_state[_TOKEN_KEY] = token
            if st.query_params.get(cls.TOKEN_PARAM) != token:
                st.query_params[cls.TOKEN_PARAM] = token
            st.success("**Teacher** · classroom limits lifted in this browser.", icon=":material/lock_open:")
            st.button("Lock", key="teacher_lock", icon=":material/lock:", on_click=_lock,
                      help="Back to the student's view in this browser (do it before you leave the computer).")
            return
        _lock()  # an expired or foreign unlock is dropped
        st.caption(":material/school: Classroom mode: this app is reachable from the network.")
        st.text_input("Teacher passphrase", type="password", key="teacher_passphrase", on_change=_try_passphrase,
                      help="Unlocks folder paths, deleting runs and larger jobs in this browser until you lock it.")
        if msg := st.session_state.pop(_MESSAGE_KEY, None):
            st.error(msg, icon=":material/lock:")


def browser_id() -> str:
    """A random id for this browser, kept in the address (?sid=) so that a reload keeps it."""
    sid = st.session_state.get("browser_id") or st.query_params.get("sid")
    if not cls.valid_browser_id(sid):
        sid = cls.new_browser_id()
    st.session_state["browser_id"] = sid
    if st.query_params.get("sid") != sid:
        st.query_params["sid"] = sid
    return sid


@st.cache_data(max_entries=32, show_spinner="Writing the model card…")
def _model_card(run_dir: str, stamp: tuple, roots: tuple | None = None) -> str:
    """A run's model card, made once per version of its files (stamp); `roots`: a classroom's (views/host_paths)."""
    return model_card.model_card(run_dir, roots=roots)


def model_card_expander(run_dir, key: str, title: str = "Model card") -> None:
    """A collapsed 'Model card' expander for one run folder: the card as Markdown and its .md download."""
    with st.expander(title, icon=":material/description:"), friendly_errors("The model card"):
        text = _model_card(str(run_dir), model_card.card_stamp(run_dir), classroom().shown_roots)
        st.download_button("Download the model card (Markdown)", text, model_card.card_file_name(run_dir),
                           "text/markdown", key=f"dl_card_{key}", on_click="ignore")
        st.markdown(text)


def model_cards_section(infos: list) -> None:
    """One model-card expander per completed run among `infos` (RunInfo), the others named in a caption."""
    done = [i for i in infos if i.state == "completed"]
    if not done:
        return
    st.subheader("Model cards")
    for info in done:
        model_card_expander(info.path, key=f"{info.run_id}", title=f"Model card — {info.run_id}")
    rest = [i.run_id for i in infos if i.state != "completed"]
    if rest:
        st.caption("No model card until a run has completed: " + ", ".join(rest))
