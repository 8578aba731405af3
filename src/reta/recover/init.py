"""Initial images for recover, per class and seeded per class (so any class regenerates alone).

* noise — SRe2L: standard Gaussian in normalised space.
* real — random real training images of the class (also the `random` baseline).
* rded — RDED's patch selection (method-reference §4.1): `candidates` real images, `crops`
  square RandomResizedCrops each, scored by teacher cross-entropy of the true class on the
  crop resized to the full input (factor 1) or zero-padded into its tile (factor > 1); the best
  crop per image, then the ipc*factor^2 lowest-CE crops, tiled factor x factor.
Returned images are normalised float (ipc,3,S,S) at the dataset's native size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reta.data.augment import crop_resize, rrc_boxes
from reta.data.dataset import ImageSet
from reta.errors import RetaError
from reta.runtime import autocast, derive_seed


def _class_indices(train: ImageSet, class_idx: int, need: int, what: str) -> np.ndarray:
    idx = train.indices_of_class(class_idx)
    if len(idx) < need:
        raise RetaError(f"class {class_idx} ({train.info.classes[class_idx]!r}) has {len(idx)} training images "
                        f"outside the held-out split, {what} needs {need}; lower --ipc")
    return idx


def real_images(train: ImageSet, class_idx: int, ipc: int, seed: int) -> torch.Tensor:
    idx = _class_indices(train, class_idx, ipc, f"ipc={ipc}")
    rng = np.random.default_rng(derive_seed(seed, "real", class_idx) % (2**32))
    return train.info.normalise(train.load(np.sort(rng.choice(idx, size=ipc, replace=False))))


def noise_images(info, class_idx: int, ipc: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, "noise", class_idx))
    return torch.randn(ipc, 3, info.image_size, info.image_size, generator=g)


@torch.no_grad()
def rded_images(train: ImageSet, model: torch.nn.Module, class_idx: int, ipc: int, seed: int, candidates: int,
                crops: int, factor: int, dev: torch.device, dtype=None, batch: int = 256) -> torch.Tensor:
    info = train.info
    size = info.image_size
    tile = size // factor
    need = ipc * factor * factor
    idx = _class_indices(train, class_idx, need, f"RDED with ipc={ipc} and factor={factor}")
    gen = torch.Generator().manual_seed(derive_seed(seed, "rded", class_idx))
    order = torch.randperm(len(idx), generator=gen).numpy()[:max(candidates, need)]
    chosen = idx[order]
    best_crop, best_ce = [], []
    for s in range(0, len(chosen), max(1, batch // crops)):
        images = info.normalise(train.load(chosen[s:s + max(1, batch // crops)]).to(dev))
        n = len(images)
        boxes = rrc_boxes(n * crops, 0.08, gen, ratio=(1.0, 1.0))
        rep = images.repeat_interleave(crops, dim=0)
        patches = crop_resize(rep, boxes, tile)
        view = patches if factor == 1 else F.pad(patches, ((size - tile) // 2, size - tile - (size - tile) // 2) * 2)
        with autocast(dtype, dev):
            logits = model(view)
        ce = F.cross_entropy(logits.float(), torch.full((len(view),), class_idx, device=dev), reduction="none")
        ce = ce.view(n, crops).cpu()
        pick = ce.argmin(1)
        best_ce.append(ce.gather(1, pick[:, None]).squeeze(1))
        best_crop.append(patches.view(n, crops, 3, tile, tile)[torch.arange(n), pick.to(dev)].cpu())
    ce_all, crops_all = torch.cat(best_ce), torch.cat(best_crop)
    keep = torch.argsort(ce_all, stable=True)[:need]
    selected = crops_all[keep]
    if factor == 1:
        return selected
    out = torch.zeros(ipc, 3, size, size)
    for k in range(factor * factor):  # image i gets crops i, ipc+i, 2*ipc+i, ... row-major
        r, c = divmod(k, factor)
        out[:, :, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = selected[k * ipc:(k + 1) * ipc]
    return out
