"""Export a distilled set as a folder the real DD-Ranking 0.2.0 (PyPI `ddranking`) scores unchanged.

Everything here follows what its source reads (method-reference §7; `ddranking/config/user_config.py`,
`utils/data.py`, `utils/model.py`, `metrics/soft_label.py`), not its documentation:

* `config.yaml` carries every key its evaluators read (most crash when absent), with values from
  reta's evaluation protocol, so a DD-Ranking score is the same student recipe as ours.
* It reads real data only under its own dataset names, from torchvision's original layout, and
  normalises with its own fixed statistics. For CIFAR-10/100 we write the batch files from the
  data the teacher was trained on; they cannot carry the original archive's md5s (different pixels,
  a subset), so `run_ddranking.py` checks them against the md5s recorded in `real/md5.json`.
* It looks for the teacher at `<teacher_dir>/<dataset>/<model_name>/ckpt_best.pt` under its own
  key names, and feeds it images normalised with its statistics: we rename the keys and fold the
  difference of normalisations into the first convolution, so its teacher gives our logits.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from reta import io
from reta.config import EvalProtocol
from reta.data import DatasetInfo, ImageSet
from reta.distilled import read_distilled
from reta.errors import RetaError
from reta.teacher import Teacher

DDRANKING_VERSION = "0.2.0"
RUN_SCRIPT = Path(__file__).with_name("ddranking_run.py")
# ddranking/utils/data.py normalises both CIFARs with CIFAR-10's mean and these (non-standard) stds.
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
# reta dataset name -> (DD-Ranking dataset name and torchvision class, label key in its batch files)
DATASETS = {"cifar10": ("CIFAR10", "labels"), "cifar100": ("CIFAR100", "fine_labels")}
CONVNET_WIDTH = 128  # ddranking/utils/model.py builds every ConvNet at this width
_CONVNET = re.compile(r"^convnet(\d)(?:-w(\d+))?(-in)?$")


def dd_dataset(info: DatasetInfo) -> str:
    """DD-Ranking's name for the dataset, or a RetaError saying what it can read."""
    entry = DATASETS.get(info.name)
    expected = {"cifar10": 10, "cifar100": 100}.get(info.name)
    if entry is None or info.num_classes != expected or info.image_size != 32:
        raise RetaError(
            f"dataset {info.name!r} ({info.num_classes} classes, {info.image_size} px): the DD-Ranking export covers "
            f"CIFAR-10 and CIFAR-100 at 32 px; DD-Ranking {DDRANKING_VERSION} reads other datasets only from the "
            f"original TinyImageNet/ImageNet train/ and val/ class folders, which reta does not write")
    return entry[0]


def dd_model_name(arch: str, role: str) -> tuple[str, bool]:
    """(DD-Ranking model name, use_torchvision) for a reta arch."""
    m = _CONVNET.match(arch)
    if m:
        if int(m.group(2) or CONVNET_WIDTH) != CONVNET_WIDTH:
            raise RetaError(f"{role} {arch!r}: DD-Ranking {DDRANKING_VERSION} builds ConvNets at width "
                            f"{CONVNET_WIDTH} only; use convnet{m.group(1)}{m.group(3) or ''}")
        return f"ConvNet-{m.group(1)}" + ("" if m.group(3) else "-BN"), False
    if arch in ("resnet18", "resnet50"):
        return f"ResNet-{arch[6:]}-BN", True  # its torchvision ResNets take the same CIFAR stem at 32 px
    raise RetaError(f"{role} {arch!r}: no DD-Ranking {DDRANKING_VERSION} equivalent; use a convnetD or resnet18/50")


def torchvision_state_dict(teacher: Teacher) -> dict[str, torch.Tensor]:
    """The weights of a torchvision-model teacher under torchvision's names."""
    state = {k: v.detach().cpu().clone() for k, v in teacher.model.state_dict().items()}
    return teacher.model.to_torchvision(state)


