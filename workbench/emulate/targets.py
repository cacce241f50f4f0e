"""Target device profiles: frozen dataclasses loaded from YAML files.

The built-in profiles live in the repository's top-level ``targets/`` folder, installed as
the package ``workbench.builtin.targets``. A user can pass any file of the same shape with
``--target-file``. Every number in a profile carries the public source it came from
(``sources``) or is listed under ``assumptions``; ``cost.calibration`` says how the cost
coefficients were fitted (``scripts/bench_emulate.py --fit`` reproduces the fits).

Loading validates every field and names the file and the field on an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

from workbench.core.errors import ConfigError, InputFileError

KINDS = ("mcu", "linux")
# ort / executorch: a Linux board running an .onnx / a .pte model (workbench.emulate.ort_board / pte_board)
RUNTIMES = ("tflm", "litert", "ort", "executorch")
DTYPE_KEYS = ("int8", "int16", "float32")


@dataclass(frozen=True)
class DtypeCost:
    """Cycles per multiply-accumulate and per byte of activations moved, for one compute dtype."""

    cycles_per_mac: float
    cycles_per_byte: float


@dataclass(frozen=True)
class CostModel:
    """Coefficients of the per-op latency model in :mod:`workbench.emulate.cost`."""

    dtypes: dict  # "int8" | "int16" | "float32" -> DtypeCost
    op_overhead_cycles: float = 0.0
    class_factors: dict = field(default_factory=dict)  # op class ("depthwise", "fully_connected", ...) -> factor
    parallel_efficiency: float = 0.0  # each extra thread adds this fraction of a core on parallel ops
    undelegated_factor: float = 1.0  # LiteRT: ops the XNNPACK delegate does not take run this much slower
    calibration: str = ""
    element_cycles: dict = field(default_factory=dict)  # op kind ("HARD_SWISH", "MUL", ...) -> cycles per activation element
    parallel_grain: float = 0.0  # op size (MACs + output elements) at which threads give half their speed-up; 0: always full

    def dtype(self, key: str) -> DtypeCost:
        return self.dtypes[key]


@dataclass(frozen=True)
class RuntimeSpec:
    name: str  # tflm | litert
    kernels: str  # cmsis-nn, esp-nn, xnnpack
    code_bytes: int  # flash (or storage) taken by the runtime's code
    ram_overhead_bytes: int  # RAM the runtime and firmware need besides the tensor arena (MCU) / the OS reserves (Linux)
    package: str = ""  # the Python package that emulates it on this machine


NPU_FAMILIES = ("ethos-u",)
NPU_ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
                    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")


@dataclass(frozen=True)
class NpuSpec:
    """The board's NPU as its compiler (Vela, for Arm Ethos-U) sees it.

    ``system_config`` and ``memory_mode`` name sections of Vela's own ``Arm/vela.ini``;
    ``clock_mhz`` replaces that system config's ``core_clock`` with the board's NPU clock.
    ``sram_bytes``: the SRAM the NPU's tensor arena may use (the fit check); ``flash_bytes``:
    where the compiled model's weights and command stream live (None: the board's flash)."""

    family: str  # ethos-u
    accelerator: str  # Vela's --accelerator-config, e.g. ethos-u55-128
    system_config: str
    memory_mode: str
    clock_mhz: float
    sram_bytes: int
    flash_bytes: int | None = None
    arena_cache_size: int | None = None  # Dedicated_Sram memory modes: the SRAM cache Vela may use

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    def to_dict(self) -> dict:
        return {"family": self.family, "accelerator": self.accelerator, "system_config": self.system_config,
                "memory_mode": self.memory_mode, "clock_mhz": self.clock_mhz, "sram_bytes": self.sram_bytes,
                "flash_bytes": self.flash_bytes, "arena_cache_size": self.arena_cache_size}


@dataclass(frozen=True)
class MemorySpec:
    """The board's code memory as the firmware timing model sees it (workbench.emulate.firmware.timing).

    ``flash_wait_states``: wait states of the code flash at the profile's clock (datasheet /
    reference manual); ``accelerator``: what hides them (prefetch, flash cache, ART, I-cache);
    ``stall_fraction``: the share of flash fetches (after a taken branch, per data read of the code memory:
    weights, constants) that still pay the wait states -- a board constant set from published rows marked
    ``use: fit`` (``calibration`` says which); ``source``: where the wait states come from."""

    flash_wait_states: int
    accelerator: str
    stall_fraction: float
    source: str
    calibration: str = ""

    def to_dict(self) -> dict:
        return {"flash_wait_states": self.flash_wait_states, "accelerator": self.accelerator,
                "stall_fraction": self.stall_fraction, "source": self.source, "calibration": self.calibration}


@dataclass(frozen=True)
class Source:
    fact: str
    url: str


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    kind: str  # mcu | linux
    core: str
    clock_mhz: float
    cores: int
    threads: int  # threads the runtime uses by default
    flash_bytes: int | None  # None: external storage (SD card), not a limit
    ram_bytes: int
    runtime: RuntimeSpec
    cost: CostModel
    sources: tuple[Source, ...]
    assumptions: tuple[str, ...] = ()
    npu: NpuSpec | None = None  # a board with an NPU: emulate compiles the model for it (workbench.emulate.npu)
    memory: MemorySpec | None = None  # MCU code memory for the firmware timing model (flash wait states, accelerator)
    path: str = ""

    def __post_init__(self):
        where = self.path or self.name
        if self.kind not in KINDS:
            raise ConfigError(f"Target file '{where}': field 'kind' must be one of {', '.join(KINDS)}, found {self.kind!r}.")
        if self.runtime.name not in RUNTIMES:
            raise ConfigError(f"Target file '{where}': field 'runtime.name' must be one of {', '.join(RUNTIMES)}, "
                              f"found {self.runtime.name!r}.")
        if self.threads > self.cores:
            raise ConfigError(f"Target file '{where}': field 'threads' ({self.threads}) is more than 'cores' ({self.cores}).")
        if not self.sources:
            raise ConfigError(f"Target file '{where}': field 'sources' is empty; every profile cites where its numbers come from.")

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    def to_dict(self) -> dict:
        rt = self.runtime
        return {
            "name": self.name, "title": self.title, "kind": self.kind, "core": self.core, "clock_mhz": self.clock_mhz,
            "cores": self.cores, "threads": self.threads, "flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes,
            "runtime": {"name": rt.name, "kernels": rt.kernels, "code_bytes": rt.code_bytes,
                        "ram_overhead_bytes": rt.ram_overhead_bytes, "package": rt.package},
            "cost": {"op_overhead_cycles": self.cost.op_overhead_cycles,
                     "dtypes": {k: {"cycles_per_mac": v.cycles_per_mac, "cycles_per_byte": v.cycles_per_byte}
                                for k, v in self.cost.dtypes.items()},
                     "class_factors": dict(self.cost.class_factors),
                     "parallel_efficiency": self.cost.parallel_efficiency,
                     "undelegated_factor": self.cost.undelegated_factor,
                     **({"element_cycles": dict(self.cost.element_cycles)} if self.cost.element_cycles else {}),
                     **({"parallel_grain": self.cost.parallel_grain} if self.cost.parallel_grain else {}),
                     "calibration": self.cost.calibration},
            "sources": [{"fact": s.fact, "url": s.url} for s in self.sources],
            "assumptions": list(self.assumptions),
            **({"npu": self.npu.to_dict()} if self.npu is not None else {}),
            **({"memory": self.memory.to_dict()} if self.memory is not None else {}),
            "path": self.path,
        }


# --- YAML parsing with field-level errors ---------------------------------------------------


class _Reader:
    """Reads typed fields out of nested dicts and raises ConfigError naming file and field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, dotted: str, expected: str, found) -> ConfigError:
        shown = "nothing (the field is missing)" if found is _MISSING else f"{found!r}"
        return ConfigError(f"Target file '{self.where}': field '{dotted}' must be {expected}, found {shown}.",
                           hint="Compare it with a built-in profile: workbench targets show stm32l4r5 --json")

    def get(self, d: dict, key: str, prefix: str, kind: str, *, default=None, required: bool = True):
        dotted = f"{prefix}{key}"
        value = d.get(key, _MISSING) if isinstance(d, dict) else _MISSING
        if value is _MISSING or value is None:
            if not required:
                return default
            raise self.fail(dotted, _EXPECT[kind], value)
        check = _CHECKS[kind]
        if not check(value):
            raise self.fail(dotted, _EXPECT[kind], value)
        return _CONVERT.get(kind, lambda v: v)(value)

    def section(self, d: dict, key: str, prefix: str = "") -> dict:
        value = d.get(key, _MISSING) if isinstance(d, dict) else _MISSING
        if not isinstance(value, dict):
            raise self.fail(f"{prefix}{key}", "a mapping (indented key: value lines)", value)
        return value


