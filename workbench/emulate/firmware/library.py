"""The TensorFlow Lite Micro static library for one core, built once and cached (route ``full``),
or TFLM's plan for the per-object build (route ``objects``, the default: :mod:`.plan`,
:mod:`.selection`, :mod:`.objects`; a full library already cached is still served).

Route (chosen by measurement, see the module notes in ``scripts/bench_firmware.py``): TFLM's
own Makefile, run *out of tree* on a *private copy* of the tree: the working directory is a
fresh build folder, ``TENSORFLOW_ROOT`` names a copy of the tree made in it
(:func:`~workbench.emulate.firmware.tree.pristine_copy`) and every object goes under
``BASE_GENDIR`` inside it. The user's tree (possibly read-only) is never written: TFLM's
Makefile writes C arrays beside the data files of the tree it parses, which used to change
the tree's key during the first build. The Makefile keeps its own per-directory optimisation
levels (-Os core, -O2 kernels), its kernel specialisation (CMSIS-NN sources replacing
reference ones) and its download checks; compiling a file list ourselves would have to
re-derive all of that for every TFLM version. A second makefile of ours
(``harness/wb_flags.mk``) makes the same Makefile print the exact flags and include folders
it compiles with (which the firmware build reuses) and how many objects it will compile
(the progress lines say "objects compiled / total" every few seconds on stderr).

Cache: ``<cache>/firmware/lib/<key>/`` with ``libtensorflow-microlite.a``, ``flags.json``,
``meta.json``, ``build.log`` and ``digests.json`` (see :mod:`~workbench.emulate.firmware.cache`:
a file that fails its digest is never served, the library is rebuilt with a note).
``key`` = sha256 of {this recipe's version, the tree's ``content_key`` (git commit plus a hash
of changes to tracked files, or a hash of the sources present before any build, generated
arrays left out), the core's TFLM ``TARGET_ARCH``, the kernels, the build type, the compiler
version, ``TARGET=cortex_m_generic``, the optimisation level when one is given}: nothing a build writes can
change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import ConfigError, ToolFailure
from workbench.core.progress import say as progress_say
from workbench.emulate.firmware.cache import CacheCorrupt, Say, build_once, verify_digests, write_digests
from workbench.emulate.firmware.machines import Machine
from workbench.emulate.firmware.toolchain import Toolchain
from workbench.emulate.firmware.tree import MAKEFILE, TflmTree, cache_root, pristine_copy

RECIPE_VERSION = 2  # bump when the make invocation or the flags handling changes (2: private tree copy, digests)
HARNESS_DIR = Path(__file__).resolve().parent / "harness"
FLAGS_MK = HARNESS_DIR / "wb_flags.mk"
LIB_NAME = "libtensorflow-microlite.a"
SERVED = (LIB_NAME, "flags.json", "meta.json")  # the files a cached library folder serves (digested)
TREE_TOKEN = "${TFLM_ROOT}"
PROGRESS_SECONDS = 5.0  # how often a running build says how far it is
DEFAULT_BUILD_TIMEOUT = 3600.0
ROUTE_VAR = "WORKBENCH_FIRMWARE_LIBRARY"
ROUTES = ("objects", "full")  # the objects each model needs, cached one by one | TFLM's whole library

# kernels option -> TFLM's OPTIMIZED_KERNEL_DIR (None: reference kernels only).
KERNELS: dict[str, str | None] = {"cmsis-nn": "cmsis_nn", "reference": None}
# BUILD_TYPE: release_with_logs keeps the per-op profiler hooks and MicroPrintf (the counts
# match BUILD_TYPE=release within the timer resolution, see scripts/bench_firmware.py).
DEFAULT_BUILD_TYPE = "release_with_logs"
BUILD_TYPES = ("release_with_logs", "release", "default")
# One compiler optimisation level for every source (TFLM's Makefile variables CORE_, KERNEL_ and
# THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL), as a build system that compiles the library's sources with its
# own flags does: mbed-os's develop and release profiles, the Arduino Mbed core and Zephyr's default all
# use -Os. None keeps the Makefile's own levels (-Os framework, -O2 kernels and CMSIS-NN).
OPT_LEVELS = ("-Os", "-O1", "-O2", "-O3", "-Ofast")
OPT_VARS = ("CORE_OPTIMIZATION_LEVEL", "KERNEL_OPTIMIZATION_LEVEL", "THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL")


@dataclass(frozen=True)
class Library:
    path: Path  # the .a
    folder: Path
    key: str
    flags: dict  # cxxflags, ccflags, includes (lists, TREE_TOKEN for the tree root), ldflags, libs
    meta: dict
    built_now: bool
    seconds: float  # build time when built now, else the time to find it
    sha256: str = ""  # of the .a, as checked when it was served
    notes: tuple[str, ...] = ()  # e.g. a cached copy that failed its integrity check and was rebuilt
    # The per-object route (ROUTES): no archive yet, but TFLM's plan (plan.json); the firmware build
    # compiles and caches the objects one model needs (objects.py) with these jobs and this timeout.
    plan: dict | None = None
    jobs: int | None = None
    timeout: float | None = None

    def includes(self, tree: TflmTree) -> list[str]:
        return [i.replace(TREE_TOKEN, str(tree.root)) for i in self.flags["includes"]]


def library_key(tree: TflmTree, machine: Machine, kernels: str, build_type: str, toolchain: Toolchain,
                opt_level: str | None = None) -> str:
    spec = {"recipe": RECIPE_VERSION, "tflm": tree.content_key, "arch": machine.tflm_arch, "kernels": kernels,
            "build_type": build_type, "gcc": toolchain.gcc_version, "target": "cortex_m_generic",
            **({"make_vars": list(machine.tflm_make_vars)} if machine.tflm_make_vars else {}),
            **({"opt_level": opt_level} if opt_level else {})}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def lib_cache_dir() -> Path:
    return cache_root() / "firmware" / "lib"


def check_options(kernels: str, build_type: str, opt_level: str | None = None) -> None:
    if kernels not in KERNELS:
        raise ConfigError(f"Unknown kernels {kernels!r} for the firmware library; expected one of "
                          f"{', '.join(KERNELS)}.", hint="Use kernels='cmsis-nn' (what Cortex-M boards run) or 'reference'.")
    if build_type not in BUILD_TYPES:
        raise ConfigError(f"Unknown TFLM BUILD_TYPE {build_type!r}; expected one of {', '.join(BUILD_TYPES)}.")
    if opt_level is not None and opt_level not in OPT_LEVELS:
        raise ConfigError(f"Unknown optimisation level {opt_level!r} for the firmware; expected one of "
                          f"{', '.join(OPT_LEVELS)}.", hint="Leave it out for TFLM's own levels (-Os framework, -O2 kernels).")


def make_args(root: Path, machine: Machine, kernels: str, build_type: str, toolchain: Toolchain,
              gendir: Path, opt_level: str | None = None) -> list[str]:
    args = [f"TENSORFLOW_ROOT={root}/", f"BASE_GENDIR={gendir}", "TARGET=cortex_m_generic",
            f"TARGET_ARCH={machine.tflm_arch}", f"BUILD_TYPE={build_type}", "TOOLCHAIN=gcc",
            f"TARGET_TOOLCHAIN_ROOT={toolchain.root}"]
    if KERNELS[kernels]:
        args.append(f"OPTIMIZED_KERNEL_DIR={KERNELS[kernels]}")
    if opt_level:
        args += [f"{v}={opt_level}" for v in OPT_VARS]
    return args + list(machine.tflm_make_vars)


def _env() -> dict:
    """PATH with this interpreter's folder first: TFLM's Makefile runs `python3` helpers needing numpy and Pillow."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    return env


