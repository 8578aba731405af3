"""Batch augmentations on tensors, with explicit generators and replayable parameters.

Everything works on whole batches (N,3,H,W) so CPU training needs no DataLoader workers, and
every random draw comes from a `torch.Generator` passed in, so stored soft labels can replay
exactly the views they were computed on (no patched PyTorch fetchers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def rrc_boxes(n: int, scale_min: float, generator: torch.Generator, ratio=(3 / 4, 4 / 3),
              scale_max: float = 1.0) -> torch.Tensor:
    """RandomResizedCrop boxes as fractions (top, left, height, width) of the image, shape (n, 4).

    Same distribution as torchvision's `RandomResizedCrop.get_params` (area ~ U[scale], log-ratio
    uniform, 10 tries then the centred full-size fallback), vectorised over n images.
    """
    tries = 10
    area = torch.empty(n, tries).uniform_(scale_min, scale_max, generator=generator)
    log_r = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r)
    h = torch.sqrt(area / r)
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp_min(0)
    h = h.gather(1, pick[:, None]).squeeze(1)
    w = w.gather(1, pick[:, None]).squeeze(1)
    u = torch.rand(n, 2, generator=generator)
    top, left = u[:, 0] * (1 - h), u[:, 1] * (1 - w)
    full = first < 0
    h, w = torch.where(full, 1.0, h), torch.where(full, 1.0, w)
    top, left = torch.where(full, 0.0, top), torch.where(full, 0.0, left)
    return torch.stack([top, left, h, w], 1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """Crop each image to its fractional box (top, left, h, w) and resize to out_size (bilinear)."""
    n, _, hh, ww = x.shape
    b = boxes.to(x.device, torch.float32)
    rois = torch.stack([torch.arange(n, device=x.device, dtype=torch.float32), b[:, 1] * ww, b[:, 0] * hh,
                        (b[:, 1] + b[:, 3]) * ww, (b[:, 0] + b[:, 2]) * hh], 1)
    return roi_align(x.float(), rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=1,
                     aligned=True).to(x.dtype)


def apply_flips(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    flips = flips.to(x.device).bool().view(-1, 1, 1, 1)
    return torch.where(flips, x.flip(-1), x)


def random_crop_pad(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image RandomCrop(size, padding) with zero padding (i.e. the mean colour in normalised space)."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    offs = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    rows = (offs[:, 0:1] + torch.arange(h)).to(x.device)  # (n,h)
    cols = (offs[:, 1:2] + torch.arange(w)).to(x.device)  # (n,w)
    idx_r = rows[:, None, :, None].expand(n, x.shape[1], h, padded.shape[-1])
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, idx_c)


def random_flips(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < 0.5


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """CutMix box (y0, y1, x0, x1) covering about (1-lam) of the image, centre uniform, clipped."""
    cut = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


def apply_cutmix(x: torch.Tensor, perm: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Paste the box of x[perm] into x; returns a new tensor."""
    y0, y1, x0, x1 = box
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm.to(x.device)][:, :, y0:y1, x0:x1]
    return out


def cutmix_lam(box: tuple[int, int, int, int], height: int, width: int) -> float:
    """Fraction of each image that is its own after pasting `box` (the label weight)."""
    y0, y1, x0, x1 = box
    return 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)


def sample_cutmix(n: int, height: int, width: int, beta: float, prob: float, generator: torch.Generator):
    """One batch's CutMix draw: (perm, box, lam) or None when this batch is not mixed.

    lam is the effective own-image fraction after clipping the box (the label weight).
    """
    if beta <= 0 or prob <= 0 or float(torch.rand(1, generator=generator)) >= prob:
        return None
    lam = sample_beta(beta, generator)
    perm = torch.randperm(n, generator=generator)
    box = cutmix_box(height, width, lam, generator)
    return perm, box, cutmix_lam(box, height, width)


def sample_beta(beta: float, generator: torch.Generator) -> float:
    """Beta(beta, beta) by inverse CDF, so the draw comes from `generator` (torch.distributions cannot take one)."""
    u = float(torch.rand(1, generator=generator))
    if beta == 1.0:  # Beta(1,1) = U(0,1), the field default
        return u
    from scipy.special import betaincinv  # scipy comes with scikit-learn

    return float(betaincinv(beta, beta, u))


def resample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size (antialiased when shrinking); identity at the same size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])
