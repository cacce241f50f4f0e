"""Task metrics: what a deployment costs in the model's own terms, not only top-1.

Each metric is an entry in :data:`METRICS`: how it is computed from a model's outputs (and the
labels or the inputs), its direction, its units and the key names it is reported under. A
comparison reports, for the chosen metric M, ``reference_<key>``, ``<key>`` (the candidate) and
``<loss_key>``: how much worse the candidate is, in the units the key names, positive = worse.

Units convention (one for every metric): fraction-valued metrics (accuracy, top-5, AUC) are
fractions in [0, 1]; their drops are in percentage points and their keys end in ``_pp``
(``accuracy_drop_pp``); dB keys end in ``_db``; MSE and MAE are in the output's own units
(squared for MSE).

| metric | for | needs | higher is better |
|---|---|---|---|
| top1 | classifiers (the default when labels are class indices) | class-index labels | yes |
| top5 | classifiers with more than 5 classes | class-index labels | yes |
| auc | binary detection: a score output (1 value, or 2 classes: class 1), or an autoencoder scored by its reconstruction error, as MLPerf Tiny scores anomaly detection | 0/1 labels | yes |
| mse, mae | regression (labels shaped like the output) or reconstruction (the output shaped like the input) | targets or nothing | no |
| psnr | image outputs in [0, 1] (peak 1.0), against targets or the input | targets or nothing | yes |

The fidelity numbers (argmax agreement, SQNR, cosine, max abs error) compare the candidate's
outputs with the reference's and are always reported beside the task metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from workbench.core.errors import ConfigError, DataError


@dataclass(frozen=True)
class Task:
    """What the outputs are compared against: labels (class indices, 0/1, or targets) or the input itself."""

    outputs: np.ndarray  # (N, ...) float outputs of one model
    inputs: np.ndarray | None  # (N, ...) the samples as the model saw them
    labels: np.ndarray | None


@dataclass(frozen=True)
class Metric:
    name: str
    key: str  # reported as reference_<key> and <key>
    loss_key: str  # how much worse the candidate is, positive = worse
    higher_is_better: bool
    units: str  # of the value
    loss_units: str
    loss_scale: float  # loss = scale * (reference - candidate) (or candidate - reference when lower is better)
    compute: Callable[[Task], float]
    applies: Callable[[Task], str | None]  # why it does not apply, or None
    description: str

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def loss(self, reference: float, candidate: float) -> float:
        d = (reference - candidate) if self.higher_is_better else (candidate - reference)
        return round(float(d) * self.loss_scale, 6)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(len(a), -1)


def is_class_labels(labels: np.ndarray | None, outputs: np.ndarray) -> bool:
    if labels is None:
        return False
    y = np.asarray(labels)
    out = _flat(outputs)
    if y.ndim != 1 or out.shape[1] < 2 or len(y) != len(out):
        return False
    if not np.all(np.equal(np.mod(y, 1), 0)):
        return False
    return bool(y.min() >= 0 and y.max() < out.shape[1])


def is_binary(labels: np.ndarray | None) -> bool:
    return labels is not None and np.asarray(labels).ndim == 1 and set(np.unique(labels).tolist()) <= {0, 1}


def is_reconstruction(t: Task) -> bool:
    return t.inputs is not None and _flat(t.outputs).shape[1] == _flat(t.inputs).shape[1] > 1


def _targets(t: Task) -> np.ndarray:
    """What a regression/reconstruction output is compared with: targets shaped like it, else the input."""
    out = _flat(t.outputs)
    if t.labels is not None and np.asarray(t.labels).size == out.size:
        return _flat(np.asarray(t.labels).reshape(len(out), -1))
    if is_reconstruction(t):
        return _flat(t.inputs)
    raise DataError("There is nothing to compare the outputs with: the labels are not shaped like the output "
                    f"({np.shape(t.labels)[1:] if t.labels is not None else 'no labels'} vs {t.outputs.shape[1:]}) and the "
                    "output is not shaped like the input (not an autoencoder).")


def _top1(t: Task) -> float:
    return float(np.mean(_flat(t.outputs).argmax(1) == np.asarray(t.labels)))


def _top5(t: Task) -> float:
    top = np.argsort(-_flat(t.outputs), axis=1)[:, :5]
    return float(np.mean(np.any(top == np.asarray(t.labels)[:, None], axis=1)))


def scores(t: Task) -> np.ndarray:
    """The anomaly/positive score of each sample: the reconstruction error (mean squared) of an
    autoencoder, the single output, or the class-1 output of a two-class model."""
    out = _flat(t.outputs)
    if is_reconstruction(t):
        return np.mean((out - _flat(t.inputs)) ** 2, axis=1)
    if out.shape[1] == 1:
        return out[:, 0]
    if out.shape[1] == 2:
        return out[:, 1] - out[:, 0]  # monotone in the class-1 probability for logits and for probabilities
    raise DataError(f"AUC needs one score per sample; the output has {out.shape[1]} values per sample and is not a "
                    "reconstruction of the input.", hint="Use --metric top1 for a multi-class classifier.")


def roc_auc(labels: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties
    counting one half (the Mann-Whitney U statistic, with average ranks)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"AUC needs both classes in the labels; found {n_pos} positives and {n_neg} negatives.",
                        hint="Evaluate on data with normal (0) and anomalous (1) samples.")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _auc(t: Task) -> float:
    return roc_auc(t.labels, scores(t))


def _mse(t: Task) -> float:
    return float(np.mean((_flat(t.outputs) - _targets(t)) ** 2))


def _mae(t: Task) -> float:
    return float(np.mean(np.abs(_flat(t.outputs) - _targets(t))))


def _psnr(t: Task) -> float:
    mse = _mse(t)
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def _needs_classes(t: Task) -> str | None:
    if t.labels is None:
        return "it needs labels"
    if is_reconstruction(t):
        return "the model reconstructs its input (an autoencoder): its outputs are not class scores"
    if not is_class_labels(t.labels, t.outputs):
        return (f"the outputs ({t.outputs.shape[1:]} per sample) are not class scores for these labels "
                "(class indices below the number of outputs)")
    return None


def _needs_top5(t: Task) -> str | None:
    why = _needs_classes(t)
    if why is None and _flat(t.outputs).shape[1] <= 5:
        return f"the model has {_flat(t.outputs).shape[1]} classes, so top-5 is always 1.0"
    return why


def _needs_binary(t: Task) -> str | None:
    if not is_binary(t.labels):
        return "it needs 0/1 labels (normal/anomalous, or negative/positive)"
    out = _flat(t.outputs)
    if not (is_reconstruction(t) or out.shape[1] in (1, 2)):
        return f"the output ({out.shape[1]} values per sample) is neither one score, two classes, nor a reconstruction"
    return None


def _needs_targets(t: Task) -> str | None:
    out = _flat(t.outputs)
    if t.labels is not None and np.asarray(t.labels).size == out.size:
        return None
    if is_reconstruction(t):
        return None
    return "it needs targets shaped like the output, or an output shaped like the input (an autoencoder)"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("top1", "accuracy", "accuracy_drop_pp", True, "fraction", "percentage points", 100.0, _top1, _needs_classes,
           "top-1 accuracy"),
    Metric("top5", "top5_accuracy", "top5_accuracy_drop_pp", True, "fraction", "percentage points", 100.0, _top5, _needs_top5,
           "top-5 accuracy"),
    Metric("auc", "auc", "auc_drop_pp", True, "fraction", "percentage points", 100.0, _auc, _needs_binary,
           "ROC AUC of a score (or of the reconstruction error) against 0/1 labels"),
    Metric("mse", "mse", "mse_increase", False, "output units squared", "output units squared", 1.0, _mse, _needs_targets,
           "mean squared error against targets (or the input, for an autoencoder)"),
    Metric("mae", "mae", "mae_increase", False, "output units", "output units", 1.0, _mae, _needs_targets,
           "mean absolute error against targets (or the input)"),
    Metric("psnr", "psnr_db", "psnr_drop_db", True, "dB", "dB", 1.0, _psnr, _needs_targets,
           "peak signal-to-noise ratio with a peak of 1.0 (outputs in [0, 1])"),
)}
# Fidelity numbers, candidate against reference: always computed, accepted by --metric for clarity.
FIDELITY = ("sqnr", "cosine")
CHOICES = ("auto", *METRICS, *FIDELITY)


def default_metric(t: Task) -> str | None:
    """An autoencoder (output shaped like the input): auc with 0/1 labels, else mse against the input. A classifier
    (class-index labels): top1. One score and 0/1 labels: auc. Targets shaped like the output: mse. Else None:
    only the fidelity numbers make sense."""
    if is_reconstruction(t):
        return "auc" if is_binary(t.labels) else "mse"
    if is_class_labels(t.labels, t.outputs):
        return "top1"
    if _needs_binary(t) is None:
        return "auc"
    if _needs_targets(t) is None:
        return "mse"
    return None


def choose(name: str | None, t: Task) -> Metric | None:
    """The metric to report: the one asked for (refused with the reason when it does not apply), or the default."""
    if name in (None, "auto"):
        chosen = default_metric(t)
        return METRICS[chosen] if chosen else None
    if name in FIDELITY:
        return None
    if name not in METRICS:
        raise ConfigError(f"Unknown metric '{name}'. Valid: {', '.join(CHOICES)}.")
    m = METRICS[name]
    why = m.applies(t)
    if why:
        raise DataError(f"--metric {name} ({m.description}) does not apply here: {why}.",
                        hint=f"Metrics that apply: {', '.join(n for n, x in METRICS.items() if x.applies(t) is None) or 'none (fidelity numbers only)'}.")
    return m


def task_metrics(metric: Metric | None, ref: Task, cand: Task) -> dict:
    """The chosen metric on both models, its loss and how to read them (flat keys, for budgets and reports)."""
    if metric is None:
        return {"metric": None}
    r, c = metric.compute(ref), metric.compute(cand)
    return {"metric": metric.name, "metric_direction": metric.direction, "metric_units": metric.units,
            f"reference_{metric.key}": r, metric.key: c, metric.loss_key: metric.loss(r, c), "loss_key": metric.loss_key,
            "loss_units": metric.loss_units}


def help_text() -> str:
    return ("Task metric: " + "; ".join(f"{m.name} ({m.description}, {m.direction})" for m in METRICS.values())
            + "; sqnr/cosine: fidelity only. auto: top1 for class labels, auc for 0/1 labels on a score or an "
            "autoencoder, mse for targets. The fidelity numbers are always reported.")


def model_metric(outputs: np.ndarray, inputs: np.ndarray | None, labels: np.ndarray | None, metric: str | None = None) -> dict:
    """The task metric of one model (no reference): {"metric", "metric_direction", "metric_units", <key>: value}."""
    t = Task(np.asarray(outputs, dtype=np.float32).reshape(len(outputs), -1), inputs, labels)
    m = choose(metric, t)
    if m is None:
        return {"metric": None}
    return {"metric": m.name, "metric_direction": m.direction, "metric_units": m.units, m.key: m.compute(t)}


def describe(d: dict) -> str | None:
    """One line for a human: 'auc 0.912 -> 0.905 (loss 0.70 percentage points; higher is better)'."""
    m = METRICS.get(d.get("metric") or "")
    if m is None or d.get(m.key) is None:
        return None
    fmt = (lambda v: f"{v:.2%}") if m.units == "fraction" and m.name != "auc" else (lambda v: f"{v:.4g}")
    ref = d.get(f"reference_{m.key}")
    if ref is None:
        return f"{m.name}: {fmt(d[m.key])} ({m.direction})"
    return (f"{m.name}: {fmt(ref)} -> {fmt(d[m.key])} (loss {d[m.loss_key]:+.4g} {m.loss_units}, key {m.loss_key}; "
            f"{m.direction})")
