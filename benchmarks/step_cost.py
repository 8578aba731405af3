"""Per-image cost of one recover step (teacher forward with BN hooks + backward, channels_last, in
recover's precision for this CPU: bf16 where it has native bf16, else fp32) against the images in
one teacher pass, on the full tier's ConvNet-3 at 32 px. It sets the CPU pass size of recover.loop
(CPU_PASS_IMAGES). Run alone: `python benchmarks/step_cost.py [--precision auto|fp32|bf16]`.

Without native bf16 (AVX2 only) autocast to bf16 is ~10x slower than fp32, so forcing bf16 there
measures nothing recover does."""

import argparse
import time

import torch
import torch.nn.functional as F

from reta.losses.bn import BNStatHooks
from reta.models import create_model
from reta.runtime import autocast, autocast_dtype, cpu_has_bf16

GROUP_IMAGES = 10  # the full tier's class-mixed group: one image of each of 10 classes


def step_seconds(model: torch.nn.Module, hooks: BNStatHooks, images: int, dtype: torch.dtype | None) -> float:
    x = torch.randn(images, 3, 32, 32, requires_grad=True)
    y = torch.arange(images) % 10
    hooks.splits = [GROUP_IMAGES] * (images // GROUP_IMAGES)

    def step():
        with autocast(dtype, torch.device("cpu")):
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    precision = parser.parse_args().precision
    dtype = autocast_dtype(precision, torch.device("cpu"))
    print(f"# precision {precision} -> {dtype or 'fp32'} (native bf16: {cpu_has_bf16()})", flush=True)
    torch.manual_seed(0)
    model = create_model("convnet3", 10, 32).eval().to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    hooks = BNStatHooks(model)
    for images in (10, 50, 100, 250, 500):
        dt = step_seconds(model, hooks, images, dtype)
        print(f"{images:4d} images/pass: {dt * 1000:8.1f} ms/step  {dt / images * 1000:6.3f} ms/image", flush=True)


if __name__ == "__main__":
    main()
