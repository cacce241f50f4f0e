"""Keras 3, tf_keras and SavedModel models to .tflite through TensorFlow's TFLiteConverter.

Schemes map onto the converter's documented settings:
float (no optimization), fp16 (float16 weights), dynamic (int8 weights, float activations),
int8 (full integer, calibrated), int16x8 (int16 activations, int8 weights, calibrated).
Mixed precision (``keep_float``) goes through TensorFlow's QuantizationDebugger with the
named layers' output tensors on its deny list.
"""

from __future__ import annotations

import numpy as np

from workbench.core.errors import RuntimeFailure, UnsupportedError
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.core.quiet import captured_output, import_quietly


def import_tf():
    return import_quietly("tensorflow", extra="tf", purpose="Converting Keras models to TFLite")


def make_converter(job: ExportJob):
    tf = import_tf()
    h = job.handle
    with captured_output():
        if h.format == "savedmodel":
            conv = tf.lite.TFLiteConverter.from_saved_model(str(h.path))
        else:
            conv = tf.lite.TFLiteConverter.from_keras_model(batch_one(h))
    return tf, conv


def batch_one(handle):
    """The model rebuilt with batch size 1, as edge runtimes run it. Static shapes keep the graph
    free of the SHAPE/STRIDED_SLICE/PACK ops a dynamic batch adds, and TFLite Micro needs them.
    Subclassed models, which cannot be cloned, are converted as they are."""
    model = handle.obj
    if handle.meta.get("keras_api") == 3:
        import keras
    else:
        import tf_keras as keras
    try:
        inputs = [keras.Input(batch_shape=(1, *s.shape[1:]), dtype=s.dtype, name=s.name) for s in handle.inputs]
        clone = keras.models.clone_model(model, input_tensors=inputs if len(inputs) > 1 else inputs[0])
        clone.set_weights(model.get_weights())
        return clone
    except (ValueError, TypeError, AttributeError):
        return model


def _representative(x):
    def gen():
        for i in range(len(x)):
            yield [x[i : i + 1]]

    return gen


def _io_type(tf, name: str):
    return {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}[name]


def configure(tf, conv, job: ExportJob) -> dict:
    cfg = job.config
    recipe = {"converter": "tf.lite.TFLiteConverter", "scheme": cfg.scheme}
    if cfg.scheme == "float":
        return recipe
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if cfg.scheme == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    elif cfg.scheme == "dynamic":
        pass
    elif cfg.scheme == "int8":
        conv.representative_dataset = _representative(job.calib)
        io = cfg.io_dtype or "int8"
        if not cfg.keep_float:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = _io_type(tf, io)
        conv.inference_output_type = _io_type(tf, io)
        recipe["io_dtype"] = io
    elif cfg.scheme == "int16x8":
        conv.representative_dataset = _representative(job.calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        io = cfg.io_dtype or "float32"
        conv.inference_input_type = _io_type(tf, io)
        conv.inference_output_type = _io_type(tf, io)
        recipe["io_dtype"] = io
    if not cfg.per_channel:
        set_per_tensor(conv)
    recipe["per_channel"] = cfg.per_channel
    return recipe


def set_per_tensor(conv) -> None:
    """TFLiteConverter has no public per-tensor switch; this private attribute is the one it reads.
    tests/test_ptq.py checks it still exists and still changes the result."""
    if not hasattr(conv, "_experimental_disable_per_channel"):
        raise UnsupportedError("This TensorFlow version no longer has the per-tensor switch; use --per-channel.")
    conv._experimental_disable_per_channel = True


def convert_bytes(job: ExportJob) -> tuple[bytes, dict]:
    tf, conv = make_converter(job)
    recipe = configure(tf, conv, job)
    error = None
    with captured_output() as cap:  # the converter's log is read back to explain a failure
        try:
            if job.config.keep_float:
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=conv, debug_dataset=_representative(job.calib),
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(job.config.keep_float)))
                data = debugger.get_nondebug_quantized_model()
                recipe["float_layers"] = list(job.config.keep_float)
            else:
                data = conv.convert()
        except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
            error = exc
    if error is not None:
        raise RuntimeFailure(_converter_message(job, error, cap.text),
                             hint="Try another --scheme, or keep the failing layer in float with --keep-float. "
                                  "--debug shows the converter's traceback.") from error
    return data, recipe


def _converter_message(job: ExportJob, exc: Exception, log: str) -> str:
    text = str(exc).strip() or log
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    key = next((ln for ln in lines if "not supported" in ln or "failed to legalize" in ln.lower() or "error:" in ln), lines[0] if lines else type(exc).__name__)
    return f"TFLite conversion of '{job.handle.path}' ({job.config.scheme}) failed: {key[:400]}"


def run(job: ExportJob) -> dict:
    data, recipe = convert_bytes(job)
    job.out.write_bytes(data)
    recipe["check"] = check_written(job)
    return recipe


