"""DD-Ranking export: the folder layout DD-Ranking 0.2.0 reads, teacher weights it loads with our logits, and
both metric conventions. The real package runs in tests/test_ddranking_interop.py."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
import torchvision
import yaml

from reta.cli import main
from reta.config import SqueezeConfig
from reta.data import load_dataset
from reta.distilled import image_path, write_manifest, write_png
from reta.errors import RetaError
from reta.evaluate.ddranking import CIFAR_STATS, dd_dataset, dd_model_name, ddranking_state_dict, torchvision_state_dict
from reta.evaluate.metrics import ddranking_lrs, hlr, ior, lrs
from reta.teacher import load_teacher, squeeze


def write_cifar_like(root, name="cifar10", classes=10, per_class=6, test_per_class=10, seed=0):
    """A CIFAR-shaped npz dataset (32 px, class-dependent colour, so a student can learn it) named `name`."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, n in (("train", per_class), ("test", test_per_class)):
        y = np.repeat(np.arange(classes), n)
        x = rng.integers(0, 120, size=(len(y), 32, 32, 3), dtype=np.uint8)
        for c in range(classes):
            x[y == c, :, :, c % 3] += np.uint8(60 + 13 * (c // 3))
        np.savez(root / f"{split}.npz", x=x, y=y)
    (root / "meta.json").write_text(json.dumps({"name": name, "classes": [f"class{c}" for c in range(classes)]}))
    return root


def make_world(root, arch="convnet3", epochs=0, ipc=2, name="cifar10"):
    """npz dataset, teacher T (through the CLI) and D, the first `ipc` real images per class as a distilled set."""
    data = f"npz:{write_cifar_like(root / name, name=name)}"
    assert main(["--quiet", "squeeze", "--data", data, "--arch", arch, "--epochs", str(epochs),
                 "--out", str(root / "T")]) == 0
    train, _ = load_dataset(data)
    for c in range(train.info.num_classes):
        for i, idx in enumerate(train.indices_of_class(c)[:ipc]):
            write_png(image_path(root / "D", c, i, train.info.num_classes), train.load([idx])[0])
    write_manifest(root / "D", train.info, ipc, {"method": "random"})
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddr")
    data = make_world(root)
    assert main(["--quiet", "export-ddranking", "--data", data, "--distilled", str(root / "D"), "--teacher",
                 str(root / "T"), "--epochs", "4", "--out", str(root / "O")]) == 0
    return root, data


def test_export_has_every_key_and_file_ddranking_reads(world):
    root, _ = world
    out = root / "O"
    config = yaml.safe_load((out / "config.yaml").read_text())
    # ddranking/config/user_config.py indexes these two; LabelRobustScoreSoft/Hard read the rest
    for key in ("custom_train_trans", "custom_val_trans", "dataset", "real_data_path", "ipc", "model_name",
                "soft_label_criterion", "data_aug_func", "aug_params", "soft_label_mode", "optimizer", "lr_scheduler",
                "loss_fn_kwargs", "weight_decay", "momentum", "num_eval", "im_size", "num_epochs", "use_zca",
                "use_aug_for_hard", "random_data_format", "random_data_path", "real_batch_size", "syn_batch_size",
                "step_size", "save_path", "eval_full_data", "num_workers", "stu_use_torchvision", "tea_use_torchvision",
                "teacher_dir", "teacher_model_names", "device", "dist", "use_torchvision"):
        assert key in config, key
    assert config["dataset"] == "CIFAR10" and config["model_name"] == "ConvNet-3"
    assert config["teacher_model_names"] == ["ConvNet-3-BN"] and config["random_data_format"] == "image"
    assert config["loss_fn_kwargs"] == {"temperature": 20.0, "scale_loss": False} and config["num_epochs"] == 4
    assert (out / "teacher" / "CIFAR10" / "ConvNet-3-BN" / "ckpt_best.pt").is_file()
    assert (out / "run_ddranking.py").is_file()
    folder = torchvision.datasets.ImageFolder(str(out / "images"))
    assert len(folder) == 20 and [folder.targets.count(c) for c in range(10)] == [2] * 10


def test_real_batches_are_torchvision_cifar10_with_recorded_md5s(world, monkeypatch):
    root, _ = world
    record = json.loads((root / "O" / "real" / "md5.json").read_text())
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, record["md5"][n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, record["md5"][n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": record["md5"][cls.meta["filename"]]})
    train = cls(str(root / "O" / "real"), train=True, download=True)  # download=True as DD-Ranking calls it
    test = cls(str(root / "O" / "real"), train=False, download=True)
    src = np.load(root / "cifar10" / "train.npz")
    assert np.array_equal(train.data, src["x"]) and train.targets == src["y"].tolist()
    assert len(test) == 100 and train.classes == [f"class{c}" for c in range(10)]


def test_teacher_under_ddranking_names_and_normalisation_gives_our_logits(world):
    """DD-Ranking's ConvNet (features/classifier, conv biases) on its normalisation = our teacher on ours."""
    root, _ = world
    t = load_teacher(root / "T")
    state = torch.load(root / "O" / "teacher" / "CIFAR10" / "ConvNet-3-BN" / "ckpt_best.pt", weights_only=True)
    assert {k.split(".")[0] for k in state} == {"features", "classifier"} and "features.0.bias" in state
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ours = t.model(t.info.normalise(pixels))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS)
    theirs_in = (pixels.float() / 255 - mean) / std
    layers = [m for m in t.model.body]  # same layer order as DD-Ranking's ConvNet: conv, norm, relu, pool
    x = theirs_in
    for i, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Conv2d):
            x = torch.nn.functional.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1)
        elif isinstance(layer, torch.nn.BatchNorm2d):
            x = torch.nn.functional.batch_norm(x, state[f"features.{i}.running_mean"], state[f"features.{i}.running_var"],
                                               state[f"features.{i}.weight"], state[f"features.{i}.bias"], eps=layer.eps)
        else:
            x = layer(x)
    theirs = torch.nn.functional.linear(x.flatten(1), state["classifier.weight"], state["classifier.bias"])
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_resnet_teacher_loads_into_torchvision_with_the_cifar_stem_and_gives_our_logits(tmp_path, digits):
    train, test = digits
    teacher = squeeze(train, test, SqueezeConfig(arch="resnet18", epochs=0), tmp_path / "rn", torch.device("cpu"),
                      progress=False)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # what DD-Ranking builds for 32 px with use_torchvision
    net.maxpool = torch.nn.Identity()
    net.load_state_dict(torchvision_state_dict(teacher))
    # with CIFAR-10's statistics the means agree and the fold is exact, as for a CIFAR-10 teacher
    teacher = dataclasses.replace(teacher, info=dataclasses.replace(teacher.info, mean=CIFAR_STATS[0],
                                                                    std=(0.2470, 0.2435, 0.2616)))
    net.load_state_dict(ddranking_state_dict(teacher))
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS)
    with torch.no_grad():
        ours = teacher.model(teacher.info.normalise(pixels))
        theirs = net.eval()((pixels.float() / 255 - mean) / std)
    assert torch.allclose(ours, theirs, atol=1e-4)


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


