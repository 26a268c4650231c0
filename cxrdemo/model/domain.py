"""Is this image like the ones the model learned from? A distance in the model's own feature space.

The training images are described by class-conditional Gaussians on the network's globally pooled
trunk features with one shared covariance (Mahalanobis distance, Lee et al., NeurIPS 2018), made
well-conditioned by Ledoit-Wolf shrinkage: a 512-dimensional covariance from a few thousand images
is otherwise singular. Pooled ReLU features are skewed (many near zero, a long tail); a signed square
root first makes them closer to Gaussian (the "sqrt" transform: on the demo model it flags cropped
films far more often at the same validation rate, docs/domain_measurements.md). An image's score is
its distance to the nearest class mean; the cut-off is the distance that `quantile` of the VALIDATION
images stay under (never the training images, which the network has fitted and which sit closer than
any new film). Any backbone, any number of classes.

Several stages (StagedDomainRecord, Anthony & Kamnitsas 2023: no single layer is best for Mahalanobis):
one such description per trunk stage, each stage's distance divided by its own validation quantile (so a
stage whose distances run large does not drown the others), then combined (the largest, or the sum); the
combined score's cut-off is again chosen on validation. The features of the last k stages come from the
same forward pass as the prediction (features(..., layers=k) concatenates them in stage order).

A record is plain data (numbers and float32 tensors), so it travels inside model.pt and is read
back with torch.load(weights_only=True); read_record reads either kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from cxrdemo.errors import RunError
from cxrdemo.model.backbones import Net

METHOD = "mahalanobis-shared-ledoitwolf"
METHOD_STAGES = "mahalanobis-per-stage-ledoitwolf"
COMBINES = ("max", "sum")
# 99.5%, not 99%: validation images are drawn like the training images, while a clinic's films are
# shifted; at 99% the demo model flagged 2.5% of the shifted cxr-shift films, at 99.5% 1.2% (measured).
DEFAULT_QUANTILE = 0.995
TRANSFORMS = ("none", "sqrt")
# What trust.fit_records fits: one description of the pooled features of as many of the last trunk stages as fit
# in MAX_WIDTH numbers (all five of cnn5, 992 numbers). Chosen on validation and proxy sets only, before cxr-shift
# was scored (docs/domain_measurements.md): of the variants that flag no more paediatric films, it flagged every
# framing of the one adult film, with the widest margin; the per-stage combinations flagged 8-10 of its 11.
MAX_WIDTH = 1024  # the precision factor grows as the square: 4 MB at most (resnet50's five stages: 3904, 61 MB)
VAL_SCORES_KEPT = 1000  # validation scores a record keeps (4 kB), for a histogram


@dataclass
class DomainRecord:
    """Class means and a precision factor of the training features, and a cut-off chosen on validation."""

    method: str
    means: torch.Tensor  # float32 C x D, one row per class, in the model's class order
    precision_factor: torch.Tensor  # float32 D x D upper-triangular U with precision = U^T U
    cutoff: float  # flag a score above this
    quantile: float  # share of validation images under the cut-off
    n_train: int  # training images the description was fitted on
    n_val: int  # validation images the cut-off was chosen on
    feature_dim: int
    layers: int = 1  # how many trunk stages (from the last) the features pool
    shrinkage: float = 0.0  # Ledoit-Wolf's shrinkage towards a scaled identity (0 = none, 1 = all)
    transform: str = "none"  # applied to features before the distance: none | sqrt (signed square root)
    val_scores: torch.Tensor | None = None  # float32, sorted: the validation scores (at most VAL_SCORES_KEPT)

    def to_dict(self) -> dict:
        """Plain data for model.pt (tensors and numbers only)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DomainRecord:
        """Read a record back, checking that its parts fit together."""
        names = {f.name for f in fields(cls)}
        required = names - {"layers", "shrinkage", "transform", "val_scores"}
        if not isinstance(d, dict) or not required <= set(d):
            missing = sorted(required - set(d)) if isinstance(d, dict) else sorted(required)
            raise RunError(f"The model's in-domain description is incomplete (missing {', '.join(missing)}); "
                           "add it again with the command that describes a run's training images.")
        rec = cls(**{k: v for k, v in d.items() if k in names})
        rec.means = torch.as_tensor(np.asarray(rec.means, dtype=np.float32))
        rec.precision_factor = torch.as_tensor(np.asarray(rec.precision_factor, dtype=np.float32))
        if rec.val_scores is not None:
            rec.val_scores = torch.as_tensor(np.asarray(rec.val_scores, dtype=np.float32)).reshape(-1)
        dim = int(rec.feature_dim)
        if (rec.method != METHOD or rec.means.ndim != 2 or rec.means.shape[1] != dim
                or tuple(rec.precision_factor.shape) != (dim, dim) or not np.isfinite(float(rec.cutoff))
                or rec.transform not in TRANSFORMS):
            raise RunError("The model's in-domain description is damaged (its sizes do not fit together); "
                           "add it again with the command that describes a run's training images.")
        return rec


