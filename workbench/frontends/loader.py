"""``load(path)``: sniff the format, then hand over to the loader registered for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.frontends.detect import detect_format
from workbench.frontends.handle import ModelHandle, TensorSpec
from workbench.core.registry import Registry


@dataclass(frozen=True)
class LoadOptions:
    trust_model: bool = False  # allow code execution from the file (full pickles, Keras Lambda layers)
    factory: str | None = None  # "package.module:function" building the nn.Module for a state_dict
    input_shape: tuple | None = None  # overrides what the model records (batch included)
    # For graphs that cannot tell (TF1 frozen graphs): ((name, shape or None), ...) and (name, ...)
    graph_inputs: tuple = ()
    graph_outputs: tuple[str, ...] = ()


LOADERS: Registry[Callable[[Path, LoadOptions], ModelHandle]] = Registry("model format")


def load(path: str | Path, options: LoadOptions | None = None, **kw) -> ModelHandle:
    opts = options or LoadOptions(**kw)
    p = Path(path)
    fmt = detect_format(p)
    _register_builtin()
    handle = LOADERS.get(fmt)(p, opts)
    handle.meta["load_options"] = opts  # a child process re-loads the same model (workbench.core.isolate)
    if opts.input_shape is not None and handle.inputs:
        first = handle.inputs[0]
        from dataclasses import replace

        from workbench.frontends.handle import guess_layout

        shape = tuple(opts.input_shape)
        handle = handle.with_inputs((replace(first, shape=shape, layout=first.layout or guess_layout(shape)),) + handle.inputs[1:])
    return handle


_registered = False


def _register_builtin() -> None:
    # The per-framework modules register themselves on import; none of them imports a
    # framework at module level, so importing all of them stays cheap.
    global _registered
    if not _registered:
        from workbench.frontends import executorch_models, graphdef, keras_models, light, torch_models  # noqa: F401

        _registered = True


def spec_from(name: str, shape, dtype: str, layout: str | None = None, scale=None, zero_point=None) -> TensorSpec:
    from workbench.frontends.handle import guess_layout

    shape = tuple(None if (d is None or (isinstance(d, int) and d < 0)) else int(d) for d in shape)
    return TensorSpec(name=name, shape=shape, dtype=dtype, layout=layout or guess_layout(shape), scale=scale, zero_point=zero_point)
