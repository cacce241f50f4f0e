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
manifest says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from workbench.core.errors import ModelFormatError, RuntimeFailure, UnsupportedError
from workbench.core.quiet import captured_output, import_quietly
from workbench.export import parity
from workbench.export.engine import EXPORTERS, Exporter, ExportJob

SIGNATURE = "serving_default"


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


def with_signature(data: bytes, where: str) -> tuple[bytes, dict, bool]:
    """The model with a signature (added over subgraph 0 when it has none), and {input name: index}."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    try:
        model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    except Exception as exc:
        raise ModelFormatError(f"{where} could not be read as a .tflite model: {exc}") from None
    if model.signatureDefs:
        sd = model.signatureDefs[0]
        return data, {_name(t.name): t.tensorIndex for t in sd.inputs}, False
    sg = model.subgraphs[0]

    def tmap(indices, stem):
        out = []
        for i, idx in enumerate(indices):
            t = s.TensorMapT()
            t.name = (_name(sg.tensors[idx].name) or f"{stem}_{i}").encode()
            t.tensorIndex = int(idx)
            out.append(t)
        return out

    sd = s.SignatureDefT()
    sd.signatureKey, sd.subgraphIndex = SIGNATURE.encode(), 0
    sd.inputs, sd.outputs = tmap(sg.inputs, "input"), tmap(sg.outputs, "output")
    model.signatureDefs = [sd]
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output()), {_name(t.name): t.tensorIndex for t in sd.inputs}, True


def _name(n) -> str:
    return n.decode() if isinstance(n, bytes) else (n or "")


def run(job: ExportJob) -> dict:
    return quantize_tflite(job.handle, job.out, job.config, job.calib)


def quantize_tflite(h, out_path, cfg, calib, where: str | None = None, check_fp16: bool = True) -> dict:
    """Quantize the float .tflite of handle ``h`` into ``out_path`` with the scheme's recipe. ``calib``: samples
    in the .tflite's own layout. Returns the manifest's recipe."""
    where = where or f"'{h.path}'"
    recipe = RECIPES[cfg.scheme]
    if any(s.dtype != "float32" for s in h.inputs):
        raise UnsupportedError(f"{where} is already quantized (inputs {', '.join(s.dtype for s in h.inputs)}); "
                               "ai-edge-quantizer starts from a float model.", hint="Quantize the float .tflite it was made from.")
    if cfg.needs_calibration and len(h.inputs) != 1:
        raise UnsupportedError(f"{where} has {len(h.inputs)} inputs; calibrating a .tflite here takes one input.")
    want_io = {"int8": "int8", "mixed-int16": "int8", "int16x8": "int16"}.get(cfg.scheme, "float32")
    if cfg.io_dtype not in (None, want_io):
        raise UnsupportedError(f"ai-edge-quantizer's {cfg.scheme} models have {want_io} inputs and outputs; --io-dtype "
                               f"{cfg.io_dtype} is not available.", hint="Leave --io-dtype unset.")
    check_regexes(h, cfg)
    aeq = import_aeq()
    data, inputs, added = with_signature(h.path.read_bytes(), where)
    error = None
    with captured_output():  # the quantizer prints a size report to stdout
        try:
            q = aeq.quantizer.Quantizer(bytearray(data))
            recipe.build(aeq, q, cfg)
            for rx in cfg.keep_float:
                q.update_quantization_recipe(rx, "*", algorithm_key=aeq.algorithm_manager.AlgorithmName.NO_QUANTIZE)
            cal = None
            if q.need_calibration:
                name = next(iter(inputs))
                cal = q.calibrate({SIGNATURE if added else _first_key(data): [{name: calib[i : i + 1]} for i in range(len(calib))]})
            result = q.quantize(cal)
        except Exception as exc:
            error = exc
    if error is not None:
        msg = [ln for ln in str(error).strip().splitlines() if ln.strip()]
        raise RuntimeFailure(f"ai-edge-quantizer could not quantize {where} ({cfg.scheme}): {(msg[0] if msg else type(error).__name__)[:400]}",
                             hint="Try another --scheme, or keep the failing op in float with --keep-float REGEX.") from None
    out_path.write_bytes(bytes(result.quantized_model))
    out = {"quantizer": "ai-edge-quantizer", "scheme": cfg.scheme, "recipe": _jsonable(result.recipe),
           "per_channel": cfg.per_channel, "signature_added": added,
           "runs_in": {"litert": True, "tflm": recipe.runs_in_tflm(cfg), "note": recipe.note}}
    if cfg.keep_float:
        out["float_layers"] = list(cfg.keep_float)
    x = parity.parity_inputs(h.inputs[0].shape, calib)
    ref, cand = parity.run_model(h, x), parity.run_model(out_path, x)
    if cfg.scheme == "fp16" and check_fp16:  # float16 weights are near-lossless: held to a tolerance like a float export
        out["parity"] = parity.check(ref, cand, f"fp16 quantization of {where}", parity.FP16)
    else:  # lossy by design: measured, and judged by --eval
        out["agreement_with_float"] = parity.measure(ref, cand)
    return out


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

    return _name(s.Model.GetRootAsModel(data, 0).SignatureDefs(0).SignatureKey())


def _jsonable(recipe):
    import json

    return json.loads(json.dumps(recipe, default=str))


EXPORTERS.add(("tflite", "tflite"), Exporter(
    run=run, schemes=tuple(RECIPES), calibrators=("minmax",), per_tensor=True, keep_float=True,
    io_dtypes=("float32", "int8", "int16"),
    note="A float .tflite is quantized with ai-edge-quantizer (min/max calibration). TFLite Micro runs int8, int16x8, "
         "mixed-int16 and weight-int8 with --per-tensor; LiteRT runs all of them."))
