"""Prediction + Grad-CAM cost vs a plain forward pass, on CPU: `python benchmarks/bench_diagnosis.py`.

For each backbone (random scratch weights, 224 px, batch of one) it times, round-robin in one process:
  plain   one forward pass under inference_mode (the floor),
  ours    cxrdemo.diagnosis.explain.explain: prediction and GradCAM from the CAM's own forward, autograd from the
          target layer only,
  naive   a separate forward for the prediction, then the library's GradCAM on a network whose
          parameters all require gradients (a full backward).
and prints `name: value` lines, ending with diagnosis_ratio_<backbone> = ours / plain and
naive_ratio_<backbone> = naive / plain (target: diagnosis ratio <= 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from cxrdemo.diagnosis import explain  # noqa: E402
from cxrdemo.diagnosis.predict import LoadedModel, model_input, predict_probs  # noqa: E402
from cxrdemo.model import backbones
from cxrdemo.model.checkpoint import Decision, Preprocessing

BACKBONES = ("resnet18", "densenet121", "efficientnet_b0")


def _loaded(name: str, size: int) -> LoadedModel:
    torch.manual_seed(0)
    net = backbones.build_backbone(name, 2).eval()
    net.requires_grad_(False)  # as predict.load_model leaves it
    return LoadedModel(net, ("NORMAL", "PNEUMONIA"), Preprocessing(size), Decision(), f"bench-{name}", Path("."))


def plain(model: LoadedModel, x: torch.Tensor) -> None:
    with torch.inference_mode():
        torch.softmax(model.net(model_input(model, x)), 1)


def ours(model: LoadedModel, x: torch.Tensor) -> None:
    explain.explain(model, x, "GradCAM")


def naive(model: LoadedModel, x: torch.Tensor) -> None:
    probs = predict_probs(model, x.unsqueeze(0))[0]
    k = int(model.decide(probs)[0])
    net = model.net
    flags = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(True)  # what a tutorial's model looks like: every parameter trainable
    try:
        with GradCAM(model=net, target_layers=[backbones.cam_target_layer(net)]) as cam:
            cam(input_tensor=model_input(model, x), targets=[ClassifierOutputTarget(k)])
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)
            p.grad = None


def bench(name: str, size: int, reps: int, warmup: int) -> dict[str, float]:
    """Median seconds of plain / ours / naive for one backbone, measured round-robin."""
    model = _loaded(name, size)
    x = torch.randint(0, 256, (1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    fns = {"plain": plain, "ours": ours, "naive": naive}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for key, fn in fns.items():  # round-robin: a noisy neighbour slows all three alike
            t0 = time.perf_counter()
            fn(model, x)
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print `name: value` lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"threads: {args.threads}")
    print(f"img_size: {args.size}")
    ratios = {}
    for name in args.backbones:
        t = bench(name, args.size, args.reps, args.warmup)
        for key in ("plain", "ours", "naive"):
            print(f"{key}_ms_{name}: {t[key] * 1000:.1f}")
        ratios[name] = (t["ours"] / t["plain"], t["naive"] / t["plain"])
    for name, (r_ours, r_naive) in ratios.items():
        print(f"naive_ratio_{name}: {r_naive:.2f}")
        print(f"diagnosis_ratio_{name}: {r_ours:.2f}")
    print(f"total_s: {time.perf_counter() - start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