def _load(folder: Path, key: str, seconds: float) -> Library | None:
    """The cached library in ``folder``; None when there is none, CacheCorrupt when it fails its check."""
    if not folder.exists():
        return None
    digests = verify_digests(folder, SERVED)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        flags = json.loads((folder / "flags.json").read_text())
    except (OSError, ValueError) as exc:
        raise CacheCorrupt(folder, f"meta.json or flags.json is unreadable ({type(exc).__name__})") from None
    if meta.get("key") != key:
        raise CacheCorrupt(folder, f"meta.json names key {meta.get('key')!r}, the folder is {key!r}")
    return Library(path=folder / LIB_NAME, folder=folder, key=key, flags=flags, meta=meta, built_now=False,
                   seconds=seconds, sha256=digests[LIB_NAME])


def library_route(route: str | None = None) -> str:
    route = route or os.environ.get(ROUTE_VAR) or "objects"
    if route not in ROUTES:
        raise ConfigError(f"${ROUTE_VAR} (or route=) is {route!r}; expected one of {', '.join(ROUTES)}.",
                          hint="Unset it: the firmware build compiles only the objects each model needs.")
    return route


def get_library(tree: TflmTree, machine: Machine, toolchain: Toolchain, *, kernels: str = "cmsis-nn",
                build_type: str = DEFAULT_BUILD_TYPE, jobs: int | None = None, timeout: float | None = None,
                cache_dir: Path | None = None, say: Say | None = None, route: str | None = None,
                opt_level: str | None = None) -> Library:
    """The cached library for (tree, core, kernels, build type, compiler, optimisation level).

    Route ``objects`` (the default; ``route=`` or ``$WORKBENCH_FIRMWARE_LIBRARY``): a full library
    already in the cache is served as before; otherwise the Library holds TFLM's plan
    (:mod:`.plan`, a few seconds once per core) and the firmware build compiles only the objects
    the model needs, each cached (:mod:`.objects`). Route ``full`` builds the whole library with
    TFLM's Makefile when it is not cached.

    ``say`` receives the progress lines of a build and the notes (default: the progress lines, which the CLI writes to stderr). A build
    that fails or times out (``timeout`` seconds, default ``$WORKBENCH_FIRMWARE_BUILD_TIMEOUT``
    or 3600) raises ToolFailure (exit 4): a tool's failure, not the model's.
    """
    check_options(kernels, build_type, opt_level)
    if timeout is None:
        timeout = _env_seconds("WORKBENCH_FIRMWARE_BUILD_TIMEOUT", DEFAULT_BUILD_TIMEOUT)
    say = progress_say if say is None else say
    t0 = time.perf_counter()
    key = library_key(tree, machine, kernels, build_type, toolchain, opt_level)
    base = Path(cache_dir) if cache_dir is not None else lib_cache_dir()
    final = base / key
    if library_route(route) == "objects" and not final.exists():
        from workbench.emulate.firmware.plan import get_plan

        folder, plan, flags, meta, made, notes = get_plan(
            tree, machine, toolchain, kernels=kernels, build_type=build_type, library_key=key,
            base=base.parent / "plan", timeout=timeout, say=say, opt_level=opt_level)
        digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
        return Library(path=folder / "plan.json", folder=folder, key=meta["key"], flags=flags, meta=meta,
                       built_now=made, seconds=time.perf_counter() - t0, sha256=digest, notes=notes, plan=plan,
                       jobs=jobs, timeout=timeout)
    found, lib, notes = build_once(
        base, key, lambda: _load(final, key, time.perf_counter() - t0),
        lambda tmp: _build(tree, machine, toolchain, kernels, build_type, jobs, timeout, tmp, key, say, opt_level),
        what=f"TFLM library for {machine.core}", say=say)
    if found is not None:
        return Library(**{**found.__dict__, "notes": tuple(notes)})
    seconds = time.perf_counter() - t0
    return Library(path=final / LIB_NAME, folder=final, key=key, flags=lib["flags"], meta=lib["meta"],
                   built_now=True, seconds=seconds, sha256=lib["sha256"], notes=tuple(notes))


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"${name} is {raw!r}; expected a number of seconds above 0.", hint=f"Unset it for {default:.0f} s.")
    return value


