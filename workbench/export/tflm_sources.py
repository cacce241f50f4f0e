"""TensorFlow Lite Micro sources for a .tflite model: the MCU deployment artifact.

``write_tflm_project(model.tflite, out_dir)`` writes a folder with

* ``<name>_model_data.h`` / ``.cc`` (``.c`` for C): the model bytes as a 16-byte aligned
  ``const unsigned char g_<name>_model_data[]`` with its ``g_<name>_model_data_size``;
* ``<name>_model_settings.h``: the tensor arena size (measured by the TFLite Micro
  interpreter, plus a stated margin), input/output shapes, types, scales, zero points and
  the class labels;
* ``<name>_op_resolver.h``: ``RegisterOps`` adding exactly the ops the model uses to a
  ``tflite::MicroMutableOpResolver<N>`` of exactly that size;
* an example ``main.cc`` (or, with ``layout="arduino"``, an Arduino library with an
  example sketch), a README.md with the numbers, and ``manifest.json``.

Everything that comes from the model or the user (file name, tensor names, labels,
metadata) passes through :mod:`workbench.export.c_names`, so it can only ever be data.
The folder is built in a temporary folder beside ``out_dir`` and renamed into place.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from workbench.core.errors import (
    CheckFailed,
    ConfigError,
    DataError,
    InputFileError,
    OutputExistsError,
    ToolFailure,
    UnsupportedError,
)
from workbench.export.artifact import Artifact
from workbench.export.c_names import c_identifier, comment_text
from workbench.export.tflm_facts import ARENA_MARGIN, CTYPES, ArenaMargin, ArenaPlan, IoTensor, ModelFacts, TflmOptions
from workbench.export.tflm_ops import resolver_ops
from workbench.export.tflm_render import LANGS, LAYOUTS, md_text, render_files
from workbench.core.files import atomic_path, check_input_file, check_output, sha256_bytes, write_json_atomic

__all__ = ["write_tflm_project", "TflmOptions", "ArenaMargin", "ARENA_MARGIN", "LAYOUTS", "LANGS"]


# --------------------------------------------------------------------------- reading the model


def used_ops(data: bytes, where: str) -> list[tuple[str, bool]]:
    """Distinct ``(kind, custom)`` of the ops in every subgraph, in order of first use."""
    from workbench.frontends.tflite_reader import builtin_names, schema

    s = schema()
    try:
        model = s.Model.GetRootAs(data, 0)
        names = builtin_names()
        codes = []
        for k in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(k)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            if code == s.BuiltinOperator.CUSTOM:
                custom = oc.CustomCode()
                codes.append((custom.decode("utf-8", "replace") if custom else "CUSTOM", True))
            else:
                codes.append((names.get(code, f"BUILTIN_{code}"), False))
        seen: list[tuple[str, bool]] = []
        for g in range(model.SubgraphsLength()):
            sg = model.Subgraphs(g)
            for j in range(sg.OperatorsLength()):
                entry = codes[sg.Operators(j).OpcodeIndex()]
                if entry not in seen:
                    seen.append(entry)
    except (IndexError, ValueError, TypeError, OverflowError) as exc:
        from workbench.core.errors import ModelFormatError

        raise ModelFormatError(f"'{where}' has a corrupt operator table ({type(exc).__name__}: {exc}).",
                               hint="Re-export the model.") from None
    return seen


def _io_tensors(graph, indices: Sequence[int], where: str, what: str) -> tuple[IoTensor, ...]:
    out = []
    for pos, ti in enumerate(indices):
        t = graph.tensors[ti]
        if t.dtype not in CTYPES:
            raise UnsupportedError(
                f"'{where}': {what} {pos} ('{comment_text(t.name)}') is {t.dtype}; TensorFlow Lite Micro applications "
                f"can only use {', '.join(CTYPES)} inputs and outputs.",
                hint="Convert the model with int8 or float32 inputs and outputs.")
        # Model inputs and outputs are quantized per tensor; with per-channel parameters the
        # example code uses the first channel's.
        scale = t.scale[0] if t.scale else 0.0
        zp = t.zero_point[0] if t.scale and t.zero_point else 0
        shape = tuple(1 if d is None else int(d) for d in (t.shape or ()))
        out.append(IoTensor(position=pos, name=t.name, shape=shape, dtype=t.dtype, scale=float(scale), zero_point=int(zp)))
    return tuple(out)


def _choose_name(name: str | None, source: Path) -> tuple[str, str | None]:
    raw = name if name is not None else source.stem
    chosen = c_identifier(raw)
    what = "the name given" if name is not None else "the file name"
    if not chosen:
        raise ConfigError(
            f"Cannot make a C identifier from {what} ({comment_text(raw)!r}) for '{source.name}': nothing is left after "
            "keeping only letters, digits and '_'.",
            hint="Give one with --name, e.g. --name my_model")
    note = None
    if chosen != raw:
        note = (f"The C name `{chosen}` was made from {what} {md_text(raw)}: C identifiers allow only letters, digits "
                "and `_`, cannot start with a digit and cannot be a keyword. Choose another with `--name`.")
    return chosen, note


def _labels(labels, expected: int | None, where: str) -> tuple[str, ...] | None:
    if labels is None:
        return None
    source = "the labels given"
    if isinstance(labels, (str, os.PathLike)):
        p = check_input_file(labels, "labels")
        try:
            text = Path(p).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            raise InputFileError(f"Labels file '{p}' cannot be read as UTF-8 text ({exc}).",
                                 hint="Write one label per line, UTF-8.") from None
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
        source = f"labels file '{p}'"
    labels = tuple(str(x) for x in labels)
    if expected is not None and len(labels) != expected:
        raise DataError(
            f"Got {len(labels)} labels from {source}, but output 0 of '{where}' has {expected} elements.",
            hint="Give exactly one label per class, one per line, in the model's output order.")
    return labels


def _measure_arena(path: Path, given: int | None) -> tuple[int, str]:
    if given is not None:
        return given, "given by the caller (arena_bytes)"
    from workbench.runtimes.tflm import measure_arena_details

    m = measure_arena_details(path)
    version = f" {comment_text(m.tflite_micro, 40)}" if m.tflite_micro else ""
    return int(m.arena_bytes), f"measured by the TensorFlow Lite Micro{version} interpreter on this machine"


def _check_tflm(graph, where: str) -> None:
    """Float16, hybrid, Flex and custom ops, ops the installed TFLM lacks: refused with what would work."""
    from workbench.runtimes.tflm import check_tflm, raise_for_problems

    raise_for_problems(check_tflm(graph), where)


def _target_report(path: Path, target: str | None, assess: Callable[[Path], dict] | None) -> dict | None:
    """The emulation report of ``path`` on ``target``, made by the caller's ``assess`` (the emulate
    stage sits above export, so it is handed in rather than imported)."""
    if target is None or assess is None:
        return None
    d = dict(assess(path))
    d.setdefault("target", str(target))
    return d


def _check_fit(rep: dict | None, arena: ArenaPlan, force: bool, where: str) -> dict | None:
    """The emulation report with the arena margin counted; CheckFailed when it does not fit, unless ``force``.

    ``emulate`` counts the exact arena; the sources reserve the arena plus the margin, so
    the RAM is checked again with the margin included.
    """
    if rep is None:
        return None
    if rep.get("tool_failure"):  # no verdict on the model: never reported as "does not fit"
        detail = rep.get("tool_failure_detail") or {}
        err = ToolFailure(f"The fit of '{where}' on target '{rep.get('target')}' could not be checked: a tool failed, "
                          f"not the model: {rep['tool_failure']}",
                          hint=detail.get("hint") or "Run again, or see the estimate with `workbench emulate MODEL "
                                                     "--target NAME --no-firmware`.")
        err.exit_code = int(detail.get("exit_code") or ToolFailure.exit_code)  # 3 for a missing tool
        raise err
    reasons = [str(r) for r in rep.get("reasons") or ()] or _shortfalls(rep)
    fits = bool(rep.get("fits", True))
    # arena_bytes: the arena the report's RAM counts (the exact host arena for the estimate, arena_used_bytes()
    # + TFLM's margin on the firmware); the sources reserve arena.size instead
    ram, budget, exact = rep.get("ram_bytes"), rep.get("ram_budget_bytes"), rep.get("arena_bytes")
    if all(isinstance(v, int) for v in (ram, budget, exact)):
        with_margin = ram - exact + arena.size
        rep = {**rep, "ram_bytes_with_arena_margin": with_margin}
        if fits and with_margin > budget:
            fits = False
            reasons.append(f"RAM with the {arena.margin:,} B arena margin: needs {with_margin:,} B, "
                           f"{rep.get('target')} has {budget:,} B available (short by {with_margin - budget:,} B)")
    rep = {**rep, "fits": fits, "reasons": reasons}
    if not fits and not force:
        by = "; ".join(reasons) or "see `workbench emulate`"
        raise CheckFailed(f"'{where}' does not fit target '{rep.get('target')}': {by}.",
                          hint="Choose a bigger target, make the model smaller (int8, pruning), or pass --force "
                               "to write the sources anyway.")
    return rep


def _shortfalls(rep: dict) -> list[str]:
    """'flash needs N B, the target has M B (short by K B)' for each budget the report shows exceeded."""
    out = []
    for res in ("flash", "ram"):
        need, have = rep.get(f"{res}_bytes"), rep.get(f"{res}_budget_bytes")
        if isinstance(need, (int, float)) and isinstance(have, (int, float)) and need > have:
            out.append(f"{res} needs {int(need):,} B, the target has {int(have):,} B (short by {int(need - have):,} B)")
    return out


def _npu_readme(npu: dict) -> str:
    """What a firmware needs to run the NPU-compiled model (Arm Ethos-U through TFLite Micro)."""
    rows = "\n".join(f"| {md_text(str(k))} | {md_text(str(v))} |" for k, v in npu.items() if k != "command")
    return f"""
