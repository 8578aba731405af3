"""SRe2L's BatchNorm-statistics matching (method-reference §2.3).

For every BatchNorm2d of the frozen teacher, the *input* of the layer over the (augmented)
synthetic batch has per-channel mean mu_l and biased variance var_l over (N,H,W); the layer term
is ||var_l - running_var||_2 + ||mu_l - running_mean||_2 (unsquared norms), the first layer
weighted by `first_multiplier`. Hooks only collect statistics; the math is a pure function.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,C,H,W) -> per-channel mean (C,) and biased variance (C,), computed in fp32."""
    x = x.float()
    mean = x.mean(dim=(0, 2, 3))
    var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
    return mean, var


def bn_layer_loss(batch_mean: torch.Tensor, batch_var: torch.Tensor, running_mean: torch.Tensor,
                  running_var: torch.Tensor) -> torch.Tensor:
    """||var - running_var||_2 + ||mean - running_mean||_2 for one layer; all (C,)."""
    return torch.linalg.vector_norm(batch_var - running_var) + torch.linalg.vector_norm(batch_mean - running_mean)


class BNStatHooks:
    """Forward hooks that record the input moments of every BatchNorm2d of a model.

    `splits` (row counts) makes them reduce over each block of rows separately: several
    independent groups stacked in one forward each get their own statistics.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.moments: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * len(self.layers)
        self.enabled = True
        self.splits: list[int] | None = None
        self._handles = [layer.register_forward_hook(self._make(i)) for i, layer in enumerate(self.layers)]

    def _make(self, i: int):
        def hook(_module, inputs, _output):
            if self.enabled:
                parts = inputs[0].split(self.splits) if self.splits else (inputs[0],)
                self.moments[i] = [batch_moments(p) for p in parts]

        return hook

    def group_losses(self, first_multiplier: float) -> list[torch.Tensor]:
        """Per row block: the sum over layers of the matching term, the first layer weighted by first_multiplier."""
        totals = None
        for i, (layer, moms) in enumerate(zip(self.layers, self.moments)):
            if moms is None:
                continue
            weight = first_multiplier if i == 0 else 1.0
            terms = [weight * bn_layer_loss(m[0], m[1], layer.running_mean.float(), layer.running_var.float())
                     for m in moms]
            totals = terms if totals is None else [a + b for a, b in zip(totals, terms)]
        self.moments = [None] * len(self.layers)
        self.splits = None  # a split applies to the one forward it was set for
        if totals is None:
            raise ValueError("teacher has no BatchNorm2d layers: BN matching needs a BN teacher (e.g. convnet3, resnet18)")
        return totals

    def loss(self, first_multiplier: float) -> torch.Tensor:
        """The matching term of the whole batch (no splits)."""
        return self.group_losses(first_multiplier)[0]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
