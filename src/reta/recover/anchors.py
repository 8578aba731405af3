"""What gets injected at a residual connection: FADRM's fixed init patch, or RETA's DRC retrieval."""

from __future__ import annotations

import numpy as np
import torch

from reta.config import DRCConfig
from reta.retrieval.pool import Pool, normalised_features, resample
from reta.retrieval.score import choose, squared_fit


class FixedAnchors:
    """FADRM: every connection re-injects the image's own initial real patch (native size)."""

    def __init__(self, init_of):
        self.init_of = init_of  # flat slot indices -> normalised (n,3,S,S)
        self.records: list[dict] = []

    def anchors(self, flat_idx: np.ndarray, labels: torch.Tensor, x: torch.Tensor, stage: int, next_size: int) -> torch.Tensor:
        return self.init_of(flat_idx)


class RetrievalAnchors:
    """DRC: per image, the pool candidate minimising J = (1-lam)*fit + lam*complexity."""

    def __init__(self, cfg: DRCConfig, pool: Pool, model: torch.nn.Module):
        self.cfg = cfg
        self.pool = pool
        self.model = model
        self.records: list[dict] = []

    @torch.no_grad()
    def anchors(self, flat_idx: np.ndarray, labels: torch.Tensor, x: torch.Tensor, stage: int, next_size: int) -> torch.Tensor:
        info = self.pool.info
        # Retrieval uses q(x) at the end of the stage, before resizing (resolution §5.6).
        q = normalised_features(self.model, x)
        out = torch.empty(len(x), 3, info.image_size, info.image_size, device=x.device)
        for c in torch.unique(labels).tolist():
            rows = (labels == c).nonzero().squeeze(1)
            data = self.pool.get(c)
            z, comp = data[f"z{next_size}"].to(x.device), data[f"c{next_size}"].to(x.device)
            fit = squared_fit(q[rows], z)
            picked, score = choose(fit, comp, self.cfg.lam, self.cfg.prefilter, self.cfg.distinct)
            picked = picked.to(x.device)
            out[rows] = info.normalise(self.pool.images(c, picked).to(x.device))
            train_indices = self.pool.dataset_indices(c, picked)
            for i, (r, p) in enumerate(zip(rows.tolist(), picked.tolist())):
                self.records.append({"stage": stage, "slot": int(flat_idx[r]), "class": c, "pool_index": int(p),
                                     "train_index": int(train_indices[i]), "fit": float(fit[i, p]),
                                     "complexity": float(comp[p]), "J": float(score[i])})
        return out


def mix(x: torch.Tensor, anchor: torch.Tensor, alpha: float, size: int) -> torch.Tensor:
    """FADRM's residual connection in normalised space: alpha*resize(x) + (1-alpha)*resize(anchor)."""
    def fit_size(t):
        if t.shape[-1] == size:
            return t
        return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)

    return alpha * fit_size(x) + (1 - alpha) * fit_size(anchor)


__all__ = ["FixedAnchors", "RetrievalAnchors", "mix", "resample"]
