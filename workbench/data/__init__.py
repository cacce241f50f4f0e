"""Calibration, training and evaluation data: ``open_data(spec)`` returns a :class:`Dataset`.

A spec is a string: a built-in set (``digits``, ``digits:test``, ``fashion-mnist:train``), a
file (``.npz``, ``.npy``, IDX), a folder of images, or ``package.module:function``.
Options follow a ``#``: ``data.npz#x=images,y=labels``, ``imgs/#size=28x28,gray=1``.
"""

from workbench.data.dataset import Dataset
from workbench.data.sources import as_dataset, open_data

__all__ = ["Dataset", "as_dataset", "open_data"]
