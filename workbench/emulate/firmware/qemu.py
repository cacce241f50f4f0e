"""Run a harness ELF on QEMU with deterministic instruction counting and read its report.

``qemu-system-arm -M <machine> -nographic -monitor none -serial none
-semihosting-config enable=on,target=native -icount shift=0 -kernel fw.elf`` in a temporary
folder holding ``input.bin``; the firmware writes ``output.bin`` and ``report.txt`` there
through semihosting. All samples run in one QEMU process.

Two kinds of failure: the firmware itself reporting a fault or a TFLM error (RuntimeFailure,
naming the phase, the op and TFLM's messages: what TFLM on a board would do with this model),
and QEMU timing out or stopping without any report (ToolFailure, exit 4: the emulation failed,
which says nothing about the model).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import RuntimeFailure, ToolFailure
from workbench.emulate.firmware.machines import Machine


@dataclass(frozen=True)
class RunResult:
    values: dict  # "key value" lines of report.txt (last value wins), ints where they parse
    ops: list  # [{"index", "depth", "ticks", "op"}]; ticks summed over every sample
    logs: list  # TFLM MicroPrintf lines
    output: bytes  # output.bin
    seconds: float  # wall time of the QEMU process
    returncode: int


def qemu_command(qemu: str | os.PathLike, machine: Machine, elf: str | os.PathLike) -> list[str]:
    return [str(qemu), "-M", machine.qemu_machine, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", str(elf)]


def parse_report(text: str) -> tuple[dict, list, list]:
    values: dict = {}
    ops: list = []
    logs: list = []
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if not key:
            continue
        if key == "op":
            parts = rest.split(" ", 3)
            if len(parts) == 4 and all(p.isdigit() for p in parts[:3]):
                ops.append({"index": int(parts[0]), "depth": int(parts[1]), "ticks": int(parts[2]), "op": parts[3]})
            continue
        if key == "log":
            logs.append(rest)
            continue
        values[key] = int(rest) if rest.isdigit() else rest
    return values, ops, logs


def run_elf(qemu: str | os.PathLike, machine: Machine, elf: str | os.PathLike, input_bytes: bytes, *,
            timeout: float = 300.0, what: str = "the firmware") -> RunResult:
    """Run ``elf`` over ``input_bytes``; RuntimeFailure naming the phase (and op) on a crash, abort or hang."""
    elf = Path(elf).resolve()
    with tempfile.TemporaryDirectory(prefix="wb-fw-run-") as d:
        work = Path(d)
        (work / "input.bin").write_bytes(input_bytes)
        cmd = qemu_command(qemu, machine, elf)
        t0 = time.perf_counter()
        timed_out = False
        try:
            proc = subprocess.run(cmd, cwd=work, check=False, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
            rc, stderr = proc.returncode, proc.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired as exc:
            timed_out, rc = True, -1
            stderr = (exc.stderr or b"").decode("utf-8", "replace")
        seconds = time.perf_counter() - t0
        report = work / "report.txt"
        text = report.read_text(errors="replace") if report.exists() else ""
        values, ops, logs = parse_report(text)
        output = (work / "output.bin").read_bytes() if (work / "output.bin").exists() else b""
    status = values.get("status")
    if timed_out or status != "ok" or rc != 0:
        message = _failure_message(what, machine, values, logs, rc, stderr, timed_out, timeout)
        hint = _failure_hint(values, logs, timed_out)
        if timed_out or not ("fault" in values or "error" in values):  # the emulation failed, not the model
            raise ToolFailure(message, hint=hint)
        err = RuntimeFailure(message, hint=hint)
        err.tflm_node = tflm_failed_node(logs)
        raise err
    return RunResult(values=values, ops=ops, logs=logs, output=output, seconds=seconds, returncode=rc)


def tflm_failed_node(logs: list) -> dict | None:
    """The node TFLM names in its own message ("Node SQRT (number 246) failed to invoke ...")."""
    from workbench.runtimes.tflm_child import parse_failed_node

    return parse_failed_node(" ".join(logs))


def _failure_message(what, machine: Machine, values: dict, logs: list, rc: int, stderr: str, timed_out: bool,
                     timeout: float) -> str:
    phase = values.get("fault_phase") or values.get("phase") or "boot"
    where = f"during {phase}"
    if phase == "invoke":
        sample = values.get("fault_sample")
        if sample is not None:
            where += f" of sample {sample}"
    op = values.get("fault_op_name")
    if op is not None:
        where += f", in op {values.get('fault_op_index')} ({op})"
    if timed_out:
        head = f"{what} did not finish on QEMU {machine.qemu_machine} within {timeout:.0f} s (last phase: {phase})"
    elif "fault" in values:
        head = (f"{what} crashed on QEMU {machine.qemu_machine} {where}: {values['fault']}"
                + (f" at pc {values['fault_pc']}" if "fault_pc" in values else "")
                + (f" (CFSR {values['fault_cfsr']})" if "fault_cfsr" in values else ""))
    elif "error" in values:
        head = f"{what} failed on QEMU {machine.qemu_machine} {where}: {values['error']}"
    else:
        err = stderr.strip().splitlines()[-3:] if stderr.strip() else []
        head = (f"{what} stopped on QEMU {machine.qemu_machine} {where} without a report (exit {rc})"
                + (f": {' / '.join(err)}" if err else ""))
    if logs:
        head += ". TFLM said: " + " | ".join(logs[-4:])
    return head + "."


def _failure_hint(values: dict, logs: list, timed_out: bool) -> str:
    text = " ".join(logs)
    if "Didn't find op" in text or "unsupported" in text.lower():
        return "The op is missing from the TFLM build; check the model's ops with `workbench inspect`."
    if values.get("phase") == "allocate" or "arena" in text.lower():
        return "Allocation failed: the model may need more memory than the emulated machine has, or an op's " \
               "Prepare rejected its parameters (see TFLM's message)."
    if timed_out:
        return "Pass a longer timeout for large models; an endless loop in a kernel also ends here."
    return "Run `workbench inspect MODEL` and check the op named above; the report of the run is in the message."