def ddranking_state_dict(teacher: Teacher, stats=CIFAR_STATS) -> dict[str, torch.Tensor]:
    """The teacher under DD-Ranking's key names, taking inputs normalised with `stats` to our logits.

    x_ours = a * x_theirs + b per channel (a = std_theirs / std_ours, b = (mean_theirs - mean_ours) /
    std_ours): a scales the first convolution exactly; b, zero for CIFAR-10, adds a constant that we
    fold into the layer after it, exact except where the convolution reads zero padding.
    """
    if teacher.arch.startswith("resnet"):
        state, first, shift_into = torchvision_state_dict(teacher), "conv1.weight", None
    else:
        state = {}
        for key, value in teacher.model.state_dict().items():
            key = key.replace("body.", "features.", 1).replace("head.", "classifier.", 1)
            state[key] = value.detach().cpu().clone()
        # its ConvNet convolutions always have a bias; ours drop it before BatchNorm, so it is zero
        for key in [k for k in state if k.startswith("features.") and k.endswith(".weight") and state[k].dim() == 4]:
            state.setdefault(key[:-len("weight")] + "bias", torch.zeros(state[key].shape[0]))
        first, shift_into = "features.0.weight", "features.0.bias"
    mean_t, std_t = (torch.tensor(v, dtype=torch.float64) for v in stats)
    mean_o, std_o = (torch.tensor(v, dtype=torch.float64) for v in (teacher.info.mean, teacher.info.std))
    a, b = std_t / std_o, (mean_t - mean_o) / std_o
    w = state[first].double()
    shift = (w * b.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    state[first] = (w * a.view(1, -1, 1, 1)).to(state[first].dtype)
    if shift_into is not None:
        state[shift_into] = state[shift_into] + shift.to(state[shift_into].dtype)
    else:
        state["bn1.running_mean"] = state["bn1.running_mean"] - shift.to(state["bn1.running_mean"].dtype)
    return state


def write_cifar_batches(train: ImageSet, test: ImageSet, dd_name: str, root: Path) -> dict:
    """torchvision's original CIFAR layout under root, filled with our images; returns the md5 record."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dd_name)
    label_key = DATASETS[train.info.name][1]
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(name, train, part) for (name, _), part in
              zip(cls.train_list, np.array_split(np.arange(len(train)), len(cls.train_list)))]
    chunks += [(cls.test_list[0][0], test, np.arange(len(test)))]
    payloads = {}
    for name, split, idx in chunks:
        x = split.load(idx)
        if tuple(x.shape[1:]) != (3, 32, 32):
            raise RetaError(f"{split.source}: images are {tuple(x.shape[1:])}, CIFAR batch files hold 3x32x32")
        payloads[name] = {"batch_label": f"{name} written by reta from {split.source}",
                          label_key: [int(v) for v in split.labels[idx]],
                          "data": x.reshape(len(idx), -1).numpy().astype(np.uint8),
                          "filenames": [f"{i:06d}.png" for i in idx]}
    payloads[cls.meta["filename"]] = {cls.meta["key"]: list(train.info.classes)}
    md5 = {}
    for name, payload in payloads.items():
        data = pickle.dumps(payload, protocol=4)
        io.write_bytes(folder / name, data)
        md5[name] = hashlib.md5(data).hexdigest()
    return {"class": dd_name, "base_folder": cls.base_folder, "md5": md5}


def build_config(teacher: Teacher, manifest: dict, protocol: EvalProtocol, dd_name: str) -> dict:
    """Every key DD-Ranking 0.2.0's LabelRobustScoreSoft/Hard read, from reta's evaluation protocol."""
    model_name, stu_tv = dd_model_name(protocol.student, "student")
    teacher_name, tea_tv = dd_model_name(teacher.arch, "teacher")
    size = teacher.info.image_size

    def normalise():  # fresh objects each time, so the YAML holds no anchors
        return [{"name": "ToTensor"}, {"name": "Normalize", "args": {"mean": list(CIFAR_STATS[0]),
                                                                      "std": list(CIFAR_STATS[1])}}]

    return {
        "dataset": dd_name, "real_data_path": "real", "ipc": int(manifest["ipc"]), "im_size": [size, size],
        "model_name": model_name, "stu_use_torchvision": stu_tv, "use_torchvision": stu_tv,
        "teacher_dir": "teacher", "teacher_model_names": [teacher_name], "tea_use_torchvision": tea_tv,
        "soft_label_mode": "M",  # reta's online labels: the teacher relabels every augmented batch
        "soft_label_criterion": "kl",
        "loss_fn_kwargs": {"temperature": protocol.temperature, "scale_loss": protocol.t_squared},
        "data_aug_func": "cutmix", "aug_params": {"beta": protocol.cutmix_beta},
        "use_aug_for_hard": False,  # DD-Ranking's default; its CutMix would keep the unmixed hard label
        "optimizer": "adamw", "weight_decay": protocol.weight_decay, "momentum": 0.9,
        # its 'cosine' is 0.5 * (1 + cos(pi * e / E / 2)): our eta = 2 stretch; eta = 1 is its 'cosineannealing'
        "lr_scheduler": "cosine" if protocol.eta == 2.0 else "cosineannealing", "step_size": None,
        "num_eval": protocol.seeds, "num_epochs": protocol.epochs,
        "syn_batch_size": protocol.batch_size, "real_batch_size": 256, "num_workers": 0,
        "use_zca": False,
        "random_data_format": "image",  # its default 'tensors' is rejected and 'tensor' swaps arguments
        "random_data_path": None,
        "eval_full_data": True,  # it has no cached full-data accuracy for CIFAR
        "save_path": "results/obj_scores.csv",
        "custom_train_trans": [{"name": "RandomResizedCrop", "args": {"size": size, "scale": [protocol.crop_scale_min, 1.0]}},
                               {"name": "RandomHorizontalFlip"}] + normalise(),
        "custom_val_trans": normalise(),
        "device": "cuda", "dist": False,
        "reta": {
            "image_path": "images", "syn_lr": protocol.lr,
            "evaluator": "hard" if protocol.labels == "hard" else "soft",
            "class_names": list(teacher.info.classes),
            "teacher_arch": teacher.arch, "teacher_test_top1": teacher.meta.get("test_top1"),
            "distilled_with": {"method": manifest.get("method"), "seed": manifest.get("config", {}).get("seed"),
                               "teacher_sha256": manifest.get("teacher_sha256")},
            "note": f"read by DD-Ranking {DDRANKING_VERSION} (it ignores this block); its accuracies are percentages "
                    "and its LRS takes alpha in percentage points, reta's takes fractions (docs/ddranking.md)",
        },
    }


def prepare(distilled: Path, teacher: Teacher, protocol: EvalProtocol) -> dict:
    """Every check the export makes, before anything is written; returns its config.yaml."""
    _, manifest = read_distilled(distilled, expect=teacher.info)
    return build_config(teacher, manifest, protocol, dd_dataset(teacher.info))


def export(distilled: Path, teacher: Teacher, train: ImageSet, test: ImageSet, out: Path, config: dict) -> Path:
    """Write images/, teacher/, real/, run_ddranking.py and, last, config.yaml under `out`."""
    teacher.info.check_compatible(train.info, f"teacher {teacher.path}", "dataset")
    dd_name = config["dataset"]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(distilled / "images", out / "images", dirs_exist_ok=True)
    ckpt = out / config["teacher_dir"] / dd_name / config["teacher_model_names"][0] / "ckpt_best.pt"
    with io.atomic_path(ckpt) as tmp:
        torch.save(ddranking_state_dict(teacher), tmp)
    real = out / config["real_data_path"]
    io.write_json(real / "md5.json", write_cifar_batches(train, test, dd_name, real))
    io.write_bytes(out / "run_ddranking.py", RUN_SCRIPT.read_bytes())
    io.write_bytes(out / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    return out
