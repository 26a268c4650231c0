"""Trust records end to end: fitted on validation, read back, applied to one image, added to a run by `calibrate`."""

import json

import numpy as np
import pytest
import torch

from cxrdemo.cli.main import main as cli
from cxrdemo.diagnosis import predict, result
from cxrdemo.errors import RunError
from cxrdemo.model import checkpoint, conformal, metrics, trust
from cxrdemo.views import diagnosis as diagnosis_view
from tests.helpers import make_patch_dataset, patch_image


@pytest.fixture(scope="module")
def patch_data(tmp_path_factory):
    """A dataset of the patch task on disk: 24 images per class in train and val, 10 in test."""
    return make_patch_dataset(tmp_path_factory.mktemp("patches"), {"train": 24, "val": 24, "test": 10}, seed=3)


def _images(rng, n):
    x = torch.from_numpy(np.stack([patch_image(rng, i % 2 == 1)[0] for i in range(n)]))[:, None]
    return x, torch.arange(n) % 2


def test_logits_of_one_pass_equal_the_network_and_features_feed_the_head(patch_model):
    x, _ = _images(np.random.default_rng(0), 10)
    logits, feats = trust.logits_and_features(patch_model.net, x, patch_model.preprocessing)
    with torch.inference_mode():
        ref = predict.predict_probs(patch_model, x)
    assert logits.dtype == np.float32 and feats.shape == (10, 256)
    assert np.array_equal(torch.softmax(torch.from_numpy(logits), 1).numpy(), ref)  # bit-identical probabilities


@pytest.mark.slow
def test_records_are_fitted_read_back_and_never_change_a_verdict(patch_model):
    from cxrdemo.data import CachedImages

    rng = np.random.default_rng(1)
    (xt, yt), (xv, yv) = _images(rng, 40), _images(rng, 60)
    records = trust.fit_records(patch_model.net, patch_model.preprocessing, patch_model.classes,
                                CachedImages(xt, yt, [], []), CachedImages(xv, yv, [], []))
    fitted = trust.Trust.from_records(records)
    assert fitted.temperature == records["calibration"]["temperature"] > 0 and fitted.temperature != 1.0
    assert sorted(fitted.conformal) == [0.9, 0.95] and all(r.ok for r in fitted.conformal.values())  # 30 a class
    assert fitted.domain.n_train == 40 and fitted.domain.n_val == 60
    x, y = _images(np.random.default_rng(2), 200)
    logits, _ = trust.logits_and_features(patch_model.net, x, patch_model.preprocessing)
    for cut in (0.2, 0.5, 0.8):  # the decision cut moved to the calibrated scale: the same images cross it
        raw = metrics.predict_labels(trust.Trust().probabilities(logits), cut)
        cal = metrics.predict_labels(fitted.probabilities(logits), fitted.cut(cut))
        assert np.array_equal(raw, cal)
    argmax = metrics.predict_labels(fitted.probabilities(logits), fitted.cut(None))  # "most probable": the raw argmax
    assert np.array_equal(argmax, logits.argmax(1))
    m = trust.trust_metrics(logits, y.numpy(), fitted, 0.5, patch_model.classes, resamples=200)
    c = m["calibration"]
    assert c["ece_before_ci"][0] <= c["ece_before"] <= c["ece_before_ci"][1]
    assert [c["level"] for c in m["coverage"]] == [0.9, 0.95]
    assert all(c["coverage"] >= c["conformal_coverage"] and 1 <= c["mean_size"] <= 2 for c in m["coverage"])


@pytest.mark.slow
def test_flagged_test_images_count_as_both_in_the_coverage_and_scores_reuse_the_features(patch_model):
    from cxrdemo.data import CachedImages
    from cxrdemo.model import domain

    rng = np.random.default_rng(3)
    (xt, yt), (xv, yv) = _images(rng, 40), _images(rng, 60)
    net, pre = patch_model.net, patch_model.preprocessing
    fitted = trust.Trust.from_records(trust.fit_records(net, pre, patch_model.classes, CachedImages(xt, yt, [], []),
                                                        CachedImages(xv, yv, [], [])))
    x, y = _images(np.random.default_rng(4), 40)
    x[:8] = torch.from_numpy(np.random.default_rng(5).integers(0, 255, (8, 1, 64, 64), dtype=np.uint8))  # noise
    logits, feats = trust.logits_and_features(net, x, pre)
    scores = trust.domain_scores(net, x, pre, fitted.domain, feats)
    assert np.allclose(scores, trust.domain_scores(net, x, pre, fitted.domain), rtol=1e-5)  # recomputed: the same
    outside = trust.outside_domain(fitted.domain, scores)
    assert outside[:8].all() and outside.sum() < 12
    assert trust.domain_scores(net, x, pre, None, feats) is None and trust.outside_domain(None, None) is None
    two = domain.fit_domain(domain.features(net, pre.normalize(xt), 2), yt, domain.features(net, pre.normalize(xv), 2),
                            layers=2)
    assert len(trust.domain_scores(net, x, pre, two, feats)) == 40  # two stages: not the one-stage features
    plain = trust.trust_metrics(logits, y.numpy(), fitted, 0.5, patch_model.classes, resamples=50)
    flagged = trust.trust_metrics(logits, y.numpy(), fitted, 0.5, patch_model.classes, resamples=50, outside=outside)
    for a, b in zip(plain["coverage"], flagged["coverage"]):
        assert b["share_flagged"] == pytest.approx(outside.mean()) and a["share_flagged"] is None
        assert b["coverage"] >= a["coverage"] and b["mean_size"] >= a["mean_size"]
        assert b["conformal_coverage"] == a["conformal_coverage"]  # the promise itself is not changed by the flag
    probs = fitted.probabilities(logits)
    masks = conformal.set_masks(probs, fitted.conformal[0.9], metrics.predict_labels(probs, fitted.cut(0.5)), outside)
    assert masks[:8].all()


