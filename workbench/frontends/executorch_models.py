"""ExecuTorch programs (.pte): loading reads the flatbuffer itself (:mod:`workbench.frontends.pte_reader`,
no torch); running them needs ExecuTorch's runtime, whose Python bindings link against libtorch
(``executorch.runtime`` imports torch), imported here lazily by :func:`open_program`.
"""

from __future__ import annotations

from pathlib import Path

from workbench.core.errors import ModelFormatError, UnsupportedError
from workbench.core.quiet import captured_output, import_quietly
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import LOADERS, LoadOptions, spec_from
from workbench.frontends.pte_reader import SCALAR_TYPES  # the runtime's TensorInfo.dtype() uses the same codes

METHOD = "forward"


def import_runtime():
    """``executorch.runtime`` (it imports torch and prints CPU-probing lines from C++: kept off the terminal)."""
    return import_quietly("torch", "executorch.runtime", extra="executorch", purpose="Running ExecuTorch (.pte) programs")


# Operator namespaces whose kernels live in a runtime build of their own, and what that build is.
KERNEL_BUILDS = {"cortex_m": "an ExecuTorch runtime built with the cortex_m kernels (CMSIS-NN) for a Cortex-M board"}


def missing_operators(path: Path) -> list[str]:
    """The program's operators this runtime has no kernel for (read from the file, checked against the
    runtime's registry), so a refusal names them instead of the loader's bare error code."""
    from executorch.extension.pybindings import portable_lib

    from workbench.frontends.pte_reader import read_pte

    method = read_pte(path).method(METHOD)
    have = set(portable_lib._get_operator_names())
    return [op for op in (method.operators if method else ()) if op not in have]


def refuse_missing(path: Path, missing: list[str]) -> UnsupportedError:
    spaces = sorted({op.split("::", 1)[0] for op in missing})
    needs = "; ".join(KERNEL_BUILDS[s] for s in spaces if s in KERNEL_BUILDS)
    return UnsupportedError(f"The ExecuTorch runtime here has no kernel for {', '.join(missing)} in '{path}'.",
                            hint=(f"The program needs {needs}; it cannot run on this host. " if needs else "")
                                 + "Export for this host instead (--format executorch without an MCU --target).")


def open_program(path: Path, **kwargs):
    """(program, forward method) of a .pte; a file the runtime refuses is a ModelFormatError naming why, a
    program with operators this runtime lacks an UnsupportedError naming them."""
    rt = import_runtime()
    missing = missing_operators(path)
    if missing:
        raise refuse_missing(path, missing)
    try:
        with captured_output(python_streams=False):
            program = rt.Runtime.get().load_program(Path(path), **kwargs)
            if METHOD not in program.method_names:
                raise ModelFormatError(f"The ExecuTorch program '{path}' has no '{METHOD}' method "
                                       f"(it has: {', '.join(sorted(program.method_names)) or 'none'}).",
                                       hint="Export the model's forward with torch.export and executorch.exir.")
            method = program.load_method(METHOD)
    except ModelFormatError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise ModelFormatError(f"The ExecuTorch runtime could not load '{path}': {(msg[0] if msg else type(exc).__name__)[:300]}",
                               hint="The file may be truncated, from another ExecuTorch version, or need a backend or "
                                    "operator this runtime was built without (see the runtime's log with --debug).") from None
    return program, method


def tensor_specs(meta, count: int, get, prefix: str) -> tuple:
    out = []
    for i in range(count):
        info = get(i)
        dtype = SCALAR_TYPES.get(int(info.dtype()), f"scalar_type_{int(info.dtype())}")
        out.append(spec_from(f"{prefix}_{i}", tuple(int(d) for d in info.sizes()), dtype))
    return tuple(out)


def method_specs(method) -> tuple[tuple, tuple]:
    meta = method.metadata
    ins = tensor_specs(meta, meta.num_inputs(), meta.input_tensor_meta, "input")
    outs = tensor_specs(meta, meta.num_outputs(), meta.output_tensor_meta, "output")
    return ins, outs


@LOADERS.register("pte")
def load_pte(path: Path, opts: LoadOptions) -> ModelHandle:
    from workbench.frontends.pte_reader import read_pte

    program = read_pte(path)
    method = program.method(METHOD)
    if method is None:
        raise ModelFormatError(f"The ExecuTorch program '{path}' has no '{METHOD}' method (it has: "
                               f"{', '.join(m.name for m in program.methods) or 'none'}).",
                               hint="Export the model's forward with torch.export and executorch.exir.")

    def specs(tensors, prefix):
        return tuple(spec_from(f"{prefix}_{i}", t.shape, t.dtype) for i, t in enumerate(tensors) if t is not None)

    return ModelHandle(path=path, format="pte", framework="executorch", inputs=specs(method.inputs, "input"),
                       outputs=specs(method.outputs, "output"), meta={"method": METHOD, "program": program})
