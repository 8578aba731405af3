"""THE recover loop (SRe2L / FADRM and everything built on them), restated from method-reference §2.3.

    x <- the method's initial images (normalised) resized to D_1
    for stage s: fresh Adam(betas 0.5, 0.9); per global step t: lr = cosine over the whole budget,
        view = same RandomResizedCrop(D_s) + flip for the batch, roll by U{0..jitter}^2,
        loss = CE + r_bn * BN-matching + the method's terms, step, clamp to the pixel box
    after every stage but the last: x <- alpha*resize(x) + (1-alpha)*resize(the method's anchor)

The method (a registered strategy, see strategy.py) decides only where images start, what a
connection injects and which terms are added; this file knows no method by name.

Work is split into groups of slots (class, ipc index) optimised together: class-mixed
(SRe2L/FADRM: one image per class per batch) or per-class (all ipc images of a few classes).
Each group draws its randomness from its own generator seeded by (run seed, group key), so the
output does not depend on the number of processes, the order of groups, or interruptions:
groups are dealt round-robin to torchrun ranks, written atomically with a ledger entry, and
skipped when already done.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from reta import io, outdir
from reta.config import RecoverConfig
from reta.data.augment import crop_resize, resample, rrc_boxes
from reta.data.dataset import ImageSet
from reta.distilled import image_path, to_uint8, write_manifest, write_png
from reta.errors import RetaError
from reta.losses.bn import BNStatHooks
from reta.recover.strategy import METHODS, Context, Group, Method, Step, result_config
from reta.runtime import autocast, autocast_dtype, derive_seed, peak_memory_mb
from reta.schedule import cosine_lr
from reta.teacher import Teacher

LEDGER = "progress"
INIT_DIR = "init"  # initial images per class while a run is unfinished
# On a GPU the loss is checked for NaN/inf every this many steps (and at the end of each stage),
# so the step loop never waits for the device; on the CPU a check costs nothing and runs every step.
FINITE_CHECK_EVERY = 50
GREY_SAMPLE = 512  # training images inspected to decide whether a dataset is grey
GPU_STEP_IMAGES = 400  # images per batched step on a GPU by default (8 groups of 50 ResNet-18 images at 224 px)
# On the CPU a teacher pass's cost per image depends on the pass size and the precision (ConvNet-3,
# 32 px; benchmarks/results/step-cost*.txt): with native bf16 2.9-3.2 ms/image at 10-100 images, 3.9
# at 250, 4.4 at 500; in fp32 (an AVX2-only CPU, where auto precision is fp32) 3.4 at 10, 3.5 at 50,
# 4.3 at 100, 5.9 at 500. Groups stepped together (a joint method's class block) go through the
# teacher in passes of at most this many images, by autocast dtype (None: fp32).
CPU_PASS_IMAGES: dict[torch.dtype | None, int] = {torch.bfloat16: 100, None: 10}
# Augmented views over which the CE + BN gradient norm is averaged (RMS) for the gradient ratio
# recorded at a group's start: 7 extra teacher passes there, ~1 % of a RETA recover at IPC 10.
GRAD_RATIO_VIEWS = 8


def finite_check_every(dev: torch.device) -> int:
    return 1 if dev.type == "cpu" else FINITE_CHECK_EVERY


def default_jitter(size: int) -> int:
    """The field's roll bound by resolution: 4 px at 32-64 px (CIFAR, Tiny), 32 px at >= 128 px
    (ImageNet, Nette, Woof); below 32 px an eighth of the side, so 16 px digits roll by 2."""
    if size >= 128:
        return 32
    return 4 if size >= 32 else max(1, size // 8)


def stage_plan(cfg: RecoverConfig, native: int) -> tuple[list[int], list[int]]:
    """(sizes, budgets) per stage; budgets split `iterations` evenly, remainder to the last stage."""
    if cfg.iterations == 0:
        return [native], [0]
    n = len(cfg.stage_budgets) or len(cfg.stage_sizes) or cfg.num_stages
    budgets = list(cfg.stage_budgets) or [cfg.iterations // n] * (n - 1) + [cfg.iterations - (cfg.iterations // n) * (n - 1)]
    sizes = list(cfg.stage_sizes) or [native] * n
    if len(sizes) != len(budgets):
        raise RetaError(f"stage_sizes has {len(sizes)} entries but stage_budgets {len(budgets)}; give one per stage")
    if sizes[-1] != native:
        raise RetaError(f"stage_sizes must end at the dataset's size {native} (got {sizes[-1]}): the last stage makes the final image")
    if sum(budgets) == 0:
        raise RetaError(f"stage budgets {budgets}: need at least one step in total")
    return sizes, budgets


def plan_groups(num_classes: int, ipc: int, batch_size: int, composition: str) -> list[np.ndarray]:
    """Flat slot indices (class*ipc + ipc_idx) per group, in a fixed order independent of world size."""
    if composition == "class-mixed":
        return [np.array([c * ipc + i for c in range(s, min(s + batch_size, num_classes))])
                for i in range(ipc) for s in range(0, num_classes, batch_size)]
    per = max(1, batch_size // ipc)
    return [np.array([c * ipc + i for c in range(s, min(s + per, num_classes)) for i in range(ipc)])
            for s in range(0, num_classes, per)]


def teacher_passes(splits: list[int], max_images: int | None) -> list[list[int]]:
    """Groups of one step (by position, sizes `splits`) cut into consecutive teacher passes of at
    most `max_images` images (None: one pass); a group is never split, so one larger than a pass
    is a pass of its own. Each group's CE and BN statistics are its own: the cut changes no gradient."""
    if max_images is None:
        return [list(range(len(splits)))]
    passes, images = [[]], 0
    for i, n in enumerate(splits):
        if passes[-1] and images + n > max_images:
            passes.append([])
            images = 0
        passes[-1].append(i)
        images += n
    return passes


