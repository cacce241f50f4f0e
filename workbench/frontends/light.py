"""Loaders for the formats the core install reads: .tflite, .onnx and .ort."""

from __future__ import annotations

from pathlib import Path

from workbench.core.errors import InputFileError, ModelFormatError
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import LOADERS, LoadOptions, spec_from
from workbench.frontends.onnx_reader import read_onnx
from workbench.frontends.tflite_reader import read_tflite, tensor_scale_zp
from workbench.frontends.graph import Graph


def _specs(graph: Graph, idx) -> tuple:
    out = []
    for i in idx:
        t = graph.tensors[i]
        scale, zp = tensor_scale_zp(t)
        out.append(spec_from(t.name, t.shape or (), t.dtype, scale=scale, zero_point=zp))
    return tuple(out)


@LOADERS.register("tflite")
def load_tflite(path: Path, opts: LoadOptions) -> ModelHandle:
    g = read_tflite(path)
    return ModelHandle(path=path, format="tflite", framework="tflite", inputs=_specs(g, g.inputs),
                       outputs=_specs(g, g.outputs), meta={"graph": g})


@LOADERS.register("onnx")
def load_onnx(path: Path, opts: LoadOptions) -> ModelHandle:
    g = read_onnx(path)
    for name in g.meta.get("external_data", ()):
        if not (path.parent / name).is_file():
            raise InputFileError(f"'{path}' keeps its weights in the external data file '{name}', which is not beside it "
                                 f"(looked for '{path.parent / name}').",
                                 hint="Copy the .onnx file together with its .data file, or re-export with "
                                 "torch.onnx.export(..., external_data=False) for a single file.")
    return ModelHandle(path=path, format="onnx", framework="onnx", inputs=_specs(g, g.inputs),
                       outputs=_specs(g, g.outputs), meta={"graph": g})


@LOADERS.register("ort")
def load_ort(path: Path, opts: LoadOptions) -> ModelHandle:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelFormatError(f"ONNX Runtime could not load '{path}': {str(exc).splitlines()[0]}") from None
    conv = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int64)": "int64",
            "tensor(float16)": "float16", "tensor(int32)": "int32"}
    ins = tuple(spec_from(i.name, [d if isinstance(d, int) else None for d in i.shape], conv.get(i.type, i.type)) for i in sess.get_inputs())
    outs = tuple(spec_from(o.name, [d if isinstance(d, int) else None for d in o.shape], conv.get(o.type, o.type)) for o in sess.get_outputs())
    from workbench.frontends.ort_reader import read_ort

    return ModelHandle(path=path, format="ort", framework="onnx", inputs=ins, outputs=outs, meta={"graph": read_ort(path)})
