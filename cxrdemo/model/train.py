"""Training, readable top to bottom: set-up, train_one_epoch, evaluate, the epoch loop, finish (decide, save, test).

Nothing here knows the run store: the epoch's metrics row and the run's facts leave through the one
progress callable, the source of `--init run:<id>` arrives as a loaded model file, and the run folder
receives only the model's own files (best-epoch.pt while training, then model.pt and test_metrics.json;
see model/checkpoint for when each is written).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cxrdemo import data, fileio
from cxrdemo.config import TrainConfig, parse_marker
from cxrdemo.data.marker import burn_marker, mark_images
from cxrdemo.data.scan import dataset_name, relative_path
from cxrdemo.errors import Cancelled, ConfigError
from cxrdemo.model import (
    backbones,
    checkpoint,
    evaluation,
    metrics,
    predictions,
    probes,
    speed,
    trust,
    tuning,
)
from cxrdemo.model.device import autocast, choose_device, set_threads
from cxrdemo.population import Population, training_population


@dataclass
class Progress:
    """One progress report: the worker (which keeps the run's files) and the CLI both listen to these."""

    phase: str  # prepare | train | val | test | done
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    message: str = ""
    row: dict = field(default_factory=dict)  # the epoch's metrics row once an epoch ends (a line of metrics.csv)
    meta: dict = field(default_factory=dict)  # facts about the run found in set-up (dataset, device...): config.json


ProgressFn = Callable[[Progress], None]
FEATURE_CACHE = True  # tests switch it off to check the fast path against the ordinary one


def preprocessing_for(config: TrainConfig) -> checkpoint.Preprocessing:
    """The preprocessing a run trains with: it is applied in training and saved, as is, in model.pt."""
    return checkpoint.Preprocessing(config.img_size, config.intensity, data.IMAGENET_MEAN, data.IMAGENET_STD)


# ---------------------------------------------------------------- set-up

def init_from_run(net: backbones.Net, source: checkpoint.ModelFile, ref: str, classes: tuple[str, ...]) -> str:
    """Load a finished run's weights into `net`; the head is kept only when the classes match."""
    if source.backbone != net.backbone:
        raise ConfigError(f"Run {ref} trained a {source.backbone}, not a {net.backbone}: choose that backbone "
                          f"to start from it.")
    state = source.state_dict
    same_classes = source.classes == tuple(classes)
    if not same_classes:
        # A new task (e.g. CheXNet -> COVID): keep the trunk, start the head afresh.
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"Run {ref} has a different head layout; its weights do not fit ({exc}).") from None
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ConfigError(f"Run {ref}'s weights do not fit this network.")
    return "trunk and head" if same_classes else "trunk only (new head for the new classes)"


def build_model(config: TrainConfig, classes: tuple[str, ...],
                source: checkpoint.ModelFile | None = None) -> tuple[backbones.Net, str]:
    """The network for `config`, initialised as asked (`source`: the model of run:<id>); returns (net, a note)."""
    init = config.init
    net = backbones.build_backbone(config.backbone, len(classes), init="imagenet" if init == "imagenet" else "scratch",
                                   head=config.head, dropout=config.dropout)
    note = {"imagenet": "ImageNet weights", "scratch": "random initialisation"}.get(init, "")
    if init.startswith("run:"):
        if source is None:
            raise ConfigError(f"Run {init[4:]} was not found: it cannot be a starting point.")
        note = "weights of run " + init[4:] + ": " + init_from_run(net, source, init[4:], classes)
    return net, note


