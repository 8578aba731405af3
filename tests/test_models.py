"""Model registry: torchvision classifiers by name with the CIFAR stem, their weights' names, FADRM+ teachers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from reta.config import RecoverConfig, SqueezeConfig, build
from reta.errors import RetaError
from reta.models import create_model
from reta.recover import distill, preset
from reta.teacher import Teacher, freeze, load_weights, squeeze

CPU = torch.device("cpu")
FADRM_PLUS = ["resnet18", "densenet121", "shufflenet_v2_x1_0", "mobilenet_v2"]  # method-reference §2.2


def _first_bn_input_size(model: nn.Module, x: torch.Tensor) -> int:
    """Height of the first BatchNorm's input: the image size when the stem does not downsample."""
    seen = []
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    handle = bn.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[-1]))
    model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("arch", FADRM_PLUS)
def test_fadrm_plus_archs_build_with_the_cifar_stem_and_split_into_features_and_head(arch, size):
    model = create_model(arch, 10, size).eval().to("meta")  # shapes only: the arithmetic is torchvision's
    x = torch.empty(2, 3, size, size, device="meta")
    assert model.cifar_stem and _first_bn_input_size(model, x) == size  # stride-1 first conv, no pooling
    feats = model.features(x)
    assert feats.shape == (2, model.feature_dim) and model.head.in_features == model.feature_dim
    assert model.head(feats).shape == (2, 10)


@pytest.mark.parametrize("arch", [a if a != "densenet121" else pytest.param(a, marks=pytest.mark.slow)
                                  for a in FADRM_PLUS])
@torch.no_grad()
def test_fadrm_plus_archs_compute_their_logits_from_features_at_32_px(arch):
    model = create_model(arch, 10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.head(model.features(x)), model(x))


def test_above_64_px_the_torchvision_stem_is_kept():
    model = create_model("mobilenet_v2", 10, 96).eval()
    assert not model.cifar_stem
    with torch.no_grad():
        assert _first_bn_input_size(model, torch.randn(1, 3, 96, 96)) == 48


def test_a_torchvision_state_dict_loads_into_any_registry_model_and_maps_back():
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(num_classes=10).eval()  # its classifier is classifier.1
    ours = create_model("mobilenet_v2", 10, 96).eval()
    load_weights(ours, tv.state_dict(), "mobilenet_v2.pth")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)
    assert ours.to_torchvision(ours.state_dict()).keys() == tv.state_dict().keys()
    assert {k for k in ours.state_dict() if not k.startswith("net.")} == {"head.weight", "head.bias"}


def test_models_the_registry_cannot_serve_are_refused_in_one_line():
    for arch, size, message in [("alexnet", 16, "cannot run on 16 px"), ("squeezenet1_0", 32, "no linear classifier"),
                                ("resnet19", 32, "unknown arch")]:
        with pytest.raises(RetaError, match=message) as err:
            create_model(arch, 10, size)
        assert "\n" not in str(err.value) and repr(arch) in str(err.value)


def _random_teacher(arch: str, info, path: Path) -> Teacher:
    model = freeze(create_model(arch, info.num_classes, info.image_size))
    return Teacher(model=model, arch=arch, info=info, meta={}, path=path, weights_hash=f"random-{arch}")


def test_bn_matching_refuses_a_teacher_without_batchnorm_naming_it(digits, tmp_path):
    train, _ = digits
    teachers = [_random_teacher("convnet3-w8", train.info, tmp_path / "T"),
                _random_teacher("convnet3-w8-in", train.info, tmp_path / "T-in")]
    cfg = build(RecoverConfig, base={**preset("fadrm"), "ipc": 1, "iterations": 2, "batch_size": 10})
    with pytest.raises(RetaError) as err:
        distill(train, teachers, cfg, tmp_path / "D", CPU, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "convnet3-w8-in" in msg and str(tmp_path / "T-in") in msg and "BatchNorm" in msg


@pytest.mark.slow
def test_fadrm_plus_rotates_two_torchvision_teachers_and_records_both(digits, tmp_path):
    train, test = digits
    small = train.subset(np.arange(0, len(train), 8))  # 1 epoch on a few batches: the rotation is under test
    teachers = [squeeze(small, test, SqueezeConfig(arch=arch, epochs=1, batch_size=32, precision="fp32"),
                        tmp_path / arch, CPU, progress=False) for arch in ("resnet18", "mobilenet_v2")]
    calls = [0, 0]
    for i, t in enumerate(teachers):
        t.model.head.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    base = {**preset("fadrm"), "ipc": 1, "iterations": 4, "batch_size": 10, "jitter": 2, "rded_candidates": 4,
            "precision": "fp32"}
    manifest = distill(train, teachers, build(RecoverConfig, base=base), tmp_path / "D", CPU,
                       cache_dir=tmp_path / "cache", progress=False)
    assert manifest["teacher_sha256"] == [t.weights_hash for t in teachers]
    assert len(set(manifest["teacher_sha256"])) == 2 and calls[1] > 0
