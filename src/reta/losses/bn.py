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
    """Forward hooks that record the input moments of every BatchNorm2d of a model."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.moments: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.enabled = True
        self._handles = [layer.register_forward_hook(self._make(i)) for i, layer in enumerate(self.layers)]

    def _make(self, i: int):
        def hook(_module, inputs, _output):
            if self.enabled:
                self.moments[i] = batch_moments(inputs[0])

        return hook

    def loss(self, first_multiplier: float) -> torch.Tensor:
        """Sum over layers of the matching term, the first layer weighted by first_multiplier."""
        total = None
        for i, (layer, mom) in enumerate(zip(self.layers, self.moments)):
            if mom is None:
                continue
            term = bn_layer_loss(mom[0], mom[1], layer.running_mean.float(), layer.running_var.float())
            term = term * (first_multiplier if i == 0 else 1.0)
            total = term if total is None else total + term
        self.moments = [None] * len(self.layers)
        if total is None:
            raise ValueError("teacher has no BatchNorm2d layers: BN matching needs a BN teacher (e.g. convnet3, resnet18)")
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
