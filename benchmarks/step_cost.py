"""Per-image cost of one recover step (teacher forward with BN hooks + backward, bf16, channels_last)
against the images in one teacher pass, on the full tier's ConvNet-3 at 32 px. It sets the CPU
pass size of recover.loop (CPU_PASS_IMAGES). Run alone: `python benchmarks/step_cost.py`."""
import time, torch, torch.nn.functional as F
from reta.models import create_model
from reta.losses.bn import BNStatHooks
torch.manual_seed(0)
m = create_model("convnet3", 10, 32).eval().to(memory_format=torch.channels_last)
for p in m.parameters(): p.requires_grad_(False)
hooks = BNStatHooks(m)
for n in (10, 50, 100, 250, 500):
    x = torch.randn(n, 3, 32, 32, requires_grad=True)
    y = torch.arange(n) % 10
    hooks.splits = [10] * (n // 10)
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(x.contiguous(memory_format=torch.channels_last)).float()
        loss = F.cross_entropy(logits, y) + 0.01 * sum(hooks.group_losses(10.0))
        loss.backward()
    for _ in range(3): step()
    reps = max(3, 300 // n)
    t = time.perf_counter()
    for _ in range(reps): step()
    dt = (time.perf_counter() - t) / reps
    print(f"{n:4d} images/pass: {dt*1000:8.1f} ms/step  {dt/n*1000:6.3f} ms/image", flush=True)
