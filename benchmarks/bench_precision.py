"""Memory layout and precision per backbone: `python benchmarks/bench_precision.py [--quick]`.

For each registered backbone it times one training step of cxrdemo's `Net` (forward, cross-entropy,
backward, Adam; scratch weights, batch 32) in four variants, interleaved step by step in ONE process so
that all four see the same background load:
  fp32        contiguous (NCHW) float32, the reference;
  cl          channels-last float32;
  bf16        contiguous, forward under torch.autocast(bfloat16) (what `precision: bf16` does);
  cl_bf16     both.
Each variant gets one warm-up step, then the median of `--steps` steps. Prints `name: value` lines,
ratios last: `ratio_<variant>_<backbone>` = reference seconds / variant seconds (above 1 = faster).
These ratios decide BackboneSpec.channels_last and BackboneSpec.bf16 in cxrdemo/model/backbones.py.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdemo.model import backbones  # noqa: E402

VARIANTS = {"fp32": (False, False), "cl": (True, False), "bf16": (False, True), "cl_bf16": (True, True)}


def _setup(name: str, size: int, batch: int, channels_last: bool):
    torch.manual_seed(0)
    net = backbones.build_backbone(name, 2).train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return net, x, y, torch.optim.Adam(net.parameters(), 1e-3)


def _step(net, x, y, opt, bf16: bool) -> float:
    t0 = time.perf_counter()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="resnet18, cnn5 and mobilenet_v3_small at 96 px, 2 steps")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbones", default=",".join(backbones.backbone_names()))
    args = ap.parse_args(argv)
    names = ["resnet18", "cnn5", "mobilenet_v3_small"] if args.quick else args.backbones.split(",")
    size, steps = (96, 2) if args.quick else (args.size, args.steps)
    torch.set_num_threads(args.threads)
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"threads: {args.threads}\ncpu_capability: {cpu}\namx: {torch.cpu._is_amx_tile_supported()}\n"
          f"torch: {torch.__version__}\nimg_size: {size}\nbatch: {args.batch}")
    ratios = {}
    for name in names:
        setups = {v: _setup(name, size, args.batch, cl) for v, (cl, _) in VARIANTS.items()}
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(steps + 1):
            for v, (_, bf16) in VARIANTS.items():
                t = _step(*setups[v], bf16)
                if i:  # step 0 is the warm-up (allocations, oneDNN kernel selection)
                    times[v].append(t)
        med = {v: statistics.median(t) for v, t in times.items()}
        for v in VARIANTS:
            print(f"step_s_{v}_{name}: {med[v]:.3f}", flush=True)
            ratios[f"ratio_{v}_{name}"] = med["fp32"] / med[v]
        del setups
    for k, r in ratios.items():
        if not k.startswith("ratio_fp32_"):
            print(f"{k}: {r:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