def test_a_model_without_records_keeps_working(patch_model):
    x, _ = _images(np.random.default_rng(4), 2)
    a = result.assess_image(patch_model, x[1])
    assert patch_model.calibration == 1.0 and patch_model.domain is None and patch_model.conformal == {}
    assert a.in_domain is None and a.domain_score is None and a.sets == {0.9: None, 0.95: None}
    assert a.set_missing == {0.9: "no-record", 0.95: "no-record"}
    assert "calibrate" in diagnosis_view.set_sentence(a, 0.9) and not a.calibrated
    assert np.allclose(a.probs, predict.predict_probs(patch_model, x[1:])[0], atol=1e-6)


def _calibrated_run(patch_store, patch_data, capsys):
    assert cli(["calibrate", "--run", patch_store.run.name, "--data", str(patch_data), "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_calibrate_adds_the_three_records_and_leaves_the_weights(patch_store, patch_data, capsys):
    path = patch_store.run / "model.pt"
    before = checkpoint.load(path)
    out = _calibrated_run(patch_store, patch_data, capsys)
    after = checkpoint.load(path)
    assert set(after.records) == {"calibration", "conformal", "domain"} and out["temperature"] > 0
    assert all(torch.equal(after.state_dict[k], v) for k, v in before.state_dict.items())
    assert after.decision == before.decision and out["domain"]["n_train"] == 48 and out["domain"]["n_val"] == 48
    model = predict.load_model(patch_store.run.name)
    rng = np.random.default_rng(5)
    verdict_sets = []
    for i in range(60):  # a set of one class is always the verdict; every set holds the verdict
        a = result.assess_image(model, torch.from_numpy(patch_image(rng, i % 2 == 1)[0])[None])
        assert a.prediction_set(0.95) is not None and a.predicted in a.prediction_set(0.95)
        assert set(a.prediction_set(0.9)) <= set(a.prediction_set(0.95))  # nested
        verdict_sets.append(len(a.prediction_set(0.95)))
        assert a.in_domain is not None and diagnosis_view.domain_words(model, a)
    assert min(verdict_sets) == 1
    noise = torch.from_numpy(np.random.default_rng(6).integers(0, 255, (1, 64, 64), dtype=np.uint8))
    flagged = result.assess_image(model, noise)
    assert flagged.in_domain is False  # uniform noise is unlike any patch image
    assert flagged.sets == {0.9: (0, 1), 0.95: (0, 1)}  # and so outside the promise: "both", whatever its probabilities
    sentence = diagnosis_view.set_sentence(flagged, 0.9)
    assert "**both**" in sentence and "unlike the training images" in sentence
    # an image that failed the quality gate (pixels or DICOM header: not a frontal chest film) is outside it too
    for i in range(60):
        x = torch.from_numpy(patch_image(rng, i % 2 == 1)[0])[None]
        if len(result.assess_image(model, x).prediction_set(0.9)) == 1:
            break
    single = result.assess_image(model, x)
    gated = result.assess_image(model, x, looks_like_cxr=False)
    assert len(single.prediction_set(0.9)) == 1 and single.outside is None and single.in_domain is True
    assert gated.prediction_set(0.9) == (0, 1) and gated.predicted == single.predicted  # the verdict itself is kept
    assert "did not pass the check" in diagnosis_view.set_sentence(gated, 0.9)


def test_calibrate_refuses_bad_input_with_one_sentence(patch_store, patch_data, tmp_path, capsys):
    assert cli(["calibrate", "--run", patch_store.run.name]) == 2  # the recorded dataset is not on this machine
    assert "give its folder with --data" in capsys.readouterr().err
    assert cli(["calibrate", "--run", "no-such-run", "--data", str(patch_data)]) == 2
    assert cli(["calibrate", "--run", patch_store.run.name, "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert checkpoint.load(patch_store.run / "model.pt").records == {}  # nothing was written


def test_prediction_set_level_is_checked(patch_model):
    with pytest.raises(Exception, match="coverage must be one of 90%, 95%"):
        result.check_level(0.8)
    assert result.check_level(0.95) == 0.95
    assert conformal.min_images(0.95) == 19


def test_perturbed_copies_leave_the_random_state_alone_and_are_reproducible(patch_model):
    x, _ = _images(np.random.default_rng(5), 20)
    torch.manual_seed(123)
    before = torch.get_rng_state().clone()
    a = trust.perturbed_logits(patch_model.net, x, patch_model.preprocessing)
    assert torch.equal(torch.get_rng_state(), before)  # the run's own random state is untouched
    b = trust.perturbed_logits(patch_model.net, x, patch_model.preprocessing)
    assert a.shape == (2 * len(x), 2) and np.array_equal(a, b)
    clean, _ = trust.logits_and_features(patch_model.net, x, patch_model.preprocessing)
    assert not np.allclose(a[:len(x)], clean)  # the copies really are perturbed
    assert trust.perturbed_logits(patch_model.net, x[:, :, :8, :8], patch_model.preprocessing).size == 0


def test_older_records_without_a_bias_read_as_temperature_only():
    t = trust.Trust.from_records({"calibration": {"temperature": 2.0}})
    assert t.bias == () and t.cut(None) is None
    z = np.array([[0.0, 1.0], [2.0, -1.0]])
    assert np.allclose(t.probabilities(z), cal_softmax(z / 2.0))
    with pytest.raises(RunError):
        trust.Trust.from_records({"calibration": {"temperature": 1.0, "bias": [0.0, float("nan")]}})


def cal_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
