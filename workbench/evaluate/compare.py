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


def fidelity(ref: np.ndarray, cand: np.ndarray) -> dict:
    """SQNR, cosine and max abs error of one output, and its range loss per slice along the last axis."""
    from workbench.evaluate.outputs import range_loss

    return {"sqnr_db": sqnr_db(ref, cand), "cosine": cosine(ref, cand),
            "max_abs_error": float(np.max(np.abs(np.asarray(ref, np.float64) - cand))) if np.size(ref) else 0.0,
            "range_loss": range_loss(ref, cand)}


def compare_runners(ref: Runner, cand: Runner, data: Dataset, ref_name: str = "reference", cand_name: str = "candidate",
                    metric: str | None = None, output: str | None = None) -> Comparison:
    """Every output of both runners, paired by name (by position when the names do not pair up, with a
    warning); ``output`` (a name or a position) picks the one the task metric and the top-level
    fidelity numbers are about, the first of the reference by default. ``metrics["outputs"]`` holds
    each output's SQNR, cosine, max abs error and range loss per slice."""
    from workbench.evaluate.outputs import range_warnings
    from workbench.runtimes.pairing import check_shapes, pair_outputs, select

    names_ref, names_cand = _output_names(ref), _output_names(cand)
    if output:  # a name neither side has fails before both models run
        select(pair_outputs(names_ref, names_cand, max(1, len(names_ref)), max(1, len(names_cand)))[0], output)
    x_ref, x_cand = _inputs(ref, data, ref_name), _inputs(cand, data, cand_name)
    ys_ref, ys_cand = _predict_all(ref, x_ref), _predict_all(cand, x_cand)
    pairs, how, warnings = pair_outputs(names_ref, names_cand, len(ys_ref), len(ys_cand))
    check_shapes(pairs, ys_ref, ys_cand, ref_name, cand_name, how)
    main = select(pairs, output)
    per_output = []
    for p in pairs:
        y_ref, y_cand = ys_ref[p.ref_index], ys_cand[p.cand_index]
        m = {"name": p.name, "candidate_name": p.candidate_name, "shape": list(y_ref.shape[1:]), **fidelity(y_ref, y_cand)}
        if p is main:
            metrics = agreement(y_ref, y_cand, data.y, x_ref, metric)
        per_output.append(m)
        warnings += [(f"Output '{p.name}': " if len(pairs) > 1 else "") + w for w in degenerate_reference(y_ref)]
        warnings += range_warnings(p.name, m["range_loss"], y_ref)
    metrics.update({"output": main.name, "pairing": how, "outputs": per_output})
    return Comparison(reference=ref_name, candidate=cand_name, data=data.name, metrics=metrics,
                      reference_runtime=ref.info(), candidate_runtime=cand.info(), warnings=tuple(warnings))


def _predict_all(runner, x: np.ndarray) -> list[np.ndarray]:
    """Every output; a runner with only ``predict`` (the interface before multi-output) gives its first."""
    return runner.predict_all(x) if hasattr(runner, "predict_all") else [runner.predict(x)]


def _output_names(runner) -> tuple[tuple[str, ...], ...]:
    return runner.output_names() if hasattr(runner, "output_names") else (("output_0",),)


def _inputs(runner: Runner, data: Dataset, name: str) -> np.ndarray:
    spec = runner.inputs[0]
    return fit_to_input(data.x, spec.shape, spec.layout, data.name, name)


def accuracy(runner: Runner, data: Dataset, name: str = "the model") -> float | None:
    if data.y is None:
        return None
    return float(np.mean(predict(runner, data, name).argmax(1) == data.y))


def evaluate_models(reference, candidate, data, *, samples: int | None = 1000, seed: int = 0, split: str = "test",
                    load_options=None, reference_runtime: str | None = None,
                    candidate_runtime: str | None = None, metric: str | None = None, output: str | None = None) -> Comparison:
    """Run both models (paths or ModelHandles) in their real runtimes on the same samples and compare.
    ``metric``: a name from :data:`workbench.evaluate.metrics.METRICS` (None or "auto": the default for the outputs);
    ``output``: the output the task metric is about (see :func:`compare_runners`)."""
    from workbench.data import as_dataset
    from workbench.frontends import ModelHandle, load
    from workbench.runtimes import open_runner

    ds = as_dataset(data, split, limit=samples, seed=seed if samples else None)
    ref = reference if isinstance(reference, ModelHandle) else load(reference, load_options)
    cand = candidate if isinstance(candidate, ModelHandle) else load(candidate)
    return compare_runners(open_runner(ref, reference_runtime), open_runner(cand, candidate_runtime), ds,
                           ref_name=str(ref.path), cand_name=str(cand.path), metric=metric, output=output)
