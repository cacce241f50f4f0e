"""Frozen configs for training, pruning and quantization-aware training.

Impossible combinations fail at construction, before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from workbench.core.errors import ConfigError

LOSSES = ("cross-entropy", "mse")
LR_SCHEDULES = ("cosine", "constant")
PRUNE_METHODS = ("magnitude", "channel")
SCHEDULES = ("constant", "polynomial")
CRITERIA = ("l1", "bn-gamma")
ON_UNSUPPORTED = ("float", "error")

# A polynomial schedule reaches its final sparsity after this fraction of the fine-tuning
# steps; the remaining steps let the network recover at the final sparsity.
POLYNOMIAL_RAMP = 0.75
# Gradual channel pruning masks channels over the first half of the steps; the learning rate
# restarts there and decays again over the second half, at the final channel count.
CHANNEL_RAMP = 0.5
# Knowledge distillation from the unpruned model: loss = (1 - a) * CE(labels) + a * T^2 * KL(teacher || student) at T.
DISTILL_ALPHA = 0.5
DISTILL_TEMPERATURE = 4.0


@dataclass(frozen=True)
class TrainConfig:
    """The shared training loop. ``step`` names a ``package.module:function`` (or ``file.py:function``)
    that replaces the default training step; see :mod:`workbench.optimize.train`."""

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    loss: str = "cross-entropy"
    lr_schedule: str = "cosine"  # cosine decay to zero over all steps, or constant
    step: str | None = None
    train_samples: int | None = None  # use a seeded subset of the training data

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"--epochs must be a non-negative integer, got {self.epochs!r}.")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ConfigError(f"--batch-size must be an integer of at least 2, got {self.batch_size!r}.",
                              hint="Batch normalization needs two or more samples per training batch.")
        if self.loss not in LOSSES:
            raise ConfigError(f"Unknown loss '{self.loss}'. Valid: {', '.join(LOSSES)}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"Unknown learning-rate schedule '{self.lr_schedule}'. Valid: {', '.join(LR_SCHEDULES)}.")
        if self.step is not None and ":" not in self.step:
            raise ConfigError(f"--step '{self.step}' should be written as 'package.module:function' or 'file.py:function'.")
        if self.train_samples is not None and self.train_samples < 2:
            raise ConfigError(f"--train-samples must be at least 2, got {self.train_samples}.")

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of training step ``step`` (0-based) of ``total_steps``."""
        if self.lr_schedule == "constant" or total_steps <= 0:
            return float(self.lr)
        return float(self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PruneConfig:
    """``sparsity`` is the fraction of weights set to zero (magnitude) or of channels removed
    from every prunable channel group (channel).

    ``schedule`` (None: ``constant`` for magnitude, ``polynomial`` for channel): channel pruning
    with ``polynomial`` masks the least important channels gradually over the first
    :data:`CHANNEL_RAMP` of the steps (re-ranked on the current weights at every update), restarts
    the learning rate there (``lr_restart``) and removes the masked channels at the end;
    ``constant`` removes them all before fine-tuning. ``distill``: the loss also follows the
    unpruned model's outputs. ``patience``: early stopping on ``holdout`` of the training data
    (not the validation data), keeping the best epoch at the final sparsity; None trains every epoch.
    ``round_to``: each group keeps a multiple of this many channels (rounded up, so at most ``sparsity`` is
    removed). ``distill``, ``lr_restart``, ``patience``, ``holdout`` and ``round_to`` apply to channel pruning."""

    method: str = "magnitude"
    sparsity: float = 0.5
    schedule: str | None = None
    criterion: str | None = None  # None: bn-gamma for channel (measured best), l1 for magnitude
    frequency: int | None = None  # steps between mask updates; None: four times per epoch
    train: TrainConfig = field(default_factory=TrainConfig)
    calib_samples: int = 200  # for the int8 .tflite the report measures
    latency_runs: int = 300
    distill: bool | None = None  # None: on when channels are masked gradually (measured better there), else off
    lr_restart: bool = True
    patience: int | None = 2
    holdout: float = 0.1
    round_to: int = 1  # channel: kept channels per group rounded up to a multiple of this

    def __post_init__(self):
        if self.method not in PRUNE_METHODS:
            raise ConfigError(f"Unknown pruning method '{self.method}'. Valid: {', '.join(PRUNE_METHODS)}.")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity!r}.",
                              hint="0.5 removes half of the weights (magnitude) or half of the channels (channel).")
        if self.schedule is None:  # remembered: a default gradual schedule gives way to one-shot on tiny budgets
            object.__setattr__(self, "schedule_by_default", True)
            object.__setattr__(self, "schedule", "polynomial" if self.method == "channel" else "constant")
        if self.criterion is None:
            object.__setattr__(self, "criterion", "bn-gamma" if self.method == "channel" else "l1")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"--round-to must be a whole number of channels >= 1, got {self.round_to!r}.",
                              hint="4 or 8 keeps channel counts that CMSIS-NN and NPUs run on their fast paths.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"Unknown schedule '{self.schedule}'. Valid: {', '.join(SCHEDULES)}.")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"Unknown criterion '{self.criterion}'. Valid: {', '.join(CRITERIA)}.")
        if self.method == "magnitude" and self.distill:
            raise ConfigError("--distill applies to channel pruning; magnitude pruning trains on the labels.",
                              hint="Use it with --method channel.")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ConfigError(f"--patience must be a positive number of epochs, got {self.patience!r}.")
        if not 0.0 < self.holdout < 0.5:
            raise ConfigError(f"The early-stopping holdout must be a fraction between 0 and 0.5, got {self.holdout!r}.")
        if self.method == "magnitude" and self.criterion != "l1":
            raise ConfigError("--criterion ranks channels for --method channel; magnitude pruning ranks single weights "
                              "by their absolute value.")
        if self.schedule == "polynomial" and self.train.epochs < 1:
            raise ConfigError("A polynomial schedule raises the sparsity during fine-tuning: it needs --epochs 1 or more.")
        if self.frequency is not None and self.frequency < 1:
            raise ConfigError(f"--frequency must be a positive number of steps, got {self.frequency}.")
        if self.calib_samples < 1 or self.latency_runs < 1:
            raise ConfigError("calib_samples and latency_runs must be positive.")

    def sparsity_at(self, step: int, total_steps: int) -> float:
        """Target sparsity before training step ``step`` (0-based) of ``total_steps``."""
        if self.schedule == "constant" or total_steps <= 0:
            return float(self.sparsity)
        t = min(1.0, step / self.ramp_end(total_steps))
        return float(self.sparsity * (1.0 - (1.0 - t) ** 3))

    def ramp_end(self, total_steps: int) -> int:
        """The step at which a polynomial schedule reaches the final sparsity."""
        return max(1, int(round(total_steps * (CHANNEL_RAMP if self.method == "channel" else POLYNOMIAL_RAMP))))

    def lr_at(self, step: int, total_steps: int) -> float:
        """The fine-tuning learning rate; gradual channel pruning with ``lr_restart`` runs one
        schedule over the ramp and restarts it at the final sparsity (a warm restart)."""
        tc = self.train
        if self.method != "channel" or self.schedule != "polynomial" or not self.lr_restart or total_steps <= 1:
            return tc.lr_at(step, total_steps)
        end = min(self.ramp_end(total_steps), total_steps - 1)
        return tc.lr_at(step, end) if step < end else tc.lr_at(step - end, total_steps - end)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d


