"""THE recover loop (SRe2L / FADRM / RETA), restated from method-reference §2.3.

    x <- init (normalised) resized to D_1
    for stage s: fresh Adam(betas 0.5, 0.9); per global step t: lr = cosine over the whole budget,
        view = same RandomResizedCrop(D_s) + flip for the batch, roll by U{0..jitter}^2,
        loss = CE + r_bn * BN-matching (+ lambda_topo * PTA), step, clamp to the pixel box
    after every stage but the last: x <- alpha*resize(x) + (1-alpha)*resize(anchor)
        anchor = the fixed init patch (FADRM) or the DRC retrieval (RETA)

Work is split into groups of slots (class, ipc index) that are optimised together: class-mixed
(SRe2L/FADRM: one image per class per batch) or per-class (all ipc images of a few classes,
which PTA needs). Each group draws its randomness from its own generator seeded by
(run seed, group key), so the output does not depend on the number of processes, the order of
groups, or interruptions: groups are assigned round-robin to torchrun ranks, written atomically
with a ledger entry, and skipped when already done.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from safetensors import safe_open
from safetensors.torch import save_file

from reta import io
from reta.config import RecoverConfig
from reta.data.augment import crop_resize, rrc_boxes
from reta.data.dataset import ImageSet
from reta.distilled import image_path, to_uint8, write_manifest, write_png
from reta.errors import RetaError
from reta.losses.bn import BNStatHooks
from reta.recover.anchors import FixedAnchors, RetrievalAnchors, mix
from reta.recover.init import noise_images, rded_images, real_images
from reta.recover.pta import TopologyAlignment
from reta.retrieval.pool import Pool, resample
from reta.retrieval.score import shared_anchor_fraction
from reta.runtime import autocast, autocast_dtype, derive_seed, peak_memory_mb
from reta.teacher import Teacher, cosine_lr

LEDGER = "progress"
INIT_DIR = "init"  # initial images per class while a run is unfinished
RUN_RECORD = "run.json"
# On a GPU the loss is checked for NaN/inf every this many steps (and at the end of each stage),
# so the step loop never waits for the device; on the CPU a check costs nothing and runs every step.
FINITE_CHECK_EVERY = 50


def finite_check_every(dev: torch.device) -> int:
    return 1 if dev.type == "cpu" else FINITE_CHECK_EVERY


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
    if any(b < 0 for b in budgets) or sum(budgets) == 0:
        raise RetaError(f"stage budgets {budgets}: need non-negative steps and at least one in total")
    return sizes, budgets


def plan_groups(num_classes: int, ipc: int, batch_size: int, composition: str) -> list[np.ndarray]:
    """Flat slot indices (class*ipc + ipc_idx) per group, in a fixed order independent of world size."""
    if composition == "class-mixed":
        return [np.array([c * ipc + i for c in range(s, min(s + batch_size, num_classes))])
                for i in range(ipc) for s in range(0, num_classes, batch_size)]
    if composition == "per-class":
        per = max(1, batch_size // ipc)
        return [np.array([c * ipc + i for c in range(s, min(s + per, num_classes)) for i in range(ipc)])
                for s in range(0, num_classes, per)]
    raise RetaError(f"batch_composition={composition!r}: use class-mixed or per-class")


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


def augment_view(x: torch.Tensor, size: int, cfg: RecoverConfig, gen: torch.Generator) -> torch.Tensor:
    """One crop box and one flip for the whole batch (as SRe2L/FADRM), then a circular roll.

    Every draw comes from the CPU generator `gen`; nothing here waits for the device.
    """
    if cfg.crop_scale_min < 1.0:
        box = rrc_boxes(1, cfg.crop_scale_min, gen)
        x = crop_resize(x, _to_device(box, x.device).expand(len(x), 4), size)
    elif x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if cfg.flip:
        flip = torch.rand(1, generator=gen) < 0.5  # CPU tensor: bool() is free
        if bool(flip):
            x = x.flip(-1)  # same values as apply_flips with an all-true mask
    return roll(x, cfg.jitter, gen)


class Recover:
    """Holds what every group needs: teachers and their hooks, init source, anchors, PTA."""

    def __init__(self, train: ImageSet, teachers: list[Teacher], cfg: RecoverConfig, out_dir: Path,
                 dev: torch.device, cache_dir: Path | None = None, progress: bool = True):
        self.train, self.cfg, self.out, self.dev, self.progress = train, cfg, Path(out_dir), dev, progress
        self.info = train.info
        self.teachers = [t.model.to(dev) for t in teachers]
        self.teacher_hashes = [t.weights_hash for t in teachers]
        self.dtype = autocast_dtype(cfg.precision, dev)
        if cfg.channels_last:
            # On a copy: converting the caller's teacher in place would change the kernels (and so
            # the last bits of every later result, e.g. its soft labels) of whatever runs next.
            self.teachers = [copy.deepcopy(m).to(memory_format=torch.channels_last) for m in self.teachers]
        self._compiled = self._compile_teachers() if cfg.compile else {}
        self.sizes, self.budgets = stage_plan(cfg, self.info.image_size)
        self.total_steps = sum(self.budgets) if cfg.iterations else 0
        self.timer = io.Timer()
        self._setup_seconds = 0.0  # shared files and this rank's caches/references, before its first group
        self.hooks = [BNStatHooks(m) for m in self.teachers] if self.total_steps else []
        if self.total_steps and any(not h.layers for h in self.hooks):
            raise RetaError("a teacher has no BatchNorm layers; BN-matching methods need a BN teacher (e.g. convnet3, resnet18)")
        self.pool = None
        if cfg.drc.enabled or cfg.pta.enabled:
            self.pool = Pool(train, self.teachers[0], self.teacher_hashes[0], sorted(set(self.sizes) | {self.info.image_size}),
                             cfg.drc.pool_per_class, cfg.seed, dev, cache_dir, cfg.drc.feature_batch)
        if cfg.drc.enabled and cfg.drc.distinct and cfg.batch_composition != "per-class":
            raise RetaError("drc.distinct=true needs batch_composition=per-class (a class's images must be in one group)")
        self.anchors = (RetrievalAnchors(cfg.drc, self.pool, self.teachers[0]) if cfg.drc.enabled
                        else FixedAnchors(self.init_of))
        self.pta = None
        if cfg.pta.enabled and cfg.pta.weight > 0 and self.total_steps:
            self.pta = TopologyAlignment(cfg.pta, cfg.ipc, lambda c: self.pool.get(c)[f"z{self.info.image_size}"],
                                         self.teachers[0], cfg.seed, dev, self.dtype)

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
        def forward(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = model.features(view)
            return feats, model.head(feats)

        return forward

    def teacher_forward(self, which: int, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of teacher `which`; its BN hooks record the view's statistics either way."""
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
        """Raise the recover error if any step loss in losses[start:stop] is NaN/inf (one host sync)."""
        if stop <= start:
            return
        seg = losses[start:stop]
        finite = torch.isfinite(seg)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0])
            cfg = self.cfg
            raise RetaError(f"recover: non-finite loss ({seg[i].item()}) at stage {stage + 1} step {start + i}; "
                            f"lower --set lr={cfg.lr} or r_bn={cfg.r_bn}")

    # -- initial images ---------------------------------------------------------------------
    def _init_path(self, c: int) -> Path:
        return self.out / INIT_DIR / f"class_{c:05d}.safetensors"

    def _compute_init(self, c: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.init == "noise":
            return noise_images(self.info, c, cfg.ipc, cfg.seed)
        if cfg.init == "real":
            return real_images(self.train, c, cfg.ipc, cfg.seed)
        if cfg.init == "rded":
            return rded_images(self.train, self.teachers[0], c, cfg.ipc, cfg.seed, cfg.rded_candidates, cfg.rded_crops,
                               cfg.rded_factor, self.dev, self.dtype).cpu()
        raise RetaError(f"init={cfg.init!r}: use noise, real or rded")

    def ensure_init(self, c: int) -> Path:
        """Normalised (ipc,3,S,S) initial images of class c, written once to OUT/init/.

        On disk rather than in RAM: class-mixed groups touch every class, and all classes' initial
        images of ImageNet-1K at IPC 50 would take ~30 GB per process. Reads take single slots
        (memory-mapped), a resumed run reuses the files, and the folder is removed when the set
        is finished.
        """
        path = self._init_path(c)
        if not path.is_file():
            x = self._compute_init(c).float().contiguous()
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
    def run_group(self, key: int, flat_idx: np.ndarray) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        labels = torch.as_tensor(flat_idx // cfg.ipc, device=self.dev)
        x = resample(self.init_of(flat_idx), self.sizes[0]) if self.sizes[0] != self.info.image_size else self.init_of(flat_idx)
        x = x.clone()
        if not self.total_steps:
            return x, {"stages": []}
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "group", key))
        low, high = self.info.pixel_bounds(self.dev)
        if self.pta is not None:
            with self.timer("pta"):
                self.pta.begin_group(labels, self._other_slot_features(flat_idx))
        # fp16 gradients underflow without loss scaling (bf16 and fp32 need none). With the fused
        # CUDA Adam the scaler's inf check stays on the device (no host sync per step).
        scaled = self.dtype is torch.float16 and self.dev.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=scaled)
        adam_kwargs = {"fused": True} if self.dev.type == "cuda" else {}
        check_every = finite_check_every(self.dev)
        stages, step = [], 0
        for s, (size, budget) in enumerate(zip(self.sizes, self.budgets)):
            x = x.detach().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, **adam_kwargs)
            # Per-stage sums stay on the device (float64, summed in step order like Python floats);
            # they are read once per stage. The PTA value is a host float computed at its refreshes.
            ce_sum = torch.zeros((), dtype=torch.float64, device=self.dev)
            bn_sum = torch.zeros((), dtype=torch.float64, device=self.dev)
            topo_sum = 0.0
            losses = torch.empty(budget, device=self.dev)  # step losses, for the non-finite check
            checked = 0
            for local in range(budget):
                t = sum(self.budgets[:s]) + local
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(cfg.lr, t, self.total_steps)
                which = t % len(self.teachers)
                view = augment_view(x, size, cfg, gen)
                if cfg.channels_last:
                    view = view.contiguous(memory_format=torch.channels_last)
                with autocast(self.dtype, self.dev):
                    feats, logits = self.teacher_forward(which, view)
                ce = F.cross_entropy(logits.float(), labels)
                bn = self.hooks[which].loss(cfg.first_bn_multiplier)
                loss = ce + cfg.r_bn * bn
                if self.pta is not None:
                    with self.timer("pta"):
                        if which != 0:
                            with autocast(self.dtype, self.dev):
                                self.hooks[0].enabled = False
                                feats = self.teachers[0].features(view)
                                self.hooks[0].enabled = True
                        loss = loss + self.pta.term(step, x, feats)
                        topo_sum += self.pta.last_value
                losses[local] = loss.detach()
                if local + 1 - checked >= check_every:
                    self._check_finite(losses, checked, local + 1, s)
                    checked = local + 1
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                with torch.no_grad():
                    x.data = torch.maximum(torch.minimum(x.data, high), low)
                ce_sum += ce.detach().double()
                bn_sum += bn.detach().double()
                step += 1
                if self._bar is not None:
                    self._bar.update(1)
            self._check_finite(losses, checked, budget, s)
            sums = {"ce": float(ce_sum), "bn": float(bn_sum), "topo": topo_sum}
            stages.append({"size": size, "steps": budget, **{k: v / max(1, budget) for k, v in sums.items()},
                           "final_ce": float(ce.detach()) if budget else None,
                           "final_bn": float(bn.detach()) if budget else None})
            if s < len(self.sizes) - 1:
                with torch.no_grad():
                    x = x.detach()
                    with self.timer("drc" if self.cfg.drc.enabled else "anchors"):
                        anchor = self.anchors.anchors(flat_idx, labels, x, s + 1, self.sizes[s + 1])
                    x = mix(x, anchor, cfg.alpha, self.sizes[s + 1])
        return x.detach(), {"stages": stages}

    def _other_slot_features(self, flat_idx: np.ndarray) -> dict[int, torch.Tensor]:
        """Clean features of each class's slots outside this group, at their initial state.

        Using the initial state (not whatever another group has reached) keeps every group's
        result independent of processing order and of the number of ranks.
        """
        ipc = self.cfg.ipc
        inside = set(flat_idx.tolist())
        out = {}
        for c in sorted(set((flat_idx // ipc).tolist())):
            rest = [c * ipc + i for i in range(ipc) if c * ipc + i not in inside]
            if rest:
                x = self.init_of(np.array(rest))
                out[c] = self.pta.clean_features(resample(x, self.sizes[0]))
        return out

    def classes_of(self, group_ids: list[int]) -> list[int]:
        """The classes the given groups touch, sorted."""
        groups = self.groups()
        return sorted({int(c) for g in group_ids for c in groups[g] // self.cfg.ipc})

    def prepare_shared(self, pending: list[int], rank: int = 0, world: int = 1) -> None:
        """Write the per-class files every rank reads: initial images and, for DRC/PTA, the pool
        cache. Class c of those the pending groups touch is built by rank c's turn in the sorted
        list, so each is built once, by one rank; follow with a barrier. Its seconds are setup."""
        t0 = time.time()
        for c in self.classes_of(pending)[rank::world]:
            self.ensure_init(c)
            if self.pool is not None:
                self.pool.get(c)
        self._setup_seconds += time.time() - t0

    def prepare_classes(self, classes: list[int]) -> None:
        """Load this rank's pool caches and PTA references before its first group.

        Done up front so the DRC and PTA timers measure only their per-connection and per-step
        cost; the setup is reported separately (it is amortised over all images of a class).
        """
        t0 = time.time()
        for c in classes:
            if self.pool is not None:
                self.pool.get(c)
            if self.pta is not None:
                self.pta.reference(c)
        self._setup_seconds += time.time() - t0

    # -- whole run ----------------------------------------------------------------------------
    def groups(self) -> list[np.ndarray]:
        return plan_groups(self.info.num_classes, self.cfg.ipc, self.cfg.batch_size, self.cfg.batch_composition)

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
        mine = [(g, groups[g]) for g in pending[rank::world]]
        skipped = len(groups) - len(pending)
        t0 = time.time()
        self.prepare_classes(self.classes_of([g for g, _ in mine]))
        self._bar = tqdm(total=len(mine) * self.total_steps, desc=f"recover {self.cfg.method}", unit="step",
                         disable=not self.progress or not self.total_steps or not mine)
        for g, idx in mine:
            before_timer, before_records = dict(self.timer.totals), len(getattr(self.anchors, "records", []))
            t_group = time.time()
            x, record = self.run_group(g, idx)
            record["timings"] = {k: v - before_timer.get(k, 0.0) for k, v in self.timer.totals.items()}
            record["drc"] = self.anchors.records[before_records:] if self.cfg.drc.enabled else []
            images = to_uint8(self.info.denormalise(x.float())).cpu()
            for f, img in zip(idx, images):
                write_png(image_path(self.out, int(f) // self.cfg.ipc, int(f) % self.cfg.ipc, self.info.num_classes), img)
            record.update(group=g, slots=idx.tolist(), seconds=time.time() - t_group)
            io.write_json(ledger_path(self.out, g), record)
            if not self.total_steps and self.progress:
                print(f"  group {g + 1}/{len(groups)} selected", flush=True)
        self._bar.close()
        for h in self.hooks:
            h.remove()
        return {"groups": len(groups), "done_here": len(mine), "resumed": skipped, "seconds": time.time() - t0,
                "setup_seconds": self._setup_seconds,
                "peak_memory_mb": peak_memory_mb(self.dev)}

    _bar = None


def ledger_path(out_dir: Path, group: int) -> Path:
    return Path(out_dir) / LEDGER / f"group_{group:05d}.json"


def done_groups(out_dir: Path, num_groups: int) -> set[int]:
    """Groups whose ledger entry exists (written after the group's images, so those are complete)."""
    return {g for g in range(num_groups) if ledger_path(out_dir, g).is_file()}


def finalise(out_dir: Path, recover: Recover, summaries: list[dict], seconds: float, extra: dict) -> dict:
    """Collect the ledger entries of all groups (any rank, any earlier attempt) into manifest.json.

    Written last: its presence marks the distilled set complete.
    """
    cfg, info = recover.cfg, recover.info
    ledger = [io.read_json(ledger_path(out_dir, g)) for g in range(len(recover.groups()))]
    drc = [r for entry in ledger for r in entry.pop("drc", [])]
    timings: dict[str, float] = {}
    for entry in ledger:
        for k, v in entry.get("timings", {}).items():
            timings[k] = timings.get(k, 0.0) + v
    n_images = info.num_classes * cfg.ipc
    compute = sum(entry["seconds"] for entry in ledger)
    setup = sum(s.get("setup_seconds", 0.0) for s in summaries)
    manifest = {
        "method": cfg.method, "config": dataclasses.asdict(cfg), "seeds": {"run": cfg.seed, "rule": "derive_seed(seed, 'group', g) per group; per class for init"},
        "teacher_sha256": recover.teacher_hashes, "stage_sizes": recover.sizes, "stage_budgets": recover.budgets,
        "groups": ledger, "timings": {"wall_seconds": seconds, "group_seconds": compute, "setup_seconds": setup,
                    "seconds_per_image": (compute + setup) / n_images, **timings},
        "drc_share": timings.get("drc", 0.0) / max(compute, 1e-9), "pta_share": timings.get("pta", 0.0) / max(compute, 1e-9),
        "peak_memory_mb": max(s["peak_memory_mb"] for s in summaries), "drc_selections": drc,
        "shared_anchor_fraction": _shared_fraction(drc, cfg.ipc), "versions": io.versions(), **extra,
    }
    write_manifest(out_dir, info, cfg.ipc, manifest)
    for stale in out_dir.rglob(".*.tmp"):  # temporaries of writes killed mid-way (every rank is past the barrier)
        stale.unlink(missing_ok=True)
    shutil.rmtree(out_dir / INIT_DIR, ignore_errors=True)  # only needed while the set was unfinished
    return manifest


def _shared_fraction(records: list[dict], ipc: int) -> float | None:
    if not records:
        return None
    fracs = []
    by_key: dict[tuple[int, int], list[int]] = {}
    for r in records:
        by_key.setdefault((r["stage"], r["class"]), []).append(r["pool_index"])
    for picks in by_key.values():
        fracs.append(shared_anchor_fraction(np.array(picks)))
    return float(np.mean(fracs))
