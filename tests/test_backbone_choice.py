"""Choosing a dataset never changes the chosen backbone (issue 30 audit: a 6-class folder switched cnn5 to resnet18).
The browser keeps a selectbox's choice by its label; the labels now do not depend on the number of classes."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from cxrdemo.model import backbones
from cxrdemo.views import trainer_form as form
from tests.helpers import make_layout_dataset

TRAINER = str(Path(__file__).resolve().parents[1] / "app_pages" / "trainer.py")


def test_backbone_labels_are_the_same_for_any_dataset(tmp_path, run_store):
    at = AppTest.from_file(TRAINER, default_timeout=60)
    at.run()
    at.selectbox(key="backbone").set_value("cnn5").run()
    before = list(at.selectbox(key="backbone").options)
    six = make_layout_dataset(tmp_path / "six", {f"C{i}": 3 for i in range(6)})
    at.radio(key="source").set_value("A folder on this computer").run()
    at.text_input(key="data_path").input(str(six)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert list(at.selectbox(key="backbone").options) == before  # what the browser matches its choice against
    assert at.selectbox(key="backbone").value == "cnn5"
    assert form.backbone_label("resnet18") == f"resnet18 ({sum(backbones.group_param_counts('resnet18')[:-1]):,} " \
                                              "trunk parameters)"