@dataclass(frozen=True)
class ClusterConfig:
    """Weight clustering: every clusterable layer's kernel (Conv2D, DepthwiseConv2D, Dense / Conv2d,
    Linear) shares ``clusters`` values, fine-tuned with the shared loop. ``layers``: per-layer choices
    as ``(regex, clusters)`` pairs matched against layer names in order, first match wins; ``clusters``
    0 leaves a layer alone. Layers with fewer than ``min_weights`` weights are left alone (their
    tables would cost more than they save)."""

    clusters: int = 16
    layers: tuple[tuple[str, int], ...] = ()
    min_weights: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=1e-4))
    calib_samples: int = 200  # for the int8 .tflite the report measures

    def __post_init__(self):
        import re

        for k in (self.clusters, *(c for _, c in self.layers)):
            if isinstance(k, bool) or not isinstance(k, int) or not (k == 0 or 2 <= k <= 256):
                raise ConfigError(f"A cluster count must be a whole number from 2 to 256 (or 0 to leave a layer alone), got {k!r}.",
                                  hint="16 clusters fit 4-bit TFLite Micro weight compression.")
        if self.clusters == 0:
            raise ConfigError("--clusters 0 would cluster nothing; give 2-256.")
        for rx, _ in self.layers:
            try:
                re.compile(rx)
            except re.error as exc:
                raise ConfigError(f"--layer pattern {rx!r} is not a regular expression ({exc}).",
                                  hint="Write --layer 'REGEX=CLUSTERS', e.g. --layer 'fc.*=32'.") from None
        if self.min_weights < 1 or self.calib_samples < 1:
            raise ConfigError("min_weights and calib_samples must be positive.")

    def clusters_for(self, name: str) -> int:
        import re

        for rx, k in self.layers:
            if re.search(rx, name):
                return k
        return self.clusters

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        d["layers"] = [list(x) for x in self.layers]
        return d


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training to an int8 .tflite. ``on_unsupported``: ``float`` leaves layers
    the QAT tooling cannot wrap in float (and names them), ``error`` refuses the model."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    per_channel: bool = True
    on_unsupported: str = "float"
    calib_samples: int = 200  # for the PTQ model it is compared with
    onnx: bool = False  # PyTorch: also write an int8 (QDQ) ONNX file beside the .tflite

    def __post_init__(self):
        if self.on_unsupported not in ON_UNSUPPORTED:
            raise ConfigError(f"Unknown policy '{self.on_unsupported}'. Valid: {', '.join(ON_UNSUPPORTED)}.")
        if self.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be positive, got {self.calib_samples}.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d
