"""Does removing what a heatmap highlights change the prediction? ROAD (Rong et al. 2022), against random maps.

The metrics are pytorch-grad-cam's own (`ROADMostRelevantFirst`, `ROADLeastRelevantFirst`); their combination is
the library's `ROADCombined`: the mean over percentiles of (p after removing the least relevant pixels - p after
removing the most relevant) / 2, in probability of the explained class. Higher = the map finds what the model uses.

A ROAD percentile q keeps q% of the pixels: q = 80 removes 20%. The imputation (a sparse linear solve per removal)
is the whole cost and grows with the share removed (about 0.1 s to remove 20% of a 224 px image, 0.6 s to remove
80%, on 2 cores), and Diagnosis scores 6 maps (the map and 5 random ones). So Diagnosis uses one percentile, 80
(remove the most / least relevant 20%: the step the reading describes); the scorecard, which runs as a job,
uses four (80, 60, 40, 20). benchmarks/bench_faithfulness.py measures 1, 2 and 4 (docs/cam_measurements.md).

Ties: a GradCAM is exactly zero on much of an image, and the library's percentile cut then removes every tied
pixel (a "20%" step can remove 90% of the image). The map is therefore turned into ranks first, ties broken at
random with a fixed seed: ROAD depends only on the order of the pixels, and "the highlighted 20%" is then 20%.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from pytorch_grad_cam import RandomCAM
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst

from cxrdemo.diagnosis import explain as explain_mod
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.diagnosis.result import ImageResult

LIVE_PERCENTILES = (80,)  # Diagnosis: remove 20% (measured in benchmarks/bench_faithfulness.py)
FULL_PERCENTILES = (80, 60, 40, 20)  # the scorecard job: remove 20, 40, 60 and 80%
RANDOM_SEEDS = 5
# A map "points at what the model uses" only when its score beats the random maps' mean by more than their spread
# AND is at least this large: a saturated model (p = 0.999 whatever is removed) can beat a spread of 0.001 by 0.002.
MIN_EFFECT = 0.01

ProbsFn = Callable[[torch.Tensor], torch.Tensor]  # logits (N, K) -> probabilities (N, K), e.g. a calibration


class _ClassProbability:
    """ROAD target: the probability of class k under a logits -> probabilities function (a calibration hook)."""

    def __init__(self, k: int, to_probs: ProbsFn) -> None:
        self.k, self.to_probs = k, to_probs

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.to_probs(output.reshape(1, -1)))[0, self.k]


def calibrated(model: LoadedModel) -> ProbsFn:
    """The model's own logits -> probabilities: the calibrated ones the bar shows (softmax when not calibrated)."""
    return lambda logits: torch.from_numpy(model.trust.probabilities(logits.detach().float().cpu().numpy()))


def ranked(cam: np.ndarray, seed: int = 0) -> np.ndarray:
    """The map's pixel ranks scaled to [0, 1], ties broken at random (seeded): same order, no ties."""
    flat = np.asarray(cam, dtype=np.float64).ravel()
    order = np.lexsort((np.random.default_rng(seed).random(flat.size), flat))
    out = np.empty(flat.size, dtype=np.float32)
    out[order] = np.arange(flat.size, dtype=np.float32) / max(1, flat.size - 1)
    return out.reshape(np.shape(cam))


@dataclass(frozen=True)
class RoadCurves:
    """Probability of the explained class before and after each ROAD removal, for a stack of maps."""

    percentiles: tuple[int, ...]
    p_before: float
    without_most: np.ndarray  # (maps, percentiles)
    without_least: np.ndarray  # (maps, percentiles)

    @property
    def scores(self) -> np.ndarray:
        """ROADCombined per map: mean over percentiles of (without_least - without_most) / 2."""
        return ((self.without_least - self.without_most) / 2).mean(axis=1)