def _build(tree: TflmTree, machine: Machine, toolchain: Toolchain, kernels: str, build_type: str,
           jobs: int | None, timeout: float, tmp: Path, key: str, say: Say, opt_level: str | None = None) -> dict:
    make = shutil.which("make")
    if make is None:
        from workbench.emulate.firmware.toolchain import ToolMissingError

        raise ToolMissingError("make", "apt-get install make")
    root = pristine_copy(tree.root, tmp / "tree")
    gendir = tmp / "gen"
    args = make_args(root, machine, kernels, build_type, toolchain, gendir, opt_level)
    jobs = jobs or int(os.environ.get("WORKBENCH_FIRMWARE_JOBS", "0")) or os.cpu_count() or 2
    makefile = str(root / MAKEFILE)
    flags = _print_flags(make, makefile, args, root, cwd=tmp)
    total = int(flags.pop("objects", 0) or 0)
    built = Path(flags.pop("lib"))
    what = (f"the TFLite Micro library for {machine.core} ({machine.tflm_arch}, {kernels} kernels, {build_type}"
            f"{', ' + opt_level if opt_level else ''})")
    say(f"Building {what}: {total} objects, once per core and compiler (cached in {tmp.parent}).")
    log_path = tmp / "build.log"
    cmd = [make, "-f", makefile, f"-j{jobs}", *args, "microlite"]
    t0 = time.perf_counter()
    rc = _run_make(cmd, tmp, log_path, gendir, total, timeout, what, say)
    build_seconds = time.perf_counter() - t0
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise ToolFailure(
            f"TFLM's Makefile failed building {what} (exit {rc}):\n" + "\n".join(tail),
            hint="Check that the TFLM tree is complete (its downloads in place), that arm-none-eabi-gcc works, and "
                 "that this Python has numpy and Pillow (TFLM's Makefile runs Python helpers).")
    if not built.is_file():
        raise ToolFailure(f"TFLM's Makefile finished but wrote no {LIB_NAME} (expected {built}).")
    shutil.copy2(built, tmp / LIB_NAME)
    shutil.rmtree(gendir, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    say(f"Built {what} in {_clock(build_seconds)}.")
    meta = {"key": key, "recipe": RECIPE_VERSION, "tflm": tree.content_key, "tflm_commit": tree.commit,
            "core": machine.core, "tflm_arch": machine.tflm_arch, "kernels": kernels, "build_type": build_type,
            "opt_level": opt_level, "gcc": toolchain.gcc_version, "jobs": jobs, "objects": total, "build_seconds": round(build_seconds, 1),
            "route": "TFLM Makefile, out of tree on a private copy of the tree (TENSORFLOW_ROOT + BASE_GENDIR)",
            "made": time.time()}
    (tmp / "flags.json").write_text(json.dumps(flags, indent=1))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    digests = write_digests(tmp, SERVED)
    return {"flags": flags, "meta": meta, "sha256": digests[LIB_NAME]}


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def count_objects(gendir: Path) -> int:
    """Object files the build has written so far."""
    n = 0
    for _dirpath, _dirnames, filenames in os.walk(gendir):
        n += sum(1 for f in filenames if f.endswith(".o"))
    return n


def _run_make(cmd: list[str], cwd: Path, log_path: Path, gendir: Path, total: int, timeout: float, what: str,
              say: Say) -> int:
    """Run make in its own process group, saying "objects compiled / total" every PROGRESS_SECONDS;
    the whole group is killed on a timeout (ToolFailure) or an interrupt."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=_env(), stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            last_said, last_count = t0, -1
            while True:
                try:
                    return proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
                now = time.perf_counter()
                if now - t0 > timeout:
                    _kill_group(proc)
                    raise ToolFailure(f"Building {what} did not finish within {timeout:.0f} s "
                                      f"({count_objects(gendir)} of {total} objects compiled); the build was stopped.",
                                      hint="Nothing was kept. Allow more seconds with WORKBENCH_FIRMWARE_BUILD_TIMEOUT "
                                           "(or more parallel jobs with WORKBENCH_FIRMWARE_JOBS) and run again.")
                if now - last_said >= PROGRESS_SECONDS:
                    done = count_objects(gendir)
                    if done != last_count or now - last_said >= 6 * PROGRESS_SECONDS:
                        say(f"  {what}: {done}/{total} objects compiled, {_clock(now - t0)}")
                        last_count = done
                    last_said = now
        except BaseException:
            _kill_group(proc)
            raise


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _print_flags(make: str, makefile: str, args: list[str], root: Path, cwd: Path) -> dict:
    return flags_from_vars(read_make_vars(make, makefile, args, cwd), root)


def read_make_vars(make: str, makefile: str, args: list[str], cwd: Path, timeout: float = 300.0) -> dict:
    """The ``WB_*`` lines harness/wb_flags.mk makes TFLM's Makefile print (name without ``WB_`` -> value)."""
    cmd = [make, "-s", "-f", makefile, "-f", str(FLAGS_MK), *args, "wb_print_flags"]
    timeout = min(300.0, timeout)
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=cwd,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolFailure(f"Reading the compile flags from TFLM's Makefile did not finish within {timeout:.0f} s.",
                          hint="Allow more seconds with WORKBENCH_FIRMWARE_BUILD_TIMEOUT and run again.") from None
    vals = {}
    for line in r.stdout.splitlines():
        if line.startswith("WB_") and "=" in line:
            k, v = line[3:].split("=", 1)
            vals[k] = v
    if r.returncode != 0 or "CXXFLAGS" not in vals:
        raise ToolFailure(f"Could not read the compile flags from TFLM's Makefile: {(r.stderr or r.stdout)[-500:]}")
    return vals


def flags_from_vars(vals: dict, root: Path) -> dict:
    """flags.json: the flags and include folders the harness and exported sources are compiled with."""
    root_s = str(root)
    gendir = vals.get("GENDIR", "")

    def tokens(s: str) -> list[str]:
        return [t.replace(root_s, TREE_TOKEN, 1) if t.startswith(("-I" + root_s, root_s)) else t
                for t in shlex.split(s) if t != "-MD"]

    includes = []
    for t in shlex.split(vals.get("INCLUDES", "")):
        path = t.removeprefix("-I")
        if path in (".", "") or (gendir and path.startswith(gendir.rstrip("/"))):
            continue  # the build folder's own generated sources: not needed by the harness
        path = path.rstrip("/") if path.rstrip("/") else path
        tok = path.replace(root_s, TREE_TOKEN, 1) if path.startswith(root_s) else path
        if tok not in includes:
            includes.append(tok)
    return {"cxxflags": tokens(vals["CXXFLAGS"]), "ccflags": tokens(vals.get("CCFLAGS", "")), "includes": includes,
            "ldflags": tokens(vals.get("LDFLAGS", "")), "libs": tokens(vals.get("MICROLITE_LIBS", "")),
            "lib": vals.get("LIB", ""), "objects": vals.get("OBJECTS", "0")}

