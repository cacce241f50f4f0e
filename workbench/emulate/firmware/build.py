"""Build a model's firmware (the exported TFLM project + our harness + the cached TFLM library)
and run it on QEMU.

The firmware is what ``workbench export --format tflm`` writes for the model (model array,
op resolver, settings; its example ``main.cc`` is compiled too, not linked), compiled with
``-Wall -Wextra -Werror`` against the real TFLM headers (``-isystem``) with exactly the
flags TFLM's Makefile used for the library, plus the harness in ``harness/``. Images are
cached by content in ``<cache>/firmware/fw/<key>/`` (model bytes, library key, exporter and harness
sources, layout, language), built in a temporary folder beside it and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.core.errors import (
    ConfigError,
    InputFileError,
    RuntimeFailure,
    ToolFailure,
    UnsupportedError,
    WorkbenchError,
)
from workbench.emulate.firmware.cache import CacheCorrupt, Say, build_once, verify_digests, write_digests
from workbench.emulate.firmware.library import (
    HARNESS_DIR,
    TREE_TOKEN,
    Library,
)
from workbench.emulate.firmware.machines import (
    Machine,
    machine_problem,
)
from workbench.emulate.firmware.objects import link_firmware, objects_version
from workbench.emulate.firmware.toolchain import (
    Toolchain,
    toolchain_problem,
)
from workbench.emulate.firmware.tree import TflmTree, cache_root, find_tree

FW_RECIPE_VERSION = 2  # 2: digests of the served files, the library's own digest in the key
C_NAME = "wbfw"  # the C name the project is exported under (any identifier builds the same code)
ARENA_BYTES = 12 * 1024 * 1024  # the harness arena in the emulated machine's 16 MB PSRAM
STACK_BYTES = 256 * 1024
HEAP_BYTES = 64 * 1024
HARNESS_SOURCES = ("wb_harness.cc", "wb_startup.c", "wb_semihost.c")
HARNESS_FILES = (*HARNESS_SOURCES, "wb_semihost.h", "wb_state.h", "wb_firmware.ld.in")
# Our files are compiled stricter than TFLM compiles itself: every warning is an error,
# unused parameters included (TFLM's flags turn that one off).
STRICT = ("-Werror", "-Wunused-parameter")
DROP_FROM_TFLM = ("-Wno-unused-parameter",)
ELF_NAME = "firmware.elf"
SERVED = (ELF_NAME, "meta.json")  # the files a cached image folder serves (digested)
# What GNU ld says when sections do not fit a memory region of the linker script.
LINK_OVERFLOW = ("overflowed by", "will not fit in region")
TOOL_TIMEOUT = 900.0  # seconds for one compile or link


class ImageOverflow(RuntimeFailure):
    """The linked image does not fit the emulated machine's memory: a size, not a tool failure."""


@dataclass(frozen=True)
class IoSpec:
    name: str
    dtype: str
    shape: tuple
    scale: float
    zero_point: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class FirmwareImage:
    elf: Path
    folder: Path
    machine: Machine
    library: Library
    text_bytes: int  # Berkeley `arm-none-eabi-size`: .vectors + .text (+ .rodata, model) + exidx
    data_bytes: int  # Berkeley data: .data + init/fini arrays (in flash as the load image)
    bss_bytes: int  # the .bss section (board RAM); the harness's arena and buffers are not in it
    sections: dict  # SysV `size -A`: section -> bytes
    model_bytes: int
    export_arena_bytes: int  # the arena the exported settings header reserves (host-measured + margin)
    inputs: tuple[IoSpec, ...]
    outputs: tuple[IoSpec, ...]
    ops: tuple[str, ...]  # distinct op kinds, in model order
    build_seconds: float
    cached: bool
    key: str
    notes: tuple[str, ...] = ()  # e.g. a cached image that failed its integrity check and was rebuilt

    @property
    def flash_bytes(self) -> int:
        return self.text_bytes + self.data_bytes

    @property
    def ram_static_bytes(self) -> int:
        return int(self.sections.get(".data", 0)) + int(self.sections.get(".bss", 0))


