"""Shared fixtures: real data that needs no download (scikit-learn digits) and a small trained teacher."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Respect OMP_NUM_THREADS: on a shared 2-core machine extra threads spin-wait and slow everything.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def digits():
    from reta.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_teacher(digits, tmp_path_factory):
    """A BN ConvNet (width 32) trained for a few epochs on digits: ~90% test top-1, ~2 s."""
    from reta.config import SqueezeConfig
    from reta.teacher import squeeze

    train, test = digits
    out = tmp_path_factory.mktemp("teacher")
    return squeeze(train, test, SqueezeConfig(arch="convnet3-w32", epochs=12, batch_size=64, lr=0.05),
                   out, torch.device("cpu"))


@pytest.fixture(scope="session")
def shared_imagenette():
    path = SHARED / "imagenette"
    if not (path / "train.npz").is_file():
        pytest.skip(f"{path} absent: the shared datasets folder is not mounted beside the repository")
    return path


def write_image_folder(root: Path, classes: list[str], per_class: int, size: int = 20, grey: bool = False,
                       split_names=("train", "val"), seed: int = 0) -> Path:
    """An ImageFolder tree of random PNG/JPEG images nobody prepared for us."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in split_names:
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = rng.integers(0, 255, size=(size, size + 4, 3), dtype=np.uint8)
                base[..., ci % 3] = 200  # a class-dependent colour so a teacher can learn something
                im = Image.fromarray(base)
                if grey:
                    im = im.convert("L")
                im.save(d / f"img{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root
