"""Text that reaches screens and files (issue 17): user-derived strings are escaped for Markdown and CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxrdemo.diagnosis import explain, predict
from cxrdemo.views import compare
from cxrdemo.views.text import escape_markdown, safe_csv_cell
from tests.helpers import save_patch_run

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "diagnosis.py")
EVIL = "p(![pixel](https:evil.example/track.png)"
FORMULA = '=HYPERLINK("https://evil.example","x")'


@pytest.mark.parametrize("raw", [EVIL, "**bold** _it_ `code` <b>x</b> :red[x] $x$ # h", "a\nb", "PNEUMONIA"])
def test_escaped_markdown_has_no_unescaped_special_character(raw):
    out = escape_markdown(raw)
    plain = out.replace("\\\\", "")
    for ch in "![]()*_`<>:$#":
        assert all(plain[i - 1] == "\\" for i, c in enumerate(plain) if c == ch), (ch, out)
    assert "\n" not in out
    assert out.replace("\\", "") == " ".join(raw.splitlines())  # nothing but the escapes added


@pytest.mark.parametrize("v, want", [("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
                                     ("\tx", "'\tx"), ("\rx", "'\rx"), ("NORMAL", "NORMAL"), (-1.5, -1.5), (3, 3)])
def test_safe_csv_cell(v, want):
    assert safe_csv_cell(v) == want


def test_csv_export_never_starts_a_cell_with_a_formula():
    """Fails on ecfa98d: a class folder named =HYPERLINK(...) reached the CSV as a formula."""
    df = pd.DataFrame({"run_id": ["r1", "r2"], "classes": [f"{FORMULA}, NORMAL", "-cmd"], "best_val_acc": [0.5, -0.25]})
    rows = list(csv.reader(io.StringIO(compare.to_csv(df))))
    assert rows[1] == ["r1", f"'{FORMULA}, NORMAL", "0.5"] and rows[2] == ["r2", "'-cmd", "-0.25"]


@pytest.fixture
def evil_store(patch_model, patch_store):
    """The patch model saved again as a run whose class folders are named EVIL and FORMULA."""
    save_patch_run(dataclasses.replace(patch_model, classes=(EVIL, FORMULA)), patch_store.root, "evil")
    return patch_store


def _example_bytes(side: int | None = None) -> tuple[bytes, str]:
    path = next(iter(predict.example_images().values()))
    if side is None:
        return path.read_bytes(), path.name
    buf = io.BytesIO()
    Image.open(path).convert("L").resize((side, side), Image.BILINEAR).save(buf, "PNG")
    return buf.getvalue(), "large.png"


def test_class_names_reach_the_diagnosis_page_as_text_not_markdown(evil_store):
    """Fails on ecfa98d: the class name rendered a remote image and a link in the prediction sentence."""
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    label = next(o for o in at.selectbox(key="model").options if "evil" in o)
    at.selectbox(key="model").set_value(label).run()
    raw, name = _example_bytes()
    at.file_uploader(key="upload").upload(name, raw, "image/png").run()
    for box in at.checkbox:
        box.check()
    at.run()
    assert not at.exception, at.exception
    shown = [m.value for m in (*at.markdown, *at.caption)]
    shown += [c for im in at.image for c in im.captions]
    assert any(v.startswith("Prediction:") for v in shown)
    for v in shown:
        assert "![pixel](" not in v and "](https" not in v, v
    assert any(escape_markdown(EVIL) in v for v in shown)


@pytest.mark.slow
def test_the_page_sends_at_most_1024_px_to_the_browser(patch_store, monkeypatch):
    """Fails on ecfa98d: the full-size image (and an overlay of the same size) went to the browser."""
    sizes = []
    real = explain.overlay
    monkeypatch.setattr(explain, "overlay", lambda img, cam, a=0.4: sizes.append(img.shape) or real(img, cam, a))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    raw, name = _example_bytes(1900)
    at.file_uploader(key="upload").upload(name, raw, "image/png").run()
    for box in at.checkbox:
        box.check()
    at.run()
    assert not at.exception, at.exception
    assert sizes and all(max(s) <= 1024 for s in sizes), sizes