_MISSING = object()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS = {
    "str": lambda v: isinstance(v, str) and v.strip() != "",
    "pos_int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "nonneg_int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "pos_number": lambda v: _is_number(v) and v > 0,
    "nonneg_number": lambda v: _is_number(v) and v >= 0,
    "fraction": lambda v: _is_number(v) and 0 <= v <= 1,
}
_EXPECT = {
    "str": "a non-empty string", "pos_int": "a positive whole number", "nonneg_int": "a whole number >= 0",
    "pos_number": "a positive number", "nonneg_number": "a number >= 0", "fraction": "a number from 0 to 1",
}
_CONVERT = {"pos_number": float, "nonneg_number": float, "fraction": float}


def target_from_dict(d: dict, where: str) -> Target:
    r = _Reader(where)
    if not isinstance(d, dict):
        raise ConfigError(f"Target file '{where}' must hold a mapping of fields (name, kind, core, ...), found {type(d).__name__}.")
    known = {f.name for f in fields(Target)} - {"path"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"Target file '{where}': unknown field '{unknown[0]}'. Known fields: {', '.join(sorted(known))}.")
    rt = r.section(d, "runtime")
    runtime = RuntimeSpec(
        name=r.get(rt, "name", "runtime.", "str"),
        kernels=r.get(rt, "kernels", "runtime.", "str"),
        code_bytes=r.get(rt, "code_bytes", "runtime.", "nonneg_int"),
        ram_overhead_bytes=r.get(rt, "ram_overhead_bytes", "runtime.", "nonneg_int"),
        package=r.get(rt, "package", "runtime.", "str", default="", required=False),
    )
    c = r.section(d, "cost")
    dts = r.section(c, "dtypes", "cost.")
    dtypes = {}
    for key in DTYPE_KEYS:
        sub = r.section(dts, key, "cost.dtypes.")
        p = f"cost.dtypes.{key}."
        dtypes[key] = DtypeCost(cycles_per_mac=r.get(sub, "cycles_per_mac", p, "nonneg_number"),
                                cycles_per_byte=r.get(sub, "cycles_per_byte", p, "nonneg_number"))
    factors = c.get("class_factors") or {}
    if not isinstance(factors, dict):
        raise r.fail("cost.class_factors", "a mapping of op class to factor", factors)
    for k, v in factors.items():
        if not (_is_number(v) and v > 0):
            raise r.fail(f"cost.class_factors.{k}", "a positive number", v)
    elements = c.get("element_cycles") or {}
    if not isinstance(elements, dict):
        raise r.fail("cost.element_cycles", "a mapping of op kind (HARD_SWISH, MUL, ...) to cycles per element", elements)
    for k, v in elements.items():
        if not (_is_number(v) and v >= 0):
            raise r.fail(f"cost.element_cycles.{k}", "a number >= 0", v)
    cost = CostModel(
        dtypes=dtypes,
        op_overhead_cycles=r.get(c, "op_overhead_cycles", "cost.", "nonneg_number", default=0.0, required=False),
        class_factors={str(k): float(v) for k, v in factors.items()},
        parallel_efficiency=r.get(c, "parallel_efficiency", "cost.", "fraction", default=0.0, required=False),
        undelegated_factor=r.get(c, "undelegated_factor", "cost.", "pos_number", default=1.0, required=False),
        calibration=r.get(c, "calibration", "cost.", "str", default="", required=False),
        element_cycles={str(k): float(v) for k, v in elements.items()},
        parallel_grain=r.get(c, "parallel_grain", "cost.", "nonneg_number", default=0.0, required=False),
    )
    srcs = d.get("sources")
    if not isinstance(srcs, list) or not srcs:
        raise r.fail("sources", "a non-empty list of {fact, url} entries", srcs if srcs is not None else _MISSING)
    sources = []
    for i, s in enumerate(srcs):
        if not isinstance(s, dict):
            raise r.fail(f"sources[{i}]", "a mapping with 'fact' and 'url'", s)
        sources.append(Source(fact=r.get(s, "fact", f"sources[{i}].", "str"), url=r.get(s, "url", f"sources[{i}].", "str")))
    assumptions = d.get("assumptions") or []
    if not isinstance(assumptions, list) or not all(isinstance(a, str) for a in assumptions):
        raise r.fail("assumptions", "a list of strings", assumptions)
    npu = _npu(r, d["npu"]) if d.get("npu") is not None else None
    memory = _memory(r, d["memory"]) if d.get("memory") is not None else None
    flash = d.get("flash_bytes", _MISSING)
    if flash is _MISSING:
        raise r.fail("flash_bytes", "a positive whole number, or null for external storage", _MISSING)
    if flash is not None and not _CHECKS["pos_int"](flash):
        raise r.fail("flash_bytes", "a positive whole number, or null for external storage", flash)
    return Target(
        name=r.get(d, "name", "", "str"),
        title=r.get(d, "title", "", "str"),
        kind=r.get(d, "kind", "", "str"),
        core=r.get(d, "core", "", "str"),
        clock_mhz=r.get(d, "clock_mhz", "", "pos_number"),
        cores=r.get(d, "cores", "", "pos_int"),
        threads=r.get(d, "threads", "", "pos_int"),
        flash_bytes=flash,
        ram_bytes=r.get(d, "ram_bytes", "", "pos_int"),
        runtime=runtime,
        cost=cost,
        sources=tuple(sources),
        assumptions=tuple(assumptions),
        npu=npu,
        memory=memory,
        path=where,
    )


