"""Host paths stay off a classroom's screens (issue 30 audit): a moved run's data folder in the Trainer's error and
"starting it again would fail", Compare and its CSV, the model card's retrain command and the recipe in the URL name
the folder inside a data root, never by its path on the server. A desktop is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.config import TrainConfig
from cxrdemo.runs import store as runs
from cxrdemo.views import classroom as cls
from cxrdemo.views import compare, model_card, recipe
from cxrdemo.views import trainer as tv
from cxrdemo.views.host_paths import host_folder, shown_folder, without_host_paths
from tests.helpers import fake_status, page_browser, server_address

TRAINER = str(Path(__file__).resolve().parents[1] / "app_pages" / "trainer.py")


@pytest.fixture
def moved(tmp_path, run_store):
    """A failed run whose dataset folder (inside the allowed root) was moved away, and its root."""
    root = tmp_path / "srv" / "teaching"
    (root).mkdir(parents=True)
    data = root / "chest-2024"
    d = runs.create_run(TrainConfig(data=str(data), backbone="cnn8", epochs=2), run_store)
    fake_status(d, state="failed", error=f"The dataset folder {data} does not exist.")
    return root, data, d


def test_paths_are_shown_inside_their_root_or_by_name(tmp_path):
    root = tmp_path / "srv" / "teaching"
    roots = (root,)
    assert shown_folder(str(root / "chest" / "v2"), roots) == "teaching/chest/v2"
    assert shown_folder(str(root), roots) == "teaching" and shown_folder("/etc/secret", roots) == "secret"
    assert shown_folder("demo", roots) == "demo" and shown_folder("/etc/secret", None) == "/etc/secret"
    assert host_folder("teaching/chest/v2", roots) == str(root / "chest" / "v2")
    assert host_folder("teaching/../../etc", roots) is None and host_folder("other", roots) is None
    text = f"No images in {root}/chest/train/NORMAL/a.png"
    assert without_host_paths(text, [str(root / "chest")], roots) == "No images in teaching/chest/train/NORMAL/a.png"
    assert without_host_paths(text, [str(root / "chest")], None) == text


def test_the_jobs_panel_names_a_moved_folder_inside_the_root(moved):
    root, data, d = moved
    (row,) = tv.panel_rows(runs.list_runs(d.parent), roots=(root,))
    assert row.error == "The dataset folder teaching/chest-2024 does not exist."
    assert row.repeat_problem == "The dataset folder teaching/chest-2024 is not there any more."
    (desk,) = tv.panel_rows(runs.list_runs(d.parent))
    assert str(data) in desk.error and str(data) in desk.repeat_problem  # a desktop: unchanged


def test_compare_and_its_csv_name_no_host_path(moved):
    root, data, d = moved
    table = compare.runs_table(runs.list_runs(d.parent), (root,))
    assert str(root) not in compare.to_csv(table) and "teaching/chest-2024" in compare.to_csv(table)
    assert str(data) in compare.to_csv(compare.runs_table(runs.list_runs(d.parent)))


def test_the_retrain_command_and_the_url_name_the_folder_inside_the_root(tmp_path):
    root = tmp_path / "srv" / "teaching"
    config = TrainConfig(data=str(root / "chest"), epochs=3).to_dict()
    assert model_card.train_command(config, roots=(root,)) == "python -m cxrdemo train --data teaching/chest --epochs 3"
    assert str(root) in model_card.train_command(config)
    query = recipe.query_for({"data": str(root), "epochs": 3}, {"sid": "x"}, (root,))
    assert query == {"sid": "x", "data": "teaching", "epochs": "3"}
    back = recipe.restored_recipe(query, [], "b", "A folder", (root,))
    assert back["data"] == back["source"] == str(root) and back["epochs"] == 3  # the allowed root chosen as itself
    assert recipe.restored_recipe({"data": "elsewhere"}, [], "b", "A folder", (root,)) == {}
    assert recipe.query_for({"data": str(root)}, {}) == {"data": str(root)}  # a desktop: unchanged


def test_the_classroom_trainer_page_shows_no_host_path(moved, monkeypatch):
    root, data, d = moved
    monkeypatch.setenv(cls.ROOTS_ENV, str(root))
    with server_address("0.0.0.0"):
        at = AppTest.from_file(TRAINER, default_timeout=60)
        at.run()
        runs.atomic_write_json(d / "config.json", {**runs.read_json(d / "config.json"), "browser": page_browser(at)})
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        shown = "\n".join(str(e.value) for e in (*at.markdown, *at.error, *at.caption, *at.code, *at.info))
        assert d.name in shown and "teaching/chest-2024" in shown and str(root) not in shown
        assert all(str(root) not in str(v) for v in at.query_params.values())
