"""What a method is: where images start, what a residual connection injects, which terms it adds.

The one recover loop (`loop.py`) knows no method. A method is a registered factory that returns
a `Method` for a `Context` (the frozen teacher, the data and the config of one run):

* `init_images(c)`: the (ipc,3,S,S) normalised initial images of class c;
* `anchor`: the `Anchor` whose images a residual connection mixes in (None: no connections);
* `terms`: `Term`s whose tensors the loop adds to CE + r_bn * BN at every step;
* `joint`: the terms couple a class's slots across groups, so the loop steps the groups of one
  class block together (a fixed, rank-independent batching) and hands a term all of them;
* `summary(ledger)`: what the method adds to the manifest once all groups are done.

Anchors and terms are components with a `name`: the loop times each under that name and keeps
the records it returns per group. Adding a method with new behaviour is one module with its
components and one `@register` (see `drc.py`, `pta.py`, `reta.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from reta.config import RecoverConfig
from reta.data.dataset import ImageSet
from reta.registry import Registry
from reta.runtime import autocast


@dataclass(frozen=True)
class Group:
    """Slots optimised together: flat indices class*ipc + ipc_idx, their labels and classes."""

    key: int
    slots: np.ndarray
    classes: np.ndarray  # (n,) class of each slot, on the host: components index with it every step
    labels: torch.Tensor  # the same classes on the device, for the loss


@dataclass(frozen=True)
class Step:
    """Where the loop is, for components that act on a schedule."""

    stage: int
    size: int
    local: int  # step within the stage


# The paper's pool is prebuilt: a property of the data and the teacher, not of a synthesis run.
# Its random draws (patch crops, a per-class cap) use this seed, so one cached pool serves every
# synthesis seed and method that reads it, and only the first run on a teacher pays for building it.
POOL_SEED = 0


class Context:
    """The run's shared, read-only inputs, and the few derived resources components share."""

    def __init__(self, train: ImageSet, teachers: list[torch.nn.Module], teacher_hashes: list[str], cfg: RecoverConfig,
                 dev: torch.device, dtype, sizes: list[int], cache_dir, init_of: Callable[[np.ndarray], torch.Tensor],
                 paused_hooks: Callable[[], contextlib.AbstractContextManager]):
        self.train, self.info, self.cfg, self.dev, self.dtype = train, train.info, cfg, dev, dtype
        self.teachers, self.teacher_hashes, self.sizes, self.cache_dir = teachers, teacher_hashes, sizes, cache_dir
        self.init_of = init_of  # flat slots -> their initial images (normalised, native size)
        self._paused_hooks = paused_hooks

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised penultimate features of the first teacher on un-augmented images.

        BN-statistics hooks are paused, so this pass never enters the BN-matching term; gradients
        flow when the caller has them enabled.
        """
        with self._paused_hooks(), autocast(self.dtype, self.dev):
            f = self.teachers[0].features(x)
        return F.normalize(f.float(), dim=1)

    def _pool(self, patch_crops: int):
        from reta.retrieval.pool import Pool

        return Pool(self.train, self.teachers[0], self.teacher_hashes[0], sorted(set(self.sizes) | {self.info.image_size}),
                    self.cfg.drc.pool_per_class, POOL_SEED, self.dev, self.cache_dir, self.cfg.drc.feature_batch,
                    patch_crops=patch_crops)

    @functools.cached_property
    def real_pool(self):
        """Every real (non-held-out) image of each class, whole, with cached features at every stage
        size (built lazily): what the real data look like to the teacher, e.g. PTA's reference."""
        return self._pool(0)

    @functools.cached_property
    def patch_pool(self):
        """Each real image's RDED patch (the lowest-CE of rded_crops random crops), with features."""
        return self._pool(self.cfg.rded_crops)

    @functools.cached_property
    def pool(self):
        """DRC's candidate pool: the real pool itself, or each image's RDED patch (drc.pool=patches)."""
        return self.patch_pool if self.cfg.drc.pool == "patches" else self.real_pool