def test_datasets_and_models_ddranking_cannot_read_are_refused_in_one_line(world, digits_teacher, tmp_path, capsys):
    with pytest.raises(RetaError, match="covers CIFAR-10 and CIFAR-100"):
        dd_dataset(digits_teacher.info)
    with pytest.raises(RetaError, match="width 128 only"):
        dd_model_name(digits_teacher.arch, "teacher")
    root, data = world
    rc = main(["export-ddranking", "--data", data, "--teacher", str(root / "T"), "--student", "convnet3-w32-in",
               "--distilled", str(root / "D"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "width 128 only" in err[0], err
    assert not (tmp_path / "x").exists()


def test_both_metric_conventions_on_the_issues_numbers():
    """syn hard 28.80, full 38.80, syn soft 22.00, random 18.20 (issue 13): DD-Ranking prints -0.1374."""
    dd = ddranking_lrs(38.80, 28.80, 22.00, 18.20)
    assert dd["hlr"] == pytest.approx(10.0) and dd["ior"] == pytest.approx(3.8)
    assert dd["lrs"] == pytest.approx(-0.1374, abs=5e-5)
    assert lrs(hlr(0.3880, 0.2880), ior(0.2200, 0.1820)) == pytest.approx(0.2560, abs=5e-5)


def test_ddranking_convention_averages_lrs_over_rounds():
    per_round = ddranking_lrs([40.0, 38.0], [30.0, 28.0], [22.0, 23.0], [18.0, 19.0])
    one = ddranking_lrs(40.0, 30.0, 22.0, 18.0)["lrs"], ddranking_lrs(38.0, 28.0, 23.0, 19.0)["lrs"]
    assert per_round["lrs"] == pytest.approx(sum(one) / 2)
    with pytest.raises(RetaError, match="percentages"):
        ddranking_lrs(0.388, 0.288, 0.22, 1000.0)


def test_cifar_batch_pickles_load_as_torchvision_expects(world):
    root, _ = world
    with open(root / "O" / "real" / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].dtype == np.uint8 and entry["data"].shape[1] == 3072 and len(entry["labels"]) == len(entry["data"])
