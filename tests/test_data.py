"""scan_dataset, load_images (and its caches), make_augment, make_loader, class_weights."""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrdemo import data
from cxrdemo.errors import ConfigError, DatasetError, ImageReadError


def png_bytes(value: int = 128, size: int = 8) -> bytes:
    buf = io.BytesIO()
    arr = np.full((size, size), value, np.uint8)
    arr[0, 0] = 255 - value  # not flat, so normalisation has a range
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


PNG = png_bytes()


def make_tree(root: Path, layout: dict[str, int], content: bytes = PNG, prefix: str = "img") -> Path:
    """layout: {'train/A': 5, 'B': 3, ...} -> that many image files in each folder."""
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"{prefix}{i:04d}.png").write_bytes(content)
    return root


# ---- scan_dataset -------------------------------------------------------------------------------------

def test_split_layout(tiny_dataset):
    scan = data.scan_dataset(tiny_dataset)
    assert scan.classes == ("NORMAL", "PNEUMONIA") and not scan.auto_split and scan.root == str(tiny_dataset)
    assert scan.counts() == {s: {"NORMAL": n, "PNEUMONIA": n} for s, n in (("train", 8), ("val", 4), ("test", 4))}
    for split, items in scan.splits.items():
        for path, k in items:
            assert os.path.isabs(path) and Path(path).parent.name == scan.classes[k]
            assert Path(path).parent.parent.name == split
    summary = json.loads(json.dumps(scan.summary()))
    assert summary["totals"] == {"train": 16, "val": 8, "test": 8, "all": 32}
    assert summary["imbalance"]["train"] == 1.0 and summary["n_skipped"] == 0
    report = scan.report()
    assert "PNEUMONIA" in report and "train" in report and "16" in report


def test_demo_dataset(demo_data_dir):
    assert data.resolve_data_root("demo") == demo_data_dir
    scan = data.scan_dataset("demo")
    assert scan.counts() == {"train": {"NORMAL": 40, "PNEUMONIA": 40}, "val": {"NORMAL": 10, "PNEUMONIA": 10},
                             "test": {"NORMAL": 10, "PNEUMONIA": 10}}
    assert scan.skipped == [] and scan.notes == []  # README.md and MANIFEST.csv at the root are not reported
    patients = {s: {data.patient_key(p) for p, _ in items} for s, items in scan.splits.items()}
    assert None not in set.union(*patients.values())
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert sum(f.stat().st_size for f in demo_data_dir.rglob("*") if f.is_file()) < 3_000_000


def test_flat_layout_is_split_stratified_and_by_seed(tmp_path):
    root = make_tree(tmp_path / "flat", {"CAT": 40, "DOG": 20})
    a, b, c = (data.scan_dataset(root, seed=s) for s in (0, 0, 1))
    assert a.auto_split and a.splits == b.splits and a.splits != c.splits
    assert a.counts() == {"train": {"CAT": 28, "DOG": 14}, "val": {"CAT": 6, "DOG": 3}, "test": {"CAT": 6, "DOG": 3}}
    every = [p for items in a.splits.values() for p, _ in items]
    assert len(every) == len(set(every)) == 60


def test_flat_layout_keeps_patients_together(tmp_path):
    root = tmp_path / "flat"
    for cls, n_patients in (("NORMAL", 12), ("PNEUMONIA", 12)):
        (root / cls).mkdir(parents=True)
        for p in range(n_patients):
            for j in range(3):
                name = f"person{p}_bacteria_{j}.png" if cls == "PNEUMONIA" else f"IM-{p:04d}-{j:04d}.png"
                (root / cls / name).write_bytes(PNG)
    scan = data.scan_dataset(root, seed=3)
    where = {}
    for split, items in scan.splits.items():
        for path, _ in items:
            assert where.setdefault(data.patient_key(path), split) == split
    assert all(sum(c.values()) > 0 for c in scan.counts().values())


def test_missing_val_is_carved_from_train(tmp_path):
    root = make_tree(tmp_path / "d", {"train/A": 20, "train/B": 20, "test/A": 2, "test/B": 2})
    scan = data.scan_dataset(root)
    assert scan.counts()["val"] == {"A": 3, "B": 3} and scan.counts()["train"] == {"A": 17, "B": 17}
    assert any("val" in n for n in scan.notes) and not scan.auto_split
    no_test = data.scan_dataset(make_tree(tmp_path / "e", {"train/A": 4, "train/B": 4, "val/A": 1, "val/B": 1}))
    assert no_test.splits["test"] == [] and any("test" in n for n in no_test.notes)


