"""Student evaluation under a named protocol and DD-Ranking scores (the random baseline is `--method random`)."""

from reta.evaluate.metrics import ars, hlr, ior, lrs
from reta.evaluate.train import accuracy, evaluate, train_student

__all__ = ["accuracy", "ars", "evaluate", "hlr", "ior", "lrs", "train_student"]
