"""Folder names are user input (issue 30 audit): a class set named like an image link and a data path holding a
newline and ``` stay text in Compare's class-set warning and in the model card's retrain command."""

from __future__ import annotations

import re

from cxrdemo.views import compare, model_card
from cxrdemo.views.text import code_block

LINK = "![x](http://127.0.0.1:9/p.png)"


def test_the_class_set_warning_loads_no_image():
    said = compare.mixing_message({f"NORMAL, {LINK}": ["a"], "NORMAL, PNEUMONIA": ["b", "c"]})
    assert LINK not in said and "](" not in said.replace("\\](", "")
    assert "\\!\\[x\\]\\(http\\:" in said  # every character still shown


def test_a_code_block_cannot_be_closed_from_inside():
    text = "python -m cxrdemo train --data '/data/x\n```\n" + LINK + "\n````'"
    block = code_block(text, "bash")
    fence = block.split("\n", 1)[0].rstrip("bash")
    assert len(fence) == 5  # longer than the 4 backticks inside
    inner = block[len(fence) + len("bash") + 1: -len(fence) - 1]
    assert inner == text and not re.search(rf"^{fence}", inner, re.M)


def test_the_retrain_command_quotes_the_data_path():
    cmd = model_card.train_command({"data": "/data/my set\n```\n" + LINK, "epochs": 3})
    assert cmd.startswith("python -m cxrdemo train --data '/data/my set\n```\n" + LINK + "'")
    assert model_card.train_command({"data": "demo"}) == "python -m cxrdemo train --data demo"
