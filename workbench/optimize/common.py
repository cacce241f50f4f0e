"""Shared by pruning and QAT: training data fitted to the model, validation data, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.data import Dataset, open_data
from workbench.data.dataset import fit_to_input
from workbench.core.errors import ConfigError, DataError
from workbench.core.files import sha256_file
from workbench.frontends.handle import ModelHandle
from workbench.optimize.config import TrainConfig
from workbench.optimize.train import CheckpointStore, check_labels, fingerprint

HOLDOUT = 0.1  # share of --train held out for validation when --val is not given
MIN_HOLDOUT_SOURCE = 20


@dataclass(frozen=True)
class TrainingData:
    train: Dataset  # as read (NHWC), after the optional subset
    val: Dataset | None
    val_note: str
    x: np.ndarray  # fitted to the model's input (layout, channels)
    y: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None

    def describe(self) -> dict:
        return {"train": self.train.name, "train_samples": int(len(self.train)),
                "val": self.val_note, "val_samples": int(len(self.val)) if self.val is not None else 0}


def _open(spec, split: str) -> Dataset:
    return spec if isinstance(spec, Dataset) else open_data(str(spec), split=split)


def n_outputs(handle: ModelHandle) -> int | None:
    if not handle.outputs:
        return None
    shape = handle.outputs[0].shape
    return int(shape[-1]) if shape and shape[-1] else None


def prepare_data(handle: ModelHandle, train, val, cfg: TrainConfig) -> TrainingData:
    ds = _open(train, "train")
    classes = n_outputs(handle)
    check_labels(ds.y, classes, ds.name)
    note = ""
    if val is None:
        if len(ds) >= MIN_HOLDOUT_SOURCE:
            perm = np.random.default_rng(cfg.seed).permutation(len(ds))
            n_val = max(1, int(round(len(ds) * HOLDOUT)))
            vds = Dataset(x=ds.x[perm[:n_val]], y=ds.y[perm[:n_val]], name=f"{ds.name} (held-out {HOLDOUT:.0%})")
            ds = Dataset(x=ds.x[np.sort(perm[n_val:])], y=ds.y[np.sort(perm[n_val:])], name=ds.name, classes=ds.classes)
            note = f"{n_val} samples held out of {ds.name} (no --val given)"
        else:
            vds = ds
            note = f"{ds.name} itself (too few samples to hold any out; no --val given)"
    else:
        vds = _open(val, "test")
        check_labels(vds.y, classes, vds.name, "Validation data")
        note = vds.name
    if cfg.train_samples is not None and cfg.train_samples < len(ds):
        ds = ds.take(cfg.train_samples, seed=cfg.seed)
    spec = handle.inputs[0] if handle.inputs else None
    if spec is None:
        raise ConfigError(f"The input shape of '{handle.path}' is unknown.", hint="Pass --input-shape.")
    model = f"'{Path(handle.path).name}'"
    x = fit_to_input(ds.x, spec.shape, spec.layout, ds.name, model)
    xv = fit_to_input(vds.x, spec.shape, spec.layout, vds.name, model)
    if float(np.ptp(x)) == 0.0:
        raise DataError(f"Training data '{ds.name}' is constant (every value is {float(x.flat[0])}).")
    return TrainingData(train=ds, val=vds, val_note=note, x=x, y=ds.y.astype(np.int64), x_val=xv,
                        y_val=vds.y.astype(np.int64))


def checkpoint_folder(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def open_store(out: Path, handle: ModelHandle, technique: dict, data: TrainingData, resume: bool,
               overwrite: bool) -> CheckpointStore:
    """The checkpoint folder beside the output. A left-over folder is only reused with ``resume``
    and only replaced with ``overwrite``, so an interrupted run is never lost by accident."""
    source = sha256_file(handle.path) if Path(handle.path).exists() else str(handle.path)
    fp = fingerprint(source=source, technique=technique, train=data.train.name, samples=int(len(data.x)))
    store = CheckpointStore(checkpoint_folder(out), fp)
    if store.exists() and not resume:
        if not overwrite:
            raise ConfigError(f"An interrupted run left checkpoints in '{store.folder}'.",
                              hint="Pass --resume to continue it, or --overwrite to discard it and start over.")
        store.clear()
    return store


@dataclass(frozen=True)
class FineTuneReport:
    """What an optimize step that fine-tunes (pruning, clustering) reports: the config, the data, the
    training, the model's numbers before and after, and one row per layer."""

    model: str
    output: str
    config: dict
    data: dict
    training: dict
    before: dict
    after: dict
    layers: list
    extra: dict

    def to_dict(self) -> dict:
        return {"model": self.model, "output": self.output, "config": self.config, "data": self.data,
                "training": self.training, "before": self.before, "after": self.after, "layers": self.layers, **self.extra}
