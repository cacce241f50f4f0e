"""The TensorFlow Lite Micro static library for one core, built once and cached.

Route (chosen by measurement, see the module notes in ``scripts/bench_firmware.py``): TFLM's
own Makefile, run *out of tree*: the working directory is a fresh build folder, the tree
is named by ``TENSORFLOW_ROOT`` and every object goes under ``BASE_GENDIR`` inside the build
folder, so the (possibly read-only) tree is never written and nothing is copied. The
Makefile keeps its own per-directory optimisation levels (-Os core, -O2 kernels), its
kernel specialisation (CMSIS-NN sources replacing reference ones) and its download checks;
compiling a file list ourselves would have to re-derive all of that for every TFLM version.
A second makefile of ours (``harness/wb_flags.mk``) makes the same Makefile print the exact
flags and include folders it compiled with, which the firmware build reuses.

Cache: ``<cache>/firmware/lib/<key>/`` with ``libtensorflow-microlite.a``, ``flags.json``,
``meta.json`` and ``build.log``; ``key`` is a hash of the tree's content key (git commit or
content hash), the core's TFLM ``TARGET_ARCH``, the kernels, the build type, the compiler
version and this recipe's version. The library is built in ``.<key>.tmp-<pid>`` beside the
final folder and renamed into place when complete, under a lock file, so an interrupted
build leaves nothing half-made and two processes never build the same library twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import ConfigError, RuntimeFailure
from workbench.emulate.firmware.machines import Machine
from workbench.emulate.firmware.toolchain import Toolchain
from workbench.emulate.firmware.tree import MAKEFILE, TflmTree, cache_root

RECIPE_VERSION = 1  # bump when the make invocation or the flags handling changes
HARNESS_DIR = Path(__file__).resolve().parent / "harness"
FLAGS_MK = HARNESS_DIR / "wb_flags.mk"
LIB_NAME = "libtensorflow-microlite.a"
TREE_TOKEN = "${TFLM_ROOT}"

# kernels option -> TFLM's OPTIMIZED_KERNEL_DIR (None: reference kernels only).
KERNELS: dict[str, str | None] = {"cmsis-nn": "cmsis_nn", "reference": None}
# BUILD_TYPE: release_with_logs keeps the per-op profiler hooks and MicroPrintf (the counts
# match BUILD_TYPE=release within the timer resolution, see scripts/bench_firmware.py).
DEFAULT_BUILD_TYPE = "release_with_logs"
BUILD_TYPES = ("release_with_logs", "release", "default")


@dataclass(frozen=True)
class Library:
    path: Path  # the .a
    folder: Path
    key: str
    flags: dict  # cxxflags, ccflags, includes (lists, TREE_TOKEN for the tree root), ldflags, libs
    meta: dict
    built_now: bool
    seconds: float  # build time when built now, else the time to find it

    def includes(self, tree: TflmTree) -> list[str]:
        return [i.replace(TREE_TOKEN, str(tree.root)) for i in self.flags["includes"]]


def library_key(tree: TflmTree, machine: Machine, kernels: str, build_type: str, toolchain: Toolchain) -> str:
    spec = {"recipe": RECIPE_VERSION, "tflm": tree.content_key, "arch": machine.tflm_arch, "kernels": kernels,
            "build_type": build_type, "gcc": toolchain.gcc_version, "target": "cortex_m_generic"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def lib_cache_dir() -> Path:
    return cache_root() / "firmware" / "lib"


def check_options(kernels: str, build_type: str) -> None:
    if kernels not in KERNELS:
        raise ConfigError(f"Unknown kernels {kernels!r} for the firmware library; expected one of "
                          f"{', '.join(KERNELS)}.", hint="Use kernels='cmsis-nn' (what Cortex-M boards run) or 'reference'.")
    if build_type not in BUILD_TYPES:
        raise ConfigError(f"Unknown TFLM BUILD_TYPE {build_type!r}; expected one of {', '.join(BUILD_TYPES)}.")


def make_args(tree: TflmTree, machine: Machine, kernels: str, build_type: str, toolchain: Toolchain,
              gendir: Path) -> list[str]:
    args = [f"TENSORFLOW_ROOT={tree.root}/", f"BASE_GENDIR={gendir}", "TARGET=cortex_m_generic",
            f"TARGET_ARCH={machine.tflm_arch}", f"BUILD_TYPE={build_type}", "TOOLCHAIN=gcc",
            f"TARGET_TOOLCHAIN_ROOT={toolchain.root}"]
    if KERNELS[kernels]:
        args.append(f"OPTIMIZED_KERNEL_DIR={KERNELS[kernels]}")
    return args


def _env() -> dict:
    """PATH with this interpreter's folder first: TFLM's Makefile runs `python3` helpers needing numpy and Pillow."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    return env


