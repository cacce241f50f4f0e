"""Quantize an existing float ``.tflite`` with Google's ai-edge-quantizer (LiteRT only, no TensorFlow).

The common case of a user who only has the file. Each scheme is a recipe (data: which ops,
which bits, which algorithm) in the :data:`RECIPES` table, with where the result runs:

| scheme | recipe | LiteRT | TFLite Micro |
|---|---|---|---|
| int8 | static, int8 activations and weights (``static_wi8_ai8``) | yes | yes |
| int16x8 | static, int16 activations, int8 weights (``static_wi8_ai16``) | yes | yes |
| mixed-int16 | int8, with int16 activations on the ``--int16-layer`` ops | yes | yes |
| dynamic | int8 weights, activations quantized at run time (``dynamic_wi8_afp32``) | yes | no (hybrid ops) |
| weight-int8 | int8 weights + DEQUANTIZE, float compute (``weight_only_wi8_afp32``) | yes | with --per-tensor only |
| weight-int4 | int4 weights + DEQUANTIZE, float compute (``weight_only_wi4_afp32``) | yes | no (int4 DEQUANTIZE) |
| fp16 | float16 weights + DEQUANTIZE (the float-casting algorithm) | yes | no (float16 tensors) |

The TFLite Micro column is what the pinned tflite-micro interpreter runs (tests/test_convert_matrix.py).
TFLite Micro's DEQUANTIZE applies a single scale: a per-channel weight-int8 model runs there but
computes something else (max error 11.9 on the digits logits), so only --per-tensor counts as running.

--int16-layer and --keep-float regexes are searched (re.search) in the ops' output tensor names;
a part of the name (``conv2_1/Relu``) is the reliable form: ai-edge-quantizer's own scope names
do not always equal the full fused name.

Models without a signature (older converters wrote none; the MLPerf Tiny float models are
like that) cannot be calibrated: ai-edge-quantizer drives calibration through a signature
runner. A copy of the model gets a ``serving_default`` signature over subgraph 0's input and
output tensors first; the written model keeps it (harmless to every runtime), and the
manifest says so. Old-schema operator codes and hybrid weights are handled the same way
(:mod:`workbench.export.tflite_prepare`), and DIV ops whose divisor can quantize to its zero point
are kept in float, each with a warning and a manifest entry.

Every written model is run in LiteRT on all the calibration samples (or the parity samples)
before the export succeeds: a model that fails to load or run names the op and the
``--keep-float`` that avoids it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from workbench.core.errors import RuntimeFailure, UnsupportedError
from workbench.core.quiet import captured_output, import_quietly
from workbench.export import parity
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.export.tflite_prepare import SIGNATURE, name_text, prepare, risky_divisions


@dataclass(frozen=True)
class Recipe:
    build: Callable  # (quantizer module, Quantizer, QuantConfig) -> None: fills the recipe
    tflm: bool
    note: str
    tflm_per_tensor_only: bool = False

    def runs_in_tflm(self, cfg) -> bool:
        return self.tflm and not (self.tflm_per_tensor_only and cfg.per_channel)


def _granularity(aeq, cfg):
    g = aeq.qtyping.QuantGranularity
    return g.CHANNELWISE if cfg.per_channel else g.TENSORWISE


def _static(bits: int):
    def build(aeq, q, cfg):
        q.add_static_config(".*", "*", activation_num_bits=bits, weight_num_bits=8, weight_granularity=_granularity(aeq, cfg))
    return build


def _mixed(aeq, q, cfg):
    g = _granularity(aeq, cfg)
    q.add_static_config(".*", "*", activation_num_bits=8, weight_num_bits=8, weight_granularity=g)
    for rx in cfg.int16_layers:
        q.add_static_config(rx, "*", activation_num_bits=16, weight_num_bits=8, weight_granularity=g)


def _weight_only(bits: int):
    def build(aeq, q, cfg):
        q.add_weight_only_config(".*", "*", num_bits=bits, granularity=_granularity(aeq, cfg))
    return build


def _dynamic(aeq, q, cfg):
    q.add_dynamic_config(".*", "*", num_bits=8, granularity=_granularity(aeq, cfg))


def _fp16(aeq, q, cfg):
    q.add_weight_only_config(".*", "*", num_bits=16, algorithm_key=aeq.algorithm_manager.AlgorithmName.FLOAT_CASTING)


RECIPES: dict[str, Recipe] = {
    "int8": Recipe(_static(8), tflm=True, note="static int8 activations and weights"),
    "int16x8": Recipe(_static(16), tflm=True, note="static int16 activations, int8 weights"),
    "mixed-int16": Recipe(_mixed, tflm=True, note="int8, int16 activations on the --int16-layer ops"),
    "dynamic": Recipe(_dynamic, tflm=False, note="hybrid ops (int8 weights, float activations): TFLite Micro has no hybrid kernels"),
    "weight-int8": Recipe(_weight_only(8), tflm=True, tflm_per_tensor_only=True,
                          note="int8 weights dequantized by DEQUANTIZE ops, float compute; TFLite Micro only with --per-tensor "
                               "(its DEQUANTIZE applies one scale)"),
    "weight-int4": Recipe(_weight_only(4), tflm=False, note="int4 weights + DEQUANTIZE: TFLite Micro has no int4 DEQUANTIZE"),
    "fp16": Recipe(_fp16, tflm=False, note="float16 weights + DEQUANTIZE: TFLite Micro has no float16 tensors"),
}


def import_aeq():
    return import_quietly("ai_edge_quantizer", extra="quantize", purpose="Quantizing .tflite files")


def run(job: ExportJob) -> dict:
    return quantize_tflite(job.handle, job.out, job.config, job.calib)


STATIC_BITS = {"int8": 8, "mixed-int16": 8, "int16x8": 16}  # schemes with calibrated integer activations
INTEGER_COMPUTE = ("int8", "uint8", "int16")


def quantize_tflite(h, out_path, cfg, calib, where: str | None = None, check_fp16: bool = True) -> dict:
    """Quantize the float .tflite of handle ``h`` into ``out_path`` with the scheme's recipe. ``calib``: samples
    in the .tflite's own layout. The result is run on the calibration samples before this returns.
    Returns the manifest's recipe."""
    where = where or f"'{h.path}'"
    recipe = RECIPES[cfg.scheme]
    integer = integer_ops(h)
    if any(s.dtype != "float32" for s in h.inputs) or integer:
        found = f"inputs {', '.join(s.dtype for s in h.inputs)}" if any(s.dtype != "float32" for s in h.inputs) \
            else f"{integer} op(s) compute in integers"
        raise UnsupportedError(f"{where} is already quantized ({found}); "
                               "ai-edge-quantizer starts from a float model.", hint="Quantize the float .tflite it was made from.")
    if cfg.needs_calibration and len(h.inputs) != 1:
        raise UnsupportedError(f"{where} has {len(h.inputs)} inputs; calibrating a .tflite here takes one input.")
    want_io = {"int8": "int8", "mixed-int16": "int8", "int16x8": "int16"}.get(cfg.scheme, "float32")
    if cfg.io_dtype not in (None, want_io):
        raise UnsupportedError(f"ai-edge-quantizer's {cfg.scheme} models have {want_io} inputs and outputs; --io-dtype "
                               f"{cfg.io_dtype} is not available.", hint="Leave --io-dtype unset.")
    check_regexes(h, cfg)
    aeq = import_aeq()
    prep = prepare(h.path.read_bytes(), where)
    auto_float = _risky_divisions(prep.data, calib, cfg) if cfg.scheme in STATIC_BITS else []
    notes = prep.notes() + [f"{d['op']} '{d['layer']}' is kept in float: its divisor ranges over [{d['min']:.3g}, "
                            f"{d['max']:.3g}] on the calibration data, so quantized it can equal its zero point "
                            "(a division by zero)" for d in auto_float]
    for n in notes:
        warnings.warn(n, stacklevel=2)
    error = None
    with captured_output():  # the quantizer prints a size report to stdout
        try:
            q = aeq.quantizer.Quantizer(bytearray(prep.data))
            recipe.build(aeq, q, cfg)
            for rx in (*cfg.keep_float, *(d["keep_float"] for d in auto_float)):
                q.update_quantization_recipe(rx, "*", algorithm_key=aeq.algorithm_manager.AlgorithmName.NO_QUANTIZE)
            cal = None
            if q.need_calibration:
                name = next(iter(prep.inputs))
                key = SIGNATURE if prep.signature_added else _first_key(prep.data)
                cal = q.calibrate({key: [{name: calib[i : i + 1]} for i in range(len(calib))]})
            result = q.quantize(cal)
        except Exception as exc:
            error = exc
    if error is not None:
        msg = [ln for ln in str(error).strip().splitlines() if ln.strip()]
        raise RuntimeFailure(f"ai-edge-quantizer could not quantize {where} ({cfg.scheme}): {(msg[0] if msg else type(error).__name__)[:400]}",
                             hint="Try another --scheme, or keep the failing op in float with --keep-float REGEX.") from None
    out_path.write_bytes(bytes(result.quantized_model))
    out = {"quantizer": "ai-edge-quantizer", "scheme": cfg.scheme, "recipe": _jsonable(result.recipe),
           "per_channel": cfg.per_channel, "signature_added": prep.signature_added,
           "runs_in": {"litert": True, "tflm": recipe.runs_in_tflm(cfg), "note": recipe.note}}
    if prep.opcodes_normalised:
        out["opcodes_normalised"] = prep.opcodes_normalised
    if prep.dequantized:
        out["dequantized"] = prep.dequantized
    if auto_float:
        out["kept_float_automatically"] = auto_float
    if notes:
        out["notes"] = notes
    if cfg.keep_float:
        out["float_layers"] = list(cfg.keep_float)
    x = parity.parity_inputs(h.inputs[0].shape, calib)
    cand = check_runs(h, out_path, calib if calib is not None and len(calib) else x, where, cfg.scheme)[: len(x)]
    ref = parity.run_model(h, x)
    out["checked_on_samples"] = int(len(calib) if calib is not None and len(calib) else len(x))
    if cfg.scheme == "fp16" and check_fp16:  # float16 weights are near-lossless: held to a tolerance like a float export
        out["parity"] = parity.check(ref, cand, f"fp16 quantization of {where}", parity.FP16)
    else:  # lossy by design: measured, and judged by --eval
        out["agreement_with_float"] = parity.measure(ref, cand)
    return out


