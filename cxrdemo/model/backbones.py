"""The backbone registry: one entry per network, each a sequence of freeze groups.

Every backbone is rebuilt as a `Net`: a trunk of stages (stem, stage 1..n) run in order, a
parameter-free pool and a fresh head. A freeze level is then "how many groups from the front
are frozen", the trainable-parameter count for any level is a sum over groups, and a frozen
prefix can run without autograd.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from cxrdemo import paths
from cxrdemo.config import FreezeLevel
from cxrdemo.errors import ConfigError, WeightsUnavailable


class Net(nn.Module):
    """trunk stages -> pool -> head; the first `n_frozen` stages stay in eval mode without gradients."""

    def __init__(self, backbone: str, stages: list[nn.Module], pool: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.trunk = nn.ModuleList(stages)
        self.pool = pool
        self.head = head
        self.n_frozen = 0

    def groups(self) -> list[nn.Module]:
        """The freeze groups in order: stem, stages, head."""
        return [*self.trunk, self.head]

    def set_freeze(self, n_frozen: int) -> None:
        """Freeze the first n groups (never the head): no gradients, batch-norm statistics fixed."""
        if not 0 <= n_frozen <= len(self.trunk):
            raise ConfigError(
                f"{self.backbone} has {len(self.trunk) + 1} freeze groups; freezing {n_frozen} "
                f"would leave nothing to train (use 0 to {len(self.trunk)}, or 'head')."
            )
        self.n_frozen = n_frozen
        for i, stage in enumerate(self.trunk):
            stage.requires_grad_(i >= n_frozen)
        self.head.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Net":
        super().train(mode)
        # Keep BN statistics of frozen groups fixed: they were learnt on far more data than we have.
        for stage in self.trunk[: self.n_frozen]:
            stage.eval()
        return self

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen prefix, computed without autograd."""
        with torch.no_grad():
            for stage in self.trunk[: self.n_frozen]:
                x = stage(x)
        return x

    def trainable_forward(self, x: torch.Tensor) -> torch.Tensor:
        """From the frozen prefix's output to the logits."""
        for stage in self.trunk[self.n_frozen:]:
            x = stage(x)
        return self.head(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.n_frozen:
            # No activations are kept for frozen stages: only the trainable suffix builds a graph.
            return self.trainable_forward(self.frozen_features(x))
        for stage in self.trunk:
            x = stage(x)
        return self.head(self.pool(x))


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: how to build the trunk, where the CAM looks, which torchvision weights fit."""

    name: str
    description: str
    make_trunk: Callable[[nn.Module | None], tuple[list[nn.Module], int]]
    cam_layer: Callable[[Net], nn.Module]
    torchvision_name: str | None = None  # None: from-scratch CNN, no ImageNet weights
    stage_names: tuple[str, ...] = ()
    # A hint only, used when a dataset is too small for model/speed's timed trial (which decides layout and
    # arithmetic on the machine at hand): channels-last was faster for every entry on a 2-core AMX Xeon.
    channels_last: bool = True

    @property
    def supports_imagenet(self) -> bool:
        return self.torchvision_name is not None


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add an entry; a duplicate name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def backbone_names() -> list[str]:
    """Every registered backbone, in registry order."""
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The entry for `name`, or a ConfigError listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"Unknown backbone {name!r}. Known backbones: {', '.join(_REGISTRY)}.") from None


# ---------------------------------------------------------------- from-scratch CNNs

def _conv_block(cin: int, cout: int, k: int = 3, convs: int = 1, bn: bool = False, drop: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, k, padding=k // 2, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(2))
    if drop:
        layers.append(nn.Dropout2d(drop))
    return nn.Sequential(*layers)


def _cnn8(_: nn.Module | None) -> tuple[list[nn.Module], int]:
    chans = (32, 64, 128, 256)
    return [_conv_block(c_in, c, convs=2) for c_in, c in zip((3, *chans), chans)], chans[-1]


def _cnn13(_: nn.Module | None) -> tuple[list[nn.Module], int]:
    chans, convs = (32, 64, 128, 256, 256), (2, 2, 3, 3, 3)
    return [_conv_block(c_in, c, convs=n, bn=True, drop=0.1) for c_in, c, n in zip((3, *chans), chans, convs)], chans[-1]


def _cnn5(_: nn.Module | None) -> tuple[list[nn.Module], int]:
    chans, kernels = (32, 64, 128, 256, 512), (5, 5, 3, 3, 3)
    return [_conv_block(c_in, c, k=k, bn=True) for c_in, c, k in zip((3, *chans), chans, kernels)], chans[-1]


# ---------------------------------------------------------------- torchvision families

def _resnet(m: nn.Module) -> tuple[list[nn.Module], int]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4], m.fc.in_features


def _densenet(m: nn.Module) -> tuple[list[nn.Module], int]:
    f = m.features
    stem = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)
    stages = [nn.Sequential(f.denseblock1, f.transition1), nn.Sequential(f.denseblock2, f.transition2),
              nn.Sequential(f.denseblock3, f.transition3), nn.Sequential(f.denseblock4, f.norm5, nn.ReLU())]
    return [stem, *stages], m.classifier.in_features


def _vgg16(m: nn.Module) -> tuple[list[nn.Module], int]:
    f = m.features  # max-pools at 4, 9, 16, 23, 30: one stage per resolution
    cuts = (0, 5, 10, 17, 24, 31)
    return [f[a:b] for a, b in zip(cuts, cuts[1:])], 512


def _mobilenet_v3_small(m: nn.Module) -> tuple[list[nn.Module], int]:
    f = m.features
    cuts = (0, 1, 2, 4, 9, len(f))
    return [f[a:b] for a, b in zip(cuts, cuts[1:])], f[-1].out_channels


def _efficientnet_b0(m: nn.Module) -> tuple[list[nn.Module], int]:
    f = m.features
    cuts = (0, 1, 3, 4, 5, 6, len(f))
    return [f[a:b] for a, b in zip(cuts, cuts[1:])], f[-1].out_channels


class _InceptionInput(nn.Module):
    """torchvision's transform_input: ImageNet-normalised input -> the (0.5, 0.5) scaling Inception was trained on."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        # A buffer, so a saved model remembers whether its trunk expects the rescaled input.
        self.register_buffer("enabled", torch.tensor(bool(enabled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return x
        mean = torch.tensor((0.485, 0.456, 0.406), device=x.device).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), device=x.device).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5


def _inception_v3(m: nn.Module) -> tuple[list[nn.Module], int]:
    stem = nn.Sequential(_InceptionInput(m.transform_input), m.Conv2d_1a_3x3, m.Conv2d_2a_3x3, m.Conv2d_2b_3x3, m.maxpool1,
                         m.Conv2d_3b_1x1, m.Conv2d_4a_3x3, m.maxpool2)
    return [stem, nn.Sequential(m.Mixed_5b, m.Mixed_5c, m.Mixed_5d),
            nn.Sequential(m.Mixed_6a, m.Mixed_6b, m.Mixed_6c, m.Mixed_6d, m.Mixed_6e),
            nn.Sequential(m.Mixed_7a, m.Mixed_7b, m.Mixed_7c)], m.fc.in_features


def _last(net: Net) -> nn.Module:
    return net.trunk[-1][-1]


_SCRATCH_STAGES = ("block1", "block2", "block3", "block4", "block5")
for _spec in (
    BackboneSpec("cnn8", "8 conv layers, ReLU, max-pool; from scratch", _cnn8, lambda n: n.trunk[-1][-2], None, _SCRATCH_STAGES[:4]),
    BackboneSpec("cnn13", "13 conv layers with batch-norm and dropout; from scratch", _cnn13, lambda n: n.trunk[-1][-3],
                 None, _SCRATCH_STAGES),
    BackboneSpec("cnn5", "handcrafted 5-conv CNN, 32-512 channels, BN, max-pool; from scratch", _cnn5,
                 lambda n: n.trunk[-1][-2], None, _SCRATCH_STAGES),
    BackboneSpec("resnet18", "ResNet-18", _resnet, _last, "resnet18", ("stem", "layer1", "layer2", "layer3", "layer4")),
    BackboneSpec("resnet34", "ResNet-34", _resnet, _last, "resnet34", ("stem", "layer1", "layer2", "layer3", "layer4")),
    BackboneSpec("resnet50", "ResNet-50", _resnet, _last, "resnet50", ("stem", "layer1", "layer2", "layer3", "layer4")),
    BackboneSpec("densenet121", "DenseNet-121 (the CheXNet architecture)", _densenet, lambda n: n.trunk[-1][1],
                 "densenet121", ("stem", "dense1", "dense2", "dense3", "dense4")),
    BackboneSpec("densenet201", "DenseNet-201", _densenet, lambda n: n.trunk[-1][1], "densenet201",
                 ("stem", "dense1", "dense2", "dense3", "dense4")),
    BackboneSpec("vgg16", "VGG-16 (global-pooled head)", _vgg16, lambda n: n.trunk[-1][-2], "vgg16",
                 ("block1", "block2", "block3", "block4", "block5")),
    BackboneSpec("inception_v3", "Inception-v3 (Kermany et al.)", _inception_v3, lambda n: n.trunk[-1][-1],
                 "inception_v3", ("stem", "mixed5", "mixed6", "mixed7")),
    BackboneSpec("mobilenet_v3_small", "MobileNet-v3 small", _mobilenet_v3_small, _last, "mobilenet_v3_small",
                 ("stem", "stage1", "stage2", "stage3", "stage4")),
    BackboneSpec("efficientnet_b0", "EfficientNet-B0", _efficientnet_b0, _last, "efficientnet_b0",
                 ("stem", "stage1", "stage2", "stage3", "stage4", "stage5")),
):
    register(_spec)


# ---------------------------------------------------------------- building

def make_head(in_features: int, num_classes: int, head: str = "linear", dropout: float = 0.0) -> nn.Sequential:
    """A fresh classifier: one linear layer, or the papers' two 512-unit layers; optional dropout."""
    drop = [nn.Dropout(dropout)] if dropout else []
    if head == "linear":
        return nn.Sequential(*drop, nn.Linear(in_features, num_classes))
    if head == "fc512":
        return nn.Sequential(nn.Linear(in_features, 512), nn.ReLU(inplace=True), *drop,
                             nn.Linear(512, 512), nn.ReLU(inplace=True), *drop, nn.Linear(512, num_classes))
    raise ConfigError(f"Unknown head {head!r}: use linear or fc512.")


def _torchvision_model(spec: BackboneSpec, imagenet_state: dict | None) -> nn.Module:
    import torchvision

    kwargs: dict = {}
    if spec.name == "inception_v3":
        # Aux logits only matter for ImageNet training; the shipped weights contain them, so load then drop.
        kwargs = {"aux_logits": imagenet_state is not None, "transform_input": imagenet_state is not None,
                  "init_weights": True}
    model = torchvision.models.get_model(spec.torchvision_name, weights=None, **kwargs)
    if imagenet_state is not None:
        model.load_state_dict(imagenet_state)
    return model


def build_backbone(name: str, num_classes: int, *, init: str = "scratch", head: str = "linear",
                   dropout: float = 0.0) -> Net:
    """Build `name` with a fresh head for `num_classes`; init 'imagenet' loads local torchvision weights."""
    spec = get_spec(name)
    if num_classes < 2:
        raise ConfigError(f"A classifier needs at least 2 classes (got {num_classes}).")
    state = None
    if init == "imagenet":
        if not spec.supports_imagenet:
            raise ConfigError(f"{name} is trained from scratch: ImageNet weights exist only for torchvision backbones.")
        state = load_imagenet_state(name)
    base = _torchvision_model(spec, state) if spec.supports_imagenet else None
    stages, channels = spec.make_trunk(base)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Net(name, stages, pool, make_head(channels, num_classes, head, dropout))


def cam_target_layer(net: Net) -> nn.Module:
    """The layer Grad-CAM looks at for this network."""
    return get_spec(net.backbone).cam_layer(net)


# ---------------------------------------------------------------- freeze levels

def num_groups(name: str) -> int:
    """How many freeze groups `name` has (stem, stages, head)."""
    return len(get_spec(name).stage_names) + 1


def frozen_groups(freeze: FreezeLevel | str, name: str, epoch: int = 1) -> int:
    """How many groups from the front are frozen at 1-based `epoch` for freeze level `freeze`."""
    level = FreezeLevel.parse(freeze)
    n_trunk = num_groups(name) - 1
    if level.kind == "none":
        return 0
    if level.kind == "head":
        return n_trunk
    if level.kind == "gradual":
        return n_trunk if epoch <= level.n else 0
    if level.n > n_trunk:
        raise ConfigError(f"{name} has {n_trunk} trunk groups; freeze level {level.n} is too high (0 to {n_trunk}).")
    return level.n


@functools.lru_cache(maxsize=256)
def group_param_counts(name: str, num_classes: int = 2, head: str = "linear") -> tuple[int, ...]:
    """Parameters per freeze group, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        net = build_backbone(name, num_classes, head=head)
    return tuple(sum(p.numel() for p in g.parameters()) for g in net.groups())


def param_counts(name: str, num_classes: int = 2, freeze: FreezeLevel | str = "none", head: str = "linear",
                 epoch: int = 1) -> tuple[int, int]:
    """(total, trainable) parameters of `name` at freeze level `freeze` and `epoch`."""
    counts = group_param_counts(name, num_classes, head)
    return sum(counts), sum(counts[frozen_groups(freeze, name, epoch):])


# ---------------------------------------------------------------- ImageNet weights

def _weights_enum(name: str):
    import torchvision

    return torchvision.models.get_model_weights(get_spec(name).torchvision_name).DEFAULT


def imagenet_weight_file(name: str) -> str:
    """The torchvision file name of `name`'s default ImageNet weights (what to drop into weights/)."""
    return Path(urlparse(_weights_enum(name).url).path).name


def imagenet_search_dirs() -> list[Path]:
    """Folders searched for ImageNet weight files, in order: weights/, then the torch hub cache."""
    return [paths.weights_dir(), Path(torch.hub.get_dir()) / "checkpoints"]


def find_imagenet_weights(name: str) -> Path | None:
    """The local ImageNet weight file of `name`, or None (never touches the network)."""
    spec = get_spec(name)
    if not spec.supports_imagenet:
        return None
    file = imagenet_weight_file(name)
    return next((d / file for d in imagenet_search_dirs() if (d / file).is_file()), None)


_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.[a-z_]+)$")


def _fix_legacy_keys(state: dict) -> dict:
    # torchvision's DenseNet files use old 'norm.1' style names; the modules are now 'norm1'.
    out = {}
    for key, value in state.items():
        m = _DENSENET_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def load_imagenet_state(name: str) -> dict:
    """ImageNet weights of `name` from weights/, the hub cache, or a download; WeightsUnavailable if none works."""
    local = find_imagenet_weights(name)
    if local is not None:
        return _fix_legacy_keys(torch.load(local, map_location="cpu", weights_only=True))
    import os
    from urllib.error import URLError

    file = imagenet_weight_file(name)
    hint = (f"ImageNet weights for {name} are not on this machine and could not be downloaded. "
            f"Put the file {file} into {paths.weights_dir()} (or {imagenet_search_dirs()[1]}), "
            f"or start From scratch (--init scratch) or from a finished run instead.")
    if os.environ.get("CXRDEMO_OFFLINE"):
        raise WeightsUnavailable(hint)
    try:
        state = torch.hub.load_state_dict_from_url(_weights_enum(name).url, map_location="cpu", progress=False,
                                                   weights_only=True)
    except (URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailable(hint) from exc
    return _fix_legacy_keys(state)
