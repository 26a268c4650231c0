"""Can I trust this heatmap? The faithfulness line, the CAM scorecard (table, preselection, job, CLI), the strip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.cli import main as cli
from cxrdemo.diagnosis import scorecard, scorecard_job
from cxrdemo.errors import RunError
from cxrdemo.runs import jobs, lifecycle, slots
from cxrdemo.runs import store as runs
from cxrdemo.views import heatmaps
from tests.helpers import make_split_dataset, wait_for
from tests.helpers import tiny_config as _tiny

PAGES = Path(__file__).resolve().parents[1] / "app_pages"
TIMEOUT = 90


def _table(rows: dict[str, tuple[float, float]]) -> dict:
    """A scorecard table: method -> (mean ROAD, seconds per image)."""
    return {"run": "patch", "classes": ["blank", "patch"], "percentiles": [80, 60, 40, 20], "n_images": 6,
            "seed": 0, "split": "test",
            "rows": [{"method": m, "n": 6, "mean": mean, "low": mean - 0.05, "high": mean + 0.05,
                      "seconds_per_image": sec, "scores": [mean] * 6} for m, (mean, sec) in rows.items()]}


SCORES = {"GradCAM": (0.10, 0.05), "LayerCAM": (0.20, 0.06), "EigenCAM": (0.02, 0.04),
          "ScoreCAM": (0.30, 31.0), "RandomCAM": (0.00, 0.03)}


def _diagnosis() -> AppTest:
    at = AppTest.from_file(str(PAGES / "diagnosis.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


# ---------------------------------------------------------------- views

def test_scorecard_frame_sorts_by_score_keeps_chance_last_and_preselects_only_fast_methods():
    table = _table(SCORES)
    frame = heatmaps.scorecard_frame(table)
    assert frame["Method"].tolist() == ["ScoreCAM", "LayerCAM", "GradCAM", "EigenCAM",
                                        "RandomCAM (random maps: chance)"]
    assert frame.loc[1, "95% interval"] == "[+0.150, +0.250]"
    # ScoreCAM scores highest but takes 31 s per image: the most faithful method under 2 s is chosen
    assert heatmaps.preselect(table, ["GradCAM", "LayerCAM", "ScoreCAM"]) == "LayerCAM"
    assert heatmaps.preselect(None, ["GradCAM"]) is None
    assert "LayerCAM is the most faithful" in heatmaps.scorecard_caption(table)


# ---------------------------------------------------------------- Diagnosis and Compare pages

def test_diagnosis_shows_the_faithfulness_line_after_the_heatmap(patch_store):
    at = _diagnosis()
    at.radio(key="example").set_value("PNEUMONIA example 1").run()
    assert not at.exception, at.exception
    lines = [c.value for c in at.caption if "Faithfulness (ROAD)" in c.value]
    assert len(lines) == 1
    assert "Removing the highlighted 20%" in lines[0] and "vs random maps" in lines[0]
    assert ("points at what the model uses" in lines[0]) != ("no better than chance" in lines[0])
    # the heatmap is drawn (the page's only two images) before the line
    assert [c for im in at.image for c in im.captions][0] == "The image as read"


def test_diagnosis_shows_the_scorecard_and_preselects_its_most_faithful_fast_method(patch_store):
    scorecard.write_scorecard(patch_store.run, _table(SCORES))
    at = _diagnosis()
    assert at.selectbox(key="method").value == "LayerCAM"  # not ScoreCAM: 31 s per image
    frames = [f.value for f in at.dataframe if "Mean ROAD" in f.value.columns]
    assert len(frames) == 1 and frames[0]["Method"].iloc[1] == "LayerCAM"
    assert any("LayerCAM is the most faithful" in c.value for c in at.caption)
    # a choice the user makes afterwards is kept on the next rerun
    at.selectbox(key="method").set_value("GradCAM").run()
    assert at.selectbox(key="method").value == "GradCAM"


def test_a_scorecard_for_another_model_file_is_not_shown(patch_store):
    scorecard.write_scorecard(patch_store.run, _table(SCORES))
    (patch_store.run / "model.pt").write_bytes((patch_store.run / "model.pt").read_bytes() + b"\0")  # retrained
    assert scorecard.read_scorecard(patch_store.run) is None
    at = _diagnosis()
    assert at.selectbox(key="method").value == "GradCAM"
    assert not [f for f in at.dataframe if "Mean ROAD" in f.value.columns]


def test_compare_shows_the_scorecard_of_the_chosen_run(patch_store):
    scorecard.write_scorecard(patch_store.run, _table(SCORES))
    at = AppTest.from_file(str(PAGES / "compare.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    frames = [f.value for f in at.dataframe if "Mean ROAD" in f.value.columns]
    assert len(frames) == 1
    assert frames[0].set_index("Method").loc["LayerCAM", "Mean ROAD"] == pytest.approx(0.2)
    assert [b.label for b in at.button if b.key == "scorecard_start_compare"] == ["Compute the scorecard again"]


def test_randomise_and_look_again_draws_the_strip_on_demand(patch_store):
    at = _diagnosis()
    at.radio(key="example").set_value("PNEUMONIA example 1").run()
    assert not at.exception, at.exception
    before = [c for im in at.image for c in im.captions]
    assert not any(c.startswith("+ head random") for c in before)  # nothing computed before the button
    at.button(key="sanity_button").click().run()
    assert not at.exception, at.exception
    captions = [c for im in at.image for c in im.captions]
    strip = captions[captions.index("Original"):]
    # cnn8: the head, then its trunk stages from the top down, each with its rank correlation and SSIM
    assert strip[1].startswith("+ head random · ρ ")
    assert len(strip) >= 3 and all("SSIM" in c for c in strip[1:])
    assert any("explaining the image, not the model" in c.value for c in at.caption)
    at.slider(key="opacity").set_value(0.6).run()  # a rerun keeps the strip without recomputing it
    assert [c for im in at.image for c in im.captions][-len(strip):] == strip


@pytest.mark.slow
def test_scorecam_is_left_out_of_the_strip(patch_store):
    at = _diagnosis()
    at.selectbox(key="method").set_value("ScoreCAM")
    at.radio(key="example").set_value("NORMAL example 1").run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key == "sanity_button"]
    assert any("choose another method" in c.value for c in at.caption)


# ---------------------------------------------------------------- the scorecard as a job (and its CLI)

def _final(d: Path) -> dict:
    wait_for(lambda: (scorecard_job.status(d) or {}).get("state") in lifecycle.FINAL, timeout=120)
    return scorecard_job.status(d)


@pytest.mark.slow
def test_the_scorecard_job_queues_runs_cancels_and_leaves_the_run_alone(store, tmp_path, capsys):
    data_dir = make_split_dataset(tmp_path / "data", (6, 3, 30), 48)
    run_id = jobs.submit(_tiny(data_dir), store, max_jobs=1)
    wait_for(lambda: runs.read_status(store / run_id)["state"] in runs.FINAL, timeout=120)
    d = store / run_id
    assert runs.read_status(d)["state"] == "completed"
    run_status = runs.read_json(d / "status.json")
    blocker = None
    try:
        # Queued behind a training job in the same queue, and cancelled there at once.
        blocker = jobs.submit(_tiny(data_dir, epochs=500), store, max_jobs=1)
        wait_for(lambda: runs.read_status(store / blocker)["state"] == "running", timeout=60)
        job = scorecard_job.submit(run_id, store, max_jobs=1, n=2)
        assert job == d / "scorecard" and slots.job_kind(job) == "scorecard"
        assert slots.queue_order(store) == [f"{run_id}/scorecard"]
        with pytest.raises(RunError, match="already queued or running"):
            scorecard_job.submit(run_id, store, max_jobs=1, n=2)
        assert scorecard_job.cancel(d)["state"] == "cancelled"
        jobs.cancel(blocker, store, grace_s=5)

        # Running, then cancelled between images: no table is written.
        scorecard_job.submit(run_id, store, max_jobs=1, n=30)
        wait_for(lambda: (scorecard_job.status(d) or {}).get("done", 0) >= 1, timeout=120)
        assert scorecard_job.cancel(d, grace_s=20)["state"] == "cancelled"
        assert not (d / scorecard.FILE).exists()

        # To the end: progress, the table beside the run, the run's own status untouched.
        scorecard_job.submit(run_id, store, max_jobs=1, n=2, methods=["GradCAM", "LayerCAM"])
        st = _final(d)
        assert st["state"] == "completed", st
        assert st["done"] == st["total"] == 6  # 2 images x (2 methods + the random maps)
        table = scorecard.read_scorecard(d)
        assert [r["method"] for r in table["rows"]] == ["GradCAM", "LayerCAM", "RandomCAM"]
        assert all(r["n"] == 2 and r["low"] <= r["mean"] <= r["high"] for r in table["rows"])
        assert table["data"] == str(data_dir) and table["most_faithful"] in ("GradCAM", "LayerCAM")
        assert runs.read_json(d / "status.json") == run_status

        # The CLI starts the same job and follows it to the table.
        capsys.readouterr()
        assert cli.main(["cam-scorecard", "--run", run_id, "--runs-dir", str(store), "--n", "2",
                         "--methods", "EigenCAM"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [r["method"] for r in out["rows"]] == ["EigenCAM", "RandomCAM"]
        assert out["file"] == str(d / scorecard.FILE) and scorecard_job.status(d)["state"] == "completed"
        assert cli.main(["cam-scorecard", "--run", str(d), "--n", "1", "--methods", "GradCAM", "--no-write"]) == 0
        assert json.loads(capsys.readouterr().out)["n_images"] == 1
        assert [r["method"] for r in scorecard.read_scorecard(d)["rows"]] == ["EigenCAM", "RandomCAM"]
        assert cli.main(["cam-scorecard", "--run", run_id, "--runs-dir", str(store), "--methods", "Nope"]) == 2
    finally:
        st = scorecard_job.status(d) or {}
        if st.get("state") in lifecycle.ACTIVE:
            scorecard_job.cancel(d, grace_s=1)
        if blocker and runs.read_status(store / blocker)["state"] in runs.ACTIVE:
            jobs.cancel(blocker, store, grace_s=1)
