"""The methods before RETA, each a few lines over the one loop (see strategy.py).

random and rded only select real images (no optimisation); sre2l optimises from noise in one
stage; fadrm optimises from RDED patches in four stages with the init patch re-injected at each
connection. DRC, PTA and RETA live in their own modules.
"""

from __future__ import annotations

import torch

from reta.recover.init import noise_images, rded_images, real_images
from reta.recover.strategy import Context, InitPatchAnchor, Method, register


def initial_images(ctx: Context, c: int) -> torch.Tensor:
    """Class c's (ipc,3,S,S) normalised starting images, from `init` (noise | real | rded)."""
    cfg = ctx.cfg
    if cfg.init == "noise":
        return noise_images(ctx.info, c, cfg.ipc, cfg.seed)
    if cfg.init == "real":
        return real_images(ctx.train, c, cfg.ipc, cfg.seed)
    return rded_images(ctx.train, ctx.teachers[0], c, cfg.ipc, cfg.seed, cfg.rded_candidates, cfg.rded_crops,
                       cfg.rded_factor, ctx.dev, ctx.dtype).cpu()


def fadrm_method(ctx: Context) -> Method:
    return Method(init_images=lambda c: initial_images(ctx, c), anchor=InitPatchAnchor(ctx))


@register("random", "a random real subset of each class (the baseline every method must beat)",
          init="real", iterations=0, num_stages=1)
@register("rded", "RDED: the real crops the teacher finds most typical, not optimised", init="rded", iterations=0,
          num_stages=1)
def selection(ctx: Context) -> Method:
    return Method(init_images=lambda c: initial_images(ctx, c), optimises=False)


@register("sre2l", "SRe2L: optimise noise to match the teacher's BN statistics and labels", init="noise", num_stages=1)
def sre2l(ctx: Context) -> Method:
    return Method(init_images=lambda c: initial_images(ctx, c))


register("fadrm", "FADRM: SRe2L from RDED patches in 4 stages, re-injecting each init patch between stages",
         init="rded", num_stages=4)(fadrm_method)