def make_optimizer(config: TrainConfig, net: backbones.Net) -> torch.optim.Optimizer:
    """Adam (default) or SGD; after a gradual unfreeze the trunk may learn more slowly than the head."""
    trunk_lr = config.lr * (config.trunk_lr_factor if config.gradual_epoch else 1.0)
    groups = [{"params": list(net.trunk.parameters()), "lr": trunk_lr, "name": "trunk"},
              {"params": list(net.head.parameters()), "lr": config.lr, "name": "head"}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


# ---------------------------------------------------------------- one epoch

def _check(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("Training was cancelled.")


def train_one_epoch(model: nn.Module, loader, inputs: Callable[[torch.Tensor], torch.Tensor], opt, loss_fn,
                    report: Callable[[int, int], None], should_stop=None,
                    after_step: Callable[[], None] | None = None,
                    amp: torch.dtype | None = None) -> tuple[float, float, int]:
    """One pass over `loader` (forward under autocast `amp` when given); returns (mean loss, accuracy, images seen)."""
    model.train()
    total_loss, correct, seen, n_batches = 0.0, 0, 0, len(loader)
    for i, (x, y) in enumerate(loader, 1):
        _check(should_stop)
        x = inputs(x)
        with autocast(x.device, amp):
            logits = model(x)
        logits = logits.float()
        y = y.to(logits.device)  # inputs() moved the images to the model's device
        loss = loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise ConfigError("The training loss became infinite or NaN: lower the learning rate.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        total_loss += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        report(i, n_batches)
    return total_loss / max(1, seen), correct / max(1, seen), seen


@torch.inference_mode()
def predict_tensor(model: nn.Module, x: torch.Tensor, inputs: Callable[[torch.Tensor], torch.Tensor],
                   batch_size: int = 64, amp: torch.dtype | None = None) -> torch.Tensor:
    """Softmax probabilities of `model` over a stored tensor, in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = inputs(x[i:i + batch_size])
        with autocast(xb.device, amp):
            logits = model(xb)
        out.append(torch.softmax(logits.float(), 1).cpu())  # metrics are computed on the CPU
    return torch.cat(out) if out else torch.zeros(0, 1)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, inputs, classes, threshold=None,
             weight: torch.Tensor | None = None, amp: torch.dtype | None = None) -> tuple[float, dict, np.ndarray]:
    """(loss, metrics dict, probabilities) of `model` on stored inputs."""
    probs = predict_tensor(model, x, inputs, amp=amp)
    loss = float(nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y, weight=weight)) if len(y) else math.nan
    p = probs.numpy()
    return loss, metrics.classification_metrics(y.numpy(), p, classes, threshold), p


# ---------------------------------------------------------------- the loop

class _Inputs:
    """uint8 images -> (augmented) normalised float batch by the preprocessing record, channels-last when faster."""

    def __init__(self, pre: checkpoint.Preprocessing, augment=None, channels_last: bool = False,
                 generator: torch.Generator | None = None, device: torch.device | None = None):
        self.pre, self.augment, self.channels_last, self.generator = pre, augment, channels_last, generator
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            # uint8 crosses the bus (4x less than float), from pinned memory on a GPU so the copy overlaps.
            x = x.to(self.device, non_blocking=True)
        if self.augment is not None:
            # On the model's device (a GPU's cores, not the host's few); its random numbers still come from the
            # CPU generator, so a seed gives the same augmentation on every device.
            x = self.augment(x, self.generator)
        x = self.pre.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class _Training:
    """What set-up makes for the epoch loop, and the loop's running state (the best epoch so far)."""

    config: TrainConfig
    run_dir: Path
    scan: data.DatasetScan
    cache: dict[str, data.CachedImages]
    net: backbones.Net
    init_note: str
    threads: int
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    tuner: tuning.InRunTrial | None
    augment: Callable | None
    plain: _Inputs  # validation, probes and trunk features: no augmentation
    train_inputs: _Inputs
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.StepLR | None
    weight: torch.Tensor | None  # class weights of the loss (balance=loss), also used for the validation loss
    loss_fn: nn.Module
    ema: torch.optim.swa_utils.AveragedModel | None
    panel: probes.Panel | None
    feature_cache: dict[str, torch.Tensor] | None = None  # trunk features per split, while the whole trunk is frozen
    best_score: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    @property
    def classes(self) -> tuple[str, ...]:
        """The dataset's classes, in label order."""
        return self.scan.classes

    @property
    def validated(self) -> nn.Module:
        """The network each epoch validates and saves: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def after_step(self) -> None:
        """After each optimiser step: move the weight average (when there is one)."""
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def to_device(self, features: torch.Tensor) -> torch.Tensor:
        """Cached trunk features live on the CPU: the head trains on the model's device."""
        return features.to(self.device)

    def meta(self, speed_trial: dict) -> dict:
        """What the run's config.json records about how it trains (see _run_meta)."""
        return _run_meta(self.scan.summary(), self.scan.root, self.threads, self.init_note, self.cache, self.device,
                         self.amp, self.channels_last, speed_trial)

    def release(self) -> None:
        """Drop the training copy, its gradients, Adam state and cached features (finish reloads the best epoch)."""
        self.net = self.opt = self.sched = self.ema = self.feature_cache = None


def fit(config: TrainConfig, run_dir: Path, progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None, source: checkpoint.ModelFile | None = None,
        roots: list[str] | None = None) -> dict:
    """Train `config` into `run_dir` (best-epoch.pt, then model.pt and test_metrics.json); returns the test metrics.

    `source` is the model file of `config.init = run:<id>`, resolved by the caller. When cancelled after at
    least one finished epoch, model.pt is still written (the best epoch, its decision chosen on validation,
    no test) before Cancelled propagates: finished epochs are kept. `roots`: see data.scan_dataset.
    """
    say = progress or (lambda p: None)
    t = set_up(config, Path(run_dir), say, source, roots)
    try:
        for epoch in range(1, config.epochs + 1):
            _check(should_stop)
            row = run_epoch(t, epoch, say, should_stop)
            say(Progress("val", epoch, config.epochs, message=f"Epoch {epoch} done", row=row))
            if config.patience and t.bad_epochs >= config.patience:
                say(Progress("val", epoch, config.epochs,
                             message=f"Early stop: no {config.select.replace('_', ' ')} gain for {t.bad_epochs} epochs"))
                break
    except Cancelled:
        if t.best_epoch:
            t.release()
            finish(t.run_dir, config, t.classes, t.cache, t.best_epoch, say, test=False,
                   population=_population(config, t.scan, source))
        raise
    t.release()
    return finish(t.run_dir, config, t.classes, t.cache, t.best_epoch, say, root=t.scan.root,
                  population=_population(config, t.scan, source))


def _population(config: TrainConfig, scan: data.DatasetScan, source: checkpoint.ModelFile | None
                ) -> Population | None:
    """Whom the training films came from: as stated, else the dataset's POPULATION.json, else the parent run's
    (only when it learnt from the same data: a fine-tune on other films does not inherit the children's ages)."""
    same_data = source is not None and source.config.get("data") == dataset_name(config.data)
    return training_population(Population.stated(config.population_age, config.population_source),
                               scan.population, source.population if source else None, same_data=same_data)


def set_up(config: TrainConfig, run_dir: Path, say: ProgressFn,
           source: checkpoint.ModelFile | None = None, roots: list[str] | None = None) -> _Training:
    """Seed, read the data once, build the network, choose arithmetic and layout, make the optimiser and probes."""
    threads = set_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    pre = preprocessing_for(config)
    scan, cache = _read_dataset(config, pre, say, threads, roots)
    net, init_note = build_model(config, scan.classes, source)
    device = choose_device()
    net.set_freeze(backbones.frozen_groups(config.freeze, config.backbone, 1))  # the trial times epoch 1's work
    say(Progress("prepare", message="Choosing arithmetic and memory layout (a short timed trial, remembered)"))
    how = speed.choose(net, device, precision=config.precision, backbone=config.backbone, img_size=config.img_size,
                       batch_size=config.batch_size, n_classes=len(scan.classes),
                       batches_per_epoch=math.ceil(len(cache["train"].labels) / config.batch_size),
                       hint_channels_last=backbones.get_spec(config.backbone).channels_last)
    tuner = tuning.start(how)  # a small data set: the other candidates are timed between epochs
    if how.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net = net.to(device)  # before the optimiser is made: it must hold the device's parameters
    say(Progress("prepare", meta=_run_meta(scan.summary(), scan.root, threads, init_note, cache, device, how.amp,
                                           how.channels_last, how.record())))
    augment = data.make_augment(config.augment, config.img_size)
    gen = torch.Generator().manual_seed(config.seed)
    plain = _Inputs(pre, None, how.channels_last, None, device)
    train_inputs = _Inputs(pre, augment, how.channels_last, gen, device)
    opt = make_optimizer(config, net)
    sched = torch.optim.lr_scheduler.StepLR(opt, config.step_size, config.gamma) if config.step_size else None
    weight = data.class_weights(cache["train"].labels, len(scan.classes)) if config.balance == "loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    # Self-ensembling: an exponential moving average of the weights (and BN statistics) is what gets
    # validated and saved; it smooths the epoch-to-epoch swings of small-data training.
    ema = (torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_update(config.ema), use_buffers=True)
           if config.ema else None)
    panel = probes.start_panel(run_dir, config, cache["val"], scan.root, scan.classes)
    return _Training(config, run_dir, scan, cache, net, init_note, threads, device, how.amp, how.channels_last, tuner,
                     augment, plain, train_inputs, opt, sched, weight, loss_fn, ema, panel)


def run_epoch(t: _Training, epoch: int, say: ProgressFn, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train one epoch, validate, keep the weights when they are the best so far, record the probes; the metrics row."""
    config = t.config
    n_frozen = backbones.frozen_groups(config.freeze, config.backbone, epoch)
    t.net.set_freeze(n_frozen)
    trainable = sum(p.numel() for p in t.net.parameters() if p.requires_grad)
    start = time.perf_counter()
    tr_loss, tr_acc, seen, path = _train_epoch(t, epoch, n_frozen, say, should_stop)
    train_s = time.perf_counter() - start
    say(Progress("val", epoch, config.epochs, message="Validating"))
    val_loss, val_m = _validate(t, path)
    if path == "full":
        _try_other_arithmetic(t, epoch, say, should_stop)
    lr = t.opt.param_groups[-1]["lr"]
    if t.sched:
        t.sched.step()
    row = {"epoch": epoch, "train_loss": tr_loss, "val_loss": val_loss, "train_acc": tr_acc,
           "val_acc": val_m["accuracy"], "val_precision": val_m["precision"], "val_recall": val_m["recall"],
           "val_f1": val_m["f1"], "val_micro_recall": val_m["micro_recall"], "val_auroc": val_m["auroc"],
           "lr": lr, "seconds": round(time.perf_counter() - start, 3), "images_per_s": round(seen / train_s, 2),
           "trainable_params": trainable, "frozen_groups": n_frozen, "path": path}
    _keep_if_best(t, epoch, val_loss, val_m, path)
    if t.panel is not None:
        # the network the epoch validated (the weight average when there is one), whole, in eval mode
        row["probe_s"] = probes.record_epoch(t.panel, t.validated, t.plain, epoch,
                                             trunk_frozen=n_frozen == len(t.net.trunk))
    return row


def _train_epoch(t: _Training, epoch: int, n_frozen: int, say: ProgressFn,
                 should_stop: Callable[[], bool] | None) -> tuple[float, float, int, str]:
    """(loss, accuracy, images seen, path) of one epoch on the faster path that gives the same head."""
    config = t.config
    report = lambda i, n: say(Progress("train", epoch, config.epochs, i, n))  # noqa: E731
    pin = t.device.type == "cuda"
    if FEATURE_CACHE and n_frozen == len(t.net.trunk) and t.augment is None:
        # Whole trunk frozen and inputs deterministic: trunk features never change, compute them once.
        features = _trunk_feature_cache(t, epoch, say)
        loader = data.make_loader(data.CachedImages(features["train"], t.cache["train"].labels, [], []),
                                  config.batch_size, balance=config.balance, seed=config.seed + epoch, pin_memory=pin)
        return (*train_one_epoch(t.net.head, loader, t.to_device, t.opt, t.loss_fn, report, should_stop,
                                 t.after_step, t.amp), "cached-features")
    loader = data.make_loader(t.cache["train"], config.batch_size, balance=config.balance, seed=config.seed + epoch,
                              pin_memory=pin)
    report = t.tuner.watch(report) if t.tuner is not None else report
    return (*train_one_epoch(t.net, loader, t.train_inputs, t.opt, t.loss_fn, report, should_stop, t.after_step,
                             t.amp), "full")


def _trunk_feature_cache(t: _Training, epoch: int, say: ProgressFn) -> dict[str, torch.Tensor]:
    """Each split's pooled trunk features, computed at the first head-only epoch."""
    if t.feature_cache is None:
        say(Progress("prepare", epoch, t.config.epochs, message="Computing trunk features once"))
        t.feature_cache = {}
        for split, c in t.cache.items():
            # the probes' CAM-layer output is read off this same pass over the validation images
            with probes.capture_activations(t.panel if split == "val" else None, t.net):
                t.feature_cache[split] = _trunk_features(t.net, c.images, t.plain, t.amp)
    return t.feature_cache


def _validate(t: _Training, path: str) -> tuple[float, dict]:
    """(loss, metrics) on the validation split of the network the epoch validates, on the path it trained."""
    model, x, inputs = t.validated, t.cache["val"].images, t.plain
    if path == "cached-features":
        model, x, inputs = model.head, t.feature_cache["val"], t.to_device
    loss, m, _ = evaluate(model, x, t.cache["val"].labels, inputs, t.classes, weight=t.weight, amp=t.amp)
    return loss, m


def _try_other_arithmetic(t: _Training, epoch: int, say: ProgressFn, should_stop: Callable[[], bool] | None) -> None:
    """Between epochs, a few steps of another candidate on throwaway copies; maybe switch (model/tuning)."""
    if t.tuner is None or t.tuner.finished:
        return
    config = t.config
    new = t.tuner.after_epoch(epoch, t.net, t.opt, lambda: data.make_loader(
        t.cache["train"], config.batch_size, balance=config.balance, seed=config.seed),
        t.train_inputs, lambda m, b, i, o, r, a: train_one_epoch(m, b, i, o, t.loss_fn, r, should_stop, amp=a))
    if new is None:
        return
    t.amp, t.channels_last = new.amp, new.channels_last
    for m in (t.net, t.ema.module if t.ema else None):  # in place: the optimiser keeps its parameters
        if m is not None:
            m.to(memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    t.plain.channels_last = t.train_inputs.channels_last = t.channels_last
    say(Progress("val", epoch, config.epochs, meta=t.meta(new.record())))


def _keep_if_best(t: _Training, epoch: int, val_loss: float, val_m: dict, path: str) -> None:
    """Save the validated weights as best-epoch.pt when this epoch's score beats every earlier one."""
    # Lower is better for both scores; NaN (e.g. AUROC of a one-class val split) never counts as better.
    score = val_loss if t.config.select == "val_loss" else -val_m["auroc"]
    if score < t.best_score:
        t.best_score, t.best_epoch, t.bad_epochs = score, epoch, 0
        checkpoint.save_best_epoch(t.run_dir, t.validated.state_dict(), epoch, val_loss, path)
    else:
        t.bad_epochs += 1


def _read_dataset(config: TrainConfig, pre: checkpoint.Preprocessing, say: ProgressFn,
                  threads: int = 1, roots: list[str] | None = None
                  ) -> tuple[data.DatasetScan, dict[str, data.CachedImages]]:
    """Scan the dataset and decode each split once, preprocessed by the record the model will carry."""
    say(Progress("prepare", message="Scanning the dataset"))
    scan = data.scan_dataset(config.data, seed=config.split_seed, max_per_split=config.max_images,
                             by_patient=config.split_by == "patient", train_share=config.train_share,
                             roots=roots)
    cache = {}
    for split in ("train", "val", "test"):
        if scan.splits.get(split):
            say(Progress("prepare", message=f"Decoding {split} images (once; cached for later runs)"))
            cache[split] = pre.load(scan.splits[split], workers=threads)
    if "val" not in cache or len(cache["val"].labels) == 0:
        raise ConfigError("The dataset has no validation images; add a val/ folder or more images per class.")
    marker = parse_marker(config.marker)
    if marker:
        # The shortcut lesson: the data a developer holds (train and val) carries the tag; the test is clean.
        if marker[0] not in scan.classes:
            raise ConfigError(f"The marker's class {marker[0]!r} is not one of this dataset's classes: "
                              f"{', '.join(scan.classes)}.")
        k = scan.classes.index(marker[0])
        for split in ("train", "val"):
            c = cache[split]
            cache[split] = data.CachedImages(mark_images(c.images, c.labels, k, marker[1], config.seed), c.labels,
                                             c.paths, c.skipped)
    if len(cache["train"].labels) == 0:
        raise ConfigError("No training image could be read.")
    return scan, cache


def ema_update(decay: float):
    """The weight-average step with warm-up: decay min(decay, n / (n + 1)) after n updates.

    Until 1 / (1 - decay) steps have passed this is the plain mean of every step so far, then the
    exponential average. A fixed 0.998 from the start still holds 15% of the random initialisation
    after 1,000 steps (7 epochs of cxr-large): early epochs then validate a blend that predicts one class.
    """
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (BN batch counters): keep the latest
            torch._foreach_copy_(averaged, current)
            return
        n = float(n)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, n / (n + 1.0)))
    return update


def _trunk_features(net: backbones.Net, images: torch.Tensor, inputs, amp: torch.dtype | None = None,
                    batch_size: int = 64) -> torch.Tensor:
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = inputs(images[i:i + batch_size])
            with autocast(x.device, amp):
                out.append(net.pool(net.frozen_features(x)).float())
    return torch.cat(out).clone().cpu() if out else torch.zeros(0)


def choose_decision(config: TrainConfig, net: backbones.Net, val: data.CachedImages, inputs: _Inputs,
                    classes: tuple[str, ...]) -> checkpoint.Decision:
    """The decision record: the config's rule with its p(class 1) cut chosen on validation (argmax has none)."""
    if not config.threshold.tuned or len(classes) != 2:
        return checkpoint.Decision()
    _, _, val_probs = evaluate(net, val.images, val.labels, inputs, classes)
    try:
        value = metrics.choose_threshold(val.labels.numpy(), val_probs, config.threshold)
    except ValueError:
        raise ConfigError(f"The decision rule {config.threshold} needs validation images of both classes; "
                          "this validation split has only one.") from None
    return checkpoint.Decision(str(config.threshold), value)


def finish(run_dir: Path, config: TrainConfig, classes: tuple[str, ...], cache: dict, best_epoch: int,
           say: ProgressFn, *, test: bool = True, root: str = "", population: Population | None = None) -> dict:
    """Reload the best epoch, decide on validation, write model.pt once (complete), then measure it on the test split."""
    if not best_epoch:
        raise ConfigError("No epoch produced a finite validation score (loss, or AUROC with --select val_auroc); "
                          "nothing was saved.")
    state, epoch, val_loss, path = checkpoint.load_best_epoch(run_dir)
    model = checkpoint.ModelFile(config.backbone, tuple(classes), state, preprocessing_for(config), head=config.head,
                                 dropout=config.dropout, epoch=epoch, val_loss=val_loss, train_path=path,
                                 config=config.to_dict(), population=population)
    net = checkpoint.rebuild_net(model)
    plain = _Inputs(model.preprocessing)
    model = replace(model, decision=choose_decision(config, net, cache["val"], plain, classes))
    say(Progress("test", best_epoch, config.epochs, message="Calibrating and describing the training images"))
    # Temperature, conformal quantiles and the in-domain cut-off are chosen on validation, and saved with the decision.
    model = replace(model, records=trust.fit_records(net, model.preprocessing, classes, cache["train"], cache["val"]))
    checkpoint.save(model, run_dir / checkpoint.MODEL_FILE)
    checkpoint.discard_best_epoch(run_dir)
    if not test:
        return {}
    result: dict = {}
    threshold = model.decision.value
    if "test" in cache and len(cache["test"].labels):
        say(Progress("test", best_epoch, config.epochs, message="Testing the best model"))
        fitted = trust.Trust.from_records(model.records, run_dir.name)
        # per image, as Diagnosis shows it: calibrated probabilities and the 90% set beside the raw softmax
        result, out = evaluation.evaluate_split(net, model.preprocessing, tuple(classes), threshold, fitted,
                                                cache["test"], root=root, out=run_dir / predictions.FILE)
        result.update(loss=out.loss(), best_epoch=best_epoch, threshold=threshold, split="test",
                      y_true=cache["test"].labels.tolist(), probs=np.round(out.probs, 6).tolist(),
                      calibrated_probs=np.round(fitted.probabilities(out.logits), 6).tolist())
        if config.marker:
            # The same test images with the tag burned into every one: what the model reads when it sees it.
            m_loss, marked, m_probs = evaluate(net, burn_marker(cache["test"].images), cache["test"].labels, plain,
                                               classes, threshold)
            result["marked"] = {**marked, "loss": m_loss, "probs": np.round(m_probs, 6).tolist()}
        fileio.atomic_write_json(run_dir / "test_metrics.json", result)
    say(Progress("done", best_epoch, config.epochs, message="Finished"))
    return result


def _run_meta(scan_summary: dict, root: str, threads: int, init_note: str, cache: dict, device: torch.device,
              amp: torch.dtype | None, channels_last: bool, speed_trial: dict | None = None) -> dict:
    """What the run's config.json records about how it trained."""
    decode_skips = [(relative_path(p, root), r) for c in cache.values() for p, r in c.skipped]
    return dict(dataset=scan_summary, threads=threads, init_note=init_note, device=str(device),
                precision="bfloat16 mixed precision" if amp is not None else "float32",
                memory_format="channels-last" if channels_last else "contiguous", speed_trial=speed_trial or {},
                decode_skipped=[{"path": p, "reason": r} for p, r in decode_skips[:50]],
                n_decode_skipped=len(decode_skips))