## Arm Ethos-U

The model data is the Vela-compiled model: the operators Vela offloaded are one `ethos-u` custom
operator (registered by `AddEthosU()` in the op resolver), the rest run on the CPU in TFLite Micro.
Your firmware needs:

- TFLite Micro built with the Ethos-U kernel (`CO_PROCESSOR=ethos_u ETHOSU_ARCH=u55` or `u65`/`u85`
  in TFLite Micro's Makefile) and Arm's Ethos-U core driver (`ethos-u-core-driver`) initialised for
  your board's NPU base address and interrupt before the interpreter is created;
- the tensor arena and the model placed where Vela assumed (the memory mode below: with
  `Shared_Sram` the arena must be in SRAM the NPU can reach; with `Dedicated_Sram` a separate
  cache of `arena_cache_size` bytes in fast SRAM), and 16-byte alignment for both;
- the same Vela configuration as here if you recompile:

| Vela | value |
|---|---|
{rows}
"""


# --------------------------------------------------------------------------- entry point


def write_tflm_project(tflite_path, out_dir, *, name: str | None = None, target: str | None = None,
                       layout: str = "plain", lang: str = "cpp", labels=None, section: str | None = None,
                       force: bool = False, overwrite: bool = False, arena_bytes: int | None = None,
                       margin: ArenaMargin = ARENA_MARGIN, assess: Callable[[Path], dict] | None = None,
                       strip: str = "none", compress_bits: int | None = None, npu: dict | None = None) -> Artifact:
    """Write TensorFlow Lite Micro sources for ``tflite_path`` into the folder ``out_dir``.

    ``labels``: class labels for output 0, as a sequence of strings or a path to a UTF-8
    file with one label per line. ``arena_bytes``: the interpreter's arena need, if it is
    already known (skips the measurement; the margin is still added). ``target``: a
    target profile name; with ``assess`` (a function giving the emulation report of a
    .tflite on that target as a dict, e.g. ``workbench.api.export_tflm`` passes
    ``emulate(path, target).to_dict``) a model that does not fit raises CheckFailed unless ``force``. ``strip``: one of
    ``STRIP_LEVELS`` ("none" keeps the bytes given; "portable" / "tflm" write the model stripped by
    :mod:`workbench.export.strip`, checked bit-identical, with the C comments still naming the original's
    tensors). ``compress_bits``: LUT-compress constant tensors with at most 2**bits distinct values first
    (:mod:`workbench.export.compress`; checked bit-identical in TFLM). Returns an Artifact of format "tflm" whose manifest
    (``manifest.json`` in the folder) is already written. ``npu``: facts of the NPU compiler that made
    ``tflite_path`` (Vela for Ethos-U: accelerator, system config, memory mode, SRAM, flash); the
    ``ethos-u`` operator is then expected (TFLM runs it through the Ethos-U driver, not on this machine),
    and the README says what the firmware needs.
    """
    src = check_input_file(tflite_path)
    if not src.is_file():
        raise InputFileError(f"Model '{src}' is not a file.", hint="Give the path of a .tflite file.")
    opts = TflmOptions(name=name, target=target, layout=layout, lang=lang,
                       labels=None if labels is None or isinstance(labels, (str, os.PathLike)) else tuple(labels),
                       section=section, force=force, overwrite=overwrite, arena_bytes=arena_bytes, strip=strip,
                       compress_bits=compress_bits)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)

    from workbench.frontends.tflite_reader import read_tflite_bytes

    data = src.read_bytes()
    where = src.name
    graph = read_tflite_bytes(data, str(src))
    c_name, note = _choose_name(name, src)
    if npu is None:
        _check_tflm(graph, where)
    elif arena_bytes is None:
        raise ConfigError(f"'{where}' is compiled for an NPU: give its arena size (the NPU compiler reports it).")
    ops = resolver_ops(used_ops(data, where), where)
    inputs = _io_tensors(graph, graph.inputs, where, "input")
    outputs = _io_tensors(graph, graph.outputs, where, "output")
    label_list = _labels(labels, outputs[0].elements if outputs else None, where)
    opts = replace(opts, labels=label_list)
    with _deployed(src, data, strip, compress_bits) as (deployed, stripped, compressed):
        if compressed is not None:  # the DECODE operator joins the resolver
            ops = resolver_ops(used_ops(deployed.read_bytes(), where), where)
        data = deployed.read_bytes()
        measured, how = _measure_arena(deployed, arena_bytes)
        arena = margin.plan(measured, how)
        report = _check_fit(_target_report(deployed, target, assess), arena, force, where)

    facts = ModelFacts(name=c_name, name_note=note, source_name=src.name, data=data, sha256=sha256_bytes(data),
                       description=str(graph.meta.get("description", "")), ops=ops, inputs=inputs, outputs=outputs,
                       labels=label_list, arena=arena, target=report,
                       resource_variables=sum(1 for op in graph.ops if op.kind == "VAR_HANDLE"))
    files = render_files(facts, opts)
    if npu is not None:
        files["README.md"] += _npu_readme(npu)
    metrics = {"model_bytes": facts.size, "arena_bytes": arena.size, "arena_measured_bytes": arena.measured,
               "arena_margin_bytes": arena.margin, "arena_measured_by": how, "op_count": len(ops),
               "ops": [op.kind for op in ops]}
    if npu is not None:
        metrics["npu"] = npu
    if stripped is not None:
        metrics["strip"] = stripped
    if compressed is not None:
        metrics["compression"] = compressed
    if report is not None:
        metrics.update({k: report.get(k) for k in ("target", "latency_ms", "fits", "flash_bytes", "ram_bytes",
                                                   "ram_bytes_with_arena_margin", "method")})
    config = {"format": "tflm", **opts.to_dict(), "c_name": c_name, "arena_margin": {
        "fraction": margin.fraction, "minimum": margin.minimum, "reason": margin.reason}}

    with atomic_path(out, suffix="") as tmp:
        tmp.mkdir()
        for rel, text in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8", newline="\n")
        artifact = Artifact(path=tmp, format="tflm", source=src, config=config, metrics=metrics,
                            extra={"files": sorted(files)})
        manifest = artifact.manifest()
        manifest["artifact"]["path"] = out.name
        write_json_atomic(tmp / "manifest.json", manifest)
    return replace(artifact, path=out)


def write_deployed(src: Path, dest: Path, level: str, compress_bits: int | None = None) -> dict:
    """Write to ``dest`` the model TFLM sources would hold (LUT-compressed and/or stripped, checked
    bit-identical); returns {"strip": report, "compression": report} for what was done."""
    src = Path(src)
    with _deployed(src, src.read_bytes(), level, compress_bits) as (path, stripped, compressed):
        Path(dest).write_bytes(Path(path).read_bytes())
    return {k: v for k, v in (("strip", stripped), ("compression", compressed)) if v is not None}


@contextmanager
def _deployed(src: Path, data: bytes, level: str, compress_bits: int | None = None):
    """(path of the model the sources hold, strip report, compression report): the model LUT-compressed
    (when ``compress_bits``) and stripped (unless level "none") in a temporary folder, checked
    bit-identical to ``src`` (in TFLM only once compressed: LiteRT has no DECODE kernel), or ``src`` itself."""
    if level == "none" and not compress_bits:
        yield src, None, None
        return
    import tempfile

    from workbench.export.strip import RUNTIMES, strip_tflite, verify_identical

    out, crep, srep = data, None, None
    if compress_bits:
        from workbench.export.compress import compress_tflite

        out, crep = compress_tflite(out, src.name, max_bits=compress_bits)
    if level != "none":
        out, srep = strip_tflite(out, src.name, level)
    with tempfile.TemporaryDirectory(prefix="workbench-strip-") as tmp:
        path = Path(tmp) / src.name
        path.write_bytes(out)
        checked = verify_identical(src, path, runtimes=("tflm",) if compress_bits else RUNTIMES[level])
        yield (path, None if srep is None else {**srep.to_dict(), "level": level, "verify": checked},
               None if crep is None else {**crep.to_dict(), "max_bits": compress_bits, "verify": checked})


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless --overwrite, and never replace a folder we did not write."""
    check_output(out, overwrite, folder=True)
    if out.is_dir() and any(out.iterdir()):
        import json

        try:
            ours = json.loads((out / "manifest.json").read_text())["artifact"]["format"] == "tflm"
        except (OSError, ValueError, KeyError, TypeError):
            ours = False
        if not ours:
            raise OutputExistsError(
                f"Output folder '{out}' exists and was not written by `workbench export --format tflm` "
                "(no manifest.json of format tflm in it); refusing to replace it.",
                hint="Choose a new folder with -o; --overwrite only replaces a previous TFLM export.")
