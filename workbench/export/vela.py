"""Compile a .tflite for an Arm Ethos-U NPU with Arm's Vela compiler, and read what it reports.

Vela (``ethos-u-vela``, the optional extra ``workbench[npu]``) runs in a child process
(``python -m ethosu.vela``) in a fresh temporary folder: its console output is captured, never
printed, and nothing is written into the user's folder. From its output this module reads

* the summary CSV (``<name>_summary_<system config>.csv``): NPU and total cycles, inference
  time at the NPU clock, SRAM and flash used, original and NPU-encoded weight bytes;
* the per-layer CSV (``--verbose-performance``): one row per NPU op;
* the console report (``--show-cpu-operations``): the ops left on the CPU, and Vela's own
  reasons for each ("Warning (supported operators) operator: X ... Reason: ...");
* ``<name>_vela.tflite``: the compiled model, its NPU parts folded into ``ethos-u`` custom ops.

The export stage uses it for ``export --format tflm --target <NPU board>``, the emulate stage
(``workbench.emulate.npu``) for the performance estimate; both pass a :class:`VelaOptions`.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.errors import MissingDependencyError, RuntimeFailure

VELA_VERSION = "5.2.0"
VELA_PIP = f"pip install 'ethos-u-vela=={VELA_VERSION}'  (or: pip install 'workbench[npu]')"


@dataclass(frozen=True)
class VelaOptions:
    """One Vela configuration. ``clock_hz`` (None: the system config's own ``core_clock``)
    overrides the clock through an inheriting system config written next to the model."""

    accelerator: str  # --accelerator-config, e.g. ethos-u55-128
    system_config: str  # a System_Config section of Arm/vela.ini
    memory_mode: str  # a Memory_Mode section of Arm/vela.ini
    clock_hz: float | None = None
    arena_cache_size: int | None = None
    optimise: str = "Performance"

    def system_config_name(self) -> str:
        """The system config Vela is told to use (and names its summary CSV after)."""
        if self.clock_hz is None:
            return self.system_config
        return f"{self.system_config}_{self.clock_hz / 1e6:g}MHz".replace(".", "_")

    def to_dict(self) -> dict:
        return {"accelerator": self.accelerator, "system_config": self.system_config, "memory_mode": self.memory_mode,
                "clock_hz": self.clock_hz, "arena_cache_size": self.arena_cache_size, "optimise": self.optimise}


@dataclass(frozen=True)
class VelaResult:
    options: VelaOptions
    summary: dict  # the summary CSV's row, numbers as floats
    per_layer: tuple[dict, ...]  # the per-layer CSV's rows
    cpu_ops: tuple[dict, ...]  # {"op", "name", "reasons": [...]} for each op Vela leaves on the CPU
    npu_ops: int
    compiled: bytes  # the _vela.tflite
    command: tuple[str, ...]
    log: str = field(repr=False, default="")

    def _num(self, key: str) -> float:
        return float(self.summary.get(key) or 0.0)

    @property
    def npu_cycles(self) -> int:
        return int(self._num("cycles_npu"))

    @property
    def total_cycles(self) -> int:
        return int(self._num("cycles_total"))

    @property
    def clock_hz(self) -> float:
        return self._num("core_clock")

    @property
    def inference_time_s(self) -> float:
        return self._num("inference_time")

    @property
    def sram_bytes(self) -> int:
        """SRAM used (Vela reports KiB)."""
        return int(round(self._num("sram_memory_used") * 1024))

    @property
    def dram_bytes(self) -> int:
        return int(round(self._num("dram_memory_used") * 1024))

    @property
    def flash_bytes(self) -> int:
        """On- and off-chip flash used by the NPU's constants (weights, command stream)."""
        return int(round((self._num("off_chip_flash_memory_used") + self._num("on_chip_flash_memory_used")) * 1024))

    @property
    def original_weight_bytes(self) -> int:
        return int(self._num("total_original_weights"))

    @property
    def encoded_weight_bytes(self) -> int:
        return int(self._num("total_npu_encoded_weights"))

    def summary_dict(self) -> dict:
        return {"npu_cycles": self.npu_cycles, "total_cycles": self.total_cycles, "clock_hz": self.clock_hz,
                "inference_time_ms": round(self.inference_time_s * 1e3, 6), "sram_bytes": self.sram_bytes,
                "dram_bytes": self.dram_bytes, "flash_bytes": self.flash_bytes,
                "original_weight_bytes": self.original_weight_bytes, "encoded_weight_bytes": self.encoded_weight_bytes,
                "compiled_model_bytes": len(self.compiled), "npu_ops": self.npu_ops, "cpu_ops": len(self.cpu_ops),
                "macs": int(self._num("nn_macs"))}


def vela_available() -> bool:
    try:
        return importlib.util.find_spec("ethosu.vela") is not None
    except (ImportError, ValueError):
        return False


def require_vela(purpose: str) -> None:
    if not vela_available():
        err = MissingDependencyError("ethos-u-vela", "npu", purpose)
        err.hint = f"Install it with: {VELA_PIP}"
        raise err


def _clock_ini(opts: VelaOptions) -> str:
    lines = [f"[System_Config.{opts.system_config_name()}]", f"inherit=System_Config.{opts.system_config}",
             f"core_clock={opts.clock_hz:g}", ""]
    return "\n".join(lines)


def vela_command(model: Path, out_dir: Path, opts: VelaOptions, extra_config: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "ethosu.vela", str(model), "--output-dir", str(out_dir),
           "--accelerator-config", opts.accelerator, "--config", "Arm/vela.ini"]
    if extra_config is not None:
        cmd += ["--config", str(extra_config)]
    cmd += ["--system-config", opts.system_config_name(), "--memory-mode", opts.memory_mode, "--optimise", opts.optimise,
            "--verbose-performance", "--show-cpu-operations"]
    if opts.arena_cache_size is not None:
        cmd += ["--arena-cache-size", str(opts.arena_cache_size)]
    return cmd


def compile_for_npu(model_path: str | Path, opts: VelaOptions, *, timeout: float = 300.0) -> VelaResult:
    """Run Vela on ``model_path`` with ``opts`` in a temporary folder and read its results."""
    require_vela("Compiling for an Arm Ethos-U NPU")
    src = Path(model_path)
    with tempfile.TemporaryDirectory(prefix="wb-vela-") as tmp:
        work = Path(tmp)
        model = work / (re.sub(r"[^A-Za-z0-9_.-]", "_", src.stem) + ".tflite")
        model.write_bytes(src.read_bytes())
        extra = None
        if opts.clock_hz is not None:
            extra = work / "workbench_clock.ini"
            extra.write_text(_clock_ini(opts), encoding="utf-8")
        out = work / "out"
        cmd = vela_command(model, out, opts, extra)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"Vela did not finish compiling '{src}' within {timeout:g} s.",
                                 hint="Try a smaller model, or --optimise Size.") from None
        log = (r.stdout or "") + (r.stderr or "")
        stem = model.stem
        summary_csv = out / f"{stem}_summary_{opts.system_config_name()}.csv"
        compiled = out / f"{stem}_vela.tflite"
        if r.returncode != 0 or not summary_csv.is_file() or not compiled.is_file():
            tail = "\n".join(log.strip().splitlines()[-8:])
            raise RuntimeFailure(f"Vela {VELA_VERSION} could not compile '{src}' for {opts.accelerator} "
                                 f"({opts.system_config}, {opts.memory_mode}); exit code {r.returncode}: {tail}",
                                 hint="Vela compiles int8/int16 quantized .tflite models; check the reasons above.")
        summary = read_summary(summary_csv)
        layers = _read_layers(out / f"{stem}_per-layer.csv")
        return VelaResult(options=opts, summary=summary, per_layer=layers, cpu_ops=tuple(parse_cpu_ops(log)),
                          npu_ops=_count(log, "NPU"), compiled=compiled.read_bytes(), command=tuple(cmd), log=log)


