"""The fast paths are also correct: frozen groups stay fixed, no graph for the frozen prefix, the
cached-feature path only where it is exact, and images are decoded once, never per epoch."""

import shutil
from functools import partial

import pytest
import torch

from cxrdemo import data
from cxrdemo.data import imageio
from cxrdemo.model import backbones, checkpoint, train
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from tests.helpers import make_square_dataset, tiny_config

CLASSES = ("NORMAL", "PNEUMONIA")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("fast"), CLASSES, (8, 3, 3), size=40, seed=1, top=8)


@pytest.fixture(autouse=True)
def store(store, cold_image_memo, monkeypatch):
    """conftest's private run store, one thread, and an empty image memo (each test starts cold)."""
    monkeypatch.setenv("CXRDEMO_THREADS", "1")
    return store


_cfg = partial(tiny_config, backbone="resnet18", epochs=2, step_size=0, lr=1e-2)


def _fit(config):
    d = runs.create_run(config)
    status = execute_run(d)  # the worker writes metrics.csv and resolves `init=run:<id>` for fit
    assert status["state"] == "completed", status.get("error")
    return d


def _n_files(ds):
    return sum(1 for _ in ds.rglob("*.png"))


@pytest.fixture(scope="module")
def source_run(ds, tmp_path_factory):
    """A finished resnet18 run whose BN statistics are no longer the initial 0/1: a change would show."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CXRDEMO_RUNS_DIR", str(tmp_path_factory.mktemp("src") / "runs"))
    mp.setenv("CXRDEMO_CACHE_DIR", str(tmp_path_factory.mktemp("srccache")))
    d = runs.create_run(_cfg(ds, epochs=1))
    assert execute_run(d)["state"] == "completed"
    state = checkpoint.load(d / "model.pt").state_dict
    yield d, state
    mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("freeze, augment, n_frozen, path", [
    ("head", "light", 5, "full"),        # trunk frozen but augmented inputs: features change, the full path runs
    ("head", "acquisition", 5, "full"),
    ("3", "none", 3, "full"),            # deterministic inputs but a trainable trunk suffix: no feature cache
])
def test_frozen_groups_keep_weights_and_bn_statistics(ds, source_run, store, freeze, augment, n_frozen, path):
    src_dir, before = source_run
    # Copy the source run into this test's store so `init=run:<id>` finds it.
    shutil.copytree(src_dir, store / src_dir.name)
    d = _fit(_cfg(ds, init=f"run:{src_dir.name}", freeze=freeze, augment=augment))
    df = runs.read_metrics(d)
    assert list(df["path"]) == [path, path]
    assert list(df["frozen_groups"]) == [n_frozen, n_frozen]
    after = checkpoint.load(d / "model.pt").state_dict
    frozen = tuple(f"trunk.{i}." for i in range(n_frozen))
    assert any(k.endswith("running_mean") and k.startswith(frozen) and before[k].abs().sum() > 0 for k in before)
    for k in after:
        if k.startswith(frozen):
            assert torch.equal(after[k], before[k]), k  # weights, running mean/var and num_batches_tracked
    # The trainable part did learn, so the comparison above could have failed.
    assert not torch.equal(after["head.0.weight"], before["head.0.weight"])
    if n_frozen < 5:
        assert not torch.equal(after["trunk.4.0.bn1.running_mean"], before["trunk.4.0.bn1.running_mean"])


@pytest.mark.slow
def test_frozen_prefix_builds_no_graph_during_fit(ds, monkeypatch):
    seen = {"frozen": [], "trainable": [], "modes": []}
    real = train.build_model

    def hooked(config, classes, source=None):
        net, note = real(config, classes, source)

        def record(kind):
            def hook(module, inputs, out):
                if net.training:  # training passes only; evaluation runs under inference_mode anyway
                    seen[kind].append(out.requires_grad)
                    seen["modes"].append((kind, module.training))
            return hook
        net.trunk[2].register_forward_hook(record("frozen"))  # last frozen stage (layer2)
        net.trunk[3].register_forward_hook(record("trainable"))  # first trainable stage (layer3)
        return net, note
    monkeypatch.setattr(train, "build_model", hooked)
    _fit(_cfg(ds, freeze="3", epochs=1))
    batches = 2  # 16 training images, batch 8
    assert seen["frozen"] == [False] * batches
    assert seen["trainable"] == [True] * batches
    assert ("frozen", False) in seen["modes"] and ("trainable", True) in seen["modes"]
    assert ("frozen", True) not in seen["modes"]  # frozen stages stay in eval mode: BN statistics fixed


def test_net_forward_graph_starts_at_first_trainable_stage():
    torch.manual_seed(0)
    net = backbones.build_backbone("resnet18", 2)
    net.set_freeze(3)
    net.train()
    outs = {}
    for i in (0, 2, 3, 4):
        net.trunk[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
    logits = net(torch.randn(2, 3, 32, 32))
    assert outs[0].grad_fn is None and outs[2].grad_fn is None and not outs[2].requires_grad
    assert outs[3].grad_fn is not None and outs[4].requires_grad and logits.requires_grad
    logits.sum().backward()
    assert all(p.grad is None for g in net.trunk[:3] for p in g.parameters())
    assert all(p.grad is not None for p in net.trunk[3].parameters())


def _spy(monkeypatch):
    calls = []
    real = imageio.read_image

    def spy(src, name=""):
        calls.append(str(src))
        return real(src, name)
    monkeypatch.setattr(data.cache, "read_image", spy)
    monkeypatch.setattr(imageio, "read_image", spy)
    return calls


def test_second_load_images_does_not_decode_again(ds, monkeypatch, tmp_path):
    items = data.scan_dataset(ds).splits["train"]
    calls = _spy(monkeypatch)
    first = data.load_images(items, 32)
    assert len(calls) == len(items) == 16
    again = data.load_images(items, 32)  # memo in this process
    assert len(calls) == 16 and torch.equal(again.images, first.images)
    data.cache._MEMO.clear()
    from_disk = data.load_images(items, 32)  # a new process: the disk cache
    assert len(calls) == 16 and torch.equal(from_disk.images, first.images)
    data.load_images(items, 48)  # another size is another preprocessing: decoded once more
    assert len(calls) == 32


@pytest.mark.slow
def test_epochs_never_read_image_files(ds, monkeypatch):
    calls = _spy(monkeypatch)
    cfg = _cfg(ds, freeze="none", augment="light", epochs=3, backbone="cnn8")
    _fit(cfg)
    n = _n_files(ds)
    assert len(calls) == n and len(set(calls)) == n  # cold cache: every file read exactly once, not per epoch
    calls.clear()
    d = _fit(cfg.replace(seed=1))
    assert calls == []  # warm cache: training, validation and the test read no file at all
    assert len(runs.read_metrics(d)) == 3
