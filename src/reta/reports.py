"""Reports: result tables, image grids and RETA's topology/retrieval panels, written as Markdown + PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reta import io


def image_grid(images_uint8: torch.Tensor, nrow: int, path: Path, min_cell: int = 48) -> Path:
    """Save (n,3,H,W) uint8 images as one PNG grid, upscaled (nearest) so small images stay visible."""
    from torchvision.utils import make_grid

    grid = make_grid(images_uint8.float() / 255.0, nrow=nrow, padding=1, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    scale = max(1, min_cell // images_uint8.shape[-1])
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    with io.atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def results_table(results: list[dict], reference: str | None = None) -> str:
    """Markdown table: final-epoch top-1 mean ± std first, best-epoch labelled, deltas, cost."""
    ref = {r["method"]: r for r in results}
    head = "| method | top-1 final (mean ± std) | Δ vs random | best-epoch (test-selected) | seconds |"
    rows = [head, "|---|---|---|---|---|"]
    for r in results:
        delta = ""
        if "random" in ref and r["method"] != "random":
            delta = f"{100 * (r['top1_final_mean'] - ref['random']['top1_final_mean']):+.2f}"
        rows.append(f"| {r['method']} | {100 * r['top1_final_mean']:.2f} ± {100 * r['top1_final_std']:.2f} | {delta} "
                    f"| {100 * r['top1_best_mean']:.2f} | {r.get('total_seconds', r['seconds']):.1f} |")
    return "\n".join(rows)
