"""Parity after a conversion: does the converted file compute what its source computes?

Every bridge between frameworks (Keras 3 -> ONNX through the torch backend, PyTorch -> fp16
.tflite, an .onnx -> .tflite) is checked on the same inputs in both real runtimes: the
maximum absolute error of the outputs and the argmax agreement. Above the tolerance the
export fails with :class:`~workbench.core.errors.ParityError` and nothing is written.

Inputs are the calibration samples when there are some, otherwise seeded random samples of
the model's input shape (a function is the same function on any input), so a float export
needs no data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.core.errors import ParityError


@dataclass(frozen=True)
class Tolerance:
    """``max_abs`` is absolute plus ``relative`` times the largest reference output; argmax agreement
    must reach ``min_agreement`` (ties between near-equal scores may flip on random inputs)."""

    max_abs: float = 1e-4
    relative: float = 1e-4
    min_agreement: float = 0.99

    def bound(self, ref: np.ndarray) -> float:
        return float(self.max_abs + self.relative * (float(np.max(np.abs(ref))) if ref.size else 0.0))


FLOAT = Tolerance()
FP16 = Tolerance(max_abs=1e-2, relative=1e-2, min_agreement=0.95)  # float16 weights: about 3 significant digits

SAMPLES = 16


def parity_inputs(shape: tuple, calib: np.ndarray | None, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """Batch-1 samples for ``shape`` (batch first): calibration samples when given, else uniform [0, 1)."""
    if calib is not None and len(calib):
        return np.asarray(calib[:samples], dtype=np.float32)
    dims = tuple(1 if d is None else int(d) for d in shape[1:])
    return np.random.default_rng(seed).random((samples, *dims), dtype=np.float32)


def measure(ref: np.ndarray, cand: np.ndarray) -> dict:
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    cand = np.asarray(cand, dtype=np.float64).reshape(len(cand), -1)
    agree = float(np.mean(ref.argmax(1) == cand.argmax(1))) if ref.shape[1] > 1 else None
    return {"samples": int(len(ref)), "max_abs_error": float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
            "argmax_agreement": agree, "reference_max_abs": float(np.max(np.abs(ref))) if ref.size else 0.0}


def check(ref: np.ndarray, cand: np.ndarray, what: str, tol: Tolerance = FLOAT) -> dict:
    """Measure and raise ParityError above ``tol``. Returns the numbers for the manifest."""
    if np.shape(ref) != np.shape(cand):
        raise ParityError(f"{what}: the converted model's output shape {tuple(np.shape(cand))[1:]} differs from the "
                          f"source's {tuple(np.shape(ref))[1:]}.", hint="This is a converter defect; please report it with the model.")
    m = measure(ref, cand)
    bound = tol.bound(np.asarray(ref))
    m.update({"tolerance": bound, "min_agreement": tol.min_agreement})
    bad_agree = m["argmax_agreement"] is not None and m["argmax_agreement"] < tol.min_agreement
    if not np.isfinite(m["max_abs_error"]) or m["max_abs_error"] > bound or bad_agree:
        raise ParityError(
            f"{what}: the converted model does not match its source (max abs error {m['max_abs_error']:.3g}, "
            f"tolerance {bound:.3g}; argmax agreement {m['argmax_agreement'] if m['argmax_agreement'] is not None else 'n/a'} "
            f"on {m['samples']} samples).",
            hint="The converter changed the computation; export from the other framework, or use --format tflite.",
            max_abs_error=m["max_abs_error"], tolerance=bound, argmax_agreement=m["argmax_agreement"])
    return m


@dataclass(frozen=True)
class Outputs:
    """Every output of one model on the parity samples, with the names each goes by (see
    :meth:`workbench.runtimes.base.Runner.output_names`): converters reorder outputs, not their names."""

    names: tuple[tuple[str, ...], ...]
    arrays: tuple[np.ndarray, ...]


def run_outputs(handle_or_path, x: np.ndarray, runtime: str | None = None) -> Outputs:
    """Every float output of a model (a handle or a file) in its natural runtime."""
    from workbench.runtimes import open_runner

    runner = open_runner(handle_or_path, runtime)
    try:
        return Outputs(tuple(runner.output_names()), tuple(runner.predict_all(x)))
    finally:
        runner.close()


def paired(ref: Outputs, cand: Outputs) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str]:
    """(name, reference output, candidate output) for every pair, paired by name (see
    :mod:`workbench.runtimes.pairing`), and how they were paired."""
    from workbench.runtimes.pairing import pair_outputs

    pairs, how, _ = pair_outputs(ref.names, cand.names, len(ref.arrays), len(cand.arrays))
    return [(p.name, ref.arrays[p.ref_index], cand.arrays[p.cand_index]) for p in pairs], how


def check_all(ref: Outputs, cand: Outputs, what: str, tol: Tolerance = FLOAT) -> dict:
    """:func:`check` on every output, paired by name; the numbers of the worst output, and each one's."""
    pairs, how = paired(ref, cand)
    if len(pairs) == 1:
        return check(pairs[0][1], pairs[0][2], what, tol)
    why = "" if how == "name" else " (paired by position: the names do not match)"
    each = {name: check(r, c, f"{what}, output '{name}'{why}", tol) for name, r, c in pairs}
    return {**max(each.values(), key=lambda m: m["max_abs_error"]), "outputs": each, "pairing": how}


def measure_all(ref: Outputs, cand: Outputs) -> dict:
    """:func:`measure` on every output, paired by name; the numbers of the worst output, and each one's."""
    pairs, how = paired(ref, cand)
    for name, r, c in pairs:
        if np.shape(r) != np.shape(c):
            raise ParityError(f"The converted model's output '{name}' has the shape {np.shape(c)[1:]}, the source's "
                              f"{np.shape(r)[1:]}" + ("" if how == "name" else " (outputs paired by position: the names "
                                                      "do not match)") + ".",
                              hint="This is a converter defect; please report it with the model.")
    each = {name: measure(r, c) for name, r, c in pairs}
    if len(each) == 1:
        return next(iter(each.values()))
    return {**max(each.values(), key=lambda m: m["max_abs_error"]), "outputs": each, "pairing": how}


def run_model(handle_or_path, x: np.ndarray, runtime: str | None = None) -> np.ndarray:
    """Float outputs of a model (a handle or a file) in its natural runtime, one sample at a time."""
    from workbench.runtimes import open_runner

    runner = open_runner(handle_or_path, runtime)
    try:
        return runner.predict(x)
    finally:
        runner.close()
