"""Optimization that needs training: pruning and quantization-aware training.

* :func:`workbench.optimize.prune.prune` with a :class:`PruneConfig` (magnitude or channel pruning,
  PyTorch and Keras 3 / tf_keras), handlers registered per (method, framework);
* :func:`workbench.optimize.qat.qat` with a :class:`QATConfig` (tfmot for Keras, PT2E through
  litert-torch for PyTorch), one handler per framework;
* :mod:`workbench.optimize.train`, the training loop both share (seeded, checkpointed, resumable);
* :mod:`workbench.optimize.keras_bridge`, which carries Keras 3 models to tf_keras for tfmot and back.

Importing this package imports no machine-learning framework.
"""

from workbench.optimize.config import PruneConfig, QATConfig, TrainConfig

__all__ = ["PruneConfig", "QATConfig", "TrainConfig"]
