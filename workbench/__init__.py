"""workbench: prune, quantize, export and emulate PyTorch and Keras models for edge devices.

The Python API lives in :mod:`workbench.api`; the CLI in :mod:`workbench.cli` is a thin
layer over it. Importing this package imports no machine-learning framework.
"""

__version__ = "0.1.0"