@contextmanager
def lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale(base: Path, key: str) -> None:
    """Temporary folders of a killed build of ``key`` (only called under the key's lock)."""
    for old in base.glob(f".{key}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)


def build_once(base: Path, key: str, load, build):
    """``(found, made)``: what ``load()`` finds in the cache, else what ``build(tmp)`` returned after
    building into a temporary folder renamed onto ``base/key``. Under the key's lock, so two
    processes never build the same thing, and an interrupted build leaves nothing half-made."""
    found = load()
    if found is not None:
        return found, None
    base.mkdir(parents=True, exist_ok=True)
    with lock(base / f".{key}.lock"):
        found = load()  # another process may have built it meanwhile
        if found is not None:
            return found, None
        remove_stale(base, key)
        tmp = base / f".{key}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            made = build(tmp)
            final = base / key
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return None, made


def _load(folder: Path, key: str, seconds: float) -> Library | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        flags = json.loads((folder / "flags.json").read_text())
    except (OSError, ValueError):
        return None
    lib = folder / LIB_NAME
    if not lib.is_file() or meta.get("key") != key:
        return None
    return Library(path=lib, folder=folder, key=key, flags=flags, meta=meta, built_now=False, seconds=seconds)


def get_library(tree: TflmTree, machine: Machine, toolchain: Toolchain, *, kernels: str = "cmsis-nn",
                build_type: str = DEFAULT_BUILD_TYPE, jobs: int | None = None, timeout: float = 3600.0,
                cache_dir: Path | None = None) -> Library:
    """The cached library for (tree, core, kernels, build type, compiler), building it if needed."""
    check_options(kernels, build_type)
    t0 = time.perf_counter()
    key = library_key(tree, machine, kernels, build_type, toolchain)
    base = Path(cache_dir) if cache_dir is not None else lib_cache_dir()
    final = base / key
    found, lib = build_once(base, key, lambda: _load(final, key, time.perf_counter() - t0),
                            lambda tmp: _build(tree, machine, toolchain, kernels, build_type, jobs, timeout, tmp, key))
    if found is not None:
        return found
    seconds = time.perf_counter() - t0
    return Library(path=final / LIB_NAME, folder=final, key=key, flags=lib["flags"], meta=lib["meta"],
                   built_now=True, seconds=seconds)


def _build(tree: TflmTree, machine: Machine, toolchain: Toolchain, kernels: str, build_type: str,
           jobs: int | None, timeout: float, tmp: Path, key: str) -> dict:
    make = shutil.which("make")
    if make is None:
        from workbench.emulate.firmware.toolchain import ToolMissingError

        raise ToolMissingError("make", "apt-get install make")
    gendir = tmp / "gen"
    args = make_args(tree, machine, kernels, build_type, toolchain, gendir)
    jobs = jobs or int(os.environ.get("WORKBENCH_FIRMWARE_JOBS", "0")) or os.cpu_count() or 2
    makefile = str(tree.root / MAKEFILE)
    t0 = time.perf_counter()
    log_path = tmp / "build.log"
    with open(log_path, "w") as log:
        cmd = [make, "-f", makefile, f"-j{jobs}", *args, "microlite"]
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        try:
            r = subprocess.run(cmd, check=False, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=_env(), timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"Building the TFLM library for {machine.core} did not finish within {timeout:.0f} s.",
                                 hint="Nothing was kept; run again with a longer timeout.") from None
    build_seconds = time.perf_counter() - t0
    if r.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeFailure(
            f"TFLM's Makefile failed building the library for {machine.core} ({machine.tflm_arch}, {kernels} kernels, "
            f"exit {r.returncode}):\n" + "\n".join(tail),
            hint="Check that the TFLM tree is complete (its downloads in place), that arm-none-eabi-gcc works, and "
                 "that this Python has numpy and Pillow (TFLM's Makefile runs Python helpers).")
    flags = _print_flags(make, makefile, args, tree, cwd=tmp)
    built = Path(flags.pop("lib"))
    if not built.is_file():
        raise RuntimeFailure(f"TFLM's Makefile finished but wrote no {LIB_NAME} (expected {built}).")
    shutil.copy2(built, tmp / LIB_NAME)
    shutil.rmtree(gendir, ignore_errors=True)
    meta = {"key": key, "recipe": RECIPE_VERSION, "tflm": tree.content_key, "tflm_commit": tree.commit,
            "core": machine.core, "tflm_arch": machine.tflm_arch, "kernels": kernels, "build_type": build_type,
            "gcc": toolchain.gcc_version, "jobs": jobs, "build_seconds": round(build_seconds, 1),
            "route": "TFLM Makefile, out of tree (TENSORFLOW_ROOT + BASE_GENDIR)", "made": time.time()}
    (tmp / "flags.json").write_text(json.dumps(flags, indent=1))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return {"flags": flags, "meta": meta}


def _print_flags(make: str, makefile: str, args: list[str], tree: TflmTree, cwd: Path) -> dict:
    cmd = [make, "-s", "-f", makefile, "-f", str(FLAGS_MK), *args, "wb_print_flags"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(), timeout=300, cwd=cwd, stdin=subprocess.DEVNULL)
    vals = {}
    for line in r.stdout.splitlines():
        if line.startswith("WB_") and "=" in line:
            k, v = line[3:].split("=", 1)
            vals[k] = v
    if r.returncode != 0 or "CXXFLAGS" not in vals:
        raise RuntimeFailure(f"Could not read the compile flags from TFLM's Makefile: {(r.stderr or r.stdout)[-500:]}")
    root = str(tree.root)
    gendir = vals.get("GENDIR", "")

    def tokens(s: str) -> list[str]:
        return [t for t in shlex.split(s) if t != "-MD"]

    includes = []
    for t in shlex.split(vals.get("INCLUDES", "")):
        path = t.removeprefix("-I")
        if path in (".", "") or (gendir and path.startswith(gendir.rstrip("/"))):
            continue  # the build folder's own generated sources: not needed by the harness
        path = path.rstrip("/") if path.rstrip("/") else path
        tok = path.replace(root, TREE_TOKEN, 1) if path.startswith(root) else path
        if tok not in includes:
            includes.append(tok)
    return {"cxxflags": tokens(vals["CXXFLAGS"]), "ccflags": tokens(vals.get("CCFLAGS", "")), "includes": includes,
            "ldflags": tokens(vals.get("LDFLAGS", "")), "libs": tokens(vals.get("MICROLITE_LIBS", "")),
            "lib": vals.get("LIB", "")}