class Anchor:
    """What a residual connection injects; `images` returns them at the next stage's size."""

    name = "anchor"

    def prepare_class(self, c: int) -> None:
        """Per-class setup done before any group (so timings count only per-connection work)."""

    def images(self, group: Group, stage: int, x_next: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """(anchors (n,3,D,D) for x_next (n,3,D,D) at the connection into `stage`, records)."""
        raise NotImplementedError


class Term:
    """An extra loss term. `begin_group` is called once per group, `value` at every step."""

    name = "term"

    def prepare_class(self, c: int) -> None:
        """Per-class setup done before any group."""

    def begin_group(self, group: Group) -> None:
        pass

    def value(self, group: Group, step: Step, x: torch.Tensor) -> torch.Tensor:
        """The weighted term for the live images x (the optimised tensor, at the stage size)."""
        raise NotImplementedError

    def values(self, groups: list[Group], step: Step, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The term of every group stepped together; their sum is what the step adds. A term that
        couples groups (e.g. one cloud per class across them) overrides this instead of `value`."""
        return [self.value(g, step, x) for g, x in zip(groups, xs)]

    def end_group(self, group: Group) -> Any:
        """Records of this group (JSON-able), kept in the ledger under the term's name."""
        return None


class InitPatchAnchor(Anchor):
    """FADRM: every connection re-injects the slot's own initial real patch."""

    name = "anchors"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def images(self, group: Group, stage: int, x_next: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        return self.ctx.init_of(group.slots), []


@dataclass
class Method:
    init_images: Callable[[int], torch.Tensor]
    anchor: Anchor | None = None
    terms: tuple[Term, ...] = ()
    optimises: bool = True  # False: a selection method (random, RDED) spends no steps
    joint: bool = False  # True: step each class block's groups together (see `values`)
    summary: Callable[[list[dict]], dict] = lambda ledger: {}


# Config sections only some methods read; a method declares which in `register(reads=...)`.
OPTIONAL_SECTIONS = ("drc", "pta")


@dataclass(frozen=True)
class MethodSpec:
    build: Callable[[Context], Method]
    preset: dict[str, Any]
    description: str
    reads: tuple[str, ...] = ()  # the OPTIONAL_SECTIONS the method's components read
    # Bumped when the same config starts to give other images (a fix), so finished benchmark
    # rows of the earlier implementation are not taken for results of this one.
    revision: int = 0


# Fields added after results were recorded, each with the value that gives the images of the code
# before it (checked byte for byte when the field was added). At that value a field is left out of
# a run's identity, so the finished sets and benchmark rows of that code stay valid.
NEUTRAL_LATER_FIELDS = {"drc": {"fit": "anchor", "first_connection": 1, "confident_per_slot": 0},
                        "pta": {"margin": 0.0, "until_stage": 0, "reference": "images", "reference_core": 0}}


def result_config(cfg: RecoverConfig) -> dict[str, Any]:
    """The config as it bears on the result: the optional sections the method does not read are
    left out, so e.g. a new PTA field does not make FADRM's finished benchmark rows look stale,
    and so are later fields at their neutral value (NEUTRAL_LATER_FIELDS)."""
    spec = METHODS.get(cfg.method)
    out = sections_read(dataclasses.asdict(cfg), spec.reads)
    for section, neutral in NEUTRAL_LATER_FIELDS.items():
        if section in out:
            out[section] = {k: v for k, v in out[section].items() if k not in neutral or neutral[k] != v}
    return {**out, "method_revision": spec.revision} if spec.revision else out


def sections_read(config: dict[str, Any], reads: tuple[str, ...]) -> dict[str, Any]:
    """A config dict without the optional sections not in `reads`."""
    return {k: v for k, v in config.items() if k not in OPTIONAL_SECTIONS or k in reads}


METHODS: Registry[MethodSpec] = Registry("method")


def register(name: str, description: str, reads: tuple[str, ...] = (), revision: int = 0, **preset: Any):
    """Register `build(ctx) -> Method` under `name` with its config preset (see methods.py);
    `reads`: the optional config sections (drc, pta) its components use; `revision`: see MethodSpec."""
    unknown = set(reads) - set(OPTIONAL_SECTIONS)
    if unknown:
        raise ValueError(f"register({name!r}): reads={sorted(unknown)} are not optional sections {OPTIONAL_SECTIONS}")

    def add(build: Callable[[Context], Method]) -> Callable[[Context], Method]:
        METHODS.register(name)(MethodSpec(build, preset, description, tuple(reads), revision))
        return build

    return add


def preset(name: str) -> dict[str, Any]:
    """The config defaults of a method, plus the method name itself."""
    return {"method": name, **METHODS.get(name).preset}