def roll(x: torch.Tensor, jitter: int, gen: torch.Generator) -> torch.Tensor:
    if jitter <= 0:
        return x
    dh, dw = torch.randint(0, jitter + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dh, dw), dims=(2, 3))


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A small CPU tensor on dev; on CUDA through pinned memory, so the copy does not wait for the GPU."""
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def augment_view(x: torch.Tensor, size: int, cfg: RecoverConfig, jitter: int, gen: torch.Generator) -> torch.Tensor:
    """One crop box and one flip for the whole batch (as SRe2L/FADRM), then a circular roll.

    Every draw comes from the CPU generator `gen`; nothing here waits for the device.
    """
    if cfg.crop_scale_min < 1.0:
        box = rrc_boxes(1, cfg.crop_scale_min, gen)
        x = crop_resize(x, _to_device(box, x.device).expand(len(x), 4), size)
    else:
        x = resize(x, size)
    if cfg.flip:
        flip = torch.rand(1, generator=gen) < 0.5  # CPU tensor: bool() is free
        if bool(flip):
            x = x.flip(-1)
    return roll(x, jitter, gen)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """FADRM's bilinear resize at a connection (align_corners=False, no antialias); identity at the same size."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def pixel_correlation(x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """(n,) Pearson correlation over pixels of each image with its anchor: near 1 when the residual
    connection blends an image with what it already looks like, near 0 when with an unrelated one
    (a ghost of two pictures)."""
    a = x.flatten(1).double()
    b = anchor.flatten(1).double()
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def mix(x: torch.Tensor, anchor: torch.Tensor, alpha: float, size: int) -> torch.Tensor:
    """FADRM's residual connection in normalised space: alpha*resize(x) + (1-alpha)*resize(anchor)."""
    return alpha * resize(x, size) + (1 - alpha) * resize(anchor, size)


def is_grey(train: ImageSet, seed: int) -> bool:
    """True if every inspected training image has R = G = B (a seeded sample of GREY_SAMPLE)."""
    n = len(train)
    rng = np.random.default_rng(derive_seed(seed, "grey") % (2**32))
    idx = np.sort(rng.choice(n, size=min(n, GREY_SAMPLE), replace=False))
    x = train.load(idx)
    return bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())