_NPU_FIELDS = ("family", "accelerator", "system_config", "memory_mode", "clock_mhz", "sram_bytes", "flash_bytes",
               "arena_cache_size")


def _npu(r: _Reader, n) -> NpuSpec:
    if not isinstance(n, dict):
        raise r.fail("npu", "a mapping (family, accelerator, system_config, memory_mode, clock_mhz, sram_bytes)", n)
    unknown = sorted(set(n) - set(_NPU_FIELDS))
    if unknown:
        raise ConfigError(f"Target file '{r.where}': unknown field 'npu.{unknown[0]}'. Known fields: {', '.join(_NPU_FIELDS)}.")
    family = r.get(n, "family", "npu.", "str")
    if family not in NPU_FAMILIES:
        raise r.fail("npu.family", "one of " + ", ".join(NPU_FAMILIES), family)
    acc = r.get(n, "accelerator", "npu.", "str")
    if acc not in NPU_ACCELERATORS:
        raise r.fail("npu.accelerator", "one of " + ", ".join(NPU_ACCELERATORS), acc)
    return NpuSpec(family=family, accelerator=acc,
                   system_config=r.get(n, "system_config", "npu.", "str"),
                   memory_mode=r.get(n, "memory_mode", "npu.", "str"),
                   clock_mhz=r.get(n, "clock_mhz", "npu.", "pos_number"),
                   sram_bytes=r.get(n, "sram_bytes", "npu.", "pos_int"),
                   flash_bytes=r.get(n, "flash_bytes", "npu.", "pos_int", required=False),
                   arena_cache_size=r.get(n, "arena_cache_size", "npu.", "pos_int", required=False))


