"""Model loading. ``load(path)`` sniffs the format from the file's content and returns a ModelHandle.

Only the modules in this package import a machine-learning framework, and only inside
the functions that need it.
"""

from workbench.frontends.handle import ModelHandle, TensorSpec
from workbench.frontends.loader import load

__all__ = ["ModelHandle", "TensorSpec", "load"]
