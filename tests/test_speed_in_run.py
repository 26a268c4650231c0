"""The timed trial spread over a small run's epoch boundaries (model/tuning): its budget, that it leaves the
run's weights and random state alone, the epoch it switches at, the remembered answer, explicit precision.

A fake clock stands in for time: each call advances it by the cost of the candidate stepping (None: set-up and
validation), so no assertion depends on how fast this machine is."""

import numpy as np
import pytest
import torch

from cxrdemo import data
from cxrdemo.config import TrainConfig
from cxrdemo.model import backbones, checkpoint, speed, train, tuning
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from tests.helpers import make_square_dataset, tiny_config
from tests.test_speed import store  # noqa: F401 - autouse: a private run store and one thread, as in test_speed

CPU = torch.device("cpu")
REF, BF16, BF16_CL, FP32_CL = "fp32-contiguous", "bf16-contiguous", "bf16-channels-last", "fp32-channels-last"


class FakeClock:
    """Seconds that advance by costs[name of the candidate stepping] on every reading (costs[None]: validation)."""

    def __init__(self, costs: dict):
        self.now, self.costs = 0.0, costs

    def __call__(self, stepping):
        self.now += self.costs[stepping.name if stepping is not None else None]
        return self.now


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("ds"))  # 20 train images: 5 batches of 4


def _run(ds, **kw):
    cfg = tiny_config(ds, backbone="cnn5", batch_size=4, step_size=0, threads=1, augment="none", **{"epochs": 3, **kw})
    d = runs.create_run(cfg)
    assert execute_run(d)["state"] == "completed"
    return d, runs.read_json(d / "config.json")


def _epoch(trial, clock_steps: int) -> None:
    """The run's own training pass as the trial sees it: `clock_steps` reported steps."""
    report = trial.watch(lambda i, n: None)
    for i in range(1, clock_steps + 1):
        report(i, clock_steps)


@pytest.mark.parametrize("val_cost", [5.0, 20.0, 60.0, 200.0])
def test_each_boundary_keeps_to_a_tenth_of_the_epoch_and_leaves_weights_and_random_state_alone(monkeypatch,
                                                                                               val_cost):
    clock = FakeClock({REF: 1.0, BF16: 0.5, BF16_CL: 0.5, FP32_CL: 1.2, None: val_cost})
    monkeypatch.setattr(tuning, "clock", clock)
    torch.manual_seed(1)
    net = backbones.build_backbone("cnn5", 2)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    cached = data.CachedImages(torch.randint(0, 256, (20, 1, 32, 32), dtype=torch.uint8),
                               torch.tensor([0, 1] * 10), [], [])
    pre = train.preprocessing_for(TrainConfig(img_size=32))
    inputs = train._Inputs(pre, None, False, torch.Generator().manual_seed(3), CPU)
    key = speed.trial_key(CPU, "cnn5", 32, 4, 0, "auto")
    trial = tuning.InRunTrial(speed.SpeedChoice(False, False, speed.PENDING, key=key), speed.candidates_for(key), key)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for epoch in range(1, 5):
        _epoch(trial, 5)
        torch.manual_seed(7)
        expected = torch.rand(2)
        torch.manual_seed(7)
        trial.after_epoch(epoch, net, opt, lambda: data.make_loader(cached, 4, seed=0), inputs,
                          lambda m, b, i, o, r, a: train.train_one_epoch(m, b, i, o, torch.nn.CrossEntropyLoss(), r,
                                                                         amp=a))
        assert torch.equal(torch.rand(2), expected)  # the run's next draws are the ones it would have had
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert not opt.state  # the run's optimiser took no step
        assert inputs.generator.initial_seed() == 3 and not inputs.channels_last
    assert len(trial.costs) == len(trial.budgets) >= 1
    assert all(c <= b + 1e-9 for c, b in zip(trial.costs, trial.budgets)), (trial.costs, trial.budgets)
    assert trial.spent <= speed.MAX_TRIAL_S
    assert trial.finished and trial.choice.bf16 and trial.choice.ratio == pytest.approx(2.0)
    if val_cost == 200.0:  # a long epoch: every candidate in the first boundary, the switch from epoch 2
        assert trial.costs[0] > 0 and trial.choice.epoch == 2 and not trial.choice.given_up


@pytest.mark.slow
def test_a_small_run_switches_at_epoch_2_and_the_next_run_starts_with_the_answer(ds, monkeypatch):
    monkeypatch.setattr(tuning, "clock", FakeClock({REF: 1.0, BF16: 0.5, BF16_CL: 0.5, FP32_CL: 1.2, None: 20.0}))
    d, meta = _run(ds)
    trial = meta["speed_trial"]
    # Boundary 1 (epoch of 5 + 20 s, budget 2.5 s): bf16 contiguous (4 steps, 2 s) and bf16 channels-last
    # (its warm-up, 0.5 s); boundary 2 (2.5 + 20 s, budget 2.25 s): fp32 channels-last (one 1.2 s step).
    assert trial["source"] == "measured during the run" and trial["epoch"] == 2
    assert (trial["bf16"], trial["channels_last"]) == (True, False)
    assert trial["trial_s"] == pytest.approx(3.7) and trial["budget_s"] == pytest.approx(4.75)
    assert trial["step_s"] == pytest.approx({REF: 1.0, BF16: 0.5, BF16_CL: 0.5, FP32_CL: 1.2})
    assert trial["ratio"] == pytest.approx(2.0)
    assert meta["precision"] == "bfloat16 mixed precision" and meta["memory_format"] == "contiguous"
    saved = checkpoint.load(d / "model.pt").state_dict
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}
    monkeypatch.setattr(tuning.InRunTrial, "after_epoch", lambda *a, **k: pytest.fail("timed again"))
    _, again = _run(ds, seed=1)  # a seed repeat: the remembered answer from epoch 1
    assert again["speed_trial"]["source"] == "remembered" and again["speed_trial"]["epoch"] == 1
    assert again["precision"] == "bfloat16 mixed precision"