@torch.no_grad()  # not inference_mode: callers may reuse the features in autograd code
def features(net: Net, x: torch.Tensor, layers: int = 1, batch_size: int = 64) -> torch.Tensor:
    """Globally pooled trunk features (N x D, float32) of a normalised N x 3 x S x S batch, in eval mode.

    layers=1 is the penultimate layer (what the head sees); layers=k concatenates the pooled outputs of
    the last k stages (earlier stages see texture and intensity, the last one sees what the head uses).
    """
    if not 1 <= layers <= len(net.trunk):
        raise ValueError(f"layers must be 1 to {len(net.trunk)} for {net.backbone}, got {layers}")
    was_training = net.training
    net.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            h, parts = x[i:i + batch_size], []
            for k, stage in enumerate(net.trunk):
                h = stage(h)
                if k >= len(net.trunk) - layers:
                    parts.append(net.pool(h).float())
            out.append(torch.cat(parts, 1))
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 0))


def default_layers(widths: list[int]) -> int:
    """How many of the last stages (widths: every stage's, in order) the default description pools: as many as fit
    in MAX_WIDTH numbers, at least one."""
    k = 1
    while k < len(widths) and sum(widths[-(k + 1):]) <= MAX_WIDTH:
        k += 1
    return k


def stage_widths(net: Net, x: torch.Tensor, layers: int) -> list[int]:
    """The pooled width of each of the last `layers` stages (in stage order), from the first image of `x`."""
    widths: list[int] = []
    hook = net.pool.register_forward_hook(lambda m, a, out: widths.append(int(out.shape[1])))
    try:
        features(net, x[:1], layers=layers)
    finally:
        hook.remove()
    return widths


def _as_array(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return (a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)).astype(np.float64)


def _transform(x: np.ndarray | torch.Tensor, how: str):
    """Signed square root for "sqrt" (SiLU and Hardswish features can be slightly negative); identity for "none"."""
    if how == "none":
        return x
    if isinstance(x, torch.Tensor):
        return x.sign() * x.abs().sqrt()
    return np.sign(x) * np.sqrt(np.abs(x))


