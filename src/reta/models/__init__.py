"""Model registry: teachers and students by name.

* `convnet{D}` / `convnet{D}-in`: the DC-benchmark ConvNet (width 128, D blocks of
  conv3x3-norm-ReLU-avgpool2, the final map flattened into a linear head); BatchNorm for
  teachers (BN matching needs it), instance norm (GroupNorm, one group per channel) for
  students. Flattening, not global pooling, matters for the -in variants: after instance norm
  the spatial mean of a channel carries almost no information about the image.
* `convnet{D}-w{W}`: the same at width W — the fast nets for CPU work (e.g. convnet3-w32).
* `resnet18` / `resnet50`: torchvision ResNets; for inputs <= 64 px the CIFAR variant
  (3x3 stride-1 stem, no max-pool), as every decoupled-DD repo uses for CIFAR/Tiny.
Every model exposes `features(x) -> (N, F)` (the penultimate layer: global-pooled for ResNets,
the flattened final map for ConvNets) and `head`.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from reta.errors import RetaError


class ConvNet(nn.Module):
    def __init__(self, num_classes: int, image_size: int, depth: int = 3, width: int = 128, norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = 3, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=norm != "batch"), _norm(norm, width),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels, size = width, max(1, size // 2)
        self.body = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "instance":
        return nn.GroupNorm(width, width, affine=True)
    raise ValueError(kind)


class TorchvisionResNet(nn.Module):
    """torchvision ResNet with `features`; CIFAR stem for small inputs."""

    def __init__(self, arch: str, num_classes: int, image_size: int):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if image_size <= 64:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        self.net = net
        self.feature_dim = net.fc.in_features
        self.head = net.fc
        net.fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_CONVNET = re.compile(r"^convnet(\d)(?:-w(\d+))?(-in)?$")
ARCH_EXAMPLES = ["convnet3", "convnet4", "convnet5", "convnet3-in", "convnet3-w32", "convnet3-w32-in", "resnet18", "resnet50"]


def create_model(arch: str, num_classes: int, image_size: int) -> nn.Module:
    """Build an untrained model by registry name (see module docstring)."""
    m = _CONVNET.match(arch)
    if m:
        depth, width = int(m.group(1)), int(m.group(2) or 128)
        if not 1 <= depth <= 6 or 2 ** depth > image_size * 2:
            raise RetaError(f"arch {arch!r}: depth {depth} does not fit {image_size} px inputs; use a shallower convnet")
        return ConvNet(num_classes, image_size, depth=depth, width=width, norm="instance" if m.group(3) else "batch")
    if arch in ("resnet18", "resnet50"):
        return TorchvisionResNet(arch, num_classes, image_size)
    raise RetaError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCH_EXAMPLES)} (convnetD[-wW][-in], D=1..6)")


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
