"""Export a distilled set in DD-Ranking's input format (method-reference §7.4).

DD-Ranking reads an ImageFolder root with one sortable sub-folder per class (our zero-padded
`images/<class>/` layout already is one), a teacher `state_dict`, and a YAML config. We copy
the images, save the teacher's weights under torchvision's key names where it is a torchvision
ResNet, and write a config that records the class map, IPC and the soft-label settings of the
run, so others can score our sets with their tool.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from reta import io
from reta.distilled import read_distilled
from reta.errors import RetaError
from reta.teacher import Teacher


def torchvision_state_dict(teacher: Teacher) -> dict[str, torch.Tensor]:
    """The teacher's weights, with our ResNet wrapper's prefixes mapped back to torchvision's names."""
    out = {}
    for key, value in teacher.model.state_dict().items():
        if key.startswith("net."):
            key = key[4:]
        elif key.startswith("head."):
            key = "fc." + key[5:] if teacher.arch.startswith("resnet") else key
        out[key] = value.detach().cpu().contiguous()
    return out


def export(distilled: Path, teacher: Teacher, out: Path, temperature: float = 20.0) -> Path:
    images, manifest = read_distilled(distilled, expect=teacher.info)
    if out.exists() and any(out.iterdir()):
        raise RetaError(f"{out} is not empty; choose a new --out for the DD-Ranking export")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(distilled / "images", out / "images")
    with io.atomic_path(out / "teacher.pth") as tmp:
        torch.save(torchvision_state_dict(teacher), tmp)
    info = teacher.info
    config = {
        "dataset": info.name, "num_classes": info.num_classes, "im_size": [info.image_size, info.image_size],
        "class_names": list(info.classes), "ipc": manifest["ipc"], "image_path": "images",
        "mean": list(info.mean), "std": list(info.std),
        "teacher_model_name": teacher.arch, "teacher_state_dict": "teacher.pth",
        "soft_label_mode": "M", "soft_label_criterion": "kl", "temperature": temperature,
        "distilled_with": {"method": manifest.get("method"), "seed": manifest.get("config", {}).get("seed"),
                           "teacher_sha256": manifest.get("teacher_sha256")},
        "note": "class folders are zero-padded indices in the class_names order; accuracies from DD-Ranking "
                "v0.2.0 are percentages and its LRS is computed on percentage points (see reta docs)",
    }
    io.write_bytes(out / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    return out
