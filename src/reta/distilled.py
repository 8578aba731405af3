"""The distilled-set artifact: an ImageFolder of lossless PNGs plus `manifest.json`.

Layout: `DIR/images/<class index, zero-padded>/<class>_<ipc>.png` and `DIR/manifest.json`
(written last: a folder without it is incomplete). The manifest carries the dataset identity
(class names, size, normalisation), so a distilled set can never be evaluated against a
dataset with another class order. Class folders are zero-padded indices so that any ImageFolder
reader (DD-Ranking's included) sorts them into the right order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reta import io
from reta.data.dataset import DatasetInfo, TensorImageSet
from reta.errors import RetaError

MANIFEST = "manifest.json"


def class_folder(class_idx: int, num_classes: int) -> str:
    return str(class_idx).zfill(max(5, len(str(num_classes - 1))))


def image_path(root: Path, class_idx: int, ipc_idx: int, num_classes: int) -> Path:
    folder = class_folder(class_idx, num_classes)
    return root / "images" / folder / f"{folder}_{ipc_idx:05d}.png"


def write_png(path: Path, image_uint8: torch.Tensor) -> None:
    """Atomically write one uint8 (3,H,W) image as PNG."""
    arr = image_uint8.permute(1, 2, 0).contiguous().numpy()
    with io.atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    """[0,1] float -> uint8 with rounding (the field truncates; rounding halves the quantisation error)."""
    return (x01.clamp(0, 1) * 255.0).round().to(torch.uint8)


def write_manifest(root: Path, info: DatasetInfo, ipc: int, manifest: dict) -> None:
    io.write_json(root / MANIFEST, {"dataset": info.to_json(), "ipc": ipc, **manifest})


def read_distilled(root: str | Path, expect: DatasetInfo | None = None) -> tuple[TensorImageSet, dict]:
    """Load a distilled set folder; checks completeness, image sizes and (optionally) class identity."""
    root = Path(root)
    manifest, info = DatasetInfo.read_artifact(root, MANIFEST, expect, "distilled set", "rerun `reta distill`")
    images, labels = [], []
    for c in range(info.num_classes):
        folder = root / "images" / class_folder(c, info.num_classes)
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if len(files) != manifest["ipc"]:
            raise RetaError(f"{folder}: {len(files)} images, the manifest says ipc={manifest['ipc']}; "
                            f"the set is incomplete, rerun `reta distill` with the same --out to finish it")
        for f in files:
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except OSError as exc:
                raise RetaError(f"{f}: cannot decode PNG ({exc}); rerun `reta distill`") from None
            if arr.shape[:2] != (info.image_size, info.image_size):
                raise RetaError(f"{f}: {arr.shape[1]}x{arr.shape[0]} px, expected {info.image_size} px; "
                                f"the images do not match the manifest, rerun `reta distill`")
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            labels.append(c)
    return TensorImageSet(torch.stack(images), np.asarray(labels), info, str(root)), manifest
