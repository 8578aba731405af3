"""Methods are presets of one recover loop (see loop.py), not forks of it.

What differs between them is small: where images start (`init`), whether they are optimised
at all (`iterations`), how many stages with residual connections (`num_stages`), which anchor a
connection injects (fixed init patch vs DRC retrieval) and whether the PTA term is added.
A preset only fills defaults: the user's YAML and --set values are applied on top.
"""

from __future__ import annotations

from typing import Any

from reta.registry import Registry

METHODS: Registry[dict[str, Any]] = Registry("method")
SELECTION_ONLY = {"random", "rded"}  # no optimisation: a user-given budget does not apply to them

METHODS.register("random")({"init": "real", "iterations": 0, "num_stages": 1})
METHODS.register("rded")({"init": "rded", "iterations": 0, "num_stages": 1})
METHODS.register("sre2l")({"init": "noise", "num_stages": 1})
METHODS.register("fadrm")({"init": "rded", "num_stages": 4})
METHODS.register("drc")({"init": "rded", "num_stages": 4, "drc": {"enabled": True}})
# PTA needs a class's images together in a step (resolution §5.10), hence per-class batches.
METHODS.register("pta")({"init": "rded", "num_stages": 4, "batch_composition": "per-class", "pta": {"enabled": True}})
METHODS.register("reta")({"init": "rded", "num_stages": 4, "batch_composition": "per-class",
                          "drc": {"enabled": True}, "pta": {"enabled": True}})


def preset(name: str) -> dict[str, Any]:
    """The config defaults of a method, plus the method name itself."""
    return {"method": name, **METHODS.get(name)}
