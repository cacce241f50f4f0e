"""Keras 3 (.keras), legacy Keras 2 (.h5, via tf_keras) and SavedModel loaders.

Safety: .keras files load with ``safe_mode=True`` unless the user passes --trust-model, so
Lambda layers (which carry Python bytecode) are refused. HDF5 files have no safe mode, so
their config is scanned for Lambda layers before anything is deserialised. SavedModel
folders hold TensorFlow graphs, not Python code; loading one trusts the file's graph.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.core.errors import ModelFormatError, UnsafeModelError, require
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import LOADERS, LoadOptions, spec_from
from workbench.core.quiet import captured_output, import_quietly


def import_keras3():
    return import_quietly("tensorflow", "keras", extra="tf", purpose="Loading Keras 3 models")


def import_tf_keras():
    return import_quietly("tensorflow", "tf_keras", extra="tf", purpose="Loading Keras 2 (.h5) models")


def _keras_specs(model) -> tuple[tuple, tuple]:
    ins = tuple(
        spec_from(getattr(t, "name", f"input_{i}").split(":")[0], tuple(t.shape), _dtype_name(t.dtype), layout=None)
        for i, t in enumerate(model.inputs)
    )
    outs = tuple(
        spec_from(getattr(t, "name", f"output_{i}").split(":")[0], tuple(t.shape), _dtype_name(t.dtype))
        for i, t in enumerate(model.outputs)
    )
    ins = tuple(s if len(s.shape) != 4 else spec_from(s.name, s.shape, s.dtype, layout="NHWC") for s in ins)
    return ins, outs


def _dtype_name(dt) -> str:
    return getattr(dt, "name", str(dt)).replace("tf.", "")


@LOADERS.register("keras")
def load_keras(path: Path, opts: LoadOptions) -> ModelHandle:
    keras = import_keras3()
    try:
        with captured_output():
            model = keras.saving.load_model(str(path), compile=False, safe_mode=not opts.trust_model)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise UnsafeModelError(
                f"'{path}' contains a Lambda layer, whose Python code would run when the model is loaded.",
                hint="Loading is refused by default (Keras safe_mode). If you trust the file, pass --trust-model.",
            ) from None
        raise ModelFormatError(f"Keras could not load '{path}': {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # zip/h5 errors inside the archive
        raise ModelFormatError(f"Keras could not load '{path}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                               hint="The archive is probably truncated or corrupted; save the model again.") from None
    ins, outs = _keras_specs(model)
    return ModelHandle(path=path, format="keras", framework="keras", inputs=ins, outputs=outs, obj=model,
                       meta={"keras_version": keras.__version__, "keras_api": 3})


def h5_model_config(path: Path) -> dict | None:
    h5py = require("h5py", "tf", "Reading .h5 models")
    try:
        with h5py.File(path, "r") as f:
            cfg = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelFormatError(f"'{path}' is not a readable HDF5 file: {exc}.",
                               hint="The file is probably truncated or corrupted.") from None
    if cfg is None:
        return None
    if isinstance(cfg, bytes):
        cfg = cfg.decode("utf-8")
    return json.loads(cfg)


def _has_lambda(cfg) -> bool:
    if isinstance(cfg, dict):
        if cfg.get("class_name") in ("Lambda",):
            return True
        return any(_has_lambda(v) for v in cfg.values())
    if isinstance(cfg, list):
        return any(_has_lambda(v) for v in cfg)
    return False


@LOADERS.register("h5")
def load_h5(path: Path, opts: LoadOptions) -> ModelHandle:
    cfg = h5_model_config(path)
    if cfg is None:
        raise ModelFormatError(
            f"'{path}' is an HDF5 file without a model config: it holds weights only, not a model.",
            hint="Save the whole model (model.save('model.h5')), or load the weights into your model and save that.",
        )
    if _has_lambda(cfg) and not opts.trust_model:
        raise UnsafeModelError(
            f"'{path}' contains a Lambda layer, whose Python bytecode would run when the model is loaded.",
            hint="Loading is refused by default. If you trust the file, pass --trust-model.",
        )
    tfk = import_tf_keras()
    try:
        with captured_output():
            model = tfk.models.load_model(str(path), compile=False)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        hint = None
        if "Unknown layer" in first:
            hint = ("The model uses a custom layer whose code is not stored in the file. Load it in Python with that class "
                    "registered (keras.utils.custom_object_scope) and save it as .keras or a SavedModel folder.")
        raise ModelFormatError(f"tf_keras could not load '{path}': {type(exc).__name__}: {first}", hint=hint) from None
    ins, outs = _keras_specs(model)
    return ModelHandle(path=path, format="h5", framework="keras", inputs=ins, outputs=outs, obj=model,
                       meta={"keras_version": tfk.__version__, "keras_api": 2})


@LOADERS.register("savedmodel")
def load_savedmodel(path: Path, opts: LoadOptions) -> ModelHandle:
    tf = import_quietly("tensorflow", extra="tf", purpose="Loading SavedModel folders")
    try:
        with captured_output():
            obj = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelFormatError(f"TensorFlow could not load the SavedModel '{path}': {str(exc).splitlines()[0]}") from None
    sig = getattr(obj, "signatures", {}).get("serving_default")
    if sig is None:  # a TF1 export (saved_model.Builder): frozen in a TF1 Session, then a frozen graph
        from workbench.frontends.tf1_savedmodel import load_tf1_savedmodel

        return load_tf1_savedmodel(path, opts, tf)
    _, kw = sig.structured_input_signature
    ins = tuple(spec_from(k, tuple(v.shape), v.dtype.name) for k, v in sorted(kw.items()))
    outs = tuple(spec_from(k, tuple(v.shape), v.dtype.name) for k, v in sorted(sig.structured_outputs.items()))
    return ModelHandle(path=path, format="savedmodel", framework="keras", inputs=ins, outputs=outs, obj=obj,
                       meta={"signature": "serving_default"})
