"""Quantization-aware training for Keras (Keras 3 and tf_keras) with tfmot, to an int8 .tflite.

tfmot's ``quantize_model`` accepts only tf_keras models, so a Keras 3 model is first carried to
tf_keras by :mod:`workbench.optimize.keras_bridge` (standard layers, weights copied; anything
else is refused by name). This closes tensorflow/model-optimization#1119 for the layers the
bridge carries.

Layers tfmot cannot wrap (its default 8-bit registry raises "Layer X is not supported") are
found by asking tfmot itself: the model is annotated layer by layer and every layer tfmot
refuses is left un-annotated, so it stays float in the converted model (with quantize and
dequantize ops around it), and is named in the report. With ``on_unsupported="error"`` such a
model is refused before training.

The QAT model is converted from a batch-1 concrete function (static shapes, as edge runtimes
and TFLite Micro want) with ``optimizations=[DEFAULT]`` and int8 inputs and outputs; as
tfmot documents, no representative dataset is needed because the ranges were learned.
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.core.errors import RuntimeFailure, UnsupportedError
from workbench.optimize import keras_bridge as kb
from workbench.core.quiet import captured_output

NOT_SUPPORTED = re.compile(r"Layer (\S+?):<class")


def quantize_with_fallback(model, tfmot, tfk, on_unsupported: str, where: str):
    """``(qat_model, float_layers)``: every layer annotated except those tfmot refuses."""
    q = tfmot.quantization.keras
    skip: list[str] = []
    for _ in range(len(model.layers) + 1):
        def annotate(layer):
            if layer.name in skip or isinstance(layer, tfk.layers.InputLayer):
                return layer
            return q.quantize_annotate_layer(layer)

        try:
            with captured_output():
                annotated = tfk.models.clone_model(model, clone_function=annotate)  # wraps the same layer objects
                return q.quantize_apply(annotated), skip
        except RuntimeError as exc:
            m = NOT_SUPPORTED.search(str(exc))
            if not m or m.group(1) in skip:
                raise RuntimeFailure(f"tfmot could not prepare {where} for QAT: {str(exc).splitlines()[0]}") from None
            if on_unsupported == "error":
                layer = model.get_layer(m.group(1))
                raise UnsupportedError(
                    f"QAT cannot wrap layer '{m.group(1)}' ({type(layer).__name__}) of {where}: tfmot's default 8-bit "
                    "scheme does not support it.",
                    hint="Leave it in float (drop --strict), or replace it with a supported layer.") from None
            skip.append(m.group(1))
    raise RuntimeFailure(f"tfmot could not prepare {where} for QAT.")  # pragma: no cover


def convert_qat(model, input_shape: tuple) -> bytes:
    import tensorflow as tf

    spec = tf.TensorSpec((1, *input_shape[1:]), tf.float32)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    import warnings

    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "statistics for quantized inputs": QAT learned them
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        return conv.convert()


def run(job, tflite_out: Path, onnx_out: Path | None) -> dict:
    from workbench.optimize.common import n_outputs
    from workbench.optimize.prune_keras import import_tfmot
    from workbench.optimize.train import Hooks, KerasBackend, fit

    handle = job.handle
    where = f"'{handle.path}'"
    if onnx_out is not None:
        raise UnsupportedError("--onnx is available for PyTorch models; Keras QAT writes the int8 .tflite.",
                               hint="The QAT model holds tfmot's tf_keras quantize wrappers, which the Keras -> ONNX route "
                                    "(Keras 3 on the torch backend) cannot load. For an int8 ONNX model of a Keras model: "
                                    "workbench quantize model.keras --format onnx --scheme int8 --calib DATA.")
    if not job.config.per_channel:
        raise UnsupportedError("--per-tensor is available for PyTorch QAT: tfmot's default 8-bit scheme quantizes "
                               "convolution weights per channel.", hint="Drop --per-tensor for Keras models.")
    if handle.format == "savedmodel":
        raise UnsupportedError(f"{where} is a SavedModel, which holds no Keras layers for QAT.",
                               hint="Give the .keras or .h5 model.")
    api = handle.meta.get("keras_api", kb.api_of(handle.obj))
    tfmot = import_tfmot()
    tfk = kb.keras_module(2)
    model2 = kb.to_tf_keras(handle.obj, where) if api == 3 else kb.rebuild(kb.read_graph(handle.obj, where), 2,
                                                                           kb.layer_weights(handle.obj), where=where)
    qmodel, float_layers = quantize_with_fallback(model2, tfmot, tfk, job.config.on_unsupported, where)
    d = job.data
    backend = KerasBackend(qmodel, tfk, job.config.train, n_outputs(handle) or 1)
    training = fit(backend, d.x, d.y, job.config.train, hooks=Hooks(), store=job.store, resume=job.resume,
                   val=(d.x_val, d.y_val), progress=job.progress)
    try:
        data = convert_qat(qmodel, handle.inputs[0].shape)
    except Exception as exc:
        raise RuntimeFailure(f"TFLite conversion of the QAT model of {where} failed: {str(exc).strip().splitlines()[0][:400]}") from None
    tflite_out.write_bytes(data)
    return {"training": training, "unwrapped_layers": float_layers,
            "route": ("Keras 3 -> tf_keras (bridge) -> " if api == 3 else "tf_keras -> ")
            + "tfmot quantize_model -> train -> TFLiteConverter"}
