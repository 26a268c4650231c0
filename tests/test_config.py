"""TrainConfig: defaults from the papers, round-trips, and a sentence for every bad value."""

import math

import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError


def test_defaults_follow_the_papers():
    c = TrainConfig()
    assert (c.optimizer, c.lr, c.weight_decay, c.img_size, c.step_size, c.balance) == ("adam", 1e-3, 1e-4, 224, 10,
                                                                                        "sampler")
    assert c.patience > 0


def test_round_trip_and_unknown_keys_ignored():
    c = TrainConfig(backbone="cnn5", freeze="gradual:3", epochs=4)
    d = c.to_dict()
    assert TrainConfig.from_dict({**d, "from_the_future": 1}) == c
    assert c.gradual_epoch == 3 and TrainConfig().gradual_epoch is None


@pytest.mark.parametrize("changes, words", [
    ({"epochs": 0}, "Epochs"), ({"epochs": -3}, "Epochs"), ({"lr": math.nan}, "lr"), ({"lr": 0.0}, "Learning rate"),
    ({"img_size": 16}, "Image size"), ({"batch_size": 0}, "Batch size"), ({"freeze": "most"}, "Freeze level"),
    ({"init": "pretrained"}, "Initialisation"), ({"init": "run:"}, "Initialisation"), ({"augment": "heavy"}, "augment"),
    ({"dropout": 1.0}, "Dropout"), ({"epochs": 2.5}, "integer"), ({"data": ""}, "dataset"),
    ({"threshold": "spec:1.5"}, "Decision rule"), ({"threshold": "spec:0.3"}, "Decision rule"),
    ({"threshold": "youden"}, "Decision rule"), ({"threshold": "sens:"}, "Decision rule"),
])
def test_bad_values_raise_config_error_with_a_sentence(changes, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**changes)
