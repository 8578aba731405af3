"""Model registry: teachers and students by name.

* `convnet{D}` / `convnet{D}-in`: the DC-benchmark ConvNet (width 128, D blocks of
  conv3x3-norm-ReLU-avgpool2, the final map flattened into a linear head); BatchNorm for
  teachers (BN matching needs it), instance norm (GroupNorm, one group per channel) for
  students. Flattening, not global pooling, matters for the -in variants: after instance norm
  the spatial mean of a channel carries almost no information about the image.
* `convnet{D}-w{W}`: the same at width W — the fast nets for CPU work (e.g. convnet3-w32).
* any torchvision classification model by its torchvision name (`resnet18`, `densenet121`,
  `shufflenet_v2_x1_0`, `mobilenet_v2`, `vit_b_16`, ...), untrained. For inputs <= 64 px the
  families the field trains on CIFAR/Tiny get the CIFAR stem of FADRM's and SRe2L's models: a
  stride-1 3x3 first convolution and no initial pooling (ResNet/ResNeXt/Wide-ResNet, DenseNet,
  ShuffleNetV2), and for MobileNetV2 also a stride-1 second stage, as FADRM's CIFAR MobileNetV2
  has; without them a 32 px image is 1x1 by the third stage. Other families keep their stem.
Every model exposes `features(x) -> (N, F)` (the penultimate layer: the input of the last linear
layer for torchvision models, global-pooled for the CNNs; the flattened final map for ConvNets)
and `head`.
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


class TorchvisionModel(nn.Module):
    """A torchvision classifier split at its last linear layer: `net` computes the features, `head` is that layer.

    Our weights name the torchvision modules `net.*` and the classifier `head.*`;
    `from_torchvision` / `to_torchvision` translate a torchvision state_dict's names.
    """

    def __init__(self, arch: str, num_classes: int, image_size: int):
        super().__init__()
        net = _torchvision_net(arch, num_classes, image_size)
        self.cifar_stem = image_size <= 64 and _cifar_stem(arch, net)
        self.head_name = _classifier_name(arch, net, num_classes)
        self.net = net
        self.head = net.get_submodule(self.head_name)
        parent, _, leaf = self.head_name.rpartition(".")
        setattr(net.get_submodule(parent), leaf, nn.Identity())
        self.feature_dim = self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def from_torchvision(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prefix = self.head_name + "."
        return {("head." + k[len(prefix):]) if k.startswith(prefix) else "net." + k: v for k, v in state.items()}

    def to_torchvision(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {(self.head_name + k[4:]) if k.startswith("head.") else k.removeprefix("net."): v
                for k, v in state.items()}


# Arguments without which a torchvision model does not fit the registry: GoogLeNet/Inception
# return auxiliary logits in training mode, a ViT is built for one input size.
_TORCHVISION_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
                       "inception_v3": {"aux_logits": False, "init_weights": True}}


def _torchvision_net(arch: str, num_classes: int, image_size: int) -> nn.Module:
    import torchvision.models as tvm

    kwargs = dict(_TORCHVISION_KWARGS.get(arch, {}))
    if arch.startswith("vit_"):
        kwargs["image_size"] = image_size
    return tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def _cifar_stem(arch: str, net: nn.Module) -> bool:
    """Give `net` the CIFAR stem of its family (module docstring); False for a family without one."""
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif arch.startswith("densenet"):
        net.features.conv0 = nn.Conv2d(3, net.features.conv0.out_channels, 3, 1, 1, bias=False)
        net.features.pool0 = nn.Identity()
    elif arch.startswith("shufflenet_v2"):
        net.conv1[0].stride = (1, 1)
        net.maxpool = nn.Identity()
    elif arch == "mobilenet_v2":
        net.features[0][0].stride = (1, 1)
        net.features[2].conv[1][0].stride = (1, 1)  # the depthwise conv of the first 24-channel block
    else:
        return False
    return True


def _classifier_name(arch: str, net: nn.Module, num_classes: int) -> str:
    """The dotted name of the last linear layer with `num_classes` outputs: the classifier."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not names:
        raise RetaError(f"arch {arch!r}: no linear classifier to split into features and head; "
                        f"choose a model whose last layer is nn.Linear (e.g. resnet18, mobilenet_v2)")
    return names[-1]


def _check_runs(arch: str, num_classes: int, image_size: int) -> None:
    """Refuse, in one line, a torchvision model that cannot take this input size (shapes only, on the meta device)."""
    with torch.device("meta"):
        net = TorchvisionModel(arch, num_classes, image_size).eval()
        try:
            net(torch.empty(2, 3, image_size, image_size))
        except NotImplementedError:  # an operator without a meta kernel says nothing about the size
            return
        except (RuntimeError, ValueError, AssertionError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RetaError(f"arch {arch!r} cannot run on {image_size} px inputs ({reason}); "
                            f"choose a model for this image size") from None


_CONVNET = re.compile(r"^convnet(\d)(?:-w(\d+))?(-in)?$")


def create_model(arch: str, num_classes: int, image_size: int) -> nn.Module:
    """Build an untrained model by registry name (see module docstring)."""
    m = _CONVNET.match(arch)
    if m:
        depth, width = int(m.group(1)), int(m.group(2) or 128)
        if not 1 <= depth <= 6 or 2 ** depth > image_size * 2:
            raise RetaError(f"arch {arch!r}: depth {depth} does not fit {image_size} px inputs; use a shallower convnet")
        return ConvNet(num_classes, image_size, depth=depth, width=width, norm="instance" if m.group(3) else "batch")
    if arch in torchvision_classifiers():
        _check_runs(arch, num_classes, image_size)
        return TorchvisionModel(arch, num_classes, image_size)
    raise RetaError(f"unknown arch {arch!r}; choose convnetD[-wW][-in] (D=1..6, e.g. convnet3, convnet3-w32-in) "
                    f"or a torchvision classification model (e.g. resnet18, densenet121, shufflenet_v2_x1_0, "
                    f"mobilenet_v2; torchvision.models.list_models())")


def torchvision_classifiers() -> list[str]:
    """torchvision's classification models (not its detection, segmentation, video or quantized ones)."""
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)
