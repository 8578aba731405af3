"""The image-set abstraction every stage uses, and the identity that travels with artifacts.

Images are uint8 tensors (3, S, S) in [0, 255]; grey inputs are replicated to 3 channels at
load time so teachers, pools and distilled sets always agree on the channel count. A
`DatasetInfo` (class names, size, normalisation) is stored in every artifact and compared
whenever two artifacts meet: a silent class-order mismatch is the field's most reported bug.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from reta.errors import RetaError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @staticmethod
    def from_json(d: dict) -> "DatasetInfo":
        return DatasetInfo(name=d["name"], classes=tuple(d["classes"]), image_size=int(d["image_size"]),
                           mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))

    @staticmethod
    def read_artifact(folder: Path, filename: str, expect: "DatasetInfo | None", what: str,
                      fix: str) -> tuple[dict, "DatasetInfo"]:
        """(record, identity) of an artifact's final JSON file, checked against `expect`.

        A missing file, or one without a readable dataset identity, is one line naming the file
        and `fix` (e.g. the command that makes the artifact).
        """
        from reta import io

        path = Path(folder) / filename
        if not path.is_file():
            raise RetaError(f"{folder}: no {filename}: not a {what}, or its run did not finish; {fix}")
        record = io.read_json(path)
        try:
            info = DatasetInfo.from_json(record["dataset"])
        except (KeyError, TypeError, ValueError):
            raise RetaError(f"{path}: no valid 'dataset' entry (the file is damaged or not reta's); {fix}") from None
        if expect is not None:
            info.check_compatible(expect, f"{what} {folder}", "dataset")
        return record, info

    def check_compatible(self, other: "DatasetInfo", mine: str, theirs: str, check_stats: bool = True) -> None:
        """Raise a one-line RetaError naming both artifacts if they disagree on what a label means."""
        if self.num_classes != other.num_classes:
            raise RetaError(f"{theirs} has {other.num_classes} classes but {mine} has {self.num_classes}; "
                            f"use a {mine.split()[0]} built for this dataset")
        if self.classes != other.classes:
            diff = next(i for i, (a, b) in enumerate(zip(self.classes, other.classes)) if a != b)
            raise RetaError(f"class names differ between {mine} and {theirs} at index {diff} "
                            f"({self.classes[diff]!r} vs {other.classes[diff]!r}); the class order must match")
        if self.image_size != other.image_size:
            raise RetaError(f"{theirs} is {other.image_size} px but {mine} is {self.image_size} px; "
                            f"pass --image-size {self.image_size} or use matching artifacts")
        if check_stats and (not np.allclose(self.mean, other.mean, atol=1e-4)
                            or not np.allclose(self.std, other.std, atol=1e-4)):
            raise RetaError(f"normalisation differs between {mine} (mean {self.mean}) and {theirs} "
                            f"(mean {other.mean}); use artifacts made from the same dataset")

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,H,W) -> float (N,3,H,W) in normalised space."""
        return self.standardise(images_uint8.float().div_(255.0))

    def standardise(self, x01: torch.Tensor) -> torch.Tensor:
        """[0,1] float (N,3,H,W) -> normalised space."""
        mean = torch.tensor(self.mean, device=x01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x01.device).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """normalised float (N,3,H,W) -> [0,1] float, clamped."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def pixel_bounds(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of normalised values whose pixels lie in [0,1], shape (1,3,1,1)."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return -mean / std, (1 - mean) / std


class ImageSet:
    """A labelled image collection; subclasses decide whether pixels live in memory or on disk."""

    info: DatasetInfo
    labels: np.ndarray  # int64 (N,)
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 (n,3,S,S) for the given indices, in that order."""
        raise NotImplementedError

    def indices_of_class(self, class_idx: int) -> np.ndarray:
        return np.flatnonzero(self.labels == class_idx)

    def subset(self, indices: np.ndarray) -> "ImageSet":
        return SubsetImageSet(self, np.asarray(indices, dtype=np.int64))

    def content_hash(self) -> str:
        raise NotImplementedError

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, int64 labels) batches; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            yield self.load(idx), torch.from_numpy(self.labels[idx])


class TensorImageSet(ImageSet):
    def __init__(self, images: torch.Tensor, labels: np.ndarray, info: DatasetInfo, source: str):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (N,3,H,W) images, got {tuple(images.shape)} {images.dtype}")
        if len(images) != len(labels):
            raise RetaError(f"{source}: {len(images)} images but {len(labels)} labels")
        self.images = images.contiguous()
        self.labels = np.asarray(labels, dtype=np.int64)
        self.info = info
        self.source = source
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= info.num_classes):
            raise RetaError(f"{source}: labels must lie in [0, {info.num_classes - 1}], "
                            f"found {self.labels.min()}..{self.labels.max()}; the labels and the class list disagree, fix either")

    def load(self, indices) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(indices, dtype=np.int64))]

    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()


class SubsetImageSet(ImageSet):
    def __init__(self, parent: ImageSet, indices: np.ndarray):
        self.parent = parent
        self.indices = indices
        self.labels = parent.labels[indices]
        self.info = parent.info
        self.source = parent.source

    def load(self, indices) -> torch.Tensor:
        return self.parent.load(self.indices[np.asarray(indices, dtype=np.int64)])

    def content_hash(self) -> str:
        h = hashlib.sha256(self.parent.content_hash().encode())
        h.update(self.indices.tobytes())
        return h.hexdigest()


def holdout_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded, class-stratified indices kept out of teacher training and pools: >= 1 per class when
    fraction > 0, but never a class's last training image, so no class is left without real data."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    if fraction >= 1:
        raise RetaError(f"holdout_fraction={fraction}: must be below 1")
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        out.append(np.sort(rng.choice(idx, size=take, replace=False)))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def split_holdout(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(fit part, held-out part) of a training set; the held-out part is for choices, never the test split."""
    held = holdout_indices(train.labels, fraction, seed)
    keep = np.setdiff1d(np.arange(len(train)), held)
    return train.subset(keep), train.subset(held)