def check_written(job: ExportJob) -> dict | None:
    """Run the written file in LiteRT on the calibration samples (or seeded inputs) beside the Keras model:
    a float or fp16 file must match it within the parity tolerance, a quantized one must load, run and
    stay finite where the Keras model does. Returns the agreement for the manifest."""
    from workbench.core.errors import WorkbenchError
    from workbench.export import parity

    if len(job.handle.inputs) != 1 or job.handle.inputs[0].shape is None:
        return None  # several or unknown inputs: no generic sample to feed
    scheme = job.config.scheme
    what = f"The {scheme} .tflite written from '{job.handle.path}'"
    x = parity.parity_inputs(job.handle.inputs[0].shape, job.calib)
    try:
        cand_all = parity.run_outputs(job.out, x)
    except WorkbenchError as exc:
        raise RuntimeFailure(f"{what} does not run in LiteRT: {exc.message}",
                             hint="Try another --scheme, or keep the failing layer in float with --keep-float.") from exc
    ref_all = parity.run_outputs(job.handle, x)  # the converter reorders outputs: paired by name
    tol = {"float": parity.FLOAT, "fp16": parity.FP16}.get(scheme)
    if tol is not None:
        return parity.check_all(ref_all, cand_all, what, tol)
    for _, ref, cand in parity.paired(ref_all, cand_all)[0]:
        _refuse_non_finite(ref, cand, what, len(x))
    return parity.measure_all(ref_all, cand_all)


def _refuse_non_finite(ref: np.ndarray, cand: np.ndarray, what: str, samples: int) -> None:
    finite_ref = np.isfinite(np.asarray(ref, dtype=np.float64)).reshape(len(ref), -1).all(axis=1)
    finite_cand = np.isfinite(np.asarray(cand, dtype=np.float64)).reshape(len(cand), -1).all(axis=1)
    if np.any(finite_ref & ~finite_cand):
        raise RuntimeFailure(f"{what} gives non-finite outputs (inf or nan) on {int(np.sum(finite_ref & ~finite_cand))} "
                             f"of {samples} samples where the Keras model's are finite.",
                             hint="Keep the layer that overflows in float with --keep-float; workbench debug-quant "
                                  "compares the model layer by layer.")


RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def layer_types(handle) -> list[str]:
    """The model's layer classes (nested models flattened), in first-seen order."""
    seen: list[str] = []

    def walk(layer):
        subs = getattr(layer, "layers", None)
        if subs:
            for sub in subs:
                walk(sub)
        inner = getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)
        name = type(layer).__name__
        if name not in seen and name != "InputLayer" and not subs:
            seen.append(name)
        if inner is not None and type(inner).__name__ not in seen:
            seen.append(type(inner).__name__)

    if handle.obj is not None and hasattr(handle.obj, "layers"):
        walk(handle.obj)
    return seen


def at_risk(handle, cfg) -> bool:
    """TensorFlow's int8/int16x8 calibrator segfaults on fused recurrent layers (a Keras 3 LSTM, measured):
    such conversions run in a child process (workbench.core.isolate)."""
    return cfg.needs_calibration and any(k in RECURRENT for k in layer_types(handle))


def explain_crash(job: ExportJob, err):
    """What the crash was in, in the user's terms, and what to try (what was checked, not guessed)."""
    stack = err.stack.lower()
    calibrating = any(k in stack for k in ("calibrat", "_feed_tensors", "representative"))
    step = "calibration (TensorFlow's calibrator running the representative data)" if calibrating else "conversion"
    kinds = layer_types(job.handle)
    rec = [k for k in kinds if k in RECURRENT]
    scheme = job.config.scheme
    tries = []
    if scheme in ("int8", "int16x8"):
        tries.append("--scheme dynamic (int8 weights, float activations: no calibration step)")
    if rec:
        tries.append(f"rebuild the {'/'.join(rec)} layer(s) with unroll=True (a fixed sequence length: plain ops "
                     "instead of a fused sequence op) and save again")
    tries.append("--scheme float to check the float conversion alone")
    return type(err)(
        f"TensorFlow's TFLite converter crashed ({err.signal_name}) during {step} of '{job.handle.path}' "
        f"({scheme}); the model's layer types: {', '.join(kinds) or 'unknown'}"
        + (f". TensorFlow fuses {', '.join(rec)} layers into sequence ops (a known crash of its int8 calibrator); "
           "--keep-float does not avoid it, the calibrator still runs." if rec and calibrating else "."),
        hint="Try: " + "; or ".join(tries) + ".", phase=step, signal_name=err.signal_name, stack=err.stack, log=err.log)


EXPORTERS.add(("keras", "tflite"), Exporter(run=run, schemes=("float", "fp16", "dynamic", "int8", "int16x8"),
                                            calibrators=("minmax",), per_tensor=True, keep_float=True,
                                            isolate=at_risk, on_crash=explain_crash,
                                            note="TFLite's converter calibrates with min/max only; percentile and entropy are available for --format onnx."))