# --------------------------------------------------------------------------- support


def firmware_support(target, *, tflm_dir=None) -> str | None:
    """None when ``target`` can run on firmware here, else the reason it cannot.

    Reasons: the target is not an MCU, QEMU has no machine for its core (e.g. Xtensa), the
    toolchain or QEMU is missing, or no TFLM tree is found.
    """
    t = _load_target(target)
    if getattr(t, "kind", "mcu") != "mcu":
        return f"target '{t.name}' is a {t.kind} target; firmware emulation is for MCU targets"
    problem = machine_problem(t.core)
    if problem:
        return problem
    problem = toolchain_problem()
    if problem:
        return problem
    try:
        find_tree(tflm_dir)
    except WorkbenchError as exc:
        return exc.message
    return None


def _load_target(target):
    if hasattr(target, "core") and hasattr(target, "clock_mhz"):
        return target
    from workbench.emulate.targets import load_target

    return load_target(target)


# --------------------------------------------------------------------------- model facts


def _io(graph, indices, where: str, what: str) -> tuple[IoSpec, ...]:
    out = []
    for pos, ti in enumerate(indices):
        t = graph.tensors[ti]
        if t.shape is None:
            raise UnsupportedError(f"'{where}': {what} {pos} has an unknown shape; the firmware needs static shapes.")
        shape = tuple(1 if (d is None or d < 0) else int(d) for d in t.shape)
        try:
            np.dtype(t.dtype)
        except TypeError:
            raise UnsupportedError(f"'{where}': {what} {pos} is {t.dtype}, which the firmware harness cannot feed.") from None
        out.append(IoSpec(name=t.name, dtype=str(np.dtype(t.dtype)), shape=shape,
                          scale=float(t.scale[0]) if t.scale else 0.0,
                          zero_point=int(t.zero_point[0]) if t.scale and t.zero_point else 0))
    return tuple(out)


def resource_variable_count(graph) -> int:
    """Resource variables the interpreter must hold: one per VAR_HANDLE op, in every subgraph
    (an upper bound: ops naming the same variable share one)."""
    return sum(1 for op in graph.ops if op.kind == "VAR_HANDLE")