def integer_ops(h) -> int:
    """How many ops of the model compute in integers (it is quantized already); QUANTIZE/DEQUANTIZE aside."""
    g = h.meta.get("graph")
    if g is None:
        return 0
    return sum(1 for op in g.ops if op.kind not in ("QUANTIZE", "DEQUANTIZE") and g.op_dtype(op) in INTEGER_COMPUTE)


def _risky_divisions(data: bytes, calib, cfg) -> list[dict]:
    import tempfile
    from pathlib import Path

    if calib is None or not len(calib) or not _has_div(data):
        return []
    with tempfile.TemporaryDirectory(prefix="workbench-aeq-") as tmp:
        f = Path(tmp) / "float.tflite"
        f.write_bytes(data)
        return risky_divisions(f, calib, STATIC_BITS[cfg.scheme])


def _has_div(data: bytes) -> bool:
    from ai_edge_litert import schema_py_generated as s

    m = s.Model.GetRootAsModel(data, 0)
    div = s.BuiltinOperator.DIV
    return any(max(m.OperatorCodes(k).BuiltinCode(), m.OperatorCodes(k).DeprecatedBuiltinCode()) == div
               for k in range(m.OperatorCodesLength()))


def check_runs(h, path, x: np.ndarray, where: str, scheme: str) -> np.ndarray:
    """Run the written model on every sample of ``x`` in LiteRT; a model that fails to load or run, or gives
    non-finite outputs where the float model does not, is an error naming the op and the --keep-float fix."""
    import re

    from workbench.core.errors import WorkbenchError
    from workbench.frontends.tflite_reader import read_tflite

    what = f"The {scheme} model ai-edge-quantizer made from {where}"
    try:
        y = parity.run_model(path, x)
    except WorkbenchError as exc:
        text = exc.message
        m = re.search(r"Node number (\d+) \((\w+)\)", text)
        detail = text.split("': ", 1)[-1].strip()
        if m is None:
            raise RuntimeFailure(f"{what} does not run in LiteRT: {detail}",
                                 hint="Try another --scheme, or keep ops in float with --keep-float REGEX.") from None
        idx, kind = int(m.group(1)), m.group(2)
        g = read_tflite(path)
        ops0 = [op for op in g.ops if op.subgraph == 0]
        tensor = g.tensor(ops0[idx].outputs[0]).name if idx < len(ops0) and ops0[idx].outputs else ""
        raise RuntimeFailure(f"{what} fails in LiteRT on its calibration samples at op {idx} ({kind}"
                             + (f", output '{tensor}'" if tensor else "") + f"): {detail}",
                             hint=f"Keep that op in float: --keep-float '{_regex_for(tensor) if tensor else kind}'.") from None
    bad = [i for i in range(len(y)) if not np.all(np.isfinite(y[i]))]
    if bad and np.all(np.isfinite(parity.run_model(h, x[bad]))):
        suspects = [op for op in read_tflite(path).ops if op.kind in ("DIV", "RSQRT", "LOG", "POW", "EXP")]
        raise RuntimeFailure(f"{what} gives non-finite outputs (inf or nan) on {len(bad)} of {len(x)} calibration "
                             "samples where the float model's are finite.",
                             hint="Keep the op that overflows in float with --keep-float REGEX"
                             + (f" (candidates: {', '.join(f'{o.kind} {o.name}' for o in suspects[:5])})" if suspects else "")
                             + "; workbench debug-quant compares the model layer by layer.")
    return y


