"""Soft labels: the FKD-style store written by `relabel` and replayed by student training."""

from reta.labels.store import Batch, CutMix, LabelStore, draw_epoch, relabel, replay_views

__all__ = ["Batch", "CutMix", "LabelStore", "draw_epoch", "relabel", "replay_views"]