def test_four_classes_and_subset(tmp_path):
    root = make_tree(tmp_path / "d", {f"{s}/{c}": n for s, n in (("train", 10), ("val", 4)) for c in "WXYZ"})
    scan = data.scan_dataset(root)
    assert scan.classes == ("W", "X", "Y", "Z") and {k for _, k in scan.splits["train"]} == {0, 1, 2, 3}
    small = data.scan_dataset(root, max_per_split=8, seed=1)
    assert small.counts()["train"] == {c: 2 for c in "WXYZ"} and small.counts()["val"] == {c: 2 for c in "WXYZ"}
    assert small.splits == data.scan_dataset(root, max_per_split=8, seed=1).splits


def test_junk_is_skipped_and_reported(tmp_path):
    root = make_tree(tmp_path / "d", {"train/A": 2, "train/B": 2, "val/A": 1, "val/B": 1})
    junk = {"train/A/.hidden.png": PNG, "train/A/Thumbs.db": b"x", "train/B/.DS_Store": b"x",
            "train/B/notes.txt": b"hello", "train/B/fake.png": b"just text, not a picture", "train/A/empty.jpg": b"",
            "train/A/report.dcm.pdf": b"%PDF-1.4", "train/stray.png": PNG}
    for rel, content in junk.items():
        (root / rel).write_bytes(content)
    (root / "README.md").write_text("about this data")
    scan = data.scan_dataset(root)
    assert scan.counts()["train"] == {"A": 2, "B": 2}
    reasons = {Path(p).name: r for p, r in scan.skipped}
    assert set(reasons) == {Path(r).name for r in junk}
    assert reasons["Thumbs.db"] == "system file" and reasons[".hidden.png"] == "hidden file"
    assert "text file" in reasons["fake.png"] and "empty" in reasons["empty.jpg"]
    assert "not an image file type" in reasons["notes.txt"] and "class folder" in reasons["stray.png"]
    assert scan.summary()["n_skipped"] == len(junk)


@pytest.mark.parametrize("layout,words", [
    ({"A": 3}, "only one class folder"),
    ({}, "no class folders"),
    ({"train/A": 0, "train/B": 0, "val/A": 1, "val/B": 1}, "no readable images"),
    ({"train/A": 2, "train/B": 0}, "B"),
    ({"train/A": 2, "train/B": 2, "val/A": 1, "val/C": 1}, "differ between splits"),
    ({"val/A": 2, "val/B": 2}, "no train folder"),
])
def test_unusable_datasets_name_the_folder(tmp_path, layout, words):
    root = make_tree(tmp_path / "mydata", layout)
    root.mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match=words) as err:
        data.scan_dataset(root)
    assert "mydata" in str(err.value)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as err:
        data.scan_dataset(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    (tmp_path / "file.png").write_bytes(PNG)
    with pytest.raises(DatasetError, match="is a file, not a folder") as err:
        data.resolve_data_root(str(tmp_path / "file.png"))
    assert "file.png" in str(err.value)


def test_nested_archive_folder_is_entered(tmp_path):
    make_tree(tmp_path / "zip" / "chest_xray", {"train/A": 2, "train/B": 2, "val/A": 1, "val/B": 1})
    assert data.scan_dataset(tmp_path / "zip").root.endswith("chest_xray")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks here")
def test_symlink_loop_terminates(tmp_path):
    root = make_tree(tmp_path / "d", {"A": 5, "B": 5, "A/sub": 2})
    os.symlink(root / "A", root / "A" / "sub" / "loop")
    os.symlink(root, root / "B" / "up")
    os.symlink(root / "missing.png", root / "B" / "broken.png")
    start = time.perf_counter()
    scan = data.scan_dataset(root)
    assert time.perf_counter() - start < 2
    assert sum(sum(c.values()) for c in scan.counts().values()) == 12
    assert any("link" in r for _, r in scan.skipped)


def test_ten_thousand_files_scan_fast(tmp_path):
    root = tmp_path / "big"
    for cls in ("A", "B"):
        (root / cls).mkdir(parents=True)
        for i in range(5000):
            with open(root / cls / f"{i:05d}.png", "wb") as f:
                f.write(PNG)
    start = time.perf_counter()
    scan = data.scan_dataset(root)
    elapsed = time.perf_counter() - start
    assert sum(sum(c.values()) for c in scan.counts().values()) == 10_000
    assert elapsed < 5, f"scan took {elapsed:.1f} s"


def test_bad_fractions_refused(tmp_path):
    with pytest.raises(ConfigError):
        data.scan_dataset(make_tree(tmp_path, {"A": 2, "B": 2}), fractions=(0.5, 0.1, 0.1))


NAMES = st.sampled_from(["train", "val", "test", "A", "B", "C", ".hidden", "Thumbs.db", "x.png", "y.dcm",
                         "z.txt", "__MACOSX", "Train", "validation"])
CONTENTS = st.sampled_from([PNG, b"", b"hello", b"%PDF", PNG[:20], b"\x00" * 128 + b"DICM"])


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(NAMES, min_size=1, max_size=3), CONTENTS), max_size=12), st.integers(0, 3))
def test_random_trees_raise_only_dataset_error(entries, seed):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for parts, content in entries:
            path = root.joinpath(*parts)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            except (FileExistsError, IsADirectoryError, NotADirectoryError):
                pass  # a name already used as the other kind: the tree is just different
        try:
            scan = data.scan_dataset(root, seed=seed)
        except DatasetError as err:
            assert str(err)
            return
        assert len(scan.classes) >= 2 and scan.splits["train"]
        json.dumps(scan.summary())