@pytest.mark.slow
def test_timing_leaves_the_run_bit_identical_to_one_given_the_answer(ds, monkeypatch):
    # Every candidate slower than the reference: timed in full at boundary 1, no switch.
    monkeypatch.setattr(tuning, "clock", FakeClock({REF: 1.0, BF16: 2.0, BF16_CL: 2.0, FP32_CL: 2.0, None: 200.0}))
    timed, meta = _run(ds)
    assert meta["speed_trial"]["source"] == "measured during the run" and meta["speed_trial"]["epoch"] == 1
    assert meta["speed_trial"]["trial_s"] == pytest.approx(20.0) and meta["speed_trial"]["budget_s"] == 20.5
    given, meta2 = _run(ds)
    assert meta2["speed_trial"]["source"] == "remembered" and meta2["precision"] == "float32"
    a, b = (checkpoint.load(d / "model.pt").state_dict for d in (timed, given))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [runs.read_metrics_rows(d) for d in (timed, given)]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]


@pytest.mark.slow
def test_explicit_precision_wins_over_the_in_run_trial(ds, monkeypatch):
    monkeypatch.setattr(tuning, "clock", FakeClock({REF: 1.0, FP32_CL: 0.5, None: 200.0}))
    _, meta = _run(ds, precision="fp32")
    trial = meta["speed_trial"]
    assert set(trial["step_s"]) == {REF, FP32_CL}  # only the layout was open
    assert meta["precision"] == "float32" and meta["memory_format"] == "channels-last" and trial["epoch"] == 2


def test_no_switch_without_a_margin():
    key = speed.trial_key(CPU, "cnn5", 32, 4, 0, "auto")
    trial = tuning.InRunTrial(speed.SpeedChoice(False, False, speed.PENDING), speed.candidates_for(key), key)
    trial.steps = {speed.Candidate(False, False): [1.0], speed.Candidate(True, False): [0.97]}
    trial.untimed = []
    choice = trial._decide(1)
    assert (choice.bf16, choice.channels_last, choice.epoch) == (False, False, 1)  # 3% faster: not worth bf16
    np.testing.assert_allclose(choice.ratio, 1.0)


@pytest.mark.slow
def test_tune_fills_the_cache_a_run_then_starts_with(ds, monkeypatch, capsys):
    from cxrdemo.cli.main import main

    freeze = TrainConfig().freeze
    assert main(["tune", "--backbone", "cnn5", "--size", "32", "--batch-size", "4", "--freeze", str(freeze),
                 "--threads", "1", "--max-seconds", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: ") and f"cnn5 32 px freeze {freeze}: " in out and "measured" in out
    monkeypatch.setattr(tuning.InRunTrial, "after_epoch", lambda *a, **k: pytest.fail("timed during the run"))
    monkeypatch.setattr(speed, "measure", lambda *a, **k: pytest.fail("timed before the run"))
    _, meta = _run(ds, epochs=1)
    assert meta["speed_trial"]["source"] == "remembered" and meta["speed_trial"]["epoch"] == 1
    assert main(["tune", "--backbone", "nope", "--size", "32"]) == 2


def test_a_candidate_that_fails_on_its_copy_is_given_up_and_the_run_goes_on(monkeypatch):
    from cxrdemo.errors import ConfigError

    monkeypatch.setattr(tuning, "clock", FakeClock({REF: 1.0, BF16: 0.5, BF16_CL: 0.5, FP32_CL: 1.2, None: 200.0}))
    key = speed.trial_key(CPU, "cnn5", 32, 4, 0, "auto")
    trial = tuning.InRunTrial(speed.SpeedChoice(False, False, speed.PENDING), speed.candidates_for(key), key)
    _epoch(trial, 5)
    net = torch.nn.Linear(2, 2)

    def nan_loss(m, batches, *rest):
        next(iter(batches))
        batches.report(1, 1)
        raise ConfigError("The training loss became infinite or NaN: lower the learning rate.")

    inputs = train._Inputs(train.preprocessing_for(TrainConfig(img_size=32)))
    choice = trial.after_epoch(1, net, torch.optim.Adam(net.parameters()), lambda: iter([0] * 9), inputs, nan_loss)
    assert trial.finished and sorted(trial.given_up) == sorted([BF16, BF16_CL, FP32_CL])
    assert (choice.bf16, choice.channels_last, choice.source) == (False, False, "measured during the run")
