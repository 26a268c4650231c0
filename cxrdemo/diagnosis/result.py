"""One image, one answer: everything shown for an image comes from the one ImageResult that `assess` makes.

The bar, the sentences, the prediction sets, the checks, the overlay's footer, the comparison columns, the
worklist, the report and `predict`'s JSON all read the same result; nobody re-runs softmax. It is made from one
forward pass of the network, which also keeps what the heatmap needs (the CAM layer's output): the fast CAM
methods then run on the layers after it only (model/cam). Data only: views/ words it.

The prediction sets are nested: the set at 95% always holds the set at 90% (conformal.nested_set_masks), so a
higher coverage never makes the model look surer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
import torch

from cxrdemo.data import ImageMeta
from cxrdemo.diagnosis.population import PopulationCheck, check_population
from cxrdemo.diagnosis.predict import LoadedModel, Radiograph
from cxrdemo.errors import ConfigError
from cxrdemo.model import cam, conformal, domain, metrics

LEVELS = conformal.LEVELS
DEFAULT_LEVEL = conformal.DEFAULT_LEVEL

# Why an image is outside the prediction sets' promise (its sets are then every class), most telling first.
OUTSIDE_POPULATION, OUTSIDE_DOMAIN, OUTSIDE_QUALITY = "population", "domain", "quality"


@dataclass(frozen=True)
class ImageResult:
    """The one answer of one model for one image. Probabilities are calibrated when the model is."""

    name: str  # the file's name (never a path or a patient identifier)
    digest: str  # sha256 of the file's bytes
    classes: tuple[str, ...]
    probs: np.ndarray  # calibrated probabilities, K: the only probabilities a person reads
    logits: np.ndarray  # the network's own logits, K: for debugging, never shown as a probability
    predicted: int  # the verdict: the model's decision rule read off `probs`
    threshold: float | None  # the decision cut on p(class 1), calibrated scale; None = the most probable class
    calibrated: bool
    sets: dict[float, tuple[int, ...] | None]  # coverage -> class indices (nested, always holding the verdict)
    set_missing: dict[float, str]  # coverage -> why there is no set: "no-record", or the record's reason
    looks_like_cxr: bool  # the quality gate (pixels, DICOM header)
    quality_warning: str | None
    in_domain: bool | None  # None: the model has no in-domain record
    domain_score: float | None
    domain_cutoff: float | None
    outside: str | None  # OUTSIDE_*: why the sets are every class; None when the image is inside their promise
    meta: ImageMeta
    population: PopulationCheck | None = None  # the intended-population check (None: not made)
    image: torch.Tensor = field(default=None, repr=False, compare=False)  # prepared uint8 1xSxS: what the net saw
    activations: torch.Tensor | None = field(default=None, repr=False, compare=False)  # at the CAM layer

    @property
    def p(self) -> float:
        """The calibrated probability of the verdict."""
        return float(self.probs[self.predicted])

    def prediction_set(self, level: float = DEFAULT_LEVEL) -> tuple[int, ...] | None:
        """The set at `level` (class indices) or None (see set_missing)."""
        return self.sets.get(level)

    def set_names(self, level: float = DEFAULT_LEVEL) -> list[str] | None:
        """The set at `level` as class names (None when there is no set)."""
        s = self.prediction_set(level)
        return None if s is None else [self.classes[i] for i in s]

    @property
    def doubtful(self) -> bool:
        """True when the default-coverage set holds more than one class: the model cannot tell."""
        s = self.prediction_set(DEFAULT_LEVEL)
        return s is not None and len(s) > 1

    @property
    def flagged(self) -> bool:
        """True when a check says the image is not what the model was made for (run only after 'run anyway')."""
        return self.outside is not None


def _forward(model: LoadedModel, image_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor]:
    """(logits K, in-domain score or None, CAM-layer output) of one prepared image, from one forward pass."""
    net, dom = model.net, model.domain
    pooled: list[torch.Tensor] = []
    hook = net.pool.register_forward_hook(lambda m, a, out: pooled.append(out))
    try:
        with model.lock, torch.no_grad(), cam.keep_activations(net) as acts:
            feats = domain.features(net, model.preprocessing.normalize(image_u8), layers=dom.layers if dom else 1)
            logits = net.head(pooled[-1]).float()  # the last stage pooled is what the head sees: net(x) = head(it)
    finally:
        hook.remove()
    score = None if dom is None else domain.score_domain(dom, feats)
    return logits[0].numpy(), score, acts[-1]


def _outside(in_domain: bool | None, looks_like_cxr: bool, population: PopulationCheck | None) -> str | None:
    if population is not None and population.in_population is False:
        return OUTSIDE_POPULATION
    if in_domain is False:
        return OUTSIDE_DOMAIN
    return None if looks_like_cxr else OUTSIDE_QUALITY


def assess(model: LoadedModel, rad: Radiograph, *, stated_age: float | None = None) -> ImageResult:
    """The one result of `model` for the radiograph `rad` (read by predict.read_radiograph); `stated_age`: the
    patient's age in years as the user gives it (population.parse_age), used when the header has none.

    An image a check flags -- a patient outside the model's population, unlike its training images, or not a
    frontal chest film by its pixels or header -- is outside the sets' promise: its set is every class."""
    check = check_population(model.population, rad.meta.age_years, stated_age)
    return assess_image(model, model.preprocessing.prepare(rad.grey), looks_like_cxr=rad.looks_like_cxr,
                        quality_warning=rad.warning, meta=rad.meta, name=rad.name, digest=rad.digest,
                        population=check)


