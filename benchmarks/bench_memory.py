"""Peak memory of one diagnosis of a large image: `python benchmarks/bench_memory.py [--old REF]`.

One diagnosis = what the Diagnosis page does: read the upload (bytes), the quality check, preprocess, predict
and GradCAM with the shipped demo model, the overlay and the PNGs sent to the browser. Each case runs in a fresh
subprocess; the figure is ru_maxrss after the diagnosis minus the resident set after imports and model load
(idle; the peak is reset there through /proc/self/clear_refs, since loading the model peaks above it).
Cases (generated in a temporary folder): a 3000 x 3000 16-bit DICOM, a 7000 x 7000 greyscale JPEG, and 7000 x 7000
RGBA PNG (0.2 MB on disk), CMYK, LAB and 32-bit float TIFFs (issue 30: each cost +560 to +750 MB before the reader
reduced them ahead of any conversion).
With --old REF (default ecfa98d, the code before issue 17) the same cases also run against a temporary
`git worktree` of REF, printed side by side. Target: <= 500 MB above idle.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_MB = 500


def make_cases(folder: Path) -> dict[str, Path]:
    """The two test files, radiograph-like (smooth body, two dark lungs, noise)."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def body(n: int) -> np.ndarray:
        y, x = np.mgrid[:n, :n].astype(np.float32) / n
        img = 0.75 - 0.45 * (np.exp(-((x - 0.3) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.08))
                             + np.exp(-((x - 0.7) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.08)))
        return np.clip(img + 0.03 * np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), 0, 1)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 3000, 3000, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = \
        "MONOCHROME2", 16, 16, 15, 0
    ds.PixelData = (body(3000) * 65535).astype(np.uint16).tobytes()
    dcm = folder / "dx-3000x3000-16bit.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    jpg = folder / "photo-7000x7000.jpg"
    grey = (body(7000) * 255).astype(np.uint8)
    Image.fromarray(grey).save(jpg, "JPEG", quality=90)
    rgb = np.dstack([grey] * 3)
    cases = {"DICOM 3000x3000 16-bit": dcm, "JPEG 7000x7000": jpg}
    for name, im, file in (("RGBA PNG 7000x7000", Image.fromarray(np.dstack([rgb, np.full_like(grey, 255)]), "RGBA"),
                            "rgba.png"),
                           ("CMYK TIFF 7000x7000", Image.fromarray(np.dstack([255 - rgb, 0 * grey]), "CMYK"),
                            "cmyk.tif"),
                           ("LAB TIFF 7000x7000", Image.fromarray(rgb, "RGB").convert("LAB"), "lab.tif"),
                           ("float TIFF 7000x7000", Image.fromarray(grey.astype(np.float32) / 255, "F"), "float.tif")):
        im.save(folder / file, **({"compression": "tiff_deflate"} if file.endswith(".tif") else {}))
        cases[name] = folder / file
    return cases


def _rss_kib(field: str = "VmRSS:") -> int:
    """This process's resident set now (or its peak, VmHWM:), in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(path: str) -> None:
    """One diagnosis in this (fresh) process; prints a JSON line."""
    import os

    os.environ.setdefault("CXRDEMO_RUNS_DIR", tempfile.mkdtemp())
    from cxrdemo.diagnosis import explain, predict, result

    try:
        from cxrdemo.data.shrink import display_copy
    except ImportError:  # the code before issue 17 showed the image as read
        def display_copy(img):
            return img
    model = predict.load_model("demo")
    idle = _rss_kib()
    try:  # reset the peak to the current footprint: loading the model peaks higher than it settles
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no reset: the peak so far is the baseline
    raw = Path(path).read_bytes()
    start = time.perf_counter()
    rad = predict.read_radiograph(raw, Path(path).name)
    res = explain.heatmap(model, result.assess(model, rad), "GradCAM")
    grey = display_copy(rad.grey)
    ov = explain.overlay(grey, res.cam, 0.4)
    from PIL import Image

    for img in ((np.clip(grey, 0, 1) * 255).astype(np.uint8), ov):  # what st.image sends: PNGs
        Image.fromarray(img).save(io.BytesIO(), "PNG")
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM:")  # not ru_maxrss: it keeps the forking parent's peak across exec
    print(json.dumps({"idle_mb": idle / 1024, "delta_mb": (peak - idle) / 1024, "seconds": seconds,
                      "shown": list(grey.shape)}))


def run_case(repo: Path, path: Path) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(path)], cwd=repo,
                         env={**__import__("os").environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                         timeout=900)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--old", default="ecfa98d", help="git ref of the code to compare with ('' to skip)")
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-mem-") as tmp:
        tmp = Path(tmp)
        cases = make_cases(tmp)
        old = tmp / "old"
        if args.old:
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), args.old],
                           check=True)
        try:
            print(f"{'case':<24} {'before MB':>10} {'after MB':>9} {'before s':>9} {'after s':>8}  (target <= "
                  f"{TARGET_MB} MB above idle)")
            for name, path in cases.items():
                after = run_case(REPO, path)
                before = run_case(old, path) if args.old else {}
                fmt = lambda r, k, f: (f"{r[k]:{f}}" if k in r else ("error" if "error" in r else "-"))  # noqa: E731
                print(f"{name:<24} {fmt(before, 'delta_mb', '10.0f'):>10} {fmt(after, 'delta_mb', '9.0f'):>9} "
                      f"{fmt(before, 'seconds', '9.2f'):>9} {fmt(after, 'seconds', '8.2f'):>8}")
                for label, r in (("before", before), ("after", after)):
                    if "error" in r:
                        print(f"  {label}: {r['error']}")
                if "idle_mb" in after:
                    print(f"  idle footprint after imports and model load: {after['idle_mb']:.0f} MB; "
                          f"shown at {after['shown'][1]} x {after['shown'][0]} px")
        finally:
            if args.old:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)


if __name__ == "__main__":
    main()
