"""Damaged trust records (issue 30's audit): each is one sentence on load and on the CLI (exit 2), never a traceback,
"unexpected problem" or a "calibrated" p = 100.0%."""

from __future__ import annotations

import math

import pytest
import torch

from cxrdemo import paths
from cxrdemo.cli.main import main as cli
from cxrdemo.errors import RunError
from cxrdemo.model import checkpoint, trust

DEMO_MODEL = paths.demo_run_dir() / "model.pt"
IMAGE = next((paths.DEMO_DATA_DIR / "test" / "NORMAL").glob("*.jpg"))


def _domain(**change):
    def apply(raw):
        raw["domain"].update(change)
    return apply


def _calibration(**change):
    def apply(raw):
        raw["calibration"].update(change)
    return apply


def _qhat(value):
    def apply(raw):
        raw["conformal"]["levels"][0]["qhat"] = [value, value]
    return apply


DIM = 992  # the shipped record pools all five cnn5 stages: 32 + 64 + 128 + 256 + 512 features

DAMAGE = {  # name: (change, words of the sentence)
    "domain of the wrong dimension": (_domain(feature_dim=256, means=torch.zeros(2, 256), layers=1, val_scores=None,
                                              precision_factor=torch.eye(256)),  # one stage: the head's 512
                                      "describes 256 features and the network gives 512"),
    "temperature infinite": (_calibration(temperature=math.inf), "its temperature should be a number"),
    "temperature 1e-300": (_calibration(temperature=1e-300), "its temperature should be a number from 0.05 to 20"),
    "bias huge": (_calibration(bias=[0.0, 1e300]), "its bias should be 2 numbers"),
    "NaN conformal cut-offs": (_qhat(math.nan), "its cut-offs at 90% should be 2 numbers from 0 to 1"),
    "layers 99": (_domain(layers=99), "its layers should be a whole number from 1 to 16"),
    "layers beyond the backbone": (_domain(layers=9), "pools 9 stages and a cnn5 has"),
    "text means": (_domain(means=[["a"] * DIM, ["b"] * DIM]), f"its means should be a 2 x {DIM} table of finite numbers"),
    "a declared 10^12-element tensor": (_domain(feature_dim=10**6, means=torch.zeros(1).expand(2, 10**6),
                                                precision_factor=torch.zeros(1).expand(10**6, 10**6)),
                                        "its feature_dim should be a whole number from 1 to 8192"),
    "a 10^12-element tensor of the declared width": (_domain(precision_factor=torch.zeros(1).expand(10**6, 10**6)),
                                                     f"its precision_factor should be a {DIM} x {DIM} table"),
    "NaN domain cut-off": (_domain(cutoff=math.nan), "its cutoff should be a number"),
}


def _damaged(tmp_path, name):
    change, _ = DAMAGE[name]
    raw = torch.load(DEMO_MODEL, weights_only=True)
    change(raw)
    folder = tmp_path / "bad-run"
    folder.mkdir()
    torch.save(raw, folder / "model.pt")
    return folder


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_trust_record_is_one_sentence_on_load(tmp_path, name):
    folder = _damaged(tmp_path, name)
    with pytest.raises(RunError) as info:
        checkpoint.load(folder / "model.pt")
    message = str(info.value)
    assert message.startswith("The model file of run bad-run is damaged: its ") and DAMAGE[name][1] in message
    assert message.count(". ") == 0 and message.endswith(".") and "calibrate --run bad-run" in message


@pytest.mark.parametrize("name", list(DAMAGE))
def test_predict_on_a_damaged_trust_record_exits_2_with_one_sentence(tmp_path, capsys, name):
    folder = _damaged(tmp_path, name)
    assert cli(["predict", "--run", str(folder), str(IMAGE)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and DAMAGE[name][1] in err
    assert "Traceback" not in err and "unexpected" not in err


def test_a_domain_record_over_more_stages_than_it_describes_is_refused_when_the_net_is_rebuilt(tmp_path):
    raw = torch.load(DEMO_MODEL, weights_only=True)
    raw["domain"]["layers"] = 2  # cnn5's last two stages give 768 features, not the 992 it describes
    folder = tmp_path / "two"
    folder.mkdir()
    torch.save(raw, folder / "model.pt")
    model = checkpoint.load(folder / "model.pt")
    with pytest.raises(RunError, match=f"describes {DIM} features and the cnn5 gives 768"):
        checkpoint.rebuild_net(model)


def test_trust_reads_records_through_the_same_checks():
    records = torch.load(DEMO_MODEL, weights_only=True)
    fitted = trust.Trust.from_records({k: records[k] for k in checkpoint.RECORD_NAMES}, "demo")
    assert fitted.domain.feature_dim == DIM and set(fitted.conformal) == {0.9, 0.95}
    with pytest.raises(RunError, match=r"A trust record of run x is damaged \(its temperature"):
        trust.Trust.from_records({"calibration": {"temperature": 1e-300}}, "x")


def test_calibrate_can_replace_a_damaged_record(tmp_path):
    folder = _damaged(tmp_path, "temperature 1e-300")
    good = torch.load(DEMO_MODEL, weights_only=True)["calibration"]
    assert checkpoint.update_records(folder / "model.pt", calibration=good).records["calibration"] == good
    assert checkpoint.load(folder / "model.pt").records["calibration"]["temperature"] == good["temperature"]
