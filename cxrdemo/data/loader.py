"""Batches for training and evaluation from cached images: one tensor gather per batch, optional class balancing."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from cxrdemo.data.cache import CachedImages
from cxrdemo.errors import DatasetError


class _Batches(Dataset):
    """Index a whole batch at once: one tensor gather instead of collating B single images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return self.images[idx_t], self.labels[idx_t]


def make_loader(cached: CachedImages, batch_size: int, *, balance: str = "sampler", shuffle: bool = True,
                seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches of (uint8 Bx1xSxS, int64 labels); balance='sampler' draws classes equally often when shuffling.

    pin_memory: page-locked batches, for a GPU: their copy to the device can then run asynchronously.
    """
    n = len(cached.labels)
    if n == 0:
        raise DatasetError("There are no images to load (every file was skipped).")
    g = torch.Generator().manual_seed(seed)
    if shuffle and balance == "sampler":
        counts = torch.bincount(cached.labels).float()
        sampler = torch.utils.data.WeightedRandomSampler((1.0 / counts)[cached.labels], num_samples=n,
                                                         replacement=True, generator=g)
    elif shuffle:
        sampler = torch.utils.data.RandomSampler(range(n), generator=g)
    else:
        sampler = torch.utils.data.SequentialSampler(range(n))
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(_Batches(cached.images, cached.labels), sampler=batches, batch_size=None, num_workers=0,
                      pin_memory=pin_memory)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency scaled to mean 1 over the classes present (absent classes get 0), for balance='loss'."""
    counts = torch.bincount(labels.long().flatten(), minlength=num_classes)[:num_classes].float()
    inv = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    present = counts > 0
    return inv / inv[present].mean() if present.any() else torch.ones(num_classes)
