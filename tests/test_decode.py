"""Decoding a split once, in parallel: the same bytes as one at a time, skipped files closed up, one copy in memory."""

import numpy as np
import torch
from PIL import Image

from cxrdemo.data import cache


def _files(root, n=9, broken=(2, 5)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"img_{i:02d}.png"
        if i in broken:
            p.write_bytes(b"not an image at all")
        else:
            Image.fromarray((rng.random((40 + i, 50)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_parallel_decode_equals_serial_and_closes_up_skipped_rows(tmp_path):
    paths = _files(tmp_path)
    seen = []
    serial = cache.decode_all(paths, 24, workers=1)
    parallel = cache.decode_all(paths, 24, workers=3, progress=lambda i, n: seen.append((i, n)))
    assert torch.equal(serial[0], parallel[0]) and serial[1:] == parallel[1:]
    images, ok, skipped = parallel
    assert [p for p, _ in skipped] == [paths[2], paths[5]] and all(r for _, r in skipped)
    assert ok == [p for i, p in enumerate(paths) if i not in (2, 5)] and images.shape == (7, 1, 24, 24)
    assert seen == [(i, 9) for i in range(1, 10)]  # progress in order, once per file
    # Row k is the k-th readable file, decoded alone (the in-place close-up moved rows 3, 4, 6.. forward)
    alone = cache.decode_all([ok[4]], 24)[0][0]
    assert torch.equal(images[4], alone)


def test_decode_holds_one_copy_of_the_split(tmp_path):
    paths = _files(tmp_path, n=6, broken=())
    images, _, _ = cache.decode_all(paths, 32, workers=2)
    assert images.untyped_storage().nbytes() == 6 * 32 * 32  # the preallocated tensor itself, no second copy
    loaded = cache.load_images([(p, 0) for p in paths], 32, use_disk_cache=False, workers=2)
    assert loaded.images.untyped_storage().nbytes() == 6 * 32 * 32
