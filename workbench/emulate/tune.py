"""Choose each convolution's form by running both on the target's firmware.

A CONV_2D over a one-channel input can be written as a DEPTHWISE_CONV_2D and back
(:mod:`workbench.export.conv_forms`); CMSIS-NN runs the two with different kernels whose cost depends
on the layer. :func:`tune_conv_forms` measures the model as given and with every such op in its other
form, both in the real TFLite Micro + CMSIS-NN firmware on QEMU, keeps for each op the form with fewer
board cycles (core timing model; instructions when the trace is missing), measures the result, and
checks it bit-identical to the given model in LiteRT and the host TFLite Micro interpreter.
Like an autotuner, it picks among equivalent programs by measuring them; nothing is predicted.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.errors import ConfigError, ToolFailure, WorkbenchError


@dataclass(frozen=True)
class TuneResult:
    data: bytes  # the chosen model
    target: str
    ops: tuple = ()  # one dict per op with two forms: both measurements and the form kept
    given: dict = field(default_factory=dict)  # {"instructions", "cycles_board", "latency_ms"} of the given model
    tuned: dict = field(default_factory=dict)  # the same of the chosen model
    check: dict | None = None  # the bit-identity check (None when nothing changed)

    @property
    def changed(self) -> bool:
        return any(o["kept"] != o["form"] for o in self.ops)

    def to_dict(self) -> dict:
        return {"target": self.target, "method": "both forms measured on the target's TFLite Micro + CMSIS-NN firmware "
                                                 "(QEMU); the form with fewer board cycles is kept per op",
                "ops": list(self.ops), "given": self.given, "tuned": self.tuned, "changed": self.changed,
                "check": self.check}


def _firmware_facts(report: dict, where: str) -> tuple[dict, dict]:
    """(whole-model facts, {op index: per-op facts}) of an emulation report; ToolFailure when it has no firmware run."""
    fw = report.get("firmware")
    failure = report.get("tool_failure")
    if failure or not fw or fw.get("instructions") is None:
        why = (failure or {}).get("message") or next(iter(report.get("notes") or ()), "the report has no firmware run")
        err = ToolFailure(f"Choosing convolution forms needs the model run on the target's firmware; for {where} it "
                          f"did not run: {why}", hint=(failure or {}).get("hint") or "Export without --tune.")
        if failure and failure.get("exit_code"):
            err.exit_code = failure["exit_code"]  # 3 for a missing tool, as emulate says it
        raise err
    timing = fw.get("timing") or {}
    per_op = {o["index"]: dict(o) for o in fw.get("per_op") or [] if o.get("depth", 0) == 0}
    for o in timing.get("per_op") or []:
        if o.get("depth", 0) == 0 and o["index"] in per_op:
            per_op[o["index"]]["cycles_board"] = o.get("cycles_board")
    whole = {"instructions": fw["instructions"], "cycles_board": timing.get("cycles_board"),
             "latency_ms": fw.get("latency_ms")}
    return whole, per_op


def _cost(facts: dict) -> float:
    return facts["cycles_board"] if facts.get("cycles_board") is not None else facts["instructions"]


def check_tunable(target) -> None:
    """ConfigError unless ``target`` is an MCU whose CPU runs the model (forms are measured on its firmware)."""
    from workbench.emulate.targets import load_target

    tgt = load_target(target)
    if tgt.kind != "mcu" or tgt.npu is not None:
        raise ConfigError(f"Convolution forms are chosen on a Cortex-M board's firmware; target '{target}' is "
                          f"{'an NPU board' if tgt.npu is not None else 'a ' + tgt.kind + ' target'}.",
                          hint="Give an MCU target without an NPU (workbench targets list), or drop --tune.")
    from workbench.emulate.firmware import firmware_support, machine_problem

    if machine_problem(tgt.core):  # e.g. an Xtensa core: no emulated machine runs its firmware
        raise ConfigError(f"--tune runs the model on the firmware of '{target}': {machine_problem(tgt.core)}.",
                          hint="Give a Cortex-M target (workbench targets list), or drop --tune.")
    why_not = firmware_support(tgt)
    if why_not:
        err = ToolFailure(f"--tune runs the model on the firmware of '{target}', which cannot be built here: {why_not}.",
                          hint="`workbench firmware setup` and the README's install line give the toolchain, QEMU and "
                               "TFLite Micro; or drop --tune.")
        err.exit_code = 3  # a missing tool, as emulate reports it
        raise err


def tune_conv_forms(model: str | Path, target: str, *, emulate=None) -> TuneResult:
    """The model (a .tflite) with each two-form convolution in the form that runs faster on ``target``'s
    firmware. ``emulate(path, target) -> report dict`` stands in for the firmware run in tests."""
    from workbench.core.files import check_input_file
    from workbench.export.conv_forms import candidates, flip
    from workbench.export.strip import verify_identical

    path = check_input_file(model)
    check_tunable(target)
    if emulate is None:
        import workbench.emulate as stage

        def emulate(p, t):
            return stage.emulate(p, t, firmware=True).to_dict()

    data = path.read_bytes()
    found = candidates(data, str(path))
    if not found:
        return TuneResult(data, target)
    with tempfile.TemporaryDirectory(prefix="workbench-tune-") as tmp:
        given_path, other_path = Path(tmp) / "given.tflite", Path(tmp) / "other.tflite"
        given_path.write_bytes(data)
        other_path.write_bytes(flip(data, [c.op for c in found], str(path)))
        try:
            given, given_ops = _firmware_facts(emulate(given_path, target), f"'{path}'")
            other, other_ops = _firmware_facts(emulate(other_path, target), f"'{path}' with its other forms")
        except ToolFailure:
            raise
        except WorkbenchError as exc:  # a firmware that cannot run one form is a tool limit, not a verdict
            raise ToolFailure(f"Measuring the convolution forms of '{path}' on '{target}' failed: {exc.message}",
                              hint=exc.hint) from None
        ops, chosen = [], []
        for c in found:
            a, b = given_ops.get(c.op), other_ops.get(c.op)
            if a is None or b is None:
                raise ToolFailure(f"The firmware run of '{path}' on '{target}' has no time for op {c.op} ({c.form}).")
            keep_other = _cost(b) < _cost(a)
            if keep_other:
                chosen.append(c.op)
            row = c.to_dict()
            row.update({"given": {k: a.get(k) for k in ("instructions", "cycles_board")},
                        "other": {k: b.get(k) for k in ("instructions", "cycles_board")},
                        "kept": row["other_form"] if keep_other else row["form"]})
            ops.append(row)
        if not chosen:
            return TuneResult(data, target, tuple(ops), given, given)
        if len(chosen) == len(found):
            tuned_path, tuned = other_path, other
        else:
            tuned_path = Path(tmp) / "tuned.tflite"
            tuned_path.write_bytes(flip(data, chosen, str(path)))
            tuned, _ = _firmware_facts(emulate(tuned_path, target), f"'{path}' with the chosen forms")
        check = verify_identical(given_path, tuned_path)
        return TuneResult(tuned_path.read_bytes(), target, tuple(ops), given, tuned, check)
