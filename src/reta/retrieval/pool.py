"""The per-class pool of real candidates for DRC, with features and complexities cached on disk.

One candidate per real training image of the class (the paper's "1x1 patch"), the held-out
part of the training split excluded. For every candidate and every distinct stage size D the
cache holds z(o) = Norm(teacher.features(o at D)) (fp16) and c(o) at D. Each class is one
safetensors file, built in batches and loaded on demand, so an ImageNet-size pool never sits
whole in memory; the cache key covers teacher weights, data, sizes and pool settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from reta import io
from reta.data.augment import crop_resize, resample, rrc_boxes
from reta.data.dataset import ImageSet
from reta.retrieval.score import complexity
from reta.runtime import derive_seed


def default_cache_dir() -> Path:
    return Path(os.environ.get("RETA_CACHE", Path.home() / ".cache" / "reta"))


@torch.no_grad()
def normalised_features(model: torch.nn.Module, x_normalised: torch.Tensor) -> torch.Tensor:
    """Teacher penultimate features, L2-normalised, fp32 (N,F)."""
    return F.normalize(model.features(x_normalised).float(), dim=1)


class Pool:
    def __init__(self, train: ImageSet, model: torch.nn.Module, teacher_hash: str, sizes: list[int],
                 per_class: int, seed: int, dev: torch.device, cache_dir: Path | None = None,
                 feature_batch: int = 256, patch_crops: int = 0):
        """patch_crops = 0: one candidate per real image, the whole image. > 0: the image's RDED patch,
        i.e. of `patch_crops` random square crops the one the teacher gives the lowest cross-entropy
        for the true class (what FADRM's "1x1 patches", its anchors, are)."""
        self.train = train
        self.model = model
        self.info = train.info
        self.sizes = sorted(set(sizes))
        self.dev = dev
        self.feature_batch = feature_batch
        self.per_class = per_class
        self.seed = seed
        self.patch_crops = patch_crops
        # A pool that draws nothing at random (every whole image) is the same for every seed, so
        # the seed is only part of the key when a per-class cap or patch crops use it.
        drawn = {"seed": seed} if per_class or patch_crops else {}
        key = io.sha256_json({"teacher": teacher_hash, "data": train.content_hash(), "sizes": self.sizes,
                              "per_class": per_class, "version": 2, **drawn,
                              **({"patch_crops": patch_crops} if patch_crops else {})})[:20]
        self.dir = (cache_dir or default_cache_dir()) / "pools" / key
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}

    def members(self, class_idx: int) -> np.ndarray:
        """Indices into the training set of the class's candidates (seeded cap when per_class > 0)."""
        idx = self.train.indices_of_class(class_idx)
        if 0 < self.per_class < len(idx):
            rng = np.random.default_rng(derive_seed(self.seed, "pool", class_idx) % (2**32))
            idx = np.sort(rng.choice(idx, size=self.per_class, replace=False))
        return idx

    def _path(self, class_idx: int) -> Path:
        return self.dir / f"class_{class_idx:05d}.safetensors"

    @torch.no_grad()
    def _best_patches(self, x01: torch.Tensor, class_idx: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,4) the lowest-CE square crop box of each image among `patch_crops` random ones (RDED), and (n,) its CE."""
        n, k = len(x01), self.patch_crops
        boxes = rrc_boxes(n * k, 0.08, gen, ratio=(1.0, 1.0))
        crops = crop_resize(self.info.standardise(x01.repeat_interleave(k, dim=0)), boxes, self.info.image_size)
        best_ce, best = self._ce(self.model(crops), class_idx).view(n, k).min(dim=1)
        return boxes.view(n, k, 4)[torch.arange(n), best.cpu()], best_ce.cpu()

    def _ce(self, logits: torch.Tensor, class_idx: int) -> torch.Tensor:
        """The teacher's cross-entropy of the true class: RDED's realism score (lower = more typical)."""
        target = torch.full((len(logits),), class_idx, device=self.dev)
        return F.cross_entropy(logits.float(), target, reduction="none")

    @torch.no_grad()
    def _build(self, class_idx: int) -> None:
        idx = self.members(class_idx)
        out: dict[str, list[torch.Tensor]] = {f"z{s}": [] for s in self.sizes} | {f"c{s}": [] for s in self.sizes}
        out["boxes"], out["ce"] = [], []
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "pool-patches", class_idx))
        for start in range(0, len(idx), self.feature_batch):
            x01 = self.train.load(idx[start:start + self.feature_batch]).to(self.dev).float() / 255.0
            if self.patch_crops:
                boxes, ce = self._best_patches(x01, class_idx, gen)
                out["boxes"].append(boxes)
                x01 = crop_resize(x01, boxes, self.info.image_size).clamp(0, 1)
            else:
                ce = None
            for s in self.sizes:
                xs = resample(x01, s)
                out[f"c{s}"].append(complexity(xs).cpu())
                raw = self.model.features(self.info.standardise(xs)).float()
                out[f"z{s}"].append(F.normalize(raw, dim=1).half().cpu())
                if ce is None and s == self.info.image_size:  # a whole image's CE from this same pass
                    ce = self._ce(self.model.head(raw), class_idx)
            if ce is None:  # native size not among the pool's sizes
                ce = self._ce(self.model(self.info.standardise(x01)), class_idx)
            out["ce"].append(ce.cpu())
        tensors = {k: torch.cat(v) for k, v in out.items() if v} | {"indices": torch.from_numpy(idx)}
        with io.atomic_path(self._path(class_idx)) as tmp:
            save_file(tensors, str(tmp))

    def get(self, class_idx: int) -> dict[str, torch.Tensor]:
        """{'indices', 'ce' (m,) the teacher's CE at native size, 'z<size>' (m,F) float32, 'c<size>' (m,)}
        for one class, building the cache if needed."""
        if class_idx not in self._loaded:
            path = self._path(class_idx)
            if not path.is_file():
                self._build(class_idx)
            data = load_file(str(path))
            data = {k: (v.float() if k.startswith("z") else v) for k, v in data.items()}
            if len(self._loaded) >= 64:  # bound memory on 1000-class runs
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[class_idx] = data
        return self._loaded[class_idx]

    def dataset_indices(self, class_idx: int, pool_positions: torch.Tensor) -> np.ndarray:
        """Indices into the full training split (not the held-out-free subset the pool is built on)."""
        idx = self.get(class_idx)["indices"].numpy()[pool_positions.cpu().numpy()]
        parent_indices = getattr(self.train, "indices", None)
        return parent_indices[idx] if parent_indices is not None else idx

    def normalised(self, class_idx: int, pool_positions: torch.Tensor) -> torch.Tensor:
        """Normalised (n,3,S,S) candidates at the given pool positions of a class (whole images or patches)."""
        data = self.get(class_idx)
        positions = pool_positions.cpu()
        x = self.info.normalise(self.train.load(data["indices"].numpy()[positions.numpy()]).to(self.dev))
        if "boxes" in data:
            x = crop_resize(x, data["boxes"][positions], self.info.image_size)
        return x


def most_confident(ce: torch.Tensor, keep: int) -> torch.Tensor:
    """(m',) pool positions, in pool order, of the `keep` candidates with the lowest teacher CE of
    the true class (the class's confident core); every position when keep is 0 or covers the pool."""
    if not 0 < keep < len(ce):
        return torch.arange(len(ce))
    return torch.sort(torch.argsort(ce, stable=True)[:keep]).values