def fit_domain(train_feats: torch.Tensor | np.ndarray, train_labels: torch.Tensor | np.ndarray,
               val_feats: torch.Tensor | np.ndarray, quantile: float = DEFAULT_QUANTILE,
               layers: int = 1, transform: str = "sqrt") -> DomainRecord:
    """Fit class means and a shared shrunk covariance on training features; choose the cut-off on validation."""
    from sklearn.covariance import LedoitWolf

    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    x, y, v = _as_array(train_feats), _as_array(train_labels).astype(np.int64), _as_array(val_feats)
    if x.ndim != 2 or len(x) != len(y) or v.ndim != 2 or v.shape[1] != x.shape[1]:
        raise ValueError(f"features must be N x D with one label each (train {x.shape}, {len(y)} labels, "
                         f"val {v.shape})")
    if len(v) == 0:
        raise ValueError("the cut-off needs validation images, and there are none")
    classes = np.unique(y)
    if len(classes) < 2 or classes[0] != 0 or classes[-1] != len(classes) - 1:
        raise ValueError(f"labels must be 0..C-1 with every class present, got {classes.tolist()}")
    x = _transform(x, transform)
    means = np.stack([x[y == c].mean(0) for c in classes])
    resid = x - means[y]
    # Standardise first, so shrinkage pulls towards each feature's own variance, not one scale for all.
    scale = resid.std(0) + 1e-6 * (resid.std() + 1e-12)
    lw = LedoitWolf(assume_centered=True).fit(resid / scale)
    # precision = S^-1 P S^-1; its Cholesky factor gives distances as a norm of a matrix product.
    chol = np.linalg.cholesky(lw.precision_)  # lower L, P = L L^T
    factor = (chol.T / scale[None, :]).astype(np.float32)  # U = L^T S^-1, precision = U^T U
    rec = DomainRecord(METHOD, torch.from_numpy(means.astype(np.float32)), torch.from_numpy(factor), 0.0,
                       float(quantile), len(x), len(v), int(x.shape[1]), int(layers),
                       float(lw.shrinkage_), transform)
    _set_cutoff(rec, score_domain(rec, v), quantile)
    return rec


def _set_cutoff(rec: AnyDomainRecord, val_scores: np.ndarray, quantile: float) -> None:
    """The cut-off at `quantile` of the validation scores, and the scores a histogram needs (every one, or evenly
    spaced order statistics)."""
    scores = np.sort(val_scores)
    rec.cutoff = float(np.quantile(scores, quantile))
    keep = np.unique(np.linspace(0, len(scores) - 1, min(len(scores), VAL_SCORES_KEPT)).round().astype(int))
    rec.val_scores = torch.from_numpy(scores[keep].astype(np.float32))


@dataclass
class StagedDomainRecord:
    """One DomainRecord per trunk stage (the last `layers`, in stage order), each part's cut-off its stage's
    normaliser; the combined score's cut-off chosen on validation."""

    parts: list[DomainRecord]
    combine: str  # max | sum of the normalised per-stage distances
    cutoff: float  # flag a combined score above this
    quantile: float  # share of validation images under the cut-off
    n_train: int
    n_val: int
    method: str = METHOD_STAGES
    val_scores: torch.Tensor | None = None  # float32, sorted: the validation scores (at most VAL_SCORES_KEPT)

    @property
    def layers(self) -> int:
        """How many trunk stages (from the last) the features pool: features(net, x, layers=this)."""
        return len(self.parts)

    @property
    def feature_dim(self) -> int:
        """Width of the concatenated features of those stages."""
        return sum(p.feature_dim for p in self.parts)

    @property
    def transform(self) -> str:
        """The feature transform every part applies."""
        return self.parts[0].transform

    def to_dict(self) -> dict:
        """Plain data for model.pt (with layers and transform, which the model card words)."""
        return {"method": self.method, "parts": [p.to_dict() for p in self.parts], "combine": self.combine,
                "cutoff": self.cutoff, "quantile": self.quantile, "n_train": self.n_train, "n_val": self.n_val,
                "layers": self.layers, "feature_dim": self.feature_dim, "transform": self.transform,
                **({} if self.val_scores is None else {"val_scores": self.val_scores})}

    @classmethod
    def from_dict(cls, d: dict) -> StagedDomainRecord:
        """Read a record back, checking its parts."""
        try:
            parts = [DomainRecord.from_dict(p) for p in d["parts"]]
            kept = d.get("val_scores")
            rec = cls(parts, str(d["combine"]), float(d["cutoff"]), float(d["quantile"]), int(d["n_train"]),
                      int(d["n_val"]), val_scores=None if kept is None else
                      torch.as_tensor(np.asarray(kept, dtype=np.float32)).reshape(-1))
        except (KeyError, TypeError, ValueError):
            raise RunError("The model's in-domain description is incomplete; add it again with the command that "
                           "describes a run's training images.") from None
        if not parts or rec.combine not in COMBINES or not np.isfinite(rec.cutoff) or \
                not all(p.cutoff > 0 for p in parts):
            raise RunError("The model's in-domain description is damaged (no stage, or a stage without a "
                           "positive scale); add it again with the command that describes a run's training images.")
        return rec


