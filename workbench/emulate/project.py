"""TFLite Micro sources checked against a target: the export stage writes them, this stage
judges the fit (``emulate``) and hands the report in."""

from __future__ import annotations

from workbench.export.tflm_sources import write_tflm_project as _write


def assess_on(target, firmware: bool | None = None):
    """The ``assess`` function the export stage takes: the emulation report of a .tflite on ``target``
    (on the firmware where it can be built, see ``emulate``)."""
    import workbench.emulate as stage  # looked up at call time, so tests can stand in for it

    if firmware is None:  # the signature tests stand in for is emulate(path, target)
        return lambda path: stage.emulate(path, target).to_dict()
    return lambda path: stage.emulate(path, target, firmware=firmware).to_dict()


def write_tflm_project(tflite_path, out_dir, *, target=None, firmware: bool | None = None, **kw):
    """:func:`workbench.export.tflm_sources.write_tflm_project` with the fit on ``target`` checked
    (a model that does not fit raises CheckFailed unless ``force=True``)."""
    if target is not None:
        kw.setdefault("assess", assess_on(target, firmware))
    return _write(tflite_path, out_dir, target=target, **kw)


def verifier(target, tflm_dir=None, layout: str = "plain", lang: str = "cpp"):
    """The ``verify`` function the export stage takes: build the exported project's firmware for
    ``target``, run one inference on QEMU and check it against the host TFLite Micro interpreter
    and the target's memories. CheckFailed (exit 1) when it does not compile, link, fit or match."""

    def verify(tflite_path, artifact) -> dict:
        return verify_project(tflite_path, target, tflm_dir=tflm_dir, layout=layout, lang=lang)

    return verify


def verify_project(tflite_path, target, *, tflm_dir=None, layout: str = "plain", lang: str = "cpp", seed: int = 0) -> dict:
    import numpy as np

    from workbench.core.errors import CheckFailed, RuntimeFailure, UnsupportedError
    from workbench.emulate.firmware import run_firmware
    from workbench.emulate.targets import load_target
    from workbench.frontends import load
    from workbench.runtimes.tflm import TflmRunner

    tgt = load_target(target)
    handle = load(tflite_path)
    spec = handle.inputs[0]
    rng = np.random.default_rng(seed)
    shape = (1, *[int(d) for d in spec.shape[1:]])
    dt = np.dtype(spec.dtype)
    x = (rng.integers(np.iinfo(dt).min, np.iinfo(dt).max + 1, size=shape).astype(dt) if np.issubdtype(dt, np.integer)
         else rng.standard_normal(shape).astype(dt))
    try:
        fw = run_firmware(tflite_path, tgt, inputs=x, tflm_dir=tflm_dir, layout=layout, lang=lang)
    except (RuntimeFailure, UnsupportedError) as exc:
        raise CheckFailed(f"The exported project does not build or run for {tgt.name}: {exc.message}",
                          hint=exc.hint) from exc
    host = np.asarray(TflmRunner(handle)._run(x))
    got = np.asarray(fw.outputs[0] if isinstance(fw.outputs, tuple) else fw.outputs).reshape(host.shape)
    if np.issubdtype(host.dtype, np.integer):
        diff = int(np.abs(host.astype(np.int64) - got.astype(np.int64)).max())
        same = diff == 0
    else:
        diff = float(np.abs(host.astype(np.float64) - got.astype(np.float64)).max())
        same = diff <= 1e-5 * max(1.0, float(np.abs(host).max()))
    result = {"target": tgt.name, "machine": fw.machine, "built": True, "flash_bytes": fw.flash_bytes, "ram_bytes": fw.ram_bytes,
              "flash_budget_bytes": tgt.flash_bytes, "ram_budget_bytes": tgt.ram_bytes, "instructions": fw.instructions,
              "latency_ms": fw.latency_ms, "max_output_difference": diff, "matches_host_tflm": same,
              "fits": fw.flash_bytes <= (tgt.flash_bytes or fw.flash_bytes) and fw.ram_bytes <= tgt.ram_bytes}
    problems = []
    if not result["fits"]:
        problems.append(f"the firmware needs {fw.flash_bytes:,} B flash and {fw.ram_bytes:,} B RAM; {tgt.name} has "
                        f"{tgt.flash_bytes:,} B and {tgt.ram_bytes:,} B")
    if not same:
        problems.append(f"its output differs from the host TFLite Micro interpreter's by {diff} on the same input")
    if problems:
        raise CheckFailed(f"The exported project was built and run for {tgt.name}, but " + "; ".join(problems) + ".",
                          hint="The sources are written to the output folder; fix what is named and export again.")
    return result


def npu_compiler(target):
    """The ``npu`` function the export stage takes for a board with an NPU: Vela with the board's
    configuration; returns the compiled model and the facts its README and manifest carry."""
    from workbench.emulate.npu.ethos_u import vela_options
    from workbench.emulate.targets import load_target
    from workbench.export.vela import compile_for_npu

    tgt = load_target(target)
    opts = vela_options(tgt)

    def compile_model(path):
        r = compile_for_npu(path, opts)
        facts = {"compiler": "vela", "target": tgt.name, **opts.to_dict(), "npu_ops": r.npu_ops,
                 "cpu_ops": [c.get("op") for c in r.cpu_ops], "arena_bytes": int(r.sram_bytes) or 16,
                 "sram_bytes": int(r.sram_bytes), "flash_bytes": int(r.flash_bytes),
                 "original_weight_bytes": int(r.original_weight_bytes), "encoded_weight_bytes": int(r.encoded_weight_bytes)}
        return r.compiled, facts

    return compile_model
