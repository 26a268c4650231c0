"""One image, one preprocessing: a real radiograph reaches the network as the same tensor through every consumer.

The reference is the model file's preprocessing record applied to the decoded image (`pre(grey)`). Training's
batch feeder (on each split's decode-once cache), the probe panel, the evaluation (training's test and the
`evaluate` command), prediction, the scorecard job and the trust fitting (at finish and by `calibrate`) must give
it bit for bit. With intensity "equalize" the step changes the image, so a consumer that skipped it would fail here.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path

import pytest
import torch

from cxrdemo import data, paths
from cxrdemo.config import TrainConfig
from cxrdemo.diagnosis import predict, scorecard, scorecard_job
from cxrdemo.model import backbones, checkpoint, evaluation, probes, train, trust
from cxrdemo.runs import records

SIZE = 64
CLASSES = ("NORMAL", "PNEUMONIA")
TARGET = "target.jpg"  # the one real image, copied into every split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Real demo radiographs: three per class and split, and the target image in every split's NORMAL folder."""
    root = tmp_path_factory.mktemp("one-image")
    target = sorted((paths.DEMO_DATA_DIR / "test" / "NORMAL").glob("*.jpg"))[0]
    for split in ("train", "val", "test"):
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for f in sorted((paths.DEMO_DATA_DIR / "train" / cls).glob("*.jpg"))[:3]:
                shutil.copy(f, folder / f.name)
        shutil.copy(target, root / split / "NORMAL" / TARGET)
    return root


@contextlib.contextmanager
def network_inputs(net: backbones.Net):
    """Every batch the network's first stage receives while the block runs."""
    seen: list[torch.Tensor] = []
    hook = net.trunk[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        yield seen
    finally:
        hook.remove()


def row(paths_: list[str], split: str) -> int:
    """The target's row among a split's image paths."""
    return [Path(p).parent.parent.name == split and Path(p).name == TARGET for p in paths_].index(True)


@pytest.mark.slow
@pytest.mark.parametrize("intensity", ["none", "equalize"])
def test_one_image_reaches_the_network_as_the_same_tensor_through_every_consumer(dataset, intensity, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    pre = checkpoint.Preprocessing(SIZE, intensity)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    net = backbones.build_backbone("cnn8", len(CLASSES))
    checkpoint.save(checkpoint.ModelFile("cnn8", CLASSES, net.state_dict(), pre), run_dir / checkpoint.MODEL_FILE)
    model = predict.load_model(str(run_dir), allow_path=True)
    net = model.net

    grey, _ = data.read_image(dataset / "test" / "NORMAL" / TARGET)
    ref = pre(grey)
    assert ref.shape == (1, 3, SIZE, SIZE) and ref.dtype == torch.float32
    if intensity == "equalize":  # the step changes this image: skipping it anywhere would be seen below
        assert not torch.equal(ref, checkpoint.Preprocessing(SIZE)(grey))

    # prediction (an upload)
    assert torch.equal(predict.model_input(model, predict.prepare(model, grey)), ref)

    # training: each split decoded once through the record, then the batch feeder; the probe panel off validation
    config = TrainConfig(data=str(dataset), backbone="cnn8", img_size=SIZE, intensity=intensity, probes=20)
    assert train.preprocessing_for(config) == pre
    scan, cache = train._read_dataset(config, pre, lambda p: None)
    feeder = train._Inputs(pre, None, channels_last=True)
    for split in ("train", "val", "test"):
        k = row(cache[split].paths, split)
        assert torch.equal(feeder(cache[split].images[k:k + 1]), ref), split
    panel = probes.start_panel(run_dir, config, cache["val"], scan.root, CLASSES)
    k = row([cache["val"].paths[i] for i in panel.indices], "val")
    assert torch.equal(feeder(panel.images)[k:k + 1], ref)

    # evaluation: training's test split (finish) and the `evaluate` command (its own loading)
    with network_inputs(net) as seen:
        evaluation.evaluate_split(net, pre, CLASSES, None, model.trust, cache["test"], resamples=10)
    assert torch.equal(seen[0][row(cache["test"].paths, "test")][None], ref)
    images, _ = evaluation.load_split(pre, CLASSES, dataset, "test")
    with network_inputs(net) as seen:
        predict.evaluate_run(model, str(dataset), "test", resamples=10)
    assert torch.equal(seen[0][row(images.paths, "test")][None], ref)

    # trust fitting at finish (on training's cache): the clean validation pass first, the training pass last
    with network_inputs(net) as seen:
        trust.fit_records(net, pre, CLASSES, cache["train"], cache["val"])
    val_pass = next(x for x in seen if len(x) == len(cache["val"].images))  # after a one-image look at the stages
    assert torch.equal(val_pass[row(cache["val"].paths, "val")][None], ref)
    assert torch.equal(seen[-1][row(cache["train"].paths, "train")][None], ref)

    # trust fitting by `calibrate` (it loads the run's splits itself, into a network rebuilt from model.pt)
    rebuilt: list[torch.Tensor] = []
    rebuild = checkpoint.rebuild_net
    with contextlib.ExitStack() as stack:
        monkeypatch.setattr(checkpoint, "rebuild_net", lambda m: _watched(rebuild(m), rebuilt, stack))
        records.add_trust_records(str(run_dir), data_dir=str(dataset))
    val = data.scan_dataset(dataset).splits["val"]
    val_pass = next(x for x in rebuilt if len(x) == len(val))  # after a one-image look at the stages
    assert torch.equal(val_pass[row([p for p, _ in val], "val")][None], ref)

    # the scorecard job: the images it scores, as prediction feeds them to the network
    scored = []
    monkeypatch.setattr(scorecard, "score_methods", lambda m, images, *a, **kw: scored.append(images) or {})
    items = data.scan_dataset(dataset, require_train=False).splits["test"]
    scorecard_job.compute(run_dir, scorecard_job.params_for(n=len(items), data=str(dataset), seed=1))
    picked = random.Random(1).sample(items, len(items))  # the job's own seeded choice
    k = row([p for p, _ in picked], "test")
    assert torch.equal(predict.model_input(model, scored[0][k]), ref)


def _watched(net: backbones.Net, seen: list, stack: contextlib.ExitStack) -> backbones.Net:
    """`net`, its first stage's inputs appended to `seen` until `stack` closes."""
    hook = net.trunk[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    stack.callback(hook.remove)
    return net
