"""Augmentation on uint8 image batches (tensors, after the decode-once cache): `light` is the papers' recipe,
`acquisition` adds what differs between scanners and sites."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cxrdemo.errors import ConfigError


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _augment(x: torch.Tensor, g: torch.Generator | None, strong: bool) -> torch.Tensor:
    """One random geometric resample per image (rotation, flip, crop, shift), then photometric changes."""
    b, dev = x.shape[0], x.device
    angle = torch.deg2rad(_uniform(b, -20, 20, g))
    side = _uniform(b, 0.7 if strong else 0.8, 1.0, g).sqrt()  # a crop of this area fraction, as RandomResizedCrop
    shift = (1 - side)[:, None] * (2 * torch.rand(b, 2, generator=g) - 1)  # the crop stays inside the image
    if strong:
        shift = shift + _uniform(2 * b, -0.1, 0.1, g).view(b, 2)  # +-5% of the image: positioning differs by site
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    # Aspect jitter (strong only): images are squashed to a square from detectors of different formats, and in
    # Kermany's train split the pneumonia films are wider (mean aspect 1.50 vs 1.22); without jitter the squash
    # itself becomes a shortcut that breaks on other sites' images.
    aspect = torch.exp(_uniform(b, -0.35, 0.35, g)) if strong else torch.ones(b)
    sx, sy = side * aspect.sqrt(), side / aspect.sqrt()
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sx * flip, -sin * sy, shift[:, 0]], 1),
                         torch.stack([sin * sx * flip, cos * sy, shift[:, 1]], 1)], 1)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    # One resample instead of a chain of rotate/crop/resize: faster, and blurs the image only once.
    grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # In-place from here on: fresh full-size tensors cost more than the arithmetic on a small CPU.
    brightness = _uniform(b, 0.9, 1.1, g).view(b, 1, 1, 1).to(dev)
    contrast = (_uniform(b, 0.7, 1.3, g) if strong else _uniform(b, 0.9, 1.1, g)).view(b, 1, 1, 1).to(dev)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x.mul_(contrast * brightness).add_(mean * brightness * (1 - contrast))  # ((x - mean) * c + mean) * b
    if strong:
        x.clamp_(0, 1).pow_(_uniform(b, 0.7, 1.5, g).view(b, 1, 1, 1).to(dev))
        use_blur = torch.rand(b, generator=g) < 0.5
        sigma, std = _uniform(b, 0, 1.5, g), _uniform(b, 0, 0.03, g)
        blur_idx, noise_idx = use_blur.nonzero()[:, 0], (~use_blur).nonzero()[:, 0]
        if len(blur_idx):
            x[blur_idx.to(dev)] = _blur(x[blur_idx.to(dev)], sigma[blur_idx].to(dev))
        if len(noise_idx):
            noise = torch.randn((len(noise_idx), *x.shape[1:]), generator=g).mul_(std[noise_idx].view(-1, 1, 1, 1))
            x[noise_idx.to(dev)] += noise.to(dev)
    return x.clamp_(0.0, 1.0)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per image (sigma 0 = unchanged), as one grouped convolution."""
    b, _, h, w = x.shape
    r = torch.arange(-4, 5, dtype=x.dtype, device=x.device)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    y = F.pad(x.view(1, b, h, w), (4, 4, 4, 4), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, 1, 9), groups=b)
    y = F.conv2d(y, k.view(b, 1, 9, 1), groups=b)
    return y.view(b, 1, h, w)


def make_augment(name: str, size: int) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None:
    """'none' -> None; 'light' (the papers) or 'acquisition' (scanner/site shift) -> f(batch, generator)."""
    if name == "none":
        return None
    if name not in ("light", "acquisition"):
        raise ConfigError(f"Unknown augmentation {name!r}: choose none, light or acquisition.")
    if size < 9:
        raise ConfigError(f"Augmentation needs images of at least 9 pixels (got {size}).")
    strong = name == "acquisition"
    return lambda x, generator=None: _augment(x, generator, strong)
