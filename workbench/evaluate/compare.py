"""Accuracy and agreement between a reference model and a candidate, on the same samples.

With labels: the task metric of each (top-1 accuracy by default for classifiers, see
:mod:`~workbench.evaluate.metrics`) and the loss (``accuracy_drop_pp``, in percentage points). Always: argmax agreement,
SQNR (dB), cosine similarity and max-abs error of the candidate's outputs against the
reference's. Both sides are run in their real runtimes by :mod:`workbench.runtimes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.data.dataset import Dataset, fit_to_input
from workbench.runtimes.base import Runner


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(sum ref^2 / sum (ref - cand)^2)."""
    ref = np.asarray(ref, dtype=np.float64)
    noise = np.sum((ref - np.asarray(cand, dtype=np.float64)) ** 2)
    signal = np.sum(ref**2)
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(cand, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def agreement(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None = None, inputs: np.ndarray | None = None,
              metric: str | None = None) -> dict:
    """Fidelity (argmax agreement, SQNR, cosine, max abs error) and the task metric (see
    :mod:`workbench.evaluate.metrics`; ``metric=None`` picks the default for these outputs and labels)."""
    from workbench.evaluate.metrics import Task, choose, is_reconstruction, task_metrics

    ref = np.asarray(ref, dtype=np.float32).reshape(len(ref), -1)
    cand = np.asarray(cand, dtype=np.float32).reshape(len(cand), -1)
    t_ref, t_cand = Task(ref, inputs, labels), Task(cand, inputs, labels)
    classes = ref.shape[1] > 1 and not is_reconstruction(t_ref)
    out = {
        "samples": int(len(ref)),
        "argmax_agreement": float(np.mean(ref.argmax(1) == cand.argmax(1))) if classes else None,
        "sqnr_db": sqnr_db(ref, cand),
        "cosine": cosine(ref, cand),
        "max_abs_error": float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
    }
    out.update(task_metrics(choose(metric, t_ref), t_ref, t_cand))
    return out


FLAT = 1e-6  # outputs spanning less than this (absolute), or this fraction of their size, are (near) constant


def degenerate_reference(ref: np.ndarray) -> list[str]:
    """Warnings when the reference outputs cannot carry a comparison: (near) constant values, or the same
    output for every sample. SQNR, cosine, argmax agreement and accuracy drop are then meaningless."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    if not ref.size:
        return []
    spread = float(np.ptp(ref))
    size = float(np.max(np.abs(ref)))
    meaning = ("SQNR, cosine, argmax agreement, max-abs error and the accuracy drop are meaningless here: check the "
               "model (untrained or collapsed weights, BatchNorm statistics) and the input preprocessing.")
    if spread < FLAT or spread <= FLAT * size:
        return [f"The reference outputs are (near) constant: every value lies within {spread:.3g} "
                f"(largest magnitude {size:.3g}). " + meaning]
    if len(ref) > 1:
        across = float(np.max(np.ptp(ref, axis=0)))
        if across < FLAT or across <= FLAT * size:
            return [f"The reference gives (nearly) the same output for every sample (differences below {across:.3g}). "
                    + meaning]
    return []


@dataclass(frozen=True)
class Comparison:
    reference: str
    candidate: str
    data: str
    metrics: dict
    reference_runtime: dict
    candidate_runtime: dict
    warnings: tuple[str, ...] = ()  # e.g. a degenerate (constant) reference: the metrics mean nothing

    def to_dict(self) -> dict:
        return {"reference": self.reference, "candidate": self.candidate, "data": self.data, **self.metrics,
                "reference_runtime": self.reference_runtime, "candidate_runtime": self.candidate_runtime,
                **({"warnings": list(self.warnings)} if self.warnings else {})}


def predict(runner: Runner, data: Dataset, name: str = "the model") -> np.ndarray:
    spec = runner.inputs[0]
    x = fit_to_input(data.x, spec.shape, spec.layout, data.name, name)
    return runner.predict(x)


def compare_runners(ref: Runner, cand: Runner, data: Dataset, ref_name: str = "reference", cand_name: str = "candidate",
                    metric: str | None = None) -> Comparison:
    y_ref = predict(ref, data, ref_name)
    y_cand = predict(cand, data, cand_name)
    if y_ref.shape != y_cand.shape:
        from workbench.core.errors import DataError

        raise DataError(f"The two models give outputs of different shapes: {ref_name} {y_ref.shape[1:]}, {cand_name} {y_cand.shape[1:]}.",
                        hint="Compare models that compute the same function.")
    return Comparison(reference=ref_name, candidate=cand_name, data=data.name, metrics=agreement(y_ref, y_cand, data.y, _inputs(ref, data, ref_name), metric),
                      reference_runtime=ref.info(), candidate_runtime=cand.info(),
                      warnings=tuple(degenerate_reference(y_ref)))


def _inputs(runner: Runner, data: Dataset, name: str) -> np.ndarray:
    spec = runner.inputs[0]
    return fit_to_input(data.x, spec.shape, spec.layout, data.name, name)


def accuracy(runner: Runner, data: Dataset, name: str = "the model") -> float | None:
    if data.y is None:
        return None
    return float(np.mean(predict(runner, data, name).argmax(1) == data.y))


def evaluate_models(reference, candidate, data, *, samples: int | None = 1000, seed: int = 0, split: str = "test",
                    load_options=None, reference_runtime: str | None = None,
                    candidate_runtime: str | None = None, metric: str | None = None) -> Comparison:
    """Run both models (paths or ModelHandles) in their real runtimes on the same samples and compare.
    ``metric``: a name from :data:`workbench.evaluate.metrics.METRICS` (None or "auto": the default for the outputs)."""
    from workbench.data import as_dataset
    from workbench.frontends import ModelHandle, load
    from workbench.runtimes import open_runner

    ds = as_dataset(data, split, limit=samples, seed=seed if samples else None)
    ref = reference if isinstance(reference, ModelHandle) else load(reference, load_options)
    cand = candidate if isinstance(candidate, ModelHandle) else load(candidate)
    return compare_runners(open_runner(ref, reference_runtime), open_runner(cand, candidate_runtime), ds,
                           ref_name=str(ref.path), cand_name=str(cand.path), metric=metric)
