"""Student evaluation under a named protocol, the random-subset baseline, and DD-Ranking scores."""

from reta.evaluate.metrics import ars, hlr, ior, lrs
from reta.evaluate.train import evaluate, random_subset, train_student

__all__ = ["ars", "evaluate", "hlr", "ior", "lrs", "random_subset", "train_student"]
