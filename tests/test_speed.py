"""The timed trial that chooses arithmetic and memory layout: what it compares, its budget, that it
leaves the run alone (weights, random state), and that its answer is remembered and reused."""

import numpy as np
import pytest
import torch

from cxrdemo.config import TrainConfig
from cxrdemo.model import backbones, checkpoint, speed
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from tests.helpers import make_square_dataset, tiny_config

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def store(run_store):
    """conftest's run store with the shipped demo model in reach (the bf16 guard fine-tunes it), on one thread."""
    # One thread: on a shared, loaded 2-core machine two threads of a tiny net wait on each other for seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield run_store
    torch.set_num_threads(threads)


def _net(name="cnn5", n_frozen=0):
    torch.manual_seed(1)
    net = backbones.build_backbone(name, 2)
    net.set_freeze(n_frozen)
    return net


@pytest.mark.parametrize("precision,expected", [
    ("auto", ["fp32-contiguous", "fp32-channels-last", "bf16-contiguous", "bf16-channels-last"]),
    ("fp32", ["fp32-contiguous", "fp32-channels-last"]),  # an explicit precision wins: only the layout is open
    ("bf16", ["bf16-contiguous", "bf16-channels-last"]),
])
def test_candidates_on_a_cpu(precision, expected):
    assert [c.name for c in speed.candidates(precision, CPU)] == expected


def test_decision_takes_the_fastest_and_asks_bf16_for_a_margin():
    cands = speed.candidates("auto", CPU)
    fp32, fp32_cl, bf16, bf16_cl = cands
    choice = speed._decide(cands, {fp32: 1.0, fp32_cl: 0.8, bf16: 0.5, bf16_cl: 0.6}, 1.0, 5.0, CPU)
    assert (choice.bf16, choice.channels_last, choice.ratio) == (True, False, 2.0)
    # bf16 only 2% faster than the best float32: its rounding is not worth it
    choice = speed._decide(cands, {fp32: 1.0, fp32_cl: 0.8, bf16: 0.79, bf16_cl: 0.9}, 1.0, 5.0, CPU)
    assert (choice.bf16, choice.channels_last) == (False, True)
    assert choice.ratio == pytest.approx(1.25)
    assert speed._decide(cands, {fp32_cl: 0.8}, 1.0, 5.0, CPU).source == "not measured"  # no reference, no ratio


