"""Training, readable top to bottom: set-up, train_one_epoch, evaluate, the epoch loop, the test."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cxrdemo.config import TrainConfig
from cxrdemo.data import dataset as data
from cxrdemo.errors import Cancelled, ConfigError, RunError
from cxrdemo.model import backbones, metrics
from cxrdemo.runs import store as runs


@dataclass
class Progress:
    """One progress report: the job runner and the CLI both listen to these."""

    phase: str  # prepare | train | val | test | done
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    message: str = ""
    row: dict = field(default_factory=dict)  # the epoch's metrics row once an epoch ends


ProgressFn = Callable[[Progress], None]
FEATURE_CACHE = True  # tests switch it off to check the fast path against the ordinary one


def default_threads() -> int:
    """Cores this process may use (affinity-aware), shared by the concurrent jobs."""
    if os.environ.get("CXRDEMO_THREADS", "").isdigit() and int(os.environ["CXRDEMO_THREADS"]) > 0:
        return int(os.environ["CXRDEMO_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, int(os.environ.get("CXRDEMO_MAX_JOBS", "1") or 1))
    return max(1, cores // jobs)


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (0 = choose); the loader runs in-process, so there is no oversubscription."""
    n = n or default_threads()
    torch.set_num_threads(n)
    return n


def choose_device() -> torch.device:
    """$CXRDEMO_DEVICE (cpu, cuda, cuda:1, ...), else the GPU when there is one, else the CPU."""
    env = os.environ.get("CXRDEMO_DEVICE", "").strip()
    try:
        device = torch.device(env) if env else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise ConfigError(f"CXRDEMO_DEVICE={env!r} is not a device: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"CXRDEMO_DEVICE={env!r} asks for a GPU, but this machine has no usable CUDA GPU.")
    return device


def choose_precision(precision: str, device: torch.device, backbone: str) -> torch.dtype | None:
    """The autocast dtype for training (None = plain float32).

    auto: bfloat16 where the hardware runs it natively and the backbone gains from it: CUDA GPUs with bf16,
    and CPUs with AMX for backbones of dense convolutions (2-3x faster per step, benchmarks/bench_precision.py);
    depthwise backbones (MobileNet, EfficientNet) gain nothing from bf16 on a CPU and stay float32.
    Weights, optimiser state and everything after training (threshold, test, prediction) stay float32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx and backbones.get_spec(backbone).bf16 else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for a forward pass, or nothing when `dtype` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def preprocessing_record(img_size: int, intensity: str = "none") -> dict:
    """What a saved model needs to preprocess an image exactly as in training."""
    return {"img_size": img_size, "intensity": intensity, "mean": list(data.IMAGENET_MEAN), "std": list(data.IMAGENET_STD),
            "resize": "whole image squashed to a square, bilinear with antialias", "channels": 3}


# ---------------------------------------------------------------- set-up

def source_run(ref: str, runs_dir: Path | None = None) -> Path:
    """The folder of a completed run that another run may start from (ConfigError with the reason otherwise)."""
    try:
        d = runs.run_dir(ref, runs_dir)
        state = runs.read_status(d).get("state") if (d / "status.json").exists() else "completed"
    except RunError as exc:
        raise ConfigError(f"Cannot start from run {ref}: {exc}") from None
    if state != "completed":
        raise ConfigError(f"Run {ref} is {state}, not completed: it cannot be a starting point.")
    return d


def check_startable(config: TrainConfig, runs_dir: Path | None = None) -> None:
    """Refuse up front, before a run is created, what the recipe itself gets wrong (backbone, freeze, source run)."""
    spec = backbones.get_spec(config.backbone)
    backbones.frozen_groups(config.freeze, config.backbone)
    if config.init == "imagenet" and not spec.supports_imagenet:
        raise ConfigError(f"{config.backbone} is trained from scratch: ImageNet weights exist only for torchvision "
                          "backbones.")
    if config.init.startswith("run:"):
        d = source_run(config.init[4:], runs_dir)
        try:
            other = (runs.read_json(d / "config.json").get("config") or {}).get("backbone")
        except RunError:
            other = None
        if other and other != config.backbone:
            raise ConfigError(f"Run {config.init[4:]} trained a {other}, not a {config.backbone}: choose that "
                              "backbone to start from it.")


def init_from_run(net: backbones.Net, ref: str, classes: tuple[str, ...], runs_dir: Path | None) -> str:
    """Load a finished run's weights into `net`; the head is kept only when the classes match."""
    d = source_run(ref, runs_dir)
    ckpt = runs.load_checkpoint(d / "model.pt")
    if ckpt["backbone"] != net.backbone:
        raise ConfigError(f"Run {ref} trained a {ckpt['backbone']}, not a {net.backbone}: choose that backbone "
                          f"to start from it.")
    state = ckpt["state_dict"]
    same_classes = tuple(ckpt.get("classes", ())) == tuple(classes)
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


def build_model(config: TrainConfig, classes: tuple[str, ...], runs_dir: Path | None = None) -> tuple[backbones.Net, str]:
    """The network for `config`, initialised as asked; returns (net, a note on what was loaded)."""
    init = config.init
    net = backbones.build_backbone(config.backbone, len(classes), init="imagenet" if init == "imagenet" else "scratch",
                                   head=config.head, dropout=config.dropout)
    note = {"imagenet": "ImageNet weights", "scratch": "random initialisation"}.get(init, "")
    if init.startswith("run:"):
        note = "weights of run " + init[4:] + ": " + init_from_run(net, init[4:], classes, runs_dir)
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
    """uint8 images -> (augmented) normalised float batch, channels-last when that is faster."""

    def __init__(self, augment, channels_last: bool, generator: torch.Generator | None,
                 device: torch.device | None = None):
        self.augment, self.channels_last, self.generator = augment, channels_last, generator
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            x = self.augment(x, self.generator)  # on the CPU: its random numbers come from a CPU generator
        if self.device is not None:
            x = x.to(self.device, non_blocking=True)  # uint8 crosses the bus, 4x less than float
        x = data.normalize_batch(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def fit(config: TrainConfig, run_dir: Path, progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None, runs_dir: Path | None = None) -> dict:
    """Train `config` into `run_dir` (metrics.csv, model.pt, test_metrics.json); returns the test metrics."""
    say = progress or (lambda p: None)
    run_dir = Path(run_dir)
    threads = set_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    say(Progress("prepare", message="Scanning the dataset"))
    scan = data.scan_dataset(config.data, seed=config.split_seed, max_per_split=config.max_images)
    classes = scan.classes
    cache = {}
    for split in ("train", "val", "test"):
        if scan.splits.get(split):
            say(Progress("prepare", message=f"Decoding {split} images (once; cached for later runs)"))
            cache[split] = data.load_images(scan.splits[split], config.img_size)
            if config.intensity != "none":
                c = cache[split]
                cache[split] = data.CachedImages(data.adjust_intensity(c.images, config.intensity), c.labels,
                                                 c.paths, c.skipped)
    if "val" not in cache or len(cache["val"].labels) == 0:
        raise ConfigError("The dataset has no validation images; add a val/ folder or more images per class.")
    if len(cache["train"].labels) == 0:
        raise ConfigError("No training image could be read.")
    net, init_note = build_model(config, classes, runs_dir)
    spec = backbones.get_spec(config.backbone)
    channels_last = spec.channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    device = choose_device()
    net = net.to(device)  # before the optimiser is made: it must hold the device's parameters
    amp = choose_precision(config.precision, device, config.backbone)
    n_trunk = len(net.trunk)
    augment = data.make_augment(config.augment, config.img_size)
    gen = torch.Generator().manual_seed(config.seed)
    plain = _Inputs(None, channels_last, None, device)
    train_inputs = _Inputs(augment, channels_last, gen, device)
    to_device = lambda f: f.to(device)  # noqa: E731 - cached trunk features live on the CPU
    opt = make_optimizer(config, net)
    sched = torch.optim.lr_scheduler.StepLR(opt, config.step_size, config.gamma) if config.step_size else None
    y_train = cache["train"].labels
    weight = data.class_weights(y_train, len(classes)) if config.balance == "loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    loader = data.make_loader(cache["train"], config.batch_size, balance=config.balance, seed=config.seed)
    _update_meta(run_dir, scan.summary(), threads, init_note, {s: c.skipped for s, c in cache.items()}, str(device),
                 "bfloat16 mixed precision" if amp is not None else "float32", channels_last)
    runs.write_status(run_dir, device=str(device))

    # Self-ensembling: an exponential moving average of the weights (and BN statistics) is what gets
    # validated and saved; it smooths the epoch-to-epoch swings of small-data training.
    ema = (torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_update(config.ema), use_buffers=True)
           if config.ema else None)
    after_step = (lambda: ema.update_parameters(net)) if ema is not None else None
    best_score, best_epoch, bad_epochs, feature_cache = math.inf, 0, 0, None
    for epoch in range(1, config.epochs + 1):
        _check(should_stop)
        n_frozen = backbones.frozen_groups(config.freeze, config.backbone, epoch)
        net.set_freeze(n_frozen)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        t0 = time.perf_counter()
        report = lambda i, n, e=epoch: say(Progress("train", e, config.epochs, i, n))  # noqa: E731
        if FEATURE_CACHE and n_frozen == n_trunk and augment is None:
            # Whole trunk frozen and inputs deterministic: trunk features never change, compute them once.
            if feature_cache is None:
                say(Progress("prepare", epoch, config.epochs, message="Computing trunk features once"))
                feature_cache = {s: _trunk_features(net, c.images, plain, amp) for s, c in cache.items()}
            f_loader = data.make_loader(data.CachedImages(feature_cache["train"], y_train, [], []),
                                        config.batch_size, balance=config.balance, seed=config.seed + epoch)
            tr_loss, tr_acc, seen = train_one_epoch(net.head, f_loader, to_device, opt, loss_fn, report, should_stop,
                                                    after_step, amp)
            ev_model, ev_x, ev_inputs, path = ((ema.module if ema else net).head, feature_cache["val"], to_device,
                                               "cached-features")
        else:
            loader = data.make_loader(cache["train"], config.batch_size, balance=config.balance,
                                      seed=config.seed + epoch)
            tr_loss, tr_acc, seen = train_one_epoch(net, loader, train_inputs, opt, loss_fn, report, should_stop,
                                                    after_step, amp)
            ev_model, ev_x, ev_inputs, path = (ema.module if ema else net), cache["val"].images, plain, "full"
        train_s = time.perf_counter() - t0
        say(Progress("val", epoch, config.epochs, message="Validating"))
        val_loss, val_m, _ = evaluate(ev_model, ev_x, cache["val"].labels, ev_inputs, classes, weight=weight, amp=amp)
        lr = opt.param_groups[-1]["lr"]
        if sched:
            sched.step()
        row = {"epoch": epoch, "train_loss": tr_loss, "val_loss": val_loss, "train_acc": tr_acc,
               "val_acc": val_m["accuracy"], "val_precision": val_m["precision"], "val_recall": val_m["recall"],
               "val_f1": val_m["f1"], "val_micro_recall": val_m["micro_recall"], "val_auroc": val_m["auroc"],
               "lr": lr, "seconds": round(time.perf_counter() - t0, 3), "images_per_s": round(seen / train_s, 2),
               "trainable_params": trainable, "frozen_groups": n_frozen, "path": path}
        runs.append_metrics(run_dir, row)
        # Lower is better for both scores; NaN (e.g. AUROC of a one-class val split) never counts as better.
        score = val_loss if config.select == "val_loss" else -val_m["auroc"]
        if score < best_score:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            save_model(run_dir, ema.module if ema else net, config, classes, epoch, val_loss, path)
        else:
            bad_epochs += 1
        say(Progress("val", epoch, config.epochs, message=f"Epoch {epoch} done", row=row))
        if config.patience and bad_epochs >= config.patience:
            say(Progress("val", epoch, config.epochs,
                         message=f"Early stop: no {config.select.replace('_', ' ')} gain for {bad_epochs} epochs"))
            break
    # The test reloads the best weights into a fresh net: free the training copy, its gradients and Adam state first.
    net = ev_model = opt = sched = feature_cache = ema = after_step = None
    return finish(run_dir, config, classes, cache, best_epoch, say)


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


def save_model(run_dir: Path, net: backbones.Net, config: TrainConfig, classes, epoch: int, val_loss: float,
               path: str, threshold: float | None = None) -> None:
    """model.pt: weights plus everything needed to predict with no other file."""
    # contiguous() copies only channels-last tensors; torch.save copies the rest itself, so no clone.
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}  # .cpu(): no-op on the CPU
    runs.atomic_torch_save({
        "format": "cxrdemo-model/1", "backbone": config.backbone, "classes": list(classes),
        "num_classes": len(classes), "head": config.head, "dropout": config.dropout, "state_dict": state,
        "preprocessing": preprocessing_record(config.img_size, config.intensity), "threshold": threshold, "epoch": epoch,
        "val_loss": val_loss, "train_path": path, "config": config.to_dict(),
    }, run_dir / "model.pt")


