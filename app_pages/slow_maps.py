"""A slow heatmap (ScoreCAM) with real progress: computed in a background thread while the page shows the share
done and the time left, measured as it goes; kept once made, shared by sessions (same model file, same image
content, same class: the same map). A rerun during the computation finds it in flight and waits on it; nothing
computes it twice."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import streamlit as st

from cxrdemo.diagnosis import explain, predict, result
from cxrdemo.views import diagnosis as dv

KEEP = 16  # finished maps kept (a 224 px map is 200 kB)
POLL_S = 0.3


class SlowMaps:
    """Maps in flight and finished, by (run, model version, image, method, class)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slow-heatmap")
        self.jobs: OrderedDict[tuple, tuple[Future, list[float], float]] = OrderedDict()

    def job(self, key: tuple, model: predict.LoadedModel, res: result.ImageResult,
            k: int | None) -> tuple[Future, list[float], float]:
        """The computation of `key`: the one in flight or done, else a new one (future, progress, start time)."""
        with self.lock:
            fut = self.jobs[key][0] if key in self.jobs else None
            if fut is not None and not (fut.done() and fut.exception() is not None):  # a failure is tried again
                self.jobs.move_to_end(key)
                return self.jobs[key]
            done: list[float] = [0.0]
            fut = self.pool.submit(explain.heatmap, model, res, key[3], k, progress=lambda f: done.__setitem__(0, f))
            self.jobs[key] = (fut, done, time.monotonic())
            while len(self.jobs) > KEEP:
                old = next(iter(self.jobs))
                if not self.jobs[old][0].done():
                    break
                self.jobs.popitem(last=False)
            return self.jobs[key]

    def ready(self, key: tuple) -> bool:
        """True when the map of `key` is made (no wait to show)."""
        with self.lock:
            return key in self.jobs and self.jobs[key][0].done()


@st.cache_resource
def maps() -> SlowMaps:
    """The process's slow maps."""
    return SlowMaps()


def key_of(run: str, root: str, rad: predict.Radiograph, method: str, target: str | None) -> tuple:
    """What identifies one slow map."""
    return (run, predict.model_mtime(run, root), root, method, target, rad.digest)


def heatmap(run: str, root: str, model: predict.LoadedModel, rad: predict.Radiograph, method: str,
            target: str | None, res: result.ImageResult) -> explain.Heatmap:
    """The slow map, with a progress bar while it is made (the time left measured from the share done)."""
    k = model.classes.index(target) if target in model.classes else None
    fut, done, start = maps().job(key_of(run, root, rad, method, target), model, res, k)
    if not fut.done():
        bar = st.progress(0.0, text=dv.progress_text(method, 0.0, None))
        while not fut.done():
            share, elapsed = done[0], time.monotonic() - start
            left = elapsed * (1 - share) / share if share > 0.02 else None
            bar.progress(min(share, 1.0), text=dv.progress_text(method, share, left))
            time.sleep(POLL_S)
        bar.empty()
    return fut.result()