AnyDomainRecord = DomainRecord | StagedDomainRecord


def read_record(d: dict) -> AnyDomainRecord:
    """Either kind of record, from model.pt's plain data (older models: one description, unchanged)."""
    if isinstance(d, dict) and d.get("method") == METHOD_STAGES:
        return StagedDomainRecord.from_dict(d)
    return DomainRecord.from_dict(d)


def fit_stages(train_feats: torch.Tensor | np.ndarray, train_labels: torch.Tensor | np.ndarray,
               val_feats: torch.Tensor | np.ndarray, widths: list[int], quantile: float = DEFAULT_QUANTILE,
               stage_quantile: float = DEFAULT_QUANTILE, combine: str = "max",
               transform: str = "sqrt") -> StagedDomainRecord:
    """Fit one description per stage on the concatenated features of the last len(widths) stages (widths: each
    stage's, in stage order), each normalised by its `stage_quantile` of validation; cut-off on validation."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    x, v = _as_array(train_feats), _as_array(val_feats)
    if sum(widths) != x.shape[1]:
        raise ValueError(f"stage widths {widths} do not add up to the features' {x.shape[1]} columns")
    cols = np.cumsum([0, *widths])
    parts = [fit_domain(x[:, a:b], train_labels, v[:, a:b], stage_quantile, transform=transform)
             for a, b in zip(cols, cols[1:])]
    rec = StagedDomainRecord(parts, combine, 0.0, float(quantile), len(x), len(v))
    _set_cutoff(rec, score_domain(rec, v), quantile)
    return rec


def score_domain(record: AnyDomainRecord, feats: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each feature row's score: the Mahalanobis distance to the nearest class mean, or for a staged record the
    combined normalised per-stage distances (higher = less like training)."""
    if isinstance(record, StagedDomainRecord):
        f = torch.as_tensor(np.asarray(feats, dtype=np.float32) if not isinstance(feats, torch.Tensor) else feats)
        f = f.float().reshape(-1, record.feature_dim)
        cols = np.cumsum([0, *(p.feature_dim for p in record.parts)])
        per = np.stack([score_domain(p, f[:, a:b]) / p.cutoff for p, a, b in zip(record.parts, cols, cols[1:])])
        return per.max(0) if record.combine == "max" else per.sum(0)
    f = torch.as_tensor(np.asarray(feats, dtype=np.float32) if not isinstance(feats, torch.Tensor) else feats)
    f = _transform(f.float().reshape(-1, record.feature_dim), record.transform)
    # (f - mu_c) U^T for every class at once: C x N x D, then squared norms.
    z = (f[None] - record.means[:, None]) @ record.precision_factor.T
    return z.square().sum(-1).min(0).values.sqrt().numpy().astype(np.float64)


def in_domain(record: AnyDomainRecord, score: float) -> bool:
    """True when an image's score is within the cut-off chosen on validation."""
    return bool(np.isfinite(score) and score <= record.cutoff)


@dataclass(frozen=True)
class DomainCheck:
    """One image's in-domain reading: its distance, the cut-off, and what the cut-off was chosen on."""

    score: float  # distance to the nearest class mean of the training features
    cutoff: float
    quantile: float  # share of validation images under the cut-off
    n_train: int  # training images the description was fitted on
    inside: bool


def check_domain(record: AnyDomainRecord, score: float) -> DomainCheck:
    """The reading of one image's score against the record (views/checks.domain_sentence words it)."""
    return DomainCheck(float(score), float(record.cutoff), float(record.quantile), int(record.n_train),
                       in_domain(record, score))


def record_bytes(record: AnyDomainRecord) -> int:
    """Size of the record as torch.save writes it (what it adds to model.pt)."""
    import io

    buf = io.BytesIO()
    torch.save(record.to_dict(), buf)
    return buf.tell()
