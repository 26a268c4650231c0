"""Build proxy image sets for the "unlike the training images" check, from files shipped inside installed packages.

    python scripts/make_proxy_sets.py [OUT] [--chest-source DIR/cxr-dev/test]
                                                     (OUT: default benchmarks/out/proxy, git-ignored)

Adult chest films: the only one this environment can reach is RG1 of pydicom-data (`pip install pydicom-data`, from
the package registry: a CR PA chest of an adult, 1955 x 1841, MONOCHROME1), so the adult-film target cannot be
measured as a rate; the other sets stand in for the other kinds of image a model should refuse (and, as controls,
for ones it should accept):

  adult_chest  pydicom-data's one adult chest film (when installed), as stored and in a few framings and
               exposures (mirrored, borders trimmed, gamma, tilted 5 degrees, windowed) -> adult film (flag); ONE patient

  photos       greyscale photographs: scikit-learn's two sample photos and matplotlib's portrait of
               Grace Hopper, as crops, rotations, flips and contrast changes     -> non-radiograph (flag)
  synthetic    noise, smooth fields, gradients, checkerboards, stripes, a text page, terrain maps
                                                                                 -> non-radiograph (flag)
  medical      the CT, MR, ultrasound and nuclear-medicine DICOM images that pydicom ships as test
               files (and pydicom-data's, when installed, with its radiograph of a tibia), plus matplotlib's
               MR slice, rendered by cxrdemo's own reader (a few crops and flips)
                                                                                 -> other modality / body part (flag)
  chest_*      synthetic shifts of the films in --chest-source (recorded: cxr-dev test; aspect ratio kept): rotated 90 / 180 degrees,
               inverted grey levels, a heavy crop (about a ninth of the film, zoomed) -> flag;
               mirrored left-right and rotated by 10 degrees                     -> controls (should NOT flag)

Each set is a folder of 8-bit PNGs; MANIFEST.csv lists set, file, source and transform.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdemo.data.imageio import read_image
from cxrdemo.errors import ImageReadError

MODALITIES = ("CT", "MR", "US", "NM")
RADIOGRAPHS = ("CR", "DX")  # pydicom-data's: chest films go to adult_chest, other body parts to medical
STANDS_FOR = {
    "adult_chest": "the one adult chest film reachable here (pydicom-data RG1, CR PA) in a few framings: flag",
    "photos": "greyscale photographs (non-radiograph): flag",
    "synthetic": "noise, patterns, gradients, text, maps (non-radiograph): flag",
    "medical": "other modalities and body parts (CT, MR, US, NM; DICOM test files): flag",
    "chest_rot90": "chest film rotated 90 degrees (mis-oriented upload): flag",
    "chest_rot180": "chest film upside down: flag",
    "chest_inverted": "chest film with inverted grey levels (MONOCHROME1 shown raw, a negative): flag",
    "chest_crop": "a ninth of a chest film zoomed to full size (a part of the body, not the chest film): flag",
    "chest_hflip": "chest film mirrored left-right (control: a real film, should NOT flag)",
    "chest_rot10": "chest film rotated by 10 degrees (control: a tilted film, should NOT flag)",
}


def grey(a: np.ndarray) -> np.ndarray:
    """[0, 1] float greyscale from uint8 RGB or grey."""
    a = np.asarray(a, np.float32)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return a / 255.0 if a.max() > 1.0 else a


def to_u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def photo_sources() -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    sk = load_sample_images()
    out = {Path(n).stem: grey(im) for n, im in zip(sk.filenames, sk.images)}
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        out["grace_hopper"] = grey(np.asarray(im.convert("RGB")))
    return out


def variants(img: np.ndarray, rng: np.random.Generator, n_crops: int) -> list[tuple[str, np.ndarray]]:
    """The image, flips, rotations, a gamma change and random crops (aspect 0.6-1.6, 30-90% of the side)."""
    h, w = img.shape
    out = [("full", img), ("hflip", img[:, ::-1]), ("rot90", np.rot90(img)), ("rot180", img[::-1, ::-1]),
           ("gamma0.6", img ** 0.6), ("gamma1.6", img ** 1.6), ("lowcontrast", 0.3 + 0.4 * img)]
    for i in range(n_crops):
        side = rng.uniform(0.3, 0.9)
        ch = int(h * side)
        cw = min(w, int(ch * rng.uniform(0.6, 1.6)))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append((f"crop{i}", img[y0:y0 + ch, x0:x0 + cw]))
    return out


def smooth(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    small = (rng.random((max(2, h // scale), max(2, w // scale))) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) / 255


def synthetic_images(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Noise, smooth fields, gradients, checkerboards, stripes, a text-like page and two terrain maps."""
    from matplotlib import cbook

    out: list[tuple[str, np.ndarray]] = []
    size = 256
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(4):
        out.append((f"uniform_noise{i}", rng.random((size, size))))
        out.append((f"gauss_noise{i}", np.clip(rng.normal(0.5, 0.15 + 0.05 * i, (size, size)), 0, 1)))
        out.append((f"smooth_field{i}", smooth(rng, size, size, [8, 16, 32, 64][i])))
        angle = rng.uniform(0, np.pi)
        g = np.cos(angle) * xx + np.sin(angle) * yy
        out.append((f"gradient{i}", (g - g.min()) / (g.max() - g.min())))
        r = np.hypot(xx - rng.uniform(0.3, 0.7), yy - rng.uniform(0.3, 0.7))
        out.append((f"radial{i}", np.clip(1 - r * rng.uniform(1, 2), 0, 1)))
    for sq in (4, 8, 16, 32, 64):
        out.append((f"checker{sq}", ((xx * size // sq + yy * size // sq) % 2).astype(np.float32)))
    for period in (6, 12, 24, 48):
        out.append((f"stripes{period}", 0.5 + 0.5 * np.sin(2 * np.pi * xx * size / period)))
        out.append((f"rings{period}", 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(xx - .5, yy - .5) * size / period)))
    for i in range(3):
        im = Image.new("L", (256, 330), 250)
        draw = ImageDraw.Draw(im)
        for y in range(20, 310, 14):
            x = 20
            while x < 226:
                word = int(rng.integers(8, 40))
                draw.rectangle([x, y, x + word, y + 6], fill=20)
                x += word + 6
        out.append((f"text_page{i}", np.asarray(im, np.float32) / 255))
        out.append((f"blobs{i}", np.clip(smooth(rng, size, size, 32) * 0.7 + 0.3 * rng.random((size, size))
                                         * (smooth(rng, size, size, 8) > 0.5), 0, 1)))
    for name, key in (("topobathy", "topobathy.npz"), ("jacksboro_dem", "jacksboro_fault_dem.npz")):
        with np.load(cbook.get_sample_data(key, asfileobj=False)) as z:
            a = np.asarray(z[z.files[0]], np.float32)
        a = (a - a.min()) / (a.max() - a.min() + 1e-9)
        out += [(name, a), (f"{name}_rot90", np.rot90(a))]
    return out


def pydicom_data_folder() -> Path | None:
    """The folder of pydicom-data's files (`pip install pydicom-data`), or None when it is not installed."""
    try:
        import data_store  # the import name of pydicom-data
    except ImportError:
        return None
    folder = Path(data_store.__file__).parent / "data"
    return folder if folder.is_dir() else None


def _dicom_images(folder: Path, modalities: tuple[str, ...], chest: bool | None = None) -> list[tuple[str, np.ndarray]]:
    """Decodable DICOM images of these modalities in `folder` (chest: only / never BodyPartExamined CHEST)."""
    import pydicom

    out: list[tuple[str, np.ndarray]] = []
    for f in sorted(folder.glob("*.dcm")):
        try:
            head = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            if str(head.get("Modality", "")) not in modalities:
                continue  # colour test patterns, dose grids, segmentations, reports
            if chest is not None and (str(head.get("BodyPartExamined", "")).upper() == "CHEST") != chest:
                continue
            img, _ = read_image(f)
        except (ImageReadError, pydicom.errors.InvalidDicomError):
            continue
        if min(img.shape) < 32 or float(img.std()) < 0.02:  # 3 x 3 pixels, dose grids, blank frames
            continue
        out.append((f.stem, img))
    return out


def adult_chest_images() -> list[tuple[str, np.ndarray]]:
    """pydicom-data's one adult chest film (uncompressed and lossy encodings), mirrored, with trimmed borders and
    two exposures: one patient in a few framings (how near the cut-off the film sits), not a rate over adults."""
    folder = pydicom_data_folder()
    if folder is None:
        return []
    films = _dicom_images(folder, RADIOGRAPHS, chest=True)
    # UNCR first (the film as acquired); J2KI is its lossy encoding; UNCI and J2KR hold the same pixels as UNCR
    out = sorted(((n, a) for n, a in films if n.endswith(("UNCR", "J2KI"))), key=lambda t: not t[0].endswith("UNCR"))
    for name, img in list(out[:1]):
        h, w = img.shape
        lo, hi = np.quantile(img, [0.02, 0.98])
        out += [(f"{name}_hflip", img[:, ::-1]),
                *[(f"{name}_trim{k}", img[h * k // 100: h - h * k // 100, w * k // 100: w - w * k // 100])
                  for k in (5, 10, 15)],
                *[(f"{name}_gamma{g}", np.clip(img, 0, 1) ** g) for g in (0.8, 1.25)],
                # added for issue 28 (before any multi-stage number was seen): a tilted film and a harder window
                *[(f"{name}_rot{d}", rotate(img, d)) for d in (-5, 5)],
                (f"{name}_window", np.clip((img - lo) / (hi - lo + 1e-9), 0, 1))]
    return out


def medical_images() -> list[tuple[str, np.ndarray]]:
    """The CT, MR, US and NM test images pydicom ships (decodable here, >= 32 px), pydicom-data's (when installed,
    with its radiograph of a tibia) and matplotlib's MR slice."""
    import pydicom
    from matplotlib import cbook

    out = _dicom_images(Path(pydicom.__file__).parent / "data" / "test_files", MODALITIES)  # inside the package
    extra_folder = pydicom_data_folder()
    if extra_folder is not None:
        out += _dicom_images(extra_folder, MODALITIES + RADIOGRAPHS, chest=False)
    with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)) as f:  # a 256 x 256 16-bit MR slice
        raw = f.read()
    mr = np.frombuffer(raw, np.uint16).astype(np.float32).reshape(256, 256)
    out.append(("mpl_s1045_mr", mr / mr.max()))
    extra = []
    for name, img in out:  # two views of each: the series of one patient rarely arrives as one image
        h, w = img.shape
        extra += [(f"{name}_hflip", img[:, ::-1]), (f"{name}_crop", img[h // 8: h - h // 8, w // 8: w - w // 8])]
    return out + extra


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    return np.asarray(Image.fromarray(to_u8(img)).rotate(degrees, resample=Image.BILINEAR, expand=False),
                      np.float32) / 255


def chest_shifts(rng: np.random.Generator, source: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """The chest_* sets: every film under `source` rotated, inverted, cropped, mirrored and tilted."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    sets: dict[str, list[tuple[str, np.ndarray]]] = {k: [] for k in STANDS_FOR if k.startswith("chest_")}
    for f in files:
        img, _ = read_image(f)
        h, w = img.shape
        name = f"{f.parent.name}_{f.stem}"
        sets["chest_rot90"].append((name, np.rot90(img, 1 if rng.random() < 0.5 else 3)))
        sets["chest_rot180"].append((name, img[::-1, ::-1]))
        sets["chest_inverted"].append((name, 1.0 - img))
        ch, cw = h // 3, w // 3
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        sets["chest_crop"].append((name, img[y0:y0 + ch, x0:x0 + cw]))
        sets["chest_hflip"].append((name, img[:, ::-1]))
        sets["chest_rot10"].append((name, rotate(img, 10 if rng.random() < 0.5 else -10)))
    return sets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="benchmarks/out/proxy")
    ap.add_argument("--chest-source", type=Path, default=None,
                    help="a folder of chest films to shift (the recorded sets: cxr-dev/test); none: those sets are skipped")
    args = ap.parse_args(argv)
    root = Path(args.out)
    rng = np.random.default_rng(0)
    sets: dict[str, list[tuple[str, np.ndarray]]] = {"photos": [], "synthetic": synthetic_images(rng),
                                                      "medical": medical_images()}
    if pydicom_data_folder() is not None:
        sets["adult_chest"] = adult_chest_images()
    else:
        print("pydicom-data is not installed (pip install pydicom-data): no adult chest film, fewer medical images")
    for src, img in photo_sources().items():
        sets["photos"] += [(f"{src}_{v}", a) for v, a in variants(img, rng, n_crops=8)]
    if args.chest_source is not None and args.chest_source.is_dir():
        sets.update(chest_shifts(rng, args.chest_source))
    else:
        print(f"no chest film folder ({args.chest_source or 'give --chest-source'}): chest shift sets skipped")
    rows = []
    for name, images in sets.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for stem, img in images:
            file = folder / f"{stem}.png"
            Image.fromarray(to_u8(np.ascontiguousarray(img))).save(file)
            rows.append({"set": name, "file": os.path.relpath(file, root), "stands_for": STANDS_FOR[name]})
        print(f"{name:15s} {len(images):4d} images  {STANDS_FOR[name]}")
    with open(root / "MANIFEST.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["set", "file", "stands_for"])
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