_MEMORY_FIELDS = ("flash_wait_states", "accelerator", "stall_fraction", "source", "calibration")


def _memory(r: _Reader, m) -> MemorySpec:
    if not isinstance(m, dict):
        raise r.fail("memory", "a mapping (flash_wait_states, accelerator, stall_fraction, source)", m)
    unknown = sorted(set(m) - set(_MEMORY_FIELDS))
    if unknown:
        raise ConfigError(f"Target file '{r.where}': unknown field 'memory.{unknown[0]}'. Known fields: "
                          f"{', '.join(_MEMORY_FIELDS)}.")
    return MemorySpec(flash_wait_states=r.get(m, "flash_wait_states", "memory.", "nonneg_int"),
                      accelerator=r.get(m, "accelerator", "memory.", "str"),
                      stall_fraction=r.get(m, "stall_fraction", "memory.", "fraction"),
                      source=r.get(m, "source", "memory.", "str"),
                      calibration=r.get(m, "calibration", "memory.", "str", default="", required=False))


def accepted_fields() -> tuple[str, ...]:
    """Every field a target file may hold, dotted (``runtime.kernels``, ``cost.dtypes.int8.cycles_per_mac``,
    ``sources[].url``), derived from the dataclasses the loader fills (a section typed as a dataclass
    lists that dataclass's fields): docs/targets.md documents each one (a test compares the two)."""
    import dataclasses
    import typing

    def section(tp):
        return next((a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)), None)

    hints = typing.get_type_hints(Target)
    out = []
    for f in fields(Target):
        if f.name == "path":
            continue
        if f.name == "cost":
            for g in fields(CostModel):
                if g.name == "dtypes":
                    out += [f"cost.dtypes.{k}.{h.name}" for k in DTYPE_KEYS for h in fields(DtypeCost)]
                else:
                    out.append(f"cost.{g.name}")
        elif f.name == "npu":
            out += [f"npu.{k}" for k in _NPU_FIELDS]
        elif f.name == "sources":
            out += [f"sources[].{g.name}" for g in fields(Source)]
        elif section(hints[f.name]) is not None:
            out += [f"{f.name}.{g.name}" for g in fields(section(hints[f.name]))]
        else:
            out.append(f.name)
    return tuple(out)


