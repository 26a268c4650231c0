"""The measurement scripts keep working against today's model-file API (they had rotted once, unnoticed):
each script's own functions run on the shipped demo model and the built-in demo data, a few images at a time."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrdemo import data, paths
from cxrdemo.model import conformal, trust

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_measure_domain_reads_the_demo_model_and_features_its_images(tmp_path):
    md = _script("measure_domain")
    net, pre, run_config = md.load_demo()
    assert pre.img_size == 224 and run_config["config"]["backbone"] == "cnn5"
    items = data.scan_dataset(paths.DEMO_DATA_DIR).splits["test"][:6]
    feats = md.compute_features(net, pre, {"demo test": (items, "aspect kept")}, tmp_path / "features.npz")
    x = feats["demo test/x"]
    assert x.shape[0] == 6 and x.shape[1] > 512 and np.isfinite(x).all()
    # its last stage is exactly what the app's own check scores (same preprocessing, same pooling)
    images = pre.load(items).images
    _, app_feats = trust.logits_and_features(net, images, pre)
    assert np.allclose(md.last_stages(x, [x.shape[1] - 512, 512], 1), app_feats.numpy(), atol=1e-4)


@pytest.mark.slow
def test_measure_trust_scores_a_split_with_its_in_domain_flags():
    mt = _script("measure_trust")
    model = mt.load("demo")
    z, y, outside = mt.logits_of(model, paths.DEMO_DATA_DIR, "test", 0)
    assert z.shape == (20, 2) and sorted(np.bincount(y)) == [10, 10]
    assert outside is not None and outside.dtype == bool and len(outside) == 20
    t = model.loaded.trust
    row = mt.measure("demo test", z, y, model, t, t.conformal, resamples=50, outside=outside)
    s90 = row["sets"][conformal.DEFAULT_LEVEL]
    assert row["flagged"] == pytest.approx(outside.mean())
    assert s90["coverage"] >= s90["without_flag"]["coverage"] and 0.5 <= row["accuracy"] <= 1.0


def test_make_proxy_sets_builds_medical_images_and_knows_when_pydicom_data_is_missing():
    mp = _script("make_proxy_sets")
    medical = mp.medical_images()
    assert len(medical) >= 30 and all(img.ndim == 2 and img.dtype.kind == "f" for _, img in medical)
    adults = mp.adult_chest_images()
    if mp.pydicom_data_folder() is None:
        assert adults == []  # the optional package is absent: no adult film, said by main()
    else:
        assert adults and adults[0][0].endswith("UNCR")  # the film as acquired comes first