def load_net(ckpt: dict) -> backbones.Net:
    """Rebuild the network of a checkpoint, in eval mode."""
    net = backbones.build_backbone(ckpt["backbone"], int(ckpt["num_classes"]), head=ckpt.get("head", "linear"),
                                   dropout=float(ckpt.get("dropout", 0.0)))
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise RunError(f"The saved weights do not fit a {ckpt['backbone']} ({str(exc)[:120]}).") from None
    return net.eval()


def finish(run_dir: Path, config: TrainConfig, classes, cache: dict, best_epoch: int, say: ProgressFn) -> dict:
    """Reload the best checkpoint, choose a decision threshold if asked, and measure it on the test split."""
    if not best_epoch:
        raise ConfigError("No epoch produced a finite validation score (loss, or AUROC with --select val_auroc); "
                          "nothing was saved.")
    ckpt = runs.load_checkpoint(run_dir / "model.pt")
    net = load_net(ckpt)
    plain = _Inputs(None, False, None)
    threshold = None
    if config.threshold.tuned and len(classes) == 2:
        _, _, val_probs = evaluate(net, cache["val"].images, cache["val"].labels, plain, classes)
        try:
            threshold = metrics.choose_threshold(cache["val"].labels.numpy(), val_probs, config.threshold)
        except ValueError:
            raise ConfigError(f"The decision rule {config.threshold} needs validation images of both classes; "
                              "this validation split has only one.") from None
        ckpt["threshold"] = threshold
        runs.atomic_torch_save(ckpt, run_dir / "model.pt")
    result: dict = {}
    if "test" in cache and len(cache["test"].labels):
        say(Progress("test", best_epoch, config.epochs, message="Testing the best model"))
        loss, result, probs = evaluate(net, cache["test"].images, cache["test"].labels, plain, classes, threshold)
        result.update(loss=loss, best_epoch=best_epoch, threshold=threshold, split="test",
                      y_true=cache["test"].labels.tolist(), probs=np.round(probs, 6).tolist())
        runs.atomic_write_json(run_dir / "test_metrics.json", result)
    say(Progress("done", best_epoch, config.epochs, message="Finished"))
    return result


def _update_meta(run_dir: Path, scan_summary: dict, threads: int, init_note: str, skipped: dict,
                 device: str = "cpu", precision: str = "float32", channels_last: bool = False) -> None:
    meta = runs.read_json(run_dir / "config.json")
    decode_skips = [s for items in skipped.values() for s in items]
    meta.update(dataset=scan_summary, threads=threads, init_note=init_note, device=device, precision=precision,
                memory_format="channels-last" if channels_last else "contiguous",
                decode_skipped=[{"path": p, "reason": r} for p, r in decode_skips[:50]],
                n_decode_skipped=len(decode_skips))
    runs.atomic_write_json(run_dir / "config.json", meta)
