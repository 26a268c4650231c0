"""A burned-in marker for the shortcut-learning lesson: a bright hospital-style tag with a dark letter, top-left.

Zech et al. (PLoS Medicine 2018) and DeGrave et al. (Nature Machine Intelligence 2021) found networks reading
such tags instead of the lungs. Which images get the tag is chosen by seed, so a recipe is repeatable.
"""

from __future__ import annotations

import random

import torch

# A 5 x 7 "R" (the letter of a side marker), 1 = dark stroke on the bright tag.
_LETTER = ("11110", "10001", "10001", "11110", "10100", "10010", "10001")


def burn_marker(images: torch.Tensor) -> torch.Tensor:
    """A copy of uint8 Nx1xSxS images with the tag burned into the top-left corner (about 1/5 of the side)."""
    out = images.clone()
    side = images.shape[-1]
    cell = max(1, side // 40)  # one letter pixel; the tag is 7 x 9 cells
    y0 = x0 = max(1, side // 20)
    out[..., y0:y0 + 9 * cell, x0:x0 + 7 * cell] = 255
    for r, row in enumerate(_LETTER):
        for c, bit in enumerate(row):
            if bit == "1":
                y, x = y0 + (r + 1) * cell, x0 + (c + 1) * cell
                out[..., y:y + cell, x:x + cell] = 0
    return out


def choose_marked(labels: torch.Tensor, class_index: int, share: float, seed: int) -> list[int]:
    """Indices of round(share x n) images of class `class_index`, chosen by seed (the same every run)."""
    members = [i for i, k in enumerate(labels.tolist()) if k == class_index]
    n = round(share * len(members))
    return sorted(random.Random(f"marker:{seed}:{class_index}").sample(members, n))


def mark_images(images: torch.Tensor, labels: torch.Tensor, class_index: int, share: float,
                seed: int) -> torch.Tensor:
    """A copy of `images` where a `share` of class `class_index`'s images carry the marker (the rest untouched)."""
    idx = choose_marked(labels, class_index, share, seed)
    out = images.clone()
    if idx:
        out[idx] = burn_marker(images[idx])
    return out