def read_summary(path: Path) -> dict:
    """Vela's summary CSV: its one row, numbers as floats (keys stripped)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RuntimeFailure(f"Vela's summary '{path.name}' is empty.")
    out = {}
    for k, v in rows[0].items():
        try:
            out[(k or "").strip()] = float(v)
        except (TypeError, ValueError):
            out[(k or "").strip()] = v
    return out


_LAYER_KEYS = {"Original Operator": "original_op", "NNG Operator": "op", "Target": "target", "Staging Usage": "staging_bytes",
               "Op Cycles": "cycles", "Network% (cycles)": "cycles_percent", "NPU": "npu_cycles", "SRAM AC": "sram_access_cycles",
               "DRAM AC": "dram_access_cycles", "OnFlash AC": "on_flash_access_cycles", "OffFlash AC": "off_flash_access_cycles",
               "MAC Count": "macs", "Util% (MAC)": "mac_utilisation_percent", "Name": "name"}


def _read_layers(path: Path) -> tuple[dict, ...]:
    if not path.is_file():
        return ()
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            d = {}
            for k, v in row.items():
                key = _LAYER_KEYS.get((k or "").strip())
                if key is None:
                    continue
                try:
                    d[key] = float(v) if "." in v or "e" in v.lower() else int(v)
                except (TypeError, ValueError, AttributeError):
                    d[key] = v
            rows.append(d)
    return tuple(rows)


_CPU_LINE = re.compile(r"^\s*CPU: (\S+) = (.*?)(?: \(outputs \[[^\]]*\]\))?\s*$")
_WARN = re.compile(r"^Warning \(supported operators\) operator: ([A-Z0-9_]+), ofm: '(.*)'\s*$")


def parse_cpu_ops(log: str) -> list[dict]:
    """The ops Vela leaves on the CPU with its reasons, from its console output.

    Reasons come from the "Warning (supported operators)" blocks (the TFLite op name and
    output tensor, then "Reason: ..." and detail lines); the "CPU: Op = name" lines list what
    stays on the CPU, matched to the reasons by output tensor name."""
    reasons: dict[str, dict] = {}
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        m = _WARN.match(lines[i])
        if m:
            op, ofm = m.group(1), m.group(2)
            text = []
            i += 1
            while i < len(lines) and lines[i].strip() and not _WARN.match(lines[i]) \
                    and not lines[i].startswith(("Network summary", "Warning: ", "Info: ")):
                text.append(lines[i].strip().removeprefix("Reason: "))
                i += 1
            reasons[ofm] = {"op": op, "reasons": text}
            continue
        i += 1
    out = []
    for line in lines:
        m = _CPU_LINE.match(line)
        if m:
            name = m.group(2).strip()
            r = reasons.get(name, {})
            out.append({"op": r.get("op", m.group(1)), "vela_op": m.group(1), "name": name,
                        "reasons": r.get("reasons") or ["Vela gave no reason (the op is kept on the CPU)"]})
    return out


def _count(log: str, where: str) -> int:
    m = re.search(rf"^{where} operators = (\d+)", log, re.M)
    return int(m.group(1)) if m else 0
