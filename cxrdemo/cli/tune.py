"""`python -m cxrdemo tune`: measure the fastest arithmetic and memory layout now, so runs start with it."""

from __future__ import annotations

import argparse

from cxrdemo.cli.options import add_train_flag
from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError


def cmd_tune(args) -> int:
    """One timed trial per freeze level; each answer is remembered for runs with the same settings."""
    from cxrdemo.model import backbones, tuning
    from cxrdemo.model.device import choose_device
    from cxrdemo.model.speed import device_model

    if args.backbone not in backbones.backbone_names():
        raise ConfigError(f"Unknown backbone {args.backbone!r}: choose one of {', '.join(backbones.backbone_names())}.")
    print(f"device: {device_model(choose_device())}")
    for freeze in [f.strip() for f in args.freeze.split(",") if f.strip()]:
        choice = tuning.tune(args.backbone, args.img_size, freeze, batch_size=args.batch_size,
                             precision=args.precision, threads=args.threads, max_s=args.max_seconds)
        steps = ", ".join(f"{k} {v:.3f} s" for k, v in choice.step_s.items())
        chosen = ("bf16" if choice.bf16 else "fp32") + ("-channels-last" if choice.channels_last else "-contiguous")
        gain = f"{choice.ratio:.2f}x {choice.reference}" if choice.ratio else "no ratio"
        print(f"{args.backbone} {args.img_size} px freeze {freeze}: {chosen} ({gain}; {choice.source}, "
              f"trial {choice.trial_s:.1f} s) step: {steps}")
    return 0


def register(sub, store: argparse.ArgumentParser) -> None:
    """Add `tune` to the command tree."""
    defaults = TrainConfig()
    p = sub.add_parser("tune", parents=[store],
                       help="time float32/bfloat16 and memory layouts now; runs with these settings start with "
                            "the fastest (otherwise a small run measures during its first epochs)")
    p.add_argument("--backbone", required=True)
    p.add_argument("--size", dest="img_size", type=int, default=defaults.img_size, help="image size in pixels")
    p.add_argument("--freeze", default="3,none", help="freeze levels, comma-separated (default 3,none)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    add_train_flag(p, "threads", default=0)
    p.add_argument("--max-seconds", type=float, default=60.0, help="time limit of each trial (default 60)")
    p.set_defaults(func=cmd_tune)