# ---- load_images -------------------------------------------------------------------------------------

@pytest.fixture
def cache_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    data.cache._MEMO.clear()
    yield tmp_path / "cache"
    data.cache._MEMO.clear()


def test_load_images_shapes_and_order(tiny_dataset, cache_tmp):
    items = data.scan_dataset(tiny_dataset).splits["val"][::-1]
    seen = []
    cached = data.load_images(items, 32, progress=lambda done, total: seen.append((done, total)))
    assert cached.images.shape == (8, 1, 32, 32) and cached.images.dtype == torch.uint8
    assert cached.labels.dtype == torch.int64 and cached.labels.tolist() == [k for _, k in items]
    assert cached.paths == [p for p, _ in items] and cached.skipped == []
    assert seen[-1] == (8, 8)
    from cxrdemo.model.checkpoint import Preprocessing

    expected = Preprocessing(32).prepare(data.read_image(items[0][0])[0])
    assert torch.equal(cached.images[0], expected)  # the training cache is exactly what prediction computes


def test_a_split_in_cache_order_is_not_copied_again(tiny_dataset, cache_tmp):
    items = sorted(data.scan_dataset(tiny_dataset).splits["val"])
    a, b = data.load_images(items, 32), data.load_images(items, 32)
    assert a.images.data_ptr() == b.images.data_ptr()  # one tensor in memory, shared by both callers
    reordered = data.load_images(items[::-1], 32)
    assert reordered.images.data_ptr() != a.images.data_ptr() and torch.equal(reordered.images, a.images.flip(0))


def test_truncated_file_is_skipped_not_fatal(tmp_path, cache_tmp):
    good = make_tree(tmp_path, {"A": 2})
    bad = tmp_path / "A" / "bad.png"
    bad.write_bytes(png_bytes(size=64)[:60])
    items = [(str(good / "A" / "img0000.png"), 0), (str(bad), 1), (str(good / "A" / "img0001.png"), 0)]
    cached = data.load_images(items, 16)
    assert len(cached.labels) == 2 and cached.skipped[0][0] == str(bad) and "truncated" in cached.skipped[0][1]


def test_second_call_hits_disk_cache(tiny_dataset, cache_tmp, monkeypatch):
    items = data.scan_dataset(tiny_dataset).splits["test"]
    first = data.load_images(items, 24)
    assert len(list(cache_tmp.glob("*.pt"))) == 1 and not list(cache_tmp.glob("*.tmp"))
    data.cache._MEMO.clear()  # a new process: only the disk cache remains

    def no_decoding(*args, **kwargs):
        raise AssertionError("the decoder must not run on a cache hit")
    monkeypatch.setattr(data.cache, "read_image", no_decoding)
    again = data.load_images(items, 24)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert torch.equal(data.load_images(items, 24).images, first.images)  # and the in-process memo


def test_corrupt_cache_is_rebuilt_and_changes_invalidate(tmp_path, cache_tmp):
    root = make_tree(tmp_path, {"A": 3})
    items = [(str(p), 0) for p in sorted((root / "A").iterdir())]
    first = data.load_images(items, 16)
    (cache_file,) = cache_tmp.glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    data.cache._MEMO.clear()
    assert torch.equal(data.load_images(items, 16).images, first.images)
    Path(items[0][0]).write_bytes(png_bytes(value=30))  # a changed file is decoded afresh
    os.utime(items[0][0], ns=(1, 1))
    assert not torch.equal(data.load_images(items, 16).images, first.images)