def assess_image(model: LoadedModel, image_u8: torch.Tensor, *, looks_like_cxr: bool = True,
                 quality_warning: str | None = None, meta: ImageMeta | None = None, name: str = "",
                 digest: str = "", population: PopulationCheck | None = None) -> ImageResult:
    """The one result for an image already prepared by the model's preprocessing record (uint8 1xSxS)."""
    image = image_u8 if image_u8.dim() == 4 else image_u8[None]
    logits, scores, acts = _forward(model, image)
    score = None if scores is None else float(np.asarray(scores).reshape(-1)[0])
    inside = None if score is None else domain.in_domain(model.domain, score)
    probs = model.trust.probabilities(logits[None])[0]
    cut = model.threshold
    predicted = int(metrics.predict_labels(probs[None], cut)[0])  # the same verdict as on the network's own scale
    outside = _outside(inside, looks_like_cxr, population)
    sets, missing = _sets(model, probs, predicted, outside is not None)
    return ImageResult(name=name, digest=digest, classes=tuple(model.classes), probs=probs, logits=logits,
                       predicted=predicted, threshold=cut, calibrated=model.trust.calibrated, sets=sets,
                       set_missing=missing, looks_like_cxr=looks_like_cxr, quality_warning=quality_warning,
                       in_domain=inside, domain_score=score,
                       domain_cutoff=None if model.domain is None else model.domain.cutoff, outside=outside,
                       meta=meta if meta is not None else ImageMeta(image.shape[-1], image.shape[-2], "", "L", 8),
                       population=population, image=image[0], activations=acts)


def _sets(model: LoadedModel, probs: np.ndarray, verdict: int,
          outside: bool) -> tuple[dict[float, tuple[int, ...] | None], dict[float, str]]:
    """Nested prediction sets at every coverage the model has records for, and why a level has none."""
    records = {lv: model.conformal[lv] for lv in LEVELS if lv in model.conformal}
    masks = conformal.nested_set_masks(probs[None], records, np.array([verdict]), np.array([outside]))
    sets: dict[float, tuple[int, ...] | None] = {}
    missing: dict[float, str] = {}
    for lv in LEVELS:
        m = masks.get(lv)
        sets[lv] = None if m is None else tuple(int(i) for i in np.flatnonzero(m[0]))
        if m is None:
            missing[lv] = records[lv].reason if lv in records else "no-record"
    return sets, missing


def check_level(level: float) -> float:
    """A coverage a user may pick, or a ConfigError naming the choices."""
    if level not in LEVELS:
        raise ConfigError(f"The coverage must be one of {', '.join(f'{lv:.0%}' for lv in LEVELS)}; got {level}.")
    return level
