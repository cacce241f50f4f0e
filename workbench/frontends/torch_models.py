"""PyTorch loaders: TorchScript, ExportedProgram (.pt2), and checkpoints plus a model factory.

Safety: checkpoints load with ``torch.load(weights_only=True)``; a file that needs full
unpickling (which can run arbitrary code) is refused unless --trust-model is given.
TorchScript and ExportedProgram archives hold TorchScript/ATen graphs that are run by
torch itself; loading one trusts the file's graph.
"""

from __future__ import annotations

from pathlib import Path

from workbench.core.errors import ConfigError, ModelFormatError, UnsafeModelError
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import LOADERS, LoadOptions, spec_from
from workbench.core.quiet import import_quietly


def import_torch():
    return import_quietly("torch", extra="torch", purpose="Loading PyTorch models")


def eval_mode(model) -> None:
    """model.eval(), which an ExportedProgram's module refuses (it is already in inference form)."""
    try:
        model.eval()
    except (NotImplementedError, RuntimeError):
        pass


def _first_line(exc: Exception) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


def _specs(model, shape, path: Path):
    torch = import_torch()
    if shape is None:
        shape = getattr(model, "input_shape", None)
    ins = (spec_from("input", tuple(shape), "float32", layout="NCHW" if len(shape) == 4 else None),) if shape else ()
    outs = ()
    if shape and isinstance(model, torch.nn.Module):
        try:
            eval_mode(model)
            with torch.no_grad():
                y = model(torch.zeros(*[d or 1 for d in shape]))
            ys = y if isinstance(y, (tuple, list)) else (y,)
            outs = tuple(spec_from(f"output_{i}", tuple(t.shape), str(t.dtype).replace("torch.", "")) for i, t in enumerate(ys))
        except Exception as exc:
            raise ModelFormatError(
                f"The PyTorch model from '{path}' fails on an input of shape {tuple(shape)}: {_first_line(exc)}.",
                hint="Pass the shape it expects with --input-shape (batch first, e.g. 1,1,28,28).",
            ) from None
    return ins, outs


@LOADERS.register("torchscript")
def load_torchscript(path: Path, opts: LoadOptions) -> ModelHandle:
    torch = import_torch()
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelFormatError(f"torch.jit.load could not read '{path}': {_first_line(exc)}",
                               hint="The archive is probably truncated or corrupted; save it again.") from None
    ins, outs = _specs(model, opts.input_shape, path)
    return ModelHandle(path=path, format="torchscript", framework="torch", inputs=ins, outputs=outs, obj=model)


@LOADERS.register("exported_program")
def load_exported_program(path: Path, opts: LoadOptions) -> ModelHandle:
    torch = import_torch()
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelFormatError(f"torch.export.load could not read '{path}': {_first_line(exc)}",
                               hint="The archive is probably truncated or corrupted; save it again.") from None
    shape = opts.input_shape
    if shape is None:
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
        if placeholders and "val" in placeholders[0].meta:
            # a symbolic (dynamic) dimension runs as 1 on the edge; its export hint is not a real size
            shape = tuple(d if isinstance(d, int) else 1 for d in placeholders[0].meta["val"].shape)
    module = ep.module()
    ins, outs = _specs(module, shape, path)
    return ModelHandle(path=path, format="exported_program", framework="torch", inputs=ins, outputs=outs, obj=module,
                       meta={"exported_program": ep})


def _load_checkpoint(path: Path, opts: LoadOptions):
    torch = import_torch()
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not opts.trust_model:
            raise UnsafeModelError(
                f"'{path}' is a full Python pickle, not a plain checkpoint: loading it could run code stored in the file "
                f"({_first_line(exc)[:160]}).",
                hint="It is refused by default (torch.load weights_only=True). If you trust the file, pass --trust-model; "
                "better, save a state_dict and pass --factory package.module:function.",
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelFormatError(f"torch.load could not read '{path}': {_first_line(exc)}",
                               hint="The file is probably truncated or corrupted; save it again.") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelFormatError(f"torch.load could not read '{path}': {_first_line(exc)}") from None


def _load_checkpoint_model(path: Path, opts: LoadOptions, fmt: str) -> ModelHandle:
    torch = import_torch()
    obj = _load_checkpoint(path, opts)
    if isinstance(obj, torch.nn.Module):
        model = obj
    else:
        state = obj.get("state_dict", obj.get("model_state_dict", obj)) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelFormatError(f"'{path}' holds a {type(obj).__name__}, not a state_dict or model.")
        if not opts.factory:
            raise ConfigError(
                f"'{path}' is a state_dict (weights only): a model factory is needed to build the network.",
                hint="Pass --factory package.module:function, a function returning the nn.Module.",
            )
        from workbench.core.callables import resolve

        model = resolve(opts.factory, "model factory")()
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelFormatError(f"The weights in '{path}' do not fit the model from '{opts.factory}': {_first_line(exc)}") from None
    eval_mode(model)
    ins, outs = _specs(model, opts.input_shape, path)
    return ModelHandle(path=path, format=fmt, framework="torch", inputs=ins, outputs=outs, obj=model,
                       meta={"factory": opts.factory})


@LOADERS.register("state_dict")
def load_state_dict(path: Path, opts: LoadOptions) -> ModelHandle:
    return _load_checkpoint_model(path, opts, "state_dict")


@LOADERS.register("pickle")
def load_pickle(path: Path, opts: LoadOptions) -> ModelHandle:
    return _load_checkpoint_model(path, opts, "pickle")
