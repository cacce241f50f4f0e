"""TorchScript modules (``torch.jit.trace`` / ``torch.jit.script`` files) to ONNX, and on from there.

torch.export cannot trace a ScriptModule, so the dynamo exporter and litert-torch are out; the
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) takes ScriptModules as they are,
and carries data-dependent ``if`` and loops as ONNX ``If`` / ``Loop``. Every export is run against the
TorchScript module (max abs error, argmax agreement) and fails above the float tolerance.

What it cannot carry is refused before any work, by a scan of the inlined ``forward`` graph:

- module state written in ``forward`` (``self.x = ...``, ``prim::SetAttr``; streaming models keep their
  context this way): an ONNX graph has no state, and the exporter silently freezes such attributes at their
  current values (measured: a scripted ``self.state = y`` exports "fine" as a constant);
- ``forward`` arguments that are not tensors (an int sample rate, a flag): the exporter bakes them in.

Other failures of the exporter are reported with the construct and the source line it names.
int8 (and every ONNX Runtime scheme) quantizes the float ONNX with :mod:`workbench.export.onnx_quant`;
.tflite goes through the ONNX -> TFLite exporter when one is registered, else it is refused naming the route.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

from workbench.core.errors import ConfigError, RuntimeFailure, UnsupportedError
from workbench.core.quiet import captured_output
from workbench.export import parity
from workbench.export.engine import EXPORTERS, REFUSALS, ExportJob
from workbench.frontends.handle import ModelHandle

OPSET = 17  # the TorchScript exporter's best-tested opset


def forward_constructs(model) -> dict:
    """Counts of the constructs in the inlined forward graph: control flow, state writes, non-tensor inputs."""
    import torch

    graph = model.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    kinds: Counter = Counter()
    state: list[str] = []

    def walk(block):
        for node in block.nodes():
            kinds[node.kind()] += 1
            if node.kind() == "prim::SetAttr" and node.s("name") not in state:
                state.append(node.s("name"))
            for sub in node.blocks():
                walk(sub)

    walk(graph)
    args = [(i.debugName().split(".")[0], str(i.type())) for i in list(graph.inputs())[1:]]
    return {"if": kinds["prim::If"], "loop": kinds["prim::Loop"], "state": state,
            "non_tensor_args": [(n, t) for n, t in args if not t.startswith("Tensor") and t != "Tensor"]}


def precheck_onnx(handle: ModelHandle) -> None:
    if handle.format != "torchscript":
        return
    found = forward_constructs(handle.obj)
    if found["state"]:
        names = ", ".join(f"self.{n}" for n in found["state"][:8])
        raise UnsupportedError(
            f"'{handle.path}' is TorchScript whose forward writes module state ({names}: prim::SetAttr). The ONNX exporter "
            "cannot carry state: it would freeze those attributes at their current values, and the exported graph would "
            "compute something else from the second call on.",
            hint="Export a stateless step from the original module (the state as an extra input and output), or run this "
                 "file with PyTorch (workbench benchmark / profile).")
    if found["non_tensor_args"]:
        args = ", ".join(f"{n} ({t})" for n, t in found["non_tensor_args"])
        raise UnsupportedError(
            f"'{handle.path}' is TorchScript whose forward takes non-tensor arguments: {args}. The ONNX exporter bakes such "
            "values into the graph as constants, so the file cannot be exported as it is.",
            hint="Wrap the module in one whose forward takes only the input tensor (fixing the other arguments), script "
                 "or trace that, and save it again.")
    if not handle.inputs or not handle.inputs[0].shape or None in handle.inputs[0].shape:
        raise ConfigError(f"The input shape of the TorchScript module '{handle.path}' is unknown (the file does not record it).",
                          hint="Pass --input-shape, batch first (e.g. 1,1,28,28).")


def precheck_via_onnx(fmt: str):
    """TorchScript to ``fmt`` (not ONNX): through ONNX when an ONNX -> ``fmt`` exporter is registered, else refused."""

    def check(handle: ModelHandle) -> None:
        if handle.format != "torchscript":
            return
        if EXPORTERS.find(("onnx", fmt)) is None:
            reason = REFUSALS.get(("onnx", fmt), f"no ONNX -> {fmt} exporter is registered")
            raise UnsupportedError(
                f"'{handle.path}' is TorchScript: torch.export (which litert-torch uses) cannot trace a ScriptModule, so "
                f"its only way to {fmt} is TorchScript -> ONNX -> {fmt}. {reason.split('. ')[0].rstrip('.')}.",
                hint="Export it to ONNX instead (--format onnx; int8 with quantize --format onnx), or save an "
                     "ExportedProgram (.pt2) from the original Python module for the direct path.")
        precheck_onnx(handle)

    return check


def export_torchscript_onnx(job: ExportJob, out: Path) -> dict:
    """The float ONNX of a TorchScript module, checked against the module on the same inputs."""
    import torch

    h = job.handle
    model = h.obj
    shape = tuple(h.inputs[0].shape)
    found = forward_constructs(model)
    try:
        with captured_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no signature found for <torch.ScriptMethod>": ScriptModules have none
            torch.onnx.export(model, (torch.zeros(*shape),), str(out), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"])
    except Exception as exc:
        raise RuntimeFailure(_exporter_message(h, exc, found),
                             hint="Rewrite that construct in the original module (or trace instead of script it) and save "
                                  "again; --debug shows the exporter's traceback.") from None
    recipe = {"exporter": "torch.onnx.export (TorchScript, dynamo=False)", "opset": OPSET,
              "control_flow": {"if": found["if"], "loop": found["loop"]}}
    x = parity.parity_inputs(shape, job.calib, samples=parity.SAMPLES * max(1, int(shape[0] or 1)))
    batches = max(1, len(x) // int(shape[0] or 1))
    x = x[: batches * int(shape[0] or 1)]
    ref = parity.run_model(h, x)
    cand = parity.run_model(out, x)
    recipe["parity"] = parity.check(ref, cand, f"TorchScript -> ONNX export of '{h.path}'")
    return recipe


def _exporter_message(h: ModelHandle, exc: Exception, found: dict) -> str:
    text = str(exc)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    first = re.sub(r"\s*\[Caused by.*", "", first)
    lines = text.splitlines()
    where = ""
    for i, ln in enumerate(lines):
        if "<--- HERE" in ln and i > 0:
            loc = next((l for l in reversed(lines[:i]) if re.search(r"line \d+", l)), "")
            m = re.search(r"line (\d+)", loc)
            where = f" at `{lines[i - 1].strip()}`" + (f" (line {m.group(1)})" if m else "")
            break
    flow = f"; the module has {found['if']} if and {found['loop']} loop constructs" if found["if"] or found["loop"] else ""
    return f"The ONNX exporter cannot carry a construct of the TorchScript module '{h.path}'{where}: {first[:300]}{flow}."


def via_onnx(job: ExportJob, fmt: str) -> dict:
    """TorchScript -> float ONNX (parity-checked) -> the registered ONNX -> ``fmt`` exporter."""
    from workbench.frontends import load

    exp = EXPORTERS.find(("onnx", fmt))
    if exp is None:
        precheck_via_onnx(fmt)(job.handle)
    with tempfile.TemporaryDirectory(prefix="workbench-ts-") as tmp:
        f = Path(tmp) / "torchscript.onnx"
        first = export_torchscript_onnx(replace(job, config=replace(job.config, scheme="float")), f)
        onnx_handle = load(f)
        rest = exp.run(replace(job, handle=onnx_handle))
    return {"route": f"torchscript -> onnx -> {fmt}", "torchscript_to_onnx": first, **(rest or {})}