def _regex_for(tensor: str) -> str:
    import re

    return re.escape(tensor.split(";")[0])


def check_regexes(handle, cfg) -> None:
    """Every --int16-layer / --keep-float regex must match an op's output tensor name (as the quantizer
    matches them, with re.search): a regex that matches nothing would silently leave the model as it is."""
    import re

    from workbench.core.errors import ConfigError

    names = [handle.meta["graph"].tensor(op.outputs[0]).name for op in handle.meta["graph"].ops if op.outputs] \
        if handle.meta.get("graph") is not None else []
    for flag, regexes in (("--int16-layer", cfg.int16_layers), ("--keep-float", cfg.keep_float)):
        for rx in regexes:
            try:
                hit = any(re.search(rx, n) for n in names)
            except re.error as exc:
                raise ConfigError(f"{flag} '{rx}' is not a valid regular expression: {exc}.") from None
            if names and not hit:
                raise ConfigError(f"{flag} '{rx}' matches no op output of '{handle.path}'.",
                                  hint="Op output names here: " + "; ".join(n[:60] for n in names[:6])
                                  + (" ..." if len(names) > 6 else "") + " (workbench inspect lists them all).")


def _first_key(data: bytes) -> str:
    from ai_edge_litert import schema_py_generated as s

    return name_text(s.Model.GetRootAsModel(data, 0).SignatureDefs(0).SignatureKey())


def _jsonable(recipe):
    import json

    return json.loads(json.dumps(recipe, default=str))


EXPORTERS.add(("tflite", "tflite"), Exporter(
    run=run, schemes=tuple(RECIPES), calibrators=("minmax",), per_tensor=True, keep_float=True,
    io_dtypes=("float32", "int8", "int16"),
    note="A float .tflite is quantized with ai-edge-quantizer (min/max calibration). TFLite Micro runs int8, int16x8, "
         "mixed-int16 and weight-int8 with --per-tensor; LiteRT runs all of them."))
