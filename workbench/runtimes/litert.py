"""LiteRT (TensorFlow Lite) runner: ai_edge_litert, else tflite_runtime, else tf.lite."""

from __future__ import annotations

import numpy as np

from workbench.core.errors import MissingDependencyError, ModelFormatError, RuntimeFailure, UnsupportedError
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import spec_from
from workbench.runtimes.base import RUNNERS, Runner


def interpreter_module():
    """(module, name) of the first TFLite runtime that imports, for Pi users with tflite_runtime."""
    try:
        from ai_edge_litert import interpreter as mod

        return mod, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod  # needs numpy < 2

        return mod, "tflite_runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite, "tensorflow.lite"
    except ImportError:
        raise MissingDependencyError("ai_edge_litert", "all", "Running .tflite models") from None


RESOLVERS = {"xnnpack": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}


class LiteRTRunner(Runner):
    name = "litert"

    def __init__(self, handle: ModelHandle, threads: int | None = None, kernels: str = "xnnpack", preserve_all: bool = False):
        if handle.format != "tflite":
            raise UnsupportedError(f"LiteRT runs .tflite models; '{handle.path}' is {handle.format}.",
                                   hint="Export it first: workbench export MODEL --format tflite -o model.tflite")
        mod, self.module_name = interpreter_module()
        kwargs = {"model_path": str(handle.path), "num_threads": threads}
        resolver = getattr(mod, "OpResolverType", None)
        if resolver is not None and kernels in RESOLVERS:
            kwargs["experimental_op_resolver_type"] = getattr(resolver, RESOLVERS[kernels])
        if preserve_all:
            kwargs["experimental_preserve_all_tensors"] = True
        from workbench.core.quiet import captured_output

        try:
            with captured_output(fds=(2,), python_streams=False):  # "Created TensorFlow Lite XNNPACK delegate"
                self.interp = mod.Interpreter(**kwargs)
                self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFormatError(f"LiteRT could not load '{handle.path}': {str(exc).strip().splitlines()[0]}",
                                   hint="The model may use an op this runtime lacks (see workbench inspect) or be corrupt.") from None
        self.kernels = kernels
        self.threads = threads
        self.handle = handle
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        self.inputs = tuple(_spec(d) for d in self._in)
        self.outputs = tuple(_spec(d) for d in self._out)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._run_all(x, first_only=True)[0]

    def _run_all(self, x: np.ndarray, first_only: bool = False) -> list[np.ndarray]:
        wanted = self._out[:1] if first_only else self._out
        outs: list[list[np.ndarray]] = [[] for _ in wanted]
        for sample in x:
            self.interp.set_tensor(self._in[0]["index"], sample[None].astype(self._in[0]["dtype"], copy=False))
            try:
                self.interp.invoke()
            except RuntimeError as exc:
                raise RuntimeFailure(f"LiteRT failed to run '{self.handle.path}': {exc}") from None
            for k, d in enumerate(wanted):
                outs[k].append(self.interp.get_tensor(d["index"]))
        return [np.concatenate(o) for o in outs]

    def output_names(self) -> tuple[tuple[str, ...], ...]:
        """The signature's output key (``output_0``, a Keras layer's name) first, then the tensor's name: the
        converter may order the subgraph's outputs differently from the signature."""
        keys = signature_outputs(self.interp)
        return tuple(((keys[d["index"]],) if d["index"] in keys else ()) + (d["name"],) for d in self._out)

    def invoke_raw(self, sample: np.ndarray) -> None:
        self.interp.set_tensor(self._in[0]["index"], sample)
        self.interp.invoke()

    def info(self) -> dict:
        return {"runtime": "litert", "module": self.module_name, "kernels": self.kernels, "threads": self.threads}


def signature_outputs(interp) -> dict[int, str]:
    """Tensor index -> output key of the model's only signature ({} without one, or with several)."""
    try:
        sigs = interp.get_signature_list()
        if len(sigs) != 1:
            return {}
        details = interp.get_signature_runner(next(iter(sigs))).get_output_details()
    except (ValueError, RuntimeError, AttributeError):  # a runtime without signature runners
        return {}
    return {int(d["index"]): str(key) for key, d in details.items()}


def _spec(d: dict):
    scale, zp = d.get("quantization", (0.0, 0))
    return spec_from(d["name"], tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name,
                     scale=float(scale) if scale else None, zero_point=int(zp) if scale else None)


RUNNERS.add("litert", LiteRTRunner)