def tree_resolver_methods(tree: TflmTree) -> frozenset[str]:
    """The Add* methods of the tree's MicroMutableOpResolver: the ops this TFLM can register."""
    text = (tree.root / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text(errors="replace")
    return frozenset(re.findall(r"TfLiteStatus\s+(Add[A-Za-z0-9_]+)\s*\(", text))


def check_ops_in_tree(ops, tree: TflmTree, where: str) -> None:
    """UnsupportedError (exit 1 at the CLI... see hint) naming every op whose resolver method the tree lacks."""
    have = tree_resolver_methods(tree)
    missing = [f"{op.kind} ({op.method})" for op in ops if op.method not in have]
    if missing:
        raise UnsupportedError(
            f"'{where}' uses op(s) the TFLM tree at {tree.root} has no kernel for: {', '.join(missing)}.",
            hint="Use a newer tflite-micro (--tflm-dir) or replace the op in the source model and convert again.")


# --------------------------------------------------------------------------- building the image


def _harness_hash() -> str:
    h = hashlib.sha256()
    for name in HARNESS_FILES + ("wb_flags.mk",):
        h.update(name.encode() + b"\0" + (HARNESS_DIR / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _exporter_hash() -> str:
    """The exporter's own sources: a change to what `export --format tflm` writes rebuilds the firmware."""
    import workbench.export as ex

    h = hashlib.sha256()
    base = Path(ex.__file__).resolve().parent
    for name in sorted(p.name for p in base.glob("*.py")):
        if name.startswith(("tflm", "c_")):
            h.update(name.encode() + b"\0" + (base / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def fw_cache_dir() -> Path:
    return cache_root() / "firmware" / "fw"


def _compile_flags(lib: Library, tree: TflmTree, lang: str) -> tuple[list[str], list[str]]:
    """(C++ flags, C flags) for our files: TFLM's flags, its includes as -isystem, strict warnings."""
    isystem = []
    for inc in lib.includes(tree):
        isystem += ["-isystem", inc]

    def own(flags: list[str]) -> list[str]:
        return [f.replace(TREE_TOKEN, str(tree.root)) for f in flags if f not in DROP_FROM_TFLM]

    cxx = own(lib.flags["cxxflags"]) + list(STRICT) + ["-O2"] + isystem
    cc = own(lib.flags["ccflags"]) + list(STRICT) + ["-O2", "-Wall", "-Wextra"] + isystem
    return cxx, cc


def _run_tool(cmd: list[str], cwd: Path, what: str, timeout: float = TOOL_TIMEOUT) -> str:
    """Run a compiler, linker or size tool. Its failure is ToolFailure (exit 4: not a verdict on the
    model), except the linker saying the image overflows a memory region (ImageOverflow: a size)."""
    try:
        r = subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolFailure(f"{what} did not finish within {timeout:.0f} s; it was stopped.",
                          hint="The machine may be overloaded; run again.") from None
    except OSError as exc:
        raise ToolFailure(f"{what} could not be started: {exc}.") from None
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip()
        lines = msg.splitlines()
        shown = "\n".join(lines[:25]) + ("\n..." if len(lines) > 25 else "")
        if any(k in msg for k in LINK_OVERFLOW):
            raise ImageOverflow(f"{what} failed: the image does not fit the emulated machine's memory:\n{shown}")
        raise ToolFailure(f"{what} failed (exit {r.returncode}):\n{shown}",
                          hint="The exported TFLM sources or the harness do not build against this TFLM tree and its "
                               "library; the compiler or linker output above names the file and line.")
    return r.stdout + r.stderr


def parse_size_sysv(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_size_berkeley(text: str) -> dict:
    lines = [ln.split() for ln in text.strip().splitlines()]
    if len(lines) < 2 or lines[0][:3] != ["text", "data", "bss"]:
        raise ToolFailure(f"Unexpected arm-none-eabi-size output: {text[:200]!r}")
    text_b, data_b, bss_b = (int(x) for x in lines[1][:3])
    return {"text": text_b, "data": data_b, "bss": bss_b}


def build_image(model_path, machine: Machine, tree: TflmTree, toolchain: Toolchain, lib: Library, *,
                layout: str = "plain", lang: str = "cpp", cache: bool = True,
                cache_dir: Path | None = None, say: Say | None = None) -> FirmwareImage:
    """The firmware ELF for ``model_path`` on ``machine`` (cached by content unless ``cache=False``).

    A cached image is served only when its ELF and meta.json match their digests; otherwise it is
    rebuilt, with a note (``say``, default stderr, and ``FirmwareImage.notes``). Compile and link
    failures are ToolFailure; an image too big for the emulated machine is ImageOverflow."""
    from workbench.core.files import check_input_file
    from workbench.frontends.tflite_reader import read_tflite_bytes

    src = check_input_file(model_path)
    if not src.is_file():
        raise InputFileError(f"Model '{src}' is not a file.", hint="Give the path of a .tflite file.")
    data = src.read_bytes()
    where = src.name
    graph = read_tflite_bytes(data, str(src))
    inputs = _io(graph, graph.inputs, where, "input")
    outputs = _io(graph, graph.outputs, where, "output")

    from workbench.export.tflm_ops import resolver_ops
    from workbench.export.tflm_sources import used_ops

    ops = resolver_ops(used_ops(data, where), where)  # UnsupportedError for ops TFLM has no kernel for
    check_ops_in_tree(ops, tree, where)

    resource_variables = resource_variable_count(graph)
    spec = {"recipe": FW_RECIPE_VERSION, "model": hashlib.sha256(data).hexdigest(), "lib": lib.key, "lib_sha256": lib.sha256,
            "resource_variables": resource_variables,
            "harness": _harness_hash(), "exporter": _exporter_hash(), "layout": layout, "lang": lang, "machine": machine.to_dict(),
            "arena": ARENA_BYTES, "stack": STACK_BYTES, "objects": objects_version(lib)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
    base = Path(cache_dir) if cache_dir is not None else fw_cache_dir()
    final = base / key
    t0 = time.perf_counter()

    def load():
        return _load_image(final, machine, lib, inputs, outputs, key, time.perf_counter() - t0) if cache else None

    def build(tmp: Path) -> None:
        meta = _build_into(tmp, src, machine, tree, toolchain, lib, layout, lang, resource_variables,
                           methods=[op.method for op in ops], say=say)
        meta.update({"key": key, "spec": spec, "ops": [op.kind for op in ops], "model_bytes": len(data),
                     "build_seconds": round(time.perf_counter() - t0, 3)})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        write_digests(tmp, SERVED)

    found, _, notes = build_once(base, key, load, build, what=f"firmware image of '{where}'", say=say)
    notes = tuple(lib.notes) + tuple(notes)
    if found is not None:
        return FirmwareImage(**{**found.__dict__, "notes": notes})
    try:
        img = _load_image(final, machine, lib, inputs, outputs, key, time.perf_counter() - t0)
    except CacheCorrupt as exc:
        raise ToolFailure(f"The firmware folder {final} fails its check right after the build: {exc.reason}.",
                          hint="Something else writes into the cache folder; run again.") from None
    if img is None:
        raise ToolFailure(f"The firmware folder {final} is missing right after the build.",
                          hint="Something else removes the cache folder; run again.")
    return FirmwareImage(**{**img.__dict__, "cached": False, "notes": notes})


def _load_image(folder: Path, machine, lib, inputs, outputs, key, seconds) -> FirmwareImage | None:
    """The cached image in ``folder``; None when there is none, CacheCorrupt when it fails its check."""
    if not folder.exists():
        return None
    verify_digests(folder, SERVED)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise CacheCorrupt(folder, f"meta.json is unreadable ({type(exc).__name__})") from None
    elf = folder / ELF_NAME
    if meta.get("key") != key:
        raise CacheCorrupt(folder, f"meta.json names key {meta.get('key')!r}, the folder is {key!r}")
    return FirmwareImage(elf=elf, folder=folder, machine=machine, library=lib, text_bytes=meta["size"]["text"],
                         data_bytes=meta["size"]["data"], bss_bytes=int(meta["sections"].get(".bss", 0)),
                         sections=meta["sections"], model_bytes=meta["model_bytes"],
                         export_arena_bytes=meta["export_arena_bytes"], inputs=inputs, outputs=outputs,
                         ops=tuple(meta["ops"]), build_seconds=seconds if meta.get("build_seconds") is None else
                         float(meta["build_seconds"]), cached=True, key=key)


def _build_into(d: Path, src: Path, machine: Machine, tree: TflmTree, toolchain: Toolchain, lib: Library,
                layout: str, lang: str, resource_variables: int = 0, methods=(), say: Say | None = None) -> dict:
    from workbench.export.tflm_sources import write_tflm_project

    proj = d / "project"
    art = write_tflm_project(src, proj, name=C_NAME, target=None, layout=layout, lang=lang)
    src_dir = proj / ("src" if layout == "arduino" else "")
    model_src = next((p for p in sorted(src_dir.glob(f"{C_NAME}_model_data.*")) if p.suffix in (".cc", ".cpp", ".c")),
                     None)
    if model_src is None:
        raise ToolFailure(f"write_tflm_project wrote no {C_NAME}_model_data source into {src_dir}.")
    (d / "wb_model.h").write_text(
        "// Generated by workbench: the exported model the harness runs.\n"
        "#ifndef WB_MODEL_H_\n#define WB_MODEL_H_\n"
        f'#include "{C_NAME}_model_data.h"\n#include "{C_NAME}_op_resolver.h"\n#include "{C_NAME}_model_settings.h"\n'
        f"#define WB_MODEL_DATA g_{C_NAME}_model_data\n#define WB_MODEL_NS {C_NAME}_model\n"
        "// Resource variables the interpreter holds (the model's VAR_HANDLE ops; 0: none).\n"
        f"#define WB_RESOURCE_VARIABLES {int(resource_variables)}\n#endif\n")
    ld = (HARNESS_DIR / "wb_firmware.ld.in").read_text()
    vectors = machine.vectors or machine.code  # an unused VECTORS region (same range as CODE) when they share one
    for k, v in {"@VECTORS@": vectors.ld(), "@VECTORS_REGION@": "CODE" if machine.vectors is None else "VECTORS",
                 "@CODE@": machine.code.ld(), "@RAM@": machine.ram.ld(), "@BIG@": machine.big.ld(),
                 "@STACK_BYTES@": str(STACK_BYTES), "@HEAP_BYTES@": str(HEAP_BYTES)}.items():
        ld = ld.replace(k, v)
    (d / "firmware.ld").write_text(ld)

    cxx, cc = _compile_flags(lib, tree, lang)
    incs = ["-I", str(d), "-I", str(src_dir), "-I", str(HARNESS_DIR)]
    defs = [f"-DWB_TIMER_BASE=0x{machine.timer_base:08X}u", *machine.timer_defines, f"-DWB_ARENA_BYTES={ARENA_BYTES}u"]
    jobs: list[tuple[list[str], str]] = []
    objs: list[str] = []
    for name in HARNESS_SOURCES:
        s = HARNESS_DIR / name
        obj = d / (s.stem + ".o")
        tool, flags = (toolchain.gxx, cxx) if s.suffix == ".cc" else (toolchain.gcc, cc)
        jobs.append(([str(tool), *flags, *defs, *incs, "-c", str(s), "-o", str(obj)], f"Compiling the harness ({name})"))
        objs.append(str(obj))
    tool, flags = (toolchain.gcc, cc) if model_src.suffix == ".c" else (toolchain.gxx, cxx)
    mobj = d / "model_data.o"
    jobs.append(([str(tool), *flags, *incs, "-c", str(model_src), "-o", str(mobj)],
                 f"Compiling the exported {model_src.name}"))
    objs.append(str(mobj))
    example = proj / "main.cc" if layout == "plain" else next(iter(sorted((proj / "examples").rglob("*.ino"))), None)
    if example is not None and example.suffix == ".cc":  # compiled (not linked): proves the example builds too
        jobs.append(([str(toolchain.gxx), *cxx, *incs, "-c", str(example), "-o", str(d / "example_main.o")],
                     f"Compiling the exported {example.name}"))
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 2))) as ex:
        list(ex.map(lambda j: _run_tool(j[0], d, j[1]), jobs))

    elf = d / ELF_NAME

    def link_with(archive: Path) -> list[str]:
        cmd = [str(toolchain.gxx), *machine.cflags, "-nostartfiles", "--specs=nano.specs", "-T", str(d / "firmware.ld"),
               "-Wl,--gc-sections", f"-Wl,-Map={d / 'firmware.map'}", *objs, str(archive), "-lm", "-o", str(elf)]
        _run_tool(cmd, d, "Linking the firmware")
        return cmd

    link, objects = link_firmware(lib, tree, toolchain, machine, methods, d, link_with, say=say)
    berkeley = parse_size_berkeley(_run_tool([str(toolchain.size), str(elf)], d, "arm-none-eabi-size"))
    sections = parse_size_sysv(_run_tool([str(toolchain.size), "-A", str(elf)], d, "arm-none-eabi-size -A"))
    return {"size": berkeley, "sections": sections, "export_arena_bytes": int(art.metrics["arena_bytes"]),
            "export_arena_measured_bytes": int(art.metrics["arena_measured_bytes"]),
            "link": [a.replace(str(tree.root), TREE_TOKEN) for a in link], "tflm_objects": objects}


# --------------------------------------------------------------------------- running


def deterministic_inputs(specs: tuple[IoSpec, ...], samples: int = 1, seed: int = 0) -> list[np.ndarray]:
    """One array per input, (samples, *shape), in the input's dtype: seeded uniform values over its range."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        dt = np.dtype(s.dtype)
        shape = (samples, *s.shape[1:]) if len(s.shape) > 0 and s.shape[0] == 1 else (samples, *s.shape)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            out.append(rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dt))
        elif dt.kind == "b":
            out.append(rng.integers(0, 2, size=shape).astype(dt))
        else:
            out.append(rng.uniform(-1.0, 1.0, size=shape).astype(dt))
    return out


def _as_model_dtype(x: np.ndarray, spec: IoSpec, pos: int) -> np.ndarray:
    dt = np.dtype(spec.dtype)
    x = np.asarray(x)
    if x.dtype == dt:
        return x
    if dt.kind in "iu" and x.dtype.kind == "f" and spec.scale:
        info = np.iinfo(dt)
        q = np.round(x.astype(np.float64) / spec.scale) + spec.zero_point
        return np.clip(q, info.min, info.max).astype(dt)
    if dt.kind == "f" and x.dtype.kind in "fiu":
        return x.astype(dt)
    raise ConfigError(f"Input {pos} of the model is {dt.name}; got an array of {x.dtype.name}.",
                      hint="Pass the input in the model's dtype (or float values for a quantized input, which are "
                           "quantized with its scale and zero point).")


def pack_inputs(inputs, specs: tuple[IoSpec, ...]) -> tuple[bytes, int]:
    """The bytes of input.bin (per sample: every input in order) and the sample count."""
    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    if len(arrays) != len(specs):
        raise ConfigError(f"The model has {len(specs)} input(s); got {len(arrays)} array(s).",
                          hint="Pass one array per input (a single array for a single-input model).")
    per_sample = []
    n = None
    for pos, (x, s) in enumerate(zip(arrays, specs)):
        x = _as_model_dtype(x, s, pos)
        per = int(np.prod(s.shape, dtype=np.int64))
        if x.size % per != 0 or x.size == 0:
            raise ConfigError(f"Input {pos} has shape {tuple(x.shape)}; it cannot be split into samples of the "
                              f"model's input shape {s.shape} ({per} elements each).",
                              hint="Pass an array of shape (N, ...) with N samples of the model's input shape.")
        k = x.size // per
        if n is not None and k != n:
            raise ConfigError(f"Input {pos} holds {k} samples, input 0 holds {n}.")
        n = k
        per_sample.append(np.ascontiguousarray(x).reshape(k, per))
    buf = b"".join(b"".join(a[i].tobytes() for a in per_sample) for i in range(n or 0))
    return buf, int(n or 0)


def unpack_outputs(raw: bytes, specs: tuple[IoSpec, ...], samples: int) -> list[np.ndarray]:
    per = sum(s.nbytes for s in specs)
    if len(raw) != per * samples:
        raise ToolFailure(f"The firmware wrote {len(raw)} output bytes; expected {samples} samples x {per} bytes.",
                          hint="The harness and the model's I/O disagree; this is a defect of the firmware emulation.")
    outs = [np.empty((samples, *s.shape[1:]) if s.shape and s.shape[0] == 1 else (samples, *s.shape),
                     dtype=s.dtype) for s in specs]
    off = 0
    for i in range(samples):
        for k, s in enumerate(specs):
            outs[k][i] = np.frombuffer(raw, dtype=s.dtype, count=s.nbytes // np.dtype(s.dtype).itemsize,
                                       offset=off).reshape(outs[k].shape[1:])
            off += s.nbytes
    return outs
