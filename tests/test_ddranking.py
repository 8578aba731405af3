"""DD-Ranking export: an ImageFolder with sortable class folders, a torchvision-named state_dict, a config."""

from __future__ import annotations

import torch
import torchvision
import yaml

from reta.cli import main
from reta.config import RecoverConfig, SqueezeConfig, build
from reta.evaluate.ddranking import torchvision_state_dict
from reta.recover import distill, preset
from reta.teacher import squeeze


def test_export_layout_and_config(digits, digits_teacher, tmp_path):
    train, _ = digits
    cfg = build(RecoverConfig, base={**preset("random"), "ipc": 2})
    distill(train, [digits_teacher], cfg, tmp_path / "syn", torch.device("cpu"), progress=False)
    assert main(["--quiet", "export-ddranking", "--distilled", str(tmp_path / "syn"), "--teacher", str(digits_teacher.path),
                 "--out", str(tmp_path / "dd")]) == 0
    folder = torchvision.datasets.ImageFolder(str(tmp_path / "dd" / "images"))
    assert len(folder) == 20 and folder.classes == sorted(folder.classes)
    assert [folder.targets.count(c) for c in range(10)] == [2] * 10  # sorted folders = our class order
    config = yaml.safe_load((tmp_path / "dd" / "config.yaml").read_text())
    assert config["ipc"] == 2 and config["class_names"] == list(train.info.classes)
    state = torch.load(tmp_path / "dd" / "teacher.pth", weights_only=True)
    assert set(state) == set(digits_teacher.model.state_dict())


def test_resnet_weights_load_into_plain_torchvision(digits, tmp_path):
    train, test = digits
    teacher = squeeze(train, test, SqueezeConfig(arch="resnet18", epochs=0), tmp_path / "rn", torch.device("cpu"),
                      progress=False)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # CIFAR stem for <= 64 px, as in the registry
    net.maxpool = torch.nn.Identity()
    net.load_state_dict(torchvision_state_dict(teacher))


def test_torchvision_checkpoint_imports_into_the_registry_model(tmp_path):
    """An ImageNet teacher from a local torchvision state_dict (as saved by torchvision) loads offline."""
    from reta.models import create_model
    from reta.teacher import load_weights, read_state_dict

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10)
    torch.save(tv.state_dict(), tmp_path / "rn18.pth")
    ours = create_model("resnet18", 10, 224)
    load_weights(ours, read_state_dict(tmp_path / "rn18.pth"), "rn18.pth")
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(ours.eval()(x), tv.eval()(x), atol=1e-5)