class PixelBox:
    """The feasible set of normalised images: pixels in [0,1], and R = G = B for grey datasets."""

    def __init__(self, info, tied: bool, dev: torch.device):
        self.low, self.high = info.pixel_bounds(dev)
        self.mean = torch.tensor(info.mean, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(info.std, device=dev).view(1, 3, 1, 1)
        self.tied = tied

    @torch.no_grad()
    def tie(self, x: torch.Tensor) -> torch.Tensor:
        """For grey data, every channel set to the channel mean in pixel space; otherwise x itself."""
        if not self.tied:
            return x
        grey = (x * self.std + self.mean).mean(dim=1, keepdim=True)
        return (grey - self.mean) / self.std

    @torch.no_grad()
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest feasible image per pixel: clamp to [0,1] pixels, then tie grey channels."""
        return self.tie(torch.maximum(torch.minimum(x, self.high), self.low))


def _sum_terms(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.float() for t in terms.values()]).sum()


class Recover:
    """Holds what every group needs: teachers and their hooks, the method, the initial images."""

    def __init__(self, train: ImageSet, teachers: list[Teacher], cfg: RecoverConfig, out_dir: Path,
                 dev: torch.device, cache_dir: Path | None = None, progress: bool = True):
        self.train, self.cfg, self.out, self.dev, self.progress = train, cfg, Path(out_dir), dev, progress
        self.info = train.info
        self.teacher_hashes = [t.weights_hash for t in teachers]
        self.dtype = autocast_dtype(cfg.precision, dev)
        self.teachers = [t.model.to(dev) for t in teachers]
        if cfg.channels_last:
            # On a copy: converting the caller's teacher in place would change the kernels (and so
            # the last bits of every later result, e.g. its soft labels) of whatever runs next.
            self.teachers = [copy.deepcopy(m).to(memory_format=torch.channels_last) for m in self.teachers]
        self._compiled = self._compile_teachers() if cfg.compile else {}
        self.sizes, self.budgets = stage_plan(cfg, self.info.image_size)
        self.jitter = cfg.jitter if cfg.jitter >= 0 else default_jitter(self.info.image_size)
        self.tied = is_grey(train, cfg.seed)
        self.box = PixelBox(self.info, self.tied, dev)
        self.timer = io.Timer()
        self._setup_seconds = 0.0  # shared files and this rank's per-class caches, before its first group
        ctx = Context(train, self.teachers, self.teacher_hashes, cfg, dev, self.dtype, self.sizes, cache_dir,
                      self.init_of, self._hooks_paused)
        self.method: Method = METHODS.get(cfg.method).build(ctx)
        self.total_steps = sum(self.budgets) if self.method.optimises else 0
        self.hooks = [BNStatHooks(m) for m in self.teachers] if self.total_steps else []
        for t, h in zip(teachers, self.hooks):
            if not h.layers:
                raise RetaError(f"teacher {t.arch} at {t.path} has no BatchNorm layers; --method {cfg.method} matches "
                                f"BN statistics and needs a BN teacher (e.g. convnet3, resnet18, mobilenet_v2)")
        self.components = [c for c in (self.method.anchor, *self.method.terms) if c is not None]

    @contextlib.contextmanager
    def _hooks_paused(self):
        for h in self.hooks:
            h.enabled = False
        try:
            yield
        finally:
            for h in self.hooks:
                h.enabled = True

    # -- teacher forward (optionally compiled) ------------------------------------------------
    def _compile_teachers(self) -> dict[int, object]:
        """torch.compile'd (features, logits) functions per teacher; {} where compile is unavailable."""
        compiled = {}
        for i, model in enumerate(self.teachers):
            try:
                compiled[i] = torch.compile(self._eager_forward(model))
            except Exception as exc:  # noqa: BLE001 - no compiler, unsupported Python, ...: run eagerly
                warnings.warn(f"recover: torch.compile unavailable ({type(exc).__name__}: {exc}); running the teacher eagerly",
                              stacklevel=2)
                return {}
        return compiled

    @staticmethod
    def _eager_forward(model: torch.nn.Module):
        def forward(view: torch.Tensor) -> torch.Tensor:
            return model.head(model.features(view))

        return forward

    def logits(self, which: int, view: torch.Tensor) -> torch.Tensor:
        """Logits of teacher `which`; its BN hooks record the view's statistics either way."""
        fn = self._compiled.get(which)
        if fn is not None:
            try:
                return fn(view)
            except Exception as exc:  # noqa: BLE001 - a compile failure must not end a long run
                warnings.warn(f"recover: torch.compile failed ({type(exc).__name__}: {exc}); running the teacher eagerly",
                              stacklevel=2)
                self._compiled.pop(which)
        return self._eager_forward(self.teachers[which])(view)

    def _check_finite(self, losses: torch.Tensor, start: int, stop: int, stage: int) -> None:
        """Raise the recover error if any step loss in losses[:, start:stop] is NaN/inf (one host sync)."""
        if stop <= start:
            return
        seg = losses[:, start:stop]
        finite = torch.isfinite(seg)
        if not bool(finite.all()):
            g, i = ((~finite).nonzero()[0]).tolist()
            seg = seg[g]
            raise RetaError(f"recover: non-finite loss ({seg[i].item()}) at stage {stage + 1} step {start + i}; "
                            f"lower --set lr={self.cfg.lr} or r_bn={self.cfg.r_bn}")

    # -- initial images ---------------------------------------------------------------------
    def _init_path(self, c: int) -> Path:
        return self.out / INIT_DIR / f"class_{c:05d}.safetensors"

    def ensure_init(self, c: int) -> Path:
        """Normalised (ipc,3,S,S) initial images of class c, written once to OUT/init/.

        On disk rather than in RAM: class-mixed groups touch every class, and all classes' initial
        images of ImageNet-1K at IPC 50 would take ~30 GB per process. Reads take single slots
        (memory-mapped), a resumed run reuses the files (a truncated one is rebuilt), and the
        folder is removed when the set is finished.
        """
        path = self._init_path(c)
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as fh:
                    if tuple(fh.get_slice("x").get_shape()) == (self.cfg.ipc, 3, self.info.image_size, self.info.image_size):
                        return path
            except Exception:  # noqa: BLE001 - a file cut short by a kill: rebuild it (it is ours and deterministic)
                pass
        x = self.box.tie(self.method.init_images(c).float().to(self.dev)).cpu().contiguous()
        with io.atomic_path(path) as tmp:
            save_file({"x": x}, str(tmp))
        return path

    def init_of(self, flat_idx: np.ndarray) -> torch.Tensor:
        """Initial images of the given slots, in that order; each class file is opened once."""
        classes, slots = np.divmod(np.asarray(flat_idx, dtype=np.int64), self.cfg.ipc)
        rows = [None] * len(flat_idx)
        for c in np.unique(classes).tolist():
            with safe_open(str(self.ensure_init(c)), framework="pt") as fh:
                x = fh.get_slice("x")
                for j in np.flatnonzero(classes == c).tolist():
                    rows[j] = x[int(slots[j]):int(slots[j]) + 1]
        return torch.cat(rows).to(self.dev)

    # -- one group ----------------------------------------------------------------------------
    def run_groups(self, batch: list[tuple[int, np.ndarray]], bar=None) -> list[tuple[torch.Tensor, dict]]:
        """Optimise several independent groups together, step by step; (images, record) per group.

        Each group keeps everything of its own: images (one Adam parameter each, so its own Adam
        state), random generator (its own crop box, flip and roll), BN statistics (the hooks reduce
        over each group's rows), CE and terms. The batched loss is the sum of the groups' losses,
        each of which depends only on that group's images, so every group receives exactly the
        gradient it would get alone: the result equals running the groups one by one, to float
        tolerance (batched kernels may round differently).
        """
        cfg = self.cfg
        groups = [Group(key, idx, idx // cfg.ipc, torch.as_tensor(idx // cfg.ipc, device=self.dev)) for key, idx in batch]
        xs = [resample(self.init_of(g.slots), self.sizes[0]).clone() for g in groups]
        records = [{c.name: [] for c in self.components} for _ in groups]
        if not self.total_steps:
            return [(x, {"stages": [], **r}) for x, r in zip(xs, records)]
        gens = [torch.Generator().manual_seed(derive_seed(cfg.seed, "group", g.key)) for g in groups]
        splits = [len(g.slots) for g in groups]
        passes = teacher_passes(splits, None if self.dev.type == "cuda" else CPU_PASS_IMAGES.get(self.dtype, CPU_PASS_IMAGES[None]))
        pass_splits = [[splits[i] for i in part] for part in passes]
        for term in self.method.terms:
            with self.timer(term.name):
                for g in groups:
                    term.begin_group(g)
        # fp16 gradients underflow without loss scaling (bf16 and fp32 need none). With the fused
        # CUDA Adam the scaler's inf check stays on the device (no host sync per step).
        scaler = torch.amp.GradScaler("cuda", enabled=self.dtype is torch.float16 and self.dev.type == "cuda")
        adam_kwargs = {"fused": True} if self.dev.type == "cuda" else {}
        check_every = finite_check_every(self.dev)
        stages, grad_ratios, t = [[] for _ in groups], [{} for _ in groups], 0
        for s, (size, budget) in enumerate(zip(self.sizes, self.budgets)):
            xs = [x.detach().requires_grad_(True) for x in xs]
            opt = torch.optim.Adam(xs, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, **adam_kwargs)
            # Per-stage sums stay on the device (float64, summed in step order); read once per stage.
            sums: list[dict[str, torch.Tensor]] = [{} for _ in groups]
            losses = torch.empty(len(groups), budget, device=self.dev)  # step losses, for the non-finite check
            checked = 0
            for local in range(budget):
                for pg in opt.param_groups:
                    pg["lr"] = cosine_lr(cfg.lr, t, self.total_steps)
                which = t % len(self.teachers)
                opt.zero_grad(set_to_none=True)
                # Each teacher pass is backpropagated as soon as it is made, so memory holds one pass's
                # graph, not the whole step's. A group's CE and BN read only its own images and the terms
                # never read the teacher graph, so every image gets the same two gradient contributions
                # (its pass, the terms) as from one backward of the step's sum; their float sum does not
                # depend on the order.
                per_group = []
                for part, part_splits in zip(passes, pass_splits):
                    part_terms = self._pass_losses(groups, part, part_splits, xs, size, which, gens)
                    scaler.scale(torch.stack([_sum_terms(terms) for terms in part_terms]).sum()).backward()
                    per_group += [{k: v.detach() for k, v in terms.items()} for terms in part_terms]
                step = Step(stage=s, size=size, local=local)
                for term in self.method.terms:
                    with self.timer(term.name):
                        for terms, value in zip(per_group, term.values(groups, step, xs)):
                            terms[term.name] = value
                if t == 0 and self.method.terms:  # x.grad: the CE + BN gradient alone, until the terms' backward
                    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
                    one_view = [float((x.grad / scale).norm()) for x in xs]
                    grad_ratios = self._grad_ratios(per_group, xs, self._base_gradient_rms(
                        groups, passes, pass_splits, xs, size, which, one_view), one_view)
                group_loss = torch.stack([_sum_terms(terms) for terms in per_group])
                losses[:, local] = group_loss.detach()
                if local + 1 - checked >= check_every:
                    self._check_finite(losses, checked, local + 1, s)
                    checked = local + 1
                if group_loss.requires_grad:  # a term that is on this step
                    scaler.scale(group_loss.sum()).backward()
                scaler.step(opt)
                scaler.update()
                for x in xs:
                    x.data = self.box.project(x.data)
                for i, terms in enumerate(per_group):
                    for name, value in terms.items():
                        sums[i][name] = sums[i].get(name, 0.0) + value.detach().double()
                t += 1
                if bar is not None:
                    bar.update(len(groups))
            self._check_finite(losses, checked, budget, s)
            for i in range(len(groups)):
                stages[i].append({"size": size, "steps": budget,
                                  **{k: float(v) / max(1, budget) for k, v in sums[i].items()},
                                  **{f"final_{k}": float(v.detach()) for k, v in per_group[i].items()}} if budget else
                                 {"size": size, "steps": 0})
            if s < len(self.sizes) - 1:
                with torch.no_grad():
                    xs = [resize(x.detach(), self.sizes[s + 1]) for x in xs]
                    anchor = self.method.anchor
                    if anchor is not None:
                        for i, g in enumerate(groups):
                            with self.timer(anchor.name):
                                images, chosen = anchor.images(g, s + 1, xs[i])
                            records[i][anchor.name].extend(chosen)
                            records[i].setdefault("anchor_correlation", []).append(
                                pixel_correlation(xs[i], images).float().tolist())
                            xs[i] = mix(xs[i], images, cfg.alpha, self.sizes[s + 1])
        for term in self.method.terms:
            for g, r in zip(groups, records):
                r[term.name] = term.end_group(g)
        return [(x.detach(), {"stages": st, "grad_ratio": gr, **r}) for x, st, gr, r in zip(xs, stages, grad_ratios, records)]

    def _pass_losses(self, groups: list[Group], part: list[int], part_splits: list[int], xs: list[torch.Tensor],
                     size: int, which: int, gens: list[torch.Generator]) -> list[dict[str, torch.Tensor]]:
        """CE and r_bn * BN of each group of one teacher pass, on one augmented view per group."""
        cfg = self.cfg
        view = torch.cat([augment_view(xs[i], size, cfg, self.jitter, gens[i]) for i in part])
        if cfg.channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        self.hooks[which].splits = part_splits
        with autocast(self.dtype, self.dev):
            logits = self.logits(which, view).float().split(part_splits)
        bn = self.hooks[which].group_losses(cfg.first_bn_multiplier)
        return [{"ce": F.cross_entropy(logits[j], groups[i].labels), "bn": cfg.r_bn * bn[j]} for j, i in enumerate(part)]

    def _base_gradient_rms(self, groups: list[Group], passes: list[list[int]], pass_splits: list[list[int]],
                           xs: list[torch.Tensor], size: int, which: int, one_view: list[float]) -> list[float]:
        """Per group, the root mean square of ||d (CE + r_bn BN) / dx|| over GRAD_RATIO_VIEWS augmented
        views: the step's own view (norm `one_view`) and views drawn from generators of their own, so
        the run's images do not change. One view is a noisy scale: at the RDED start the view's CE
        ranges 0.1-4.3 over the groups of one imagenette32 run and the gradient norm with it (0.07 to
        0.42, while the extra term's gradient stays at 0.48-0.78), and Adam's step scale follows the gradient's
        RMS over steps, i.e. over views."""
        gens = [torch.Generator().manual_seed(derive_seed(self.cfg.seed, "grad-ratio-views", g.key)) for g in groups]
        squares = [n ** 2 for n in one_view]
        for _ in range(GRAD_RATIO_VIEWS - 1):
            for part, part_splits in zip(passes, pass_splits):
                part_terms = self._pass_losses(groups, part, part_splits, xs, size, which, gens)
                grads = torch.autograd.grad(torch.stack([_sum_terms(terms) for terms in part_terms]).sum(),
                                            [xs[i] for i in part])
                for i, g in zip(part, grads):
                    squares[i] += float(g.double().pow(2).sum())
        return [(q / GRAD_RATIO_VIEWS) ** 0.5 for q in squares]

    @staticmethod
    def _grad_ratios(per_group: list[dict[str, torch.Tensor]], xs: list[torch.Tensor], base: list[float],
                     one_view: list[float] | None = None) -> list[dict[str, float]]:
        """Per group, ||d term / dx|| / base for every extra term at the first step, where `base` is
        the group's own CE + r_bn BN gradient norm (RMS over views, `_base_gradient_rms`); with
        `one_view` (that norm on the step's single view) also `<term>_one_view`.

        A term's gradient is that of its sum over the groups stepped together, so a term coupling
        groups (one cloud per class across them) is measured whole, not by its per-group share."""
        extra = [k for k in per_group[0] if k not in ("ce", "bn")]
        out = [{} for _ in xs]
        for name in extra:
            total = sum(t[name] for t in per_group)
            grads = (torch.autograd.grad(total, xs, retain_graph=True, allow_unused=True) if total.requires_grad
                     else [None] * len(xs))
            for i, g in enumerate(grads):
                norm = float(g.norm()) if g is not None else 0.0  # a term that is off: 0
                out[i][name] = norm / max(base[i], 1e-30)
                if one_view is not None:
                    out[i][f"{name}_one_view"] = norm / max(one_view[i], 1e-30)
        return out

    def classes_of(self, group_ids: list[int]) -> list[int]:
        """The classes the given groups touch, sorted."""
        groups = self.groups()
        return sorted({int(c) for g in group_ids for c in groups[g] // self.cfg.ipc})

    def prepare_shared(self, pending: list[int], rank: int = 0, world: int = 1) -> None:
        """Write the per-class files every rank reads (initial images, the components' caches).
        Class c of those the pending groups touch is built by rank c's turn in the sorted list, so
        each is built once, by one rank; follow with a barrier. Its seconds are setup."""
        t0 = time.time()
        with self._hooks_paused():  # RDED and pool forwards are not BN-matching steps
            for c in self.classes_of(pending)[rank::world]:
                self.ensure_init(c)
                for component in self.components:
                    component.prepare_class(c)
        self._setup_seconds += time.time() - t0

    def prepare_classes(self, classes: list[int]) -> None:
        """Load this rank's per-class caches before its first group, so component timers measure
        only their per-connection and per-step cost (setup is amortised over a class's images)."""
        t0 = time.time()
        with self._hooks_paused():
            for c in classes:
                for component in self.components:
                    component.prepare_class(c)
        self._setup_seconds += time.time() - t0

    # -- whole run ----------------------------------------------------------------------------
    def groups(self) -> list[np.ndarray]:
        return plan_groups(self.info.num_classes, self.cfg.ipc, self.cfg.batch_size, self.cfg.batch_composition)

    def groups_per_step(self) -> int:
        """Groups optimised together in one step. 0 = by device: on the CPU 1 (a pass of 10 images costs
        no more per image than a larger one) or, for a joint method, its whole class block,
        which goes through the teacher in passes of at most CPU_PASS_IMAGES[dtype] images
        (`teacher_passes`); on a GPU
        as many as keep one step under about GPU_STEP_IMAGES images, so kernel launches are
        amortised without running out of memory."""
        if self.cfg.groups_per_step:
            return self.cfg.groups_per_step
        group_images = max(1, min(self.cfg.batch_size, self.info.num_classes * self.cfg.ipc))
        if self.dev.type != "cuda":
            return len(self.groups()) if self.method.joint else 1
        return max(1, (GPU_STEP_IMAGES if self.method.joint else min(8 * group_images, GPU_STEP_IMAGES)) // group_images)

    def batches(self, done: set[int], rank: int, world: int) -> list[list[int]]:
        """This rank's groups, in the batches that are stepped together.

        Independent groups: the pending ones dealt round-robin, then cut into batches. A joint
        method: the batches are fixed first (the groups of one class block, cut into runs of
        groups_per_step), whatever the ranks or what is done, because a group's images depend on
        the groups it is stepped with; a batch with any group pending is redone whole (its
        finished groups come out identical) and batches are dealt round-robin.
        """
        groups, per_step = self.groups(), self.groups_per_step()
        if not self.method.joint:
            mine = [g for g in range(len(groups)) if g not in done][rank::world]
            return [mine[i:i + per_step] for i in range(0, len(mine), per_step)]
        blocks: dict[tuple[int, ...], list[int]] = {}
        for g, idx in enumerate(groups):
            blocks.setdefault(tuple(np.unique(idx // self.cfg.ipc).tolist()), []).append(g)
        fixed = [block[i:i + per_step] for block in blocks.values() for i in range(0, len(block), per_step)]
        return [b for b in fixed if not set(b) <= done][rank::world]

    def write_images(self, x: torch.Tensor, flat_idx: np.ndarray) -> None:
        x01 = self.info.denormalise(x.float())
        if self.tied:  # exact R = G = B in the PNG, whatever the per-channel normalisation
            x01 = x01.mean(dim=1, keepdim=True).expand_as(x01)
        for f, img in zip(flat_idx, to_uint8(x01).cpu()):
            write_png(image_path(self.out, int(f) // self.cfg.ipc, int(f) % self.cfg.ipc, self.info.num_classes), img)

    def run(self, rank: int = 0, world: int = 1, done: set[int] | None = None) -> dict:
        """Recover this rank's share of the groups not yet in the ledger.

        `done`: groups finished before this attempt, read by every rank before any rank writes one
        (distill reads it before its barrier); None reads the ledger now, which is right for a
        single process. The pending groups are dealt round-robin, so a resumed run stays balanced
        whatever the ranks of the interrupted attempt had finished.
        """
        from tqdm import tqdm

        groups = self.groups()
        done = done_groups(self.out, len(groups)) if done is None else done
        pending = [g for g in range(len(groups)) if g not in done]
        batches = [[(g, groups[g]) for g in b] for b in self.batches(done, rank, world)]
        mine = [pair for batch in batches for pair in batch]
        t0 = time.time()
        self.prepare_classes(self.classes_of([g for g, _ in mine]))
        with tqdm(total=len(mine) * self.total_steps, desc=f"recover {self.cfg.method}", unit="step",
                  disable=not self.progress or not self.total_steps or not mine) as bar:
            for batch in batches:
                before = dict(self.timer.totals)
                t_batch = time.time()
                results = self.run_groups(batch, bar)
                # A batch's time and component timings are shared equally by its groups.
                timings = {k: (v - before.get(k, 0.0)) / len(batch) for k, v in self.timer.totals.items()}
                seconds = (time.time() - t_batch) / len(batch)
                for (g, idx), (x, record) in zip(batch, results):
                    record["timings"] = timings
                    self.write_images(x, idx)
                    record.update(group=g, slots=idx.tolist(), seconds=seconds, groups_in_step=len(batch))
                    io.write_json(ledger_path(self.out, g), record)
                    if not self.total_steps and self.progress:
                        print(f"  group {g + 1}/{len(groups)} selected", flush=True)
        for h in self.hooks:
            h.remove()
        return {"groups": len(groups), "done_here": len(mine), "resumed": len(groups) - len(pending),
                "seconds": time.time() - t0, "setup_seconds": self._setup_seconds, "peak_memory_mb": peak_memory_mb(self.dev)}


def ledger_path(out_dir: Path, group: int) -> Path:
    return Path(out_dir) / LEDGER / f"group_{group:05d}.json"


def done_groups(out_dir: Path, num_groups: int) -> set[int]:
    """Groups whose ledger entry exists (written after the group's images, so those are complete)."""
    return {g for g in range(num_groups) if ledger_path(out_dir, g).is_file()}


def finalise(out_dir: Path, recover: Recover, summaries: list[dict], seconds: float, extra: dict) -> dict:
    """Collect the ledger entries of all groups (any rank, any earlier attempt) into manifest.json.

    Written last: its presence marks the distilled set complete. Only files of the distilled
    kind are removed afterwards (the initial images, stale temporaries): never the user's.
    """
    cfg, info = recover.cfg, recover.info
    ledger = [io.read_json(ledger_path(out_dir, g)) for g in range(len(recover.groups()))]
    timings: dict[str, float] = {}
    for entry in ledger:
        for k, v in entry.get("timings", {}).items():
            timings[k] = timings.get(k, 0.0) + v
    n_images = info.num_classes * cfg.ipc
    compute = sum(entry["seconds"] for entry in ledger)
    setup = sum(s.get("setup_seconds", 0.0) for s in summaries)
    ratios = [e["grad_ratio"] for e in ledger if e.get("grad_ratio")]
    # per connection, the median over images of anchor-vs-image pixel correlation (see pixel_correlation)
    correlations = [e["anchor_correlation"] for e in ledger if e.get("anchor_correlation")]
    manifest = {
        "method": cfg.method, "config": dataclasses.asdict(cfg),
        # what the images are a result of (config sections the method reads, its revision)
        "result_config": result_config(cfg),
        "seeds": {"run": cfg.seed, "rule": "derive_seed(seed, 'group', g) per group; per class for init"},
        "teacher_sha256": recover.teacher_hashes, "stage_sizes": recover.sizes, "stage_budgets": recover.budgets,
        "jitter": recover.jitter, "tied_channels": recover.tied,
        "timings": {"wall_seconds": seconds, "group_seconds": compute, "setup_seconds": setup,
                    "seconds_per_image": (compute + setup) / n_images, **timings},
        # Share of recover time per named component (anchor or term) of the method.
        **{f"{c.name}_share": timings.get(c.name, 0.0) / max(compute, 1e-9) for c in recover.components},
        "grad_ratio": {k: {"min": min(r[k] for r in ratios), "max": max(r[k] for r in ratios),
                           "median": float(np.median([r[k] for r in ratios]))} for k in (ratios[0] if ratios else {})},
        "anchor_correlation_median": [float(np.median([v for c in correlations for v in c[k]]))
                                      for k in range(len(correlations[0]))] if correlations else None,
        "peak_memory_mb": max(s["peak_memory_mb"] for s in summaries), "versions": io.versions(),
        **recover.method.summary(ledger), "groups": ledger, **extra,
    }
    write_manifest(out_dir, info, cfg.ipc, manifest)
    outdir.remove_temporaries(out_dir, "distilled")
    outdir.remove_owned(out_dir, "distilled", [f"{INIT_DIR}/class_*.safetensors"])  # init/ goes only if left empty
    return manifest