def load_target_file(path: str | Path) -> Target:
    from workbench.core.yamlfile import read_yaml

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"Target file '{p}' does not exist.", hint="Check the path, or use a built-in profile: workbench targets list")
    data, _node = read_yaml(p, "target file")
    return target_from_dict(data, str(p))


def _builtin_dir():
    from importlib import resources

    return resources.files("workbench.builtin.targets")


@lru_cache(maxsize=1)
def _builtin_files() -> dict[str, object]:
    return {f.name[:-5]: f for f in _builtin_dir().iterdir() if f.name.endswith(".yaml")}


def list_targets() -> list[str]:
    """Names of the built-in target profiles."""
    return sorted(_builtin_files())


@lru_cache(maxsize=None)
def _load_builtin(name: str) -> Target:
    import yaml

    f = _builtin_files()[name]
    t = target_from_dict(yaml.safe_load(f.read_text(encoding="utf-8")), f"targets/{name}.yaml")
    if t.name != name:
        raise ConfigError(f"Target file 'targets/{name}.yaml' names itself {t.name!r}; the field 'name' must match the file name.")
    return t


def load_target(name_or_path: str | Path | Target) -> Target:
    """A built-in profile by name, or a profile file by path (anything ending in .yaml/.yml or containing a '/')."""
    if isinstance(name_or_path, Target):
        return name_or_path
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s:
        return load_target_file(s)
    files = _builtin_files()
    if s not in files:
        raise ConfigError(f"Unknown target {s!r}. Valid: {', '.join(list_targets())}.",
                          hint="Or describe your board in a YAML file and pass --target-file FILE.")
    return _load_builtin(s)
