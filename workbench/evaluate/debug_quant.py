"""Per-layer quantization diagnosis and mixed precision.

The float and the quantized .tflite of the same model run on the same inputs in LiteRT
(built-in kernels, every intermediate tensor preserved). Op outputs are paired by tensor
name (the converter names them after the layer in both models); the quantized tensor is
dequantized with its own scale and zero point and compared with the float one: SQNR,
cosine and max-abs error per layer, worst first. Errors accumulate along the graph, so the
first layers with a low SQNR are the ones worth keeping in float.

Mixed precision keeps chosen layers in float (``keep_float``) or the N worst by SQNR
(``auto_keep_float``), re-converts, and reports accuracy and size of each variant.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.data.dataset import Dataset, fit_to_input
from workbench.core.errors import ConfigError, UnsupportedError
from workbench.evaluate.compare import cosine, sqnr_db
from workbench.frontends.handle import ModelHandle
from workbench.runtimes.base import quantize_input


@dataclass(frozen=True)
class LayerError:
    name: str
    op: str
    index: int
    sqnr_db: float
    cosine: float
    max_abs_error: float
    scale: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _tensor_trace(path: Path, x: np.ndarray):
    """Run every sample, keeping every tensor: {tensor name: (stacked values, details)}."""
    from workbench.runtimes.litert import LiteRTRunner
    from workbench.frontends import load

    r = LiteRTRunner(load(path), kernels="builtin", preserve_all=True)
    spec = r.inputs[0]
    details = {d["name"]: d for d in r.interp.get_tensor_details()}
    values: dict[str, list] = {n: [] for n in details}
    for sample in x:
        r.invoke_raw(quantize_input(sample[None], spec))
        for n, d in details.items():
            try:
                values[n].append(np.array(r.interp.get_tensor(d["index"])))
            except ValueError:  # tensors without data (e.g. freed scratch)
                pass
    return {n: (np.stack(v), details[n]) for n, v in values.items() if len(v) == len(x)}


def layer_errors(float_tflite: Path, quant_tflite: Path, x: np.ndarray) -> list[LayerError]:
    from workbench.frontends.tflite_reader import read_tflite

    fq = _tensor_trace(float_tflite, x)
    qq = _tensor_trace(quant_tflite, x)
    g = read_tflite(quant_tflite)
    rows = []
    for op in g.ops:
        if not op.outputs:
            continue
        name = g.tensors[op.outputs[0]].name
        if name not in fq or name not in qq:
            continue
        ref, _ = fq[name]
        q, det = qq[name]
        scale, zp = det.get("quantization", (0.0, 0))
        deq = (q.astype(np.float32) - zp) * scale if scale else q.astype(np.float32)
        if deq.shape != ref.shape:
            continue
        rows.append(LayerError(name=name, op=op.kind, index=op.index, sqnr_db=sqnr_db(ref, deq), cosine=cosine(ref, deq),
                               max_abs_error=float(np.max(np.abs(ref - deq))), scale=float(scale) if scale else None))
    if not rows:
        raise UnsupportedError("No layer of the quantized model could be paired with the float model by tensor name.",
                               hint="Per-layer diagnosis needs both models from the same converter (Keras models pair best).")
    return sorted(rows, key=lambda r: r.sqnr_db)


def diagnose(handle: ModelHandle, calib: Dataset, *, scheme: str = "int8", samples: int = 64, keep_float: tuple = (),
             auto_keep_float: int = 0, eval_data: Dataset | None = None, out: Path | None = None, overwrite: bool = False,
             calib_samples: int = 200) -> dict:
    from workbench.evaluate.compare import evaluate_models
    from workbench.export.convert import convert_model

    if (keep_float or auto_keep_float) and handle.framework != "keras":
        raise UnsupportedError("Mixed precision (--keep-float / --auto-keep-float) is available for Keras models.",
                               hint="For PyTorch models, per-layer diagnosis works; keep layers in float in the model itself.")
    if auto_keep_float < 0:
        raise ConfigError("--auto-keep-float must be 0 or more.")
    with tempfile.TemporaryDirectory(prefix="workbench-dq-") as tmp:
        t = Path(tmp)
        common = dict(calib=calib, calib_samples=calib_samples, write_manifest=False)
        convert_model(handle, "tflite", t / "float.tflite", scheme="float", write_manifest=False)
        convert_model(handle, "tflite", t / "quant.tflite", scheme=scheme, io_dtype="float32" if scheme == "int8" else None, **common)
        x = fit_to_input(calib.take(samples, seed=1).x, (1, *_tflite_input_shape(t / "float.tflite")), "NHWC", calib.name)
        rows = layer_errors(t / "float.tflite", t / "quant.tflite", x)
        result = {"model": str(handle.path), "scheme": scheme, "samples": int(len(x)), "layers": [r.to_dict() for r in rows]}
        chosen = list(keep_float) + [r.name for r in rows[:auto_keep_float] if r.name not in keep_float]
        if not chosen:
            return result
        known = {r.name for r in rows}
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise ConfigError(f"--keep-float names no layer of this model: {', '.join(unknown)}.",
                              hint="Use the layer names printed by `workbench debug-quant` (the op's output tensor name).")
        mixed = t / "mixed.tflite"
        convert_model(handle, "tflite", mixed, scheme=scheme, keep_float=tuple(chosen), **common)
        variants = {"float": t / "float.tflite", scheme: t / "quant.tflite", "mixed": mixed}
        result["keep_float"] = chosen
        result["variants"] = {}
        for name, path in variants.items():
            v = {"bytes": path.stat().st_size}
            if eval_data is not None:
                m = evaluate_models(handle, path, eval_data).metrics
                v.update({k: m.get(k) for k in ("accuracy", "accuracy_drop_pp", "argmax_agreement", "sqnr_db")})
            result["variants"][name] = v
        if out is not None:
            convert_model(handle, "tflite", out, scheme=scheme, keep_float=tuple(chosen), overwrite=overwrite, calib=calib,
                        calib_samples=calib_samples)
            result["output"] = str(out)
    return result


def _tflite_input_shape(path: Path) -> tuple:
    from workbench.frontends.tflite_reader import read_tflite

    g = read_tflite(path)
    return tuple(g.tensors[g.inputs[0]].shape[1:])
