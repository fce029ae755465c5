"""Loaders that all produce an ImageSet."""

from .imageset import ImageSet
from .npz import read_npz

__all__ = ["ImageSet", "read_npz"]
