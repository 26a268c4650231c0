"""The records that say how far to trust a model, fitted after training on its own splits and saved in model.pt.

calibration  {temperature, bias}: bias-corrected temperature scaling (model/calibration), fitted on the validation
             logits and on two perturbed copies of the validation images (the acquisition augmentation: contrast,
             gamma, blur, noise, positioning), so the probabilities stay honest on films from other sites
             (Tomani et al. 2021, post-hoc calibration for domain drift)
conformal    {levels: [ConformalRecord at 90%, at 95%]}: on the calibrated validation probabilities (model/conformal;
             an image the domain check flags is outside their promise: its set shown is every class)
domain       DomainRecord: training features described, cut-off chosen on validation (model/domain)

`fit_records` makes all three from a network and its train/val images; `Trust` reads them back (a model without
records: temperature 1, no sets, no domain check); `trust_metrics` measures them on a test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cxrdemo.data import CachedImages, augment
from cxrdemo.errors import RunError
from cxrdemo.model import calibration, conformal, domain, metrics, trust_records
from cxrdemo.model.backbones import Net
from cxrdemo.model.checkpoint import Preprocessing


@torch.no_grad()
def logits_and_features(net: Net, images: torch.Tensor, pre: Preprocessing, batch_size: int = 64,
                        layers: int = 1) -> tuple[np.ndarray, torch.Tensor]:
    """(logits N x K float32, pooled features N x D of the last `layers` stages) of uint8 N x 1 x S x S images,
    in one pass.

    The logits are bit-identical to net(x) in eval mode (the same modules in the same order), so softmax of them
    is what predict_probs returns."""
    was_training = net.training
    net.eval()
    logits, feats, pooled = [], [], []
    hook = net.pool.register_forward_hook(lambda m, a, out: pooled.append(out))
    try:
        for i in range(0, len(images), batch_size):
            feats.append(domain.features(net, pre.normalize(images[i:i + batch_size]),
                                         layers=layers))
            logits.append(net.head(pooled[-1]).float())  # the last stage pooled is what the head sees: net(x)
            pooled.clear()
    finally:
        hook.remove()
        net.train(was_training)
    if not logits:
        return np.zeros((0, 0)), torch.zeros((0, 0))
    return torch.cat(logits).numpy(), torch.cat(feats)


@torch.no_grad()
def domain_scores(net: Net, images: torch.Tensor, pre: Preprocessing, record: domain.AnyDomainRecord | None,
                  feats: torch.Tensor | None = None, batch_size: int = 64) -> np.ndarray | None:
    """Each image's in-domain score (higher = less like the training images); None when there is no record.

    `feats` are logits_and_features' pooled features of the same images: reused when they are the stages the record
    describes (layers=layers_of(record)), recomputed otherwise."""
    if record is None:
        return None
    if feats is None or feats.shape[-1] != record.feature_dim:  # other stages: one more pass (eval mode, restored)
        feats = torch.cat([domain.features(net, pre.normalize(images[i:i + batch_size]),
                                           layers=record.layers) for i in range(0, len(images), batch_size)]
                          or [torch.zeros((0, record.feature_dim))])
    return domain.score_domain(record, feats)


def layers_of(record: domain.AnyDomainRecord | None) -> int:
    """How many trunk stages the record's features pool (1 without a record: the head's features)."""
    return 1 if record is None else record.layers


def outside_domain(record: domain.AnyDomainRecord | None, scores: np.ndarray | None) -> np.ndarray | None:
    """N booleans: which images the in-domain check flags (None when there is no check)."""
    if record is None or scores is None:
        return None
    return ~np.array([domain.in_domain(record, float(s)) for s in np.asarray(scores).reshape(-1)], dtype=bool)


PERTURBED_COPIES = 2  # perturbed copies of the validation images the calibration is also fitted on
PERTURB_SEED = 0  # their own generator: fitting the records never touches the run's random state
METHOD = "bias-corrected temperature scaling on validation images and 2 perturbed copies"


@torch.no_grad()
def perturbed_logits(net: Net, images: torch.Tensor, pre: Preprocessing, copies: int = PERTURBED_COPIES,
                     seed: int = PERTURB_SEED) -> np.ndarray:
    """Logits of `copies` acquisition-perturbed versions of uint8 images (empty when the images are too small)."""
    if copies < 1 or len(images) == 0 or images.shape[-1] < 9:
        return np.zeros((0, 0))
    perturb = augment.make_augment("acquisition", int(images.shape[-1]))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        for i in range(0, len(images), 64):
            x = perturb(images[i:i + 64], g).mul_(255.0).round_().to(torch.uint8)  # back to the cache's format
            out.append(logits_and_features(net, x, pre)[0])
    return np.concatenate(out)


def fit_calibration(y_val: np.ndarray, z_val: np.ndarray, z_pert: np.ndarray) -> dict:
    """The calibration record: T and bias fitted on the validation logits plus perturbed copies' logits."""
    z_fit = np.concatenate([z_val, z_pert]) if len(z_pert) else z_val
    y_fit = np.concatenate([y_val] + [y_val] * (len(z_pert) // max(len(y_val), 1)))
    t, bias = calibration.fit_bias_corrected(z_fit, y_fit)
    p_val = calibration.apply_calibration(z_val, t, bias)
    return {"method": METHOD if len(z_pert) else "bias-corrected temperature scaling on validation images",
            "temperature": t, "bias": list(bias), "n_val": len(y_val), "n_fit": len(y_fit),
            "ece_val_before": calibration.expected_calibration_error(calibration.apply_calibration(z_val, 1.0), y_val),
            "ece_val_after": calibration.expected_calibration_error(p_val, y_val)}


def fit_trust(y_val: np.ndarray, z_val: np.ndarray, z_pert: np.ndarray, classes: tuple[str, ...],
              levels: tuple[float, ...] = conformal.LEVELS) -> dict[str, dict]:
    """The calibration and conformal records from validation logits and their perturbed copies' logits."""
    calib = fit_calibration(y_val, z_val, z_pert)
    p_val = calibration.apply_calibration(z_val, calib["temperature"], calib["bias"])
    # The sets are fitted on the clean validation images alone: fitting them on the perturbed copies too (each
    # class's quantile the widest over the three) lowered the 90% sets' gain over the single label on validation
    # (+3.3 -> +1.2 points; docs/trust_measurements.md).
    return {"calibration": calib,
            "conformal": {"levels": [conformal.fit_conformal(p_val, y_val, lv, classes).to_dict() for lv in levels]}}


def fit_records(net: Net, pre: Preprocessing, classes: tuple[str, ...], train: CachedImages,
                val: CachedImages, levels: tuple[float, ...] = conformal.LEVELS) -> dict[str, dict]:
    """calibration, conformal and domain records for model.pt, chosen on `val` (domain description on `train`)."""
    layers = default_layers(net, pre, val.images)
    z_val, f_val = logits_and_features(net, val.images, pre, layers=layers)
    records = fit_trust(val.labels.numpy(), z_val, perturbed_logits(net, val.images, pre), classes, levels)
    records["domain"] = fit_domain_record(net, pre, train, f_val, layers)
    if records["domain"] is None:
        del records["domain"]  # a class missing from the training images: prediction then skips the check
    return records


def default_layers(net: Net, pre: Preprocessing, images: torch.Tensor) -> int:
    """How many of the last stages the default in-domain description pools (domain.default_layers)."""
    x = pre.normalize(images[:1])
    return domain.default_layers(domain.stage_widths(net, x, len(net.trunk)))


def fit_domain_record(net: Net, pre: Preprocessing, train: CachedImages, f_val: torch.Tensor | CachedImages,
                      layers: int | None = None) -> dict | None:
    """The domain record (plain data) of the last `layers` stages (default: default_layers), described on `train`,
    cut-off on the validation features `f_val` (or images); None when a class has no training image."""
    layers = layers or default_layers(net, pre, train.images)
    if isinstance(f_val, CachedImages):
        f_val = logits_and_features(net, f_val.images, pre, layers=layers)[1]
    _, f_train = logits_and_features(net, train.images, pre, layers=layers)
    try:
        return domain.fit_domain(f_train, train.labels, f_val, layers=layers).to_dict()
    except ValueError:
        return None


@dataclass(frozen=True)
class Trust:
    """A model's calibration, conformal and domain records, read back (defaults: T = 1, no sets, no check)."""

    temperature: float = 1.0
    conformal: dict[float, conformal.ConformalRecord] = field(default_factory=dict)
    domain: domain.AnyDomainRecord | None = None
    bias: tuple[float, ...] = ()  # per class, added after dividing by T (older records: none)

    @classmethod
    def from_records(cls, records: dict, run: str = "?") -> Trust:
        """The records of a loaded model file; RunError with a sentence when one is damaged."""
        classes = _classes(records)
        try:
            t, bias = trust_records.read_calibration(records.get("calibration") or {}, classes)
            sets = trust_records.read_conformal(records.get("conformal") or {"levels": []}, classes)
            dom = trust_records.read_domain(records["domain"], classes) if "domain" in records else None
        except trust_records.RecordFault as fault:
            raise RunError(f"A trust record of run {run} is damaged ({fault}); fit them again with "
                           f"`python -m cxrdemo calibrate --run {run}`.") from None
        return cls(t, sets, dom, bias)

    @property
    def calibrated(self) -> bool:
        """Whether a calibration was fitted (else probabilities are the network's own)."""
        return bool(self.conformal) or self.temperature != 1.0 or any(self.bias)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of N x K logits."""
        logits = np.atleast_2d(logits)
        bias = self.bias if len(self.bias) == logits.shape[1] else None  # a record for other classes: none
        return calibration.apply_calibration(logits, self.temperature, bias)

    def cut(self, value: float | None) -> float | None:
        """The decision cut on p(class 1) moved to the calibrated scale (the same images cross it)."""
        if value is not None and value > 1.0:  # above 1: no image crosses, on either scale
            return value
        gap = self.bias[1] - self.bias[0] if len(self.bias) == 2 else 0.0
        return calibration.threshold_on_calibrated_scale(value, self.temperature, gap)


def _classes(records: dict) -> tuple[str, ...]:
    """The class names the records were fitted for (as the conformal record keeps them; else counted from them)."""
    levels = (records.get("conformal") or {}).get("levels") or [{}]
    names = levels[0].get("classes") if isinstance(levels[0], dict) else None
    if names and isinstance(names, (list, tuple)):
        return tuple(str(c) for c in names)
    bias = (records.get("calibration") or {}).get("bias") or ()
    means = (records.get("domain") or {}).get("means")
    k = len(bias) if isinstance(bias, (list, tuple)) and bias else (len(means) if means is not None else 2)
    return tuple(str(i) for i in range(k))


def coverage(probs_cal: np.ndarray, labels: np.ndarray, shown: np.ndarray | None, record: conformal.ConformalRecord,
             classes: tuple[str, ...], outside: np.ndarray | None = None) -> dict:
    """Promised and reached coverage, mean size and share 'both' of the sets shown (`shown`: NxK, from
    conformal.nested_set_masks), or why there are none; `outside`: the images the in-domain check flags."""
    if not record.ok or shown is None:
        return {"level": record.level, "ok": False, "reason": record.reason}
    report = conformal.coverage_report(shown, labels, record.level, classes)
    promise = conformal.coverage_report(conformal.conformal_masks(probs_cal, record), labels, record.level, classes)
    flagged = float(np.mean(outside)) if outside is not None and len(outside) else None
    return {**report, "ok": True, "conformal_coverage": promise["coverage"], "share_flagged": flagged}


def trust_metrics(logits: np.ndarray, labels: np.ndarray, trust: Trust, threshold: float | None,
                  classes: tuple[str, ...], resamples: int = 2000, outside: np.ndarray | None = None) -> dict:
    """ECE before/after calibration (with 95% bootstrap intervals) and the sets' coverage at each level
    (`outside`: the images the in-domain check flags, see coverage)."""
    raw = calibration.apply_calibration(logits, 1.0)
    cal = trust.probabilities(logits)
    verdicts = metrics.predict_labels(raw, threshold)
    shown = conformal.nested_set_masks(cal, trust.conformal, verdicts, outside)
    lo_b, hi_b = calibration.ece_interval(raw, labels, resamples)
    lo_a, hi_a = calibration.ece_interval(cal, labels, resamples)
    return {
        "calibration": {"temperature": trust.temperature, "bias": list(trust.bias),
                        "ece_before": calibration.expected_calibration_error(raw, labels),
                        "ece_before_ci": [lo_b, hi_b],
                        "ece_after": calibration.expected_calibration_error(cal, labels), "ece_after_ci": [lo_a, hi_a]},
        "coverage": [coverage(cal, labels, shown[lv], rec, classes, outside) for lv, rec in sorted(trust.conformal.items())],
    }
