"""Per-image cost of one recover step (teacher forward with BN hooks + backward, bf16, channels_last)
against the images in one teacher pass, on the full tier's ConvNet-3 at 32 px. It sets the CPU
pass size of recover.loop (CPU_PASS_IMAGES). Run alone: `python benchmarks/step_cost.py`."""

import time

import torch
import torch.nn.functional as F

from reta.losses.bn import BNStatHooks
from reta.models import create_model

GROUP_IMAGES = 10  # the full tier's class-mixed group: one image of each of 10 classes


def step_seconds(model: torch.nn.Module, hooks: BNStatHooks, images: int) -> float:
    x = torch.randn(images, 3, 32, 32, requires_grad=True)
    y = torch.arange(images) % 10
    hooks.splits = [GROUP_IMAGES] * (images // GROUP_IMAGES)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        (F.cross_entropy(logits, y) + 0.01 * sum(hooks.group_losses(10.0))).backward()

    for _ in range(3):  # warm-up: allocator and oneDNN kernel selection
        step()
    reps = max(3, 300 // images)
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - start) / reps


def main() -> None:
    torch.manual_seed(0)
    model = create_model("convnet3", 10, 32).eval().to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    hooks = BNStatHooks(model)
    for images in (10, 50, 100, 250, 500):
        dt = step_seconds(model, hooks, images)
        print(f"{images:4d} images/pass: {dt * 1000:8.1f} ms/step  {dt / images * 1000:6.3f} ms/image", flush=True)


if __name__ == "__main__":
    main()
