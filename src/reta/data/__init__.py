"""Datasets: one in-memory/lazy image-set abstraction, resolved from a SPEC string.

See `reta.data.sources` for the on-disk layouts and `reta.data.augment` for batch transforms.
"""

from reta.data.dataset import DatasetInfo, ImageSet, TensorImageSet, split_holdout
from reta.data.sources import load_dataset

__all__ = ["DatasetInfo", "ImageSet", "TensorImageSet", "load_dataset", "split_holdout"]