def test_without_disk_cache(tiny_dataset, cache_tmp):
    data.load_images(data.scan_dataset(tiny_dataset).splits["val"], 16, use_disk_cache=False)
    assert not cache_tmp.exists() or not list(cache_tmp.iterdir())


# ---- make_augment ---------------------------------------------------------------------------------------

def test_augment_none_and_unknown():
    assert data.make_augment("none", 224) is None
    with pytest.raises(ConfigError):
        data.make_augment("heavy", 224)


@pytest.mark.parametrize("name", ["light", "acquisition"])
def test_augment_shape_range_and_determinism(name):
    augment = data.make_augment(name, 64)
    x = torch.randint(0, 256, (1, 1, 64, 64), dtype=torch.uint8).repeat(6, 1, 1, 1)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out[0], out[1])  # random per sample, not per batch
    out_f = augment(x.float() / 255, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_f, out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["light", "acquisition"])
def test_augment_is_fast(name):
    """CPU time on one thread: wall time on a shared 2-core machine measures the neighbours, not us."""
    augment = data.make_augment(name, 224)
    x = torch.randint(0, 256, (32, 1, 224, 224), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        augment(x, g)
        times = []
        for _ in range(5):
            start = time.process_time()
            augment(x, g)
            times.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 0.1, f"{name}: {min(times):.3f} s CPU for 32 x 224 px"


# ---- make_loader / class_weights ---------------------------------------------------------------------------

def imbalanced(n0: int = 90, n1: int = 10, size: int = 8) -> data.CachedImages:
    labels = torch.tensor([0] * n0 + [1] * n1)
    images = torch.arange(n0 + n1, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    return data.CachedImages(images, labels, [f"/x/{i}.png" for i in range(n0 + n1)], [])


def test_sampler_balances_classes():
    cached = imbalanced()
    counts = Counter()
    for seed in range(10):
        for x, y in data.make_loader(cached, 16, balance="sampler", seed=seed):
            assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64
            assert torch.equal(cached.labels[x[:, 0, 0, 0].long()], y)  # images and labels stay paired
            counts.update(y.tolist())
    assert sum(counts.values()) == 1000
    assert 0.42 < counts[1] / 1000 < 0.58  # 10% of the data, half of the draws


def test_plain_shuffle_and_sequential():
    cached = imbalanced(6, 4)
    order = lambda loader: [int(v) for x, _ in loader for v in x[:, 0, 0, 0]]  # noqa: E731
    shuffled = order(data.make_loader(cached, 3, balance="loss", seed=5))
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert shuffled == order(data.make_loader(cached, 3, balance="none", seed=5))
    assert order(data.make_loader(cached, 4, shuffle=False)) == list(range(10))
    with pytest.raises(DatasetError):
        data.make_loader(data.CachedImages(torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
                                           torch.zeros(0, dtype=torch.long), [], []), 4)


def test_class_weights():
    w = data.class_weights(torch.tensor([0] * 90 + [1] * 10), 2)
    torch.testing.assert_close(w, torch.tensor([0.2, 1.8]))
    assert data.class_weights(torch.tensor([0, 1, 2, 2]), 3).mean().item() == pytest.approx(1.0)


def test_read_image_is_reexported():
    assert data.read_image is not None and data.ImageReadError is ImageReadError
    assert data.IMAGENET_MEAN == (0.485, 0.456, 0.406) and ".dcm" in data.IMAGE_SUFFIXES


def test_acquisition_augment_jitters_the_aspect_ratio_but_light_does_not():
    """A centred bright square: 'acquisition' stretches it differently in x and y, 'light' keeps it square."""
    import torch

    from cxrdemo import data

    x = torch.zeros(64, 1, 64, 64, dtype=torch.uint8)
    x[:, :, 24:40, 24:40] = 255

    def aspect_spread(name):
        out = data.make_augment(name, 64)(x, torch.Generator().manual_seed(0))
        mask = out[:, 0] > 0.5
        w = mask.any(1).sum(1).float()  # columns touched
        h = mask.any(2).sum(1).float()  # rows touched
        return (w / h.clamp(min=1)).log().abs()

    # rotation alone changes a square's bounding box equally in x and y; only a stretch makes them differ
    assert aspect_spread("light").median() < 0.08
    assert aspect_spread("acquisition").max() > 0.2
