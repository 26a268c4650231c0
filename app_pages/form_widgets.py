"""The Trainer form's widgets, kept across page switches (layout only: the form's specs come from cxrdemo)."""

from __future__ import annotations

from typing import Callable

import streamlit as st

from cxrdemo.views import trainer_form as form

KEEP = "trainer:"  # non-widget copies: Streamlit forgets the widgets of a page that is not shown
SPECS = {spec.name: spec for spec in form.widget_specs()}


def kept(key: str, options=None) -> bool:
    """Put back this session's value of widget `key` (if still a valid choice); True when the widget has one."""
    if key not in st.session_state and KEEP + key in st.session_state:
        st.session_state[key] = st.session_state[KEEP + key]
    if options is not None and key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]
    return key in st.session_state


def keep(key: str, value):
    """Remember a widget's value for this session (across page switches); returns it."""
    st.session_state[KEEP + key] = value
    return value


def restore(values: Callable[[], dict]) -> None:
    """Start a new browser session (a reload) from the widget values `values()` gives, once per session."""
    if st.session_state.get(KEEP + "restored"):
        return
    st.session_state[KEEP + "restored"] = True
    for key, value in values().items():
        st.session_state.setdefault(KEEP + key, value)


def choice(where, name: str, options: list, default, **kwargs):
    """A kept selectbox for declared option `name` (`default` until this session chose)."""
    index = 0 if kept(name, options) else options.index(default)
    return keep(name, where.selectbox(SPECS[name].label, options, index=index, key=name, **kwargs))


def follow_rule(inherited: str | None) -> None:
    """The decision rule follows the run a fine-tune starts from (else the default) until the user picks one."""
    if not st.session_state.get(KEEP + "picked:threshold"):
        st.session_state["threshold"] = inherited or SPECS["threshold"].default


def widget(spec: form.WidgetSpec, where=st, options=None):
    """The widget a declared option asks for (a number field, a choice or a line of text), keyed by its name."""
    if spec.kind == "text":
        kept(spec.name)
        value = where.text_input(spec.label, value=spec.default, key=spec.name, help=spec.help, max_chars=200)
    elif spec.kind == "select":
        options = list(options or spec.options)
        index = 0 if kept(spec.name, options) else options.index(spec.default)
        value = where.selectbox(spec.label, options, index=index, format_func=spec.word, key=spec.name,
                                help=spec.help, on_change=keep, args=(f"picked:{spec.name}", True))
    else:
        value = where.number_input(spec.label, spec.min, spec.max, "min" if kept(spec.name) else spec.default,
                                   step=spec.step, format=spec.format, key=spec.name, help=spec.help)
    return keep(spec.name, value)


def widget_rows(group: str, options: dict | None = None) -> dict:
    """Every declared option of `group`, as many to a row as the form's layout declares; their values by name."""
    specs = [s for s in SPECS.values() if s.group == group]
    per_row = form.ROW_WIDGETS[group]
    values = {}
    for i in range(0, len(specs), per_row):
        for col, spec in zip(st.columns(per_row), specs[i:i + per_row]):
            values[spec.name] = widget(spec, col, (options or {}).get(spec.name))
    return values


def multiselect(label: str, options, default: list, key: str) -> list:
    """A multiselect that keeps its choice across page switches (`default` until the user chose)."""
    kept(key)
    return keep(key, st.multiselect(label, options, default=None if key in st.session_state else default, key=key))
