"""Can I trust this heatmap? What the pages show: the faithfulness line, the CAM scorecard, the randomisation strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdemo.diagnosis import explain, faithfulness, sanity, scorecard, scorecard_job
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.diagnosis.result import ImageResult
from cxrdemo.model import checkpoint
from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs
from cxrdemo.views.diagnosis import percent
from cxrdemo.views.text import escape_markdown

STRIP_SKIPS = frozenset({"ScoreCAM"})  # 30-43 s per map on 2 cores: one strip would take minutes
THUMB_PX = 112  # each strip image: the 56 px map blended over the image at this size


# ---------------------------------------------------------------- the faithfulness line

def busy_threads(root: str | Path) -> int | None:
    """1 while a training or scorecard job runs in this store (2 threads on 2 busy cores only contend), else None."""
    for info in runs.list_runs(root):
        if info.state == "running":
            return 1
    return None


def score(model: LoadedModel, res: ImageResult, heat: explain.Heatmap, threads: int | None = None
          ) -> faithfulness.Faithfulness:
    """ROAD of the heatmap on screen against 5 random maps (the live percentile: remove 20%)."""
    return faithfulness.measure(model, res, heat, threads=threads)


def _signed(v: float) -> str:
    return f"{round(v, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"


def _change(what: str, before: float, after: float) -> str:
    """'lowers p(X) from 91.0% to 35.2%' / 'raises ...' / 'leaves p(X) at 90.0%' (what = 'it' after the first)."""
    if abs(after - before) < 0.0005:
        return f"leaves {what} at {percent(after)}"
    verb = "lowers" if after < before else "raises"
    return (f"{verb} {what} from {percent(before)} to {percent(after)}" if what != "it" else
            f"{verb} it to {percent(after)}")


def faithfulness_reading(f: faithfulness.Faithfulness) -> str:
    """One sentence: what removing the highlighted / least highlighted pixels does to the probability on the bar
    (calibrated, as the page shows it), and what that means."""
    j = int(np.argmax(f.percentiles))  # the smallest removal: the sentence a reader can picture
    share, what = 100 - f.percentiles[j], f"p({f.class_name})"
    most = _change(what, f.p_before, f.without_most[j])
    least = _change("it", f.p_before, f.without_least[j])
    verdict = ("this map points at what the model uses" if f.beats_chance else
               "this map is no better than chance at finding what matters")
    return (f"Removing the highlighted {share}% {most}; removing the least highlighted {share}% {least}: "
            f"{verdict} (ROAD {_signed(f.score)} vs random maps {_signed(f.random_mean)} ± {f.random_sd:.3f}).")


def faithfulness_line(f: faithfulness.Faithfulness) -> str:
    """The number and its one-line reading, for a caption under the heatmap (class names are escaped by the caller)."""
    # Streamlit's own icon font: an emoji needs a font the projector's browser may not have (an empty box)
    mark = ":material/check_circle:" if f.beats_chance else ":material/warning:"
    return f"{mark} **Faithfulness (ROAD) {_signed(f.score)}** · {faithfulness_reading(f)} ({f.seconds:.1f} s)"


# ---------------------------------------------------------------- the scorecard

def read_table(run_dir: str | Path) -> dict | None:
    """The run's stored scorecard for its current model.pt, or None."""
    return scorecard.read_scorecard(run_dir)


def scorecard_frame(table: dict) -> pd.DataFrame:
    """One row per method: mean ROAD score with its 95% interval, images, seconds per image; chance line last."""
    rows = []
    for r in table.get("rows", []):
        interval = "" if r.get("low") is None else f"[{r['low']:+.3f}, {r['high']:+.3f}]"
        name = f"{r['method']} (random maps: chance)" if r["method"] == scorecard.RANDOM else r["method"]
        rows.append({"Method": name, "Mean ROAD": round(float(r["mean"]), 3), "95% interval": interval,
                     "Images": int(r["n"]), "Seconds per image": round(float(r["seconds_per_image"]), 2)})
    frame = pd.DataFrame(rows, columns=["Method", "Mean ROAD", "95% interval", "Images", "Seconds per image"])
    chance = frame["Method"].str.endswith("(random maps: chance)")
    return pd.concat([frame[~chance].sort_values("Mean ROAD", ascending=False), frame[chance]], ignore_index=True)


def scorecard_caption(table: dict) -> str:
    """Where the numbers come from and which method is preselected, in one sentence (Markdown-safe)."""
    best = scorecard.most_faithful(table)
    removed = ", ".join(f"{100 - q}%" for q in table.get("percentiles", []))
    pick = (f" {best} is the most faithful method that runs in under {scorecard.LIVE_SECONDS:g} s per image: "
            "Diagnosis preselects it for this model." if best else "")
    return (f"ROAD (higher = removing what the map highlights changes the prediction more) on {table.get('n_images')} "
            f"{escape_markdown(table.get('split', 'test'))} images, removing {removed} of the pixels; the interval is a 95% bootstrap "
            f"of the mean; random maps are the chance line.{pick}")


def preselect(table: dict | None, methods: list[str]) -> str | None:
    """The method Diagnosis starts with for this model: the scorecard's most faithful fast method, if any."""
    best = scorecard.most_faithful(table) if table else None
    return best if best in methods else None


def job_line(status: dict | None) -> str:
    """The scorecard job's progress in words ('' when it was never started)."""
    if not status:
        return ""
    state = status.get("state")
    if state in lifecycle.ACTIVE:
        done, total = status.get("done") or 0, status.get("total")
        return (f"The scorecard is {state}: {done} of {total} maps scored ({status.get('message') or 'starting'})."
                if total else f"The scorecard is {state}.")
    if state == "completed":
        return f"The scorecard finished in {status.get('seconds', '?')} s."
    return f"The last scorecard job {state}: {status.get('error') or 'no details'}"


def job_fraction(status: dict | None) -> float:
    """Progress of an active scorecard job in [0, 1]."""
    total = (status or {}).get("total") or 0
    return min(1.0, float((status or {}).get("done") or 0) / total) if total else 0.0


def can_score(run_dir: Path, store_root: str | Path) -> bool:
    """Only runs of the store get a scorecard job (the shipped demo folder is read-only and has its table)."""
    try:
        return Path(run_dir).resolve().parent == Path(store_root).resolve() and checkpoint.has_model(run_dir)
    except OSError:
        return False


submit_scorecard = scorecard_job.submit
scorecard_status = scorecard_job.status
cancel_scorecard = scorecard_job.cancel


# ---------------------------------------------------------------- randomise and look again

def strip_methods() -> list[str]:
    """Methods offered in the live randomisation strip (ScoreCAM is too slow)."""
    return [m for m in explain.CAM_METHODS if m not in STRIP_SKIPS]


def randomise(model: LoadedModel, image_u8, method: str, target: int) -> sanity.SanityCheck:
    """Cascading randomisation of the model, head first, for the map on screen."""
    return sanity.cascading_randomisation(model, image_u8, method, target)


def strip(check: sanity.SanityCheck, grey01: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """(overlay image, caption) per map: the original, then one per re-initialised group, head first."""
    import cv2

    small = cv2.resize(np.asarray(grey01, dtype=np.float32), (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA)
    out = [(explain.overlay(small, check.original, 0.5), "Original")]
    for s in check.steps:
        last = s.randomised.split(" + ")[-1]
        out.append((explain.overlay(small, s.cam, 0.5), f"+ {last} random · ρ {s.spearman + 0.0:.2f} · "
                                                         f"SSIM {s.ssim + 0.0:.2f}"))
    return out
