"""Persistent Topology Alignment as a recover loss term (RETA §1.3; resolutions §5.7-5.10).

Per class c: the cloud is the class's ipc synthetic images in L2-normalised teacher feature
space — the group's live images plus a detached cache of the class's other slots — compared,
as H0/H1 persistence images, with a reference averaged over Q random real subsets of the same
size (computed once per class). The per-class cutoff kappa_c is the largest real squared
distance.

Live features (`pta.live_features`):
* `view` (default): the cloud's values come from clean (un-augmented) features of the live
  images, refreshed every T steps together with the pairing, the images and dL/dz; between
  refreshes the gradient reaches the pixels through the features of the step's augmented view
  from the main teacher pass (straight-through: value clean, Jacobian of the view). No extra
  teacher pass per step: the cost is one forward every T steps.
* `clean`: an extra un-augmented teacher forward/backward every step, values and gradients live.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reta import topology
from reta.config import PTAConfig
from reta.runtime import autocast, derive_seed


class TopologyAlignment:
    def __init__(self, cfg: PTAConfig, ipc: int, real_features, model: torch.nn.Module, seed: int,
                 dev: torch.device, dtype=None):
        """real_features(class_idx) -> (N,F) normalised real features of the class's pool."""
        self.cfg = cfg
        self.ipc = ipc
        self.real_features = real_features
        self.model = model
        self.seed = seed
        self.dev = dev
        self.dtype = dtype
        self._refs: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}
        self.last_value = 0.0
        self.records: list[dict] = []  # per refresh: class-summed loss, infinite-bar shares

    def reference(self, class_idx: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(kappa_c, mean PI0, mean PI1) of the class's real pool, computed once."""
        if class_idx not in self._refs:
            z = self.real_features(class_idx)
            kappa = topology.class_cutoff(z)
            g = torch.Generator().manual_seed(derive_seed(self.seed, "pta-ref", class_idx))
            ref0, ref1 = topology.reference_images(z, min(self.ipc, len(z)), self.cfg.reference_subsets, self.cfg.k,
                                                   kappa, self.cfg.grid, g, infinite=self.cfg.infinite_bars)
            self._refs[class_idx] = (kappa, ref0.to(self.dev), ref1.to(self.dev))
        return self._refs[class_idx]

    @torch.no_grad()
    def clean_features(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.dtype, self.dev):
            f = self.model.features(x)
        return F.normalize(f.float(), dim=1)

    def begin_group(self, labels: torch.Tensor, others: dict[int, torch.Tensor]) -> None:
        """labels (n,) of the live images; others[c] = detached features of class c's slots outside the group."""
        self.labels = labels.cpu()
        self.others = others
        self.classes = [c for c in sorted(set(self.labels.tolist()))
                        if int((self.labels == c).sum()) + len(others.get(c, ())) >= self.cfg.min_points]
        self.grad = None

    def loss(self, z_live: torch.Tensor) -> torch.Tensor:
        """Class-summed (or averaged) PI loss for live features z_live (n,F), differentiable."""
        total = z_live.new_zeros(())
        for c in self.classes:
            cloud = torch.cat([z_live[self.labels.to(z_live.device) == c], self.others.get(c, z_live[:0]).to(z_live)])
            kappa, ref0, ref1 = self.reference(c)
            pi0, pi1 = topology.class_topology_terms(cloud, kappa, self.cfg.k, self.cfg.grid, self.cfg.infinite_bars)
            total = total + topology.topology_loss(pi0, pi1, ref0, ref1, self.cfg.gamma)
        if self.cfg.class_reduction == "mean" and self.classes:
            total = total / len(self.classes)
        return total

    def refresh(self, x_live: torch.Tensor) -> None:
        """View mode: recompute clean live features, the loss and dL/dz_live (every T steps)."""
        z = self.clean_features(x_live.detach()).requires_grad_(True)
        with torch.enable_grad():
            value = self.loss(z)
            self.grad = torch.autograd.grad(value, z)[0] if value.requires_grad else torch.zeros_like(z)
        self.last_value = float(value.detach())

    def term(self, step_in_group: int, x_live: torch.Tensor, view_features: torch.Tensor) -> torch.Tensor:
        """The PTA term to add to the step loss (already multiplied by lambda_topo)."""
        if not self.classes:
            return view_features.new_zeros(())
        if self.cfg.live_features == "clean":
            with autocast(self.dtype, self.dev):
                f = self.model.features(x_live)
            value = self.loss(F.normalize(f.float(), dim=1))
            self.last_value = float(value.detach())
            return self.cfg.weight * value
        if self.grad is None or step_in_group % self.cfg.refresh_every == 0:
            self.refresh(x_live)
        z_view = F.normalize(view_features.float(), dim=1)
        # Surrogate whose gradient w.r.t. z_view is dL/dz at the refreshed clean features.
        return self.cfg.weight * (self.grad * z_view).sum()
