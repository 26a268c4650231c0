"""The registry: every entry builds, freezes as documented, counts parameters and loads local weights."""

import time

import pytest
import torch

from cxrdemo.errors import ConfigError, WeightsUnavailable
from cxrdemo.model import backbones

NAMES = backbones.backbone_names()
BIG = {"inception_v3", "vgg16", "densenet121", "efficientnet_b0", "mobilenet_v3_small"}  # > 2 s to build on 2 busy cores


def test_registry_has_the_papers_backbones():
    for name in ("cnn8", "cnn13", "cnn5", "resnet18", "resnet34", "resnet50", "densenet121", "densenet201",
                 "vgg16", "inception_v3", "mobilenet_v3_small", "efficientnet_b0"):
        assert name in NAMES


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ConfigError, match="resnet18"):
        backbones.get_spec("resnet19")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError):
        backbones.register(backbones.get_spec("cnn5"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in NAMES])
def test_builds_and_counts_match_real_model(name):
    net = backbones.build_backbone(name, 3)
    size = 96 if name == "inception_v3" else 64
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3)
    assert len(net.groups()) == backbones.num_groups(name)
    total, trainable = backbones.param_counts(name, 3, "none")
    assert total == trainable == sum(p.numel() for p in net.parameters())
    for k in range(backbones.num_groups(name)):
        net.set_freeze(k)
        real = sum(p.numel() for p in net.parameters() if p.requires_grad)
        assert backbones.param_counts(name, 3, str(k))[1] == real
    # the CAM target lies inside the last trunk stage
    target = backbones.cam_target_layer(net)
    assert any(target is m for m in net.trunk[-1].modules())


def test_resnet18_head_trains_exactly_1026_parameters():
    assert backbones.param_counts("resnet18", 2, "head") == (11_177_538, 1_026)


def test_fc512_head_and_dropout():
    net = backbones.build_backbone("cnn5", 2, head="fc512", dropout=0.5)
    assert backbones.param_counts("cnn5", 2, "head", head="fc512")[1] == 512 * 512 + 512 + 512 * 512 + 512 + 512 * 2 + 2
    assert any(isinstance(m, torch.nn.Dropout) for m in net.head)


def test_freeze_levels():
    assert backbones.frozen_groups("none", "resnet18") == 0
    assert backbones.frozen_groups("head", "resnet18") == 5
    assert backbones.frozen_groups("2", "resnet18") == 2
    assert backbones.frozen_groups("gradual:3", "resnet18", epoch=3) == 5
    assert backbones.frozen_groups("gradual:3", "resnet18", epoch=4) == 0
    with pytest.raises(ConfigError, match="too high"):
        backbones.frozen_groups("6", "resnet18")
    with pytest.raises(ConfigError):
        backbones.frozen_groups("most", "resnet18")


@pytest.mark.slow
def test_frozen_groups_keep_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    net = backbones.build_backbone("resnet18", 2)
    net.set_freeze(2)
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("trunk.0.", "trunk.1."))}
    trained_before = net.trunk[2][0].bn1.running_mean.clone()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net.train()
    assert not net.trunk[0].training and not net.trunk[1].training and net.trunk[2].training
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in net.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert not torch.equal(net.trunk[2][0].bn1.running_mean, trained_before)  # trainable BN does update
    assert all(p.grad is None for p in net.trunk[0].parameters())


def test_cannot_freeze_everything():
    net = backbones.build_backbone("cnn5", 2)
    with pytest.raises(ConfigError, match="nothing to train"):
        net.set_freeze(6)


def test_imagenet_weights_load_from_local_folder(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path))
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / backbones.imagenet_weight_file("resnet18"))
    assert backbones.find_imagenet_weights("resnet18") == tmp_path / "resnet18-f37072fd.pth"
    net = backbones.build_backbone("resnet18", 2, init="imagenet")
    assert torch.equal(net.trunk[0][0].weight, reference.conv1.weight)
    assert torch.equal(net.trunk[4][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert net.head[-1].out_features == 2


def test_densenet_legacy_key_names_are_mapped(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path))
    ref = torchvision.models.densenet121()
    legacy = {k.replace("norm1.", "norm.1.").replace("conv1.", "conv.1.") if "denselayer" in k else k: v
              for k, v in ref.state_dict().items()}
    assert any("norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / backbones.imagenet_weight_file("densenet121"))
    net = backbones.build_backbone("densenet121", 2, init="imagenet")
    assert torch.equal(net.trunk[1][0].denselayer1.norm1.weight, ref.features.denseblock1.denselayer1.norm1.weight)


def test_offline_imagenet_fails_fast_with_a_useful_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("CXRDEMO_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        backbones.build_backbone("resnet18", 2, init="imagenet")
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path) in msg and "scratch" in msg


def test_scratch_cnns_refuse_imagenet():
    with pytest.raises(ConfigError, match="from scratch"):
        backbones.build_backbone("cnn8", 2, init="imagenet")