def test_trial_measures_every_candidate_and_leaves_weights_and_random_state_alone():
    net = _net(n_frozen=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(7)
    np.random.seed(7)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(7)
    np.random.seed(7)
    choice = speed.measure(net, CPU, speed.candidates("auto", CPU), batch_size=4, img_size=32, n_classes=2,
                           batches_per_epoch=100_000)
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.n_frozen == 1 and next(net.parameters()).is_contiguous()
    assert choice.source == "measured" and len(choice.step_s) == 4
    assert choice.reference == "fp32-contiguous" and choice.ratio >= 1.0  # the fastest is never slower than it
    assert choice.trial_s <= speed.MAX_TRIAL_S


def test_trial_keeps_to_a_tenth_of_an_epoch(monkeypatch):
    # 3 batches an epoch: 8 steps of trial would cost more than 10% of an epoch, so not one step is spent.
    calls = []
    real = speed._Step.__call__
    monkeypatch.setattr(speed._Step, "__call__", lambda self: calls.append(1) or real(self))
    choice = speed.measure(_net(), CPU, speed.candidates("auto", CPU), 4, 32, 2, batches_per_epoch=3)
    assert choice.source == "not measured" and calls == []
    # 100 batches: the step count fits, but a first step costing more than the budget's share stops it there.
    monkeypatch.setattr(speed, "MAX_TRIAL_S", 1e-9)
    choice = speed.measure(_net(), CPU, speed.candidates("auto", CPU), 4, 32, 2, batches_per_epoch=100)
    assert choice.source == "not measured" and len(calls) == 1
    made = speed.choose(_net(), CPU, precision="auto", backbone="cnn5", img_size=32, batch_size=4, n_classes=2,
                        batches_per_epoch=3, hint_channels_last=True)
    # No trial fits before training: the run starts with the reference and model/tuning times the rest between epochs.
    assert (made.bf16, made.channels_last, made.source) == (False, False, speed.PENDING)
    assert [c.name for c in speed.candidates_for(made.key)][0] == "fp32-contiguous"


def test_answer_is_remembered_per_key(monkeypatch):
    kw = dict(precision="auto", backbone="cnn5", img_size=32, batch_size=4, n_classes=2, batches_per_epoch=100_000)
    first = speed.choose(_net(), CPU, **kw)
    assert first.source == "measured"
    monkeypatch.setattr(speed, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = speed.choose(_net(), CPU, **kw)
    assert again.source == "remembered" and (again.bf16, again.channels_last) == (first.bf16, first.channels_last)
    assert again.ratio == pytest.approx(first.ratio, abs=1e-4)
    with pytest.raises(pytest.fail.Exception):  # another image size is another question
        speed.choose(_net(), CPU, **{**kw, "img_size": 48})


@pytest.mark.slow
def test_a_run_with_the_trial_trains_the_same_weights_as_with_its_answer_given(tmp_path, monkeypatch):
    ds = make_square_dataset(tmp_path / "ds")
    monkeypatch.setattr(speed, "EPOCH_FRACTION", 1e6)  # a tiny dataset: let the trial run anyway
    cfg = tiny_config(ds, backbone="cnn5", epochs=2, step_size=0, threads=1)
    dirs = []
    for _ in range(2):  # the first run measures, the second is given the remembered answer
        d = runs.create_run(cfg)
        assert execute_run(d)["state"] == "completed"
        dirs.append(d)
    trials = [runs.read_json(d / "config.json")["speed_trial"] for d in dirs]
    assert [t["source"] for t in trials] == ["measured", "remembered"]
    assert trials[0]["bf16"] == trials[1]["bf16"] and trials[0]["channels_last"] == trials[1]["channels_last"]
    a, b = (checkpoint.load(d / "model.pt").state_dict for d in dirs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = runs.read_json(dirs[0] / "config.json")
    assert meta["precision"] == ("bfloat16 mixed precision" if trials[0]["bf16"] else "float32")
    assert {v.dtype for v in a.values() if v.is_floating_point()} == {torch.float32}


def test_compare_words_the_arithmetic_with_its_measured_gain():
    from cxrdemo.views.compare import arithmetic_of

    meta = {"precision": "bfloat16 mixed precision", "memory_format": "channels-last",
            "speed_trial": {"source": "remembered", "ratio": 1.954, "reference": "fp32-contiguous"}}
    assert arithmetic_of(meta) == "bfloat16 mixed precision, channels-last (1.95x fp32-contiguous, measured)"
    small = {"precision": "float32", "memory_format": "contiguous", "speed_trial": {"source": "not measured (...)"}}
    assert arithmetic_of(small) == "float32, contiguous (not measured: small dataset)"
    assert arithmetic_of({}) == "float32"  # runs from before the trial
    in_run = {"precision": "bfloat16 mixed precision", "memory_format": "contiguous",
              "speed_trial": {"source": "measured during the run", "ratio": 1.81, "reference": "fp32-contiguous",
                              "epoch": 2}}
    assert arithmetic_of(in_run) == "bfloat16 mixed precision, contiguous (1.81x fp32-contiguous, measured, from epoch 2)"


@pytest.mark.slow
def test_bf16_matches_fp32_on_validation_and_saves_float32(tmp_path):
    """The accuracy guard: one small recipe (the shipped cnn5 fine-tuned on the demo data at 96 px, 3 epochs)
    on 3 seeds in float32 and in bfloat16 mixed precision: |mean delta val accuracy| <= 2 points (pooled over
    the seeds: 60 validation images, one image = 1.7 points) and |delta val loss| <= 0.05 for every seed.
    Measured: identical accuracies and losses 0.001-0.003 apart."""
    from cxrdemo import paths
    from cxrdemo.diagnosis import predict
    from cxrdemo.model import train

    source = checkpoint.load(paths.demo_run_dir() / checkpoint.MODEL_FILE)
    acc, loss = {}, {}
    for seed in (0, 1, 2):
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig(data="demo", backbone="cnn5", init="run:demo", freeze="3", img_size=96, epochs=3,
                              batch_size=16, lr=3e-4, patience=0, step_size=0, seed=seed, precision=precision,
                              threads=1, augment="none")
            rows, meta = [], {}
            d = tmp_path / f"{precision}-{seed}"
            d.mkdir()
            train.fit(cfg, d, lambda p: (rows.append(p.row) if p.row else None, meta.update(p.meta)), source=source)
            assert meta["precision"] == ("bfloat16 mixed precision" if precision == "bf16" else "float32")
            acc[precision, seed], loss[precision, seed] = rows[-1]["val_acc"], rows[-1]["val_loss"]
            model = predict.load_model(str(d), allow_path=True)
            assert {v.dtype for v in model.net.state_dict().values() if v.is_floating_point()} == {torch.float32}
            probs = predict.predict_probs(model, torch.randint(0, 256, (3, 1, 96, 96), dtype=torch.uint8))
            assert probs.dtype == np.float32
        assert abs(loss["fp32", seed] - loss["bf16", seed]) <= 0.05, (seed, loss)
    assert max(acc.values()) >= 0.8  # the recipe really learns: a guard between two chance-level models guards nothing
    mean = {p: np.mean([acc[p, s] for s in (0, 1, 2)]) for p in ("fp32", "bf16")}
    assert abs(mean["fp32"] - mean["bf16"]) <= 0.02, acc


def test_a_job_sizes_its_threads_by_the_slot_count(monkeypatch, tmp_path):
    from cxrdemo.model import device
    from cxrdemo.runs import lifecycle, slots

    monkeypatch.delenv("CXRDEMO_THREADS", raising=False)
    monkeypatch.setenv("CXRDEMO_MAX_JOBS", "1")  # restored afterwards; run_worker overwrites it below
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    d = runs.create_run(TrainConfig(data=str(tmp_path), backbone="cnn5"))
    lifecycle.finish(d, "cancelled")  # not queued: run_worker returns at once, after sizing
    assert slots.run_worker(d, max_jobs=4)["claimed"] is False
    assert device.default_threads() == 2  # 8 cores shared by 4 slots


def test_loader_pins_batches_for_a_gpu():
    from cxrdemo import data

    cached = data.CachedImages(torch.zeros((4, 1, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), [], [])
    assert data.make_loader(cached, 2, pin_memory=True).pin_memory
    assert not data.make_loader(cached, 2).pin_memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentation_on_the_gpu_draws_the_same_random_numbers_as_on_the_cpu():
    from cxrdemo import data

    x = torch.randint(0, 256, (6, 1, 64, 64), dtype=torch.uint8)
    aug = data.make_augment("acquisition", 64)
    on_cpu = aug(x.clone(), torch.Generator().manual_seed(3))
    on_gpu = aug(x.cuda(), torch.Generator().manual_seed(3)).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=2e-3)