def road_curves(model: LoadedModel, image_u8: torch.Tensor, cams: np.ndarray, target: int,
                percentiles: tuple[int, ...] = LIVE_PERCENTILES, *, to_probs: ProbsFn | None = None,
                seed: int = 0, p_before: float | None = None) -> RoadCurves:
    """ROAD for each map of `cams` (M, H, W) on one image, through the library's MoRF and LeRF metrics, in the
    model's calibrated probability of class `target` (`to_probs` replaces that scale, e.g. in tests)."""
    cams = np.asarray(cams, dtype=np.float32)
    cams = np.stack([ranked(c, seed + i) for i, c in enumerate(cams[None] if cams.ndim == 2 else cams)])
    x = model.preprocessing.normalize(image_u8)
    batch = x.expand(len(cams), *x.shape[1:]).contiguous()
    targets = [_ClassProbability(target, to_probs or calibrated(model))] * len(cams)
    most, least = np.zeros((len(cams), len(percentiles))), np.zeros((len(cams), len(percentiles)))
    # The imputation adds seeded noise (torch's global generator): fork it so callers' streams are untouched.
    with model.lock, torch.random.fork_rng():
        torch.manual_seed(seed)
        net = model.net
        was_training = net.training
        net.eval()
        try:
            if p_before is None:  # the caller's result has it already: no forward pass for it
                with torch.no_grad():
                    p_before = float(targets[0](net(x)[0]))
            for j, q in enumerate(percentiles):
                most[:, j] = ROADMostRelevantFirst(q)(batch, cams, targets, net, return_diff=False)
                least[:, j] = ROADLeastRelevantFirst(q)(batch, cams, targets, net, return_diff=False)
        finally:
            net.train(was_training)
    return RoadCurves(tuple(percentiles), p_before, most, least)


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """RandomCAM draws from numpy's global generator: seed it, then give callers their stream back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def random_cams(model: LoadedModel, image_u8: torch.Tensor, target: int, seeds: int = RANDOM_SEEDS,
                first_seed: int = 0, activations: torch.Tensor | None = None) -> np.ndarray:
    """The library's RandomCAM for `seeds` seeds: (seeds, H, W) maps with random channel weights
    (`activations`: the image's CAM-layer output, when known: the trunk is then not run again)."""
    out = []
    for s in range(first_seed, first_seed + seeds):
        with _numpy_seed(s):
            out.append(explain_mod.explain(model, image_u8, "RandomCAM", target, cam_class=RandomCAM,
                                           activations=activations).cam)
    return np.stack(out)


@dataclass(frozen=True)
class Faithfulness:
    """How much the explained class's probability depends on what the map highlights, and a random baseline."""

    method: str
    class_name: str
    target: int
    percentiles: tuple[int, ...]
    p_before: float
    without_most: tuple[float, ...]  # probability after removing the most relevant (100 - q)%, per percentile q
    without_least: tuple[float, ...]
    score: float  # ROADCombined
    random_scores: tuple[float, ...]
    seconds: float

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_scores))

    @property
    def random_sd(self) -> float:
        """The random maps' spread: sample standard deviation over the seeds."""
        return float(np.std(self.random_scores, ddof=1)) if len(self.random_scores) > 1 else 0.0

    @property
    def beats_chance(self) -> bool:
        """True when the map's score beats the random maps' mean by more than their spread (and by MIN_EFFECT)."""
        return self.score > self.random_mean + self.random_sd and self.score >= MIN_EFFECT

    def to_dict(self) -> dict:
        """Plain JSON-ready numbers (the words are views/heatmaps.faithfulness_reading)."""
        d = asdict(self)
        d.update(removed_percent=[100 - q for q in self.percentiles], random_mean=self.random_mean,
                 random_sd=self.random_sd, beats_chance=self.beats_chance)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to n for the block (None: left as it is), then put back.

    Process-wide: a page uses 1 while a training job runs, where 2 threads on 2 busy cores only contend.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def measure(model: LoadedModel, res: ImageResult, heat: "explain_mod.Heatmap", *,
            percentiles: tuple[int, ...] = LIVE_PERCENTILES, seeds: int = RANDOM_SEEDS, seed: int = 0,
            threads: int | None = None) -> Faithfulness:
    """ROAD of the map on screen (`heat`, of the result `res`) and of `seeds` RandomCAM maps, in the same calibrated
    probability the result shows: p_before is the result's own probability of the explained class."""
    start = time.perf_counter()
    with torch_threads(threads):
        maps = np.concatenate([np.asarray(heat.cam, dtype=np.float32)[None],
                               random_cams(model, res.image, heat.target, seeds, seed, res.activations)])
        curves = road_curves(model, res.image, maps, heat.target, percentiles, seed=seed,
                             p_before=float(res.probs[heat.target]))
    scores = curves.scores
    return Faithfulness(method=heat.method, class_name=model.classes[heat.target], target=int(heat.target),
                        percentiles=tuple(int(q) for q in percentiles), p_before=float(res.probs[heat.target]),
                        without_most=tuple(float(v) for v in curves.without_most[0]),
                        without_least=tuple(float(v) for v in curves.without_least[0]), score=float(scores[0]),
                        random_scores=tuple(float(v) for v in scores[1:]), seconds=time.perf_counter() - start)
