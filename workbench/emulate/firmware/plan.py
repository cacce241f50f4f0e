"""What TFLM's Makefile would compile for one core, read from the Makefile itself: the "plan".

TFLM's Makefile is parsed once per (tree, core, kernels, build type, compiler) on a private copy
of the tree (parsing writes C arrays into the tree it reads, see :mod:`.tree`), with
``harness/wb_flags.mk`` making it print its flags, its include folders and every library source
*after* its kernel specialisation (``cmsis_nn/conv.cc`` in place of the reference ``conv.cc``),
grouped by the compile rule that builds it and that rule's optimisation level (-Os for the
framework, -O2 for kernels and CMSIS-NN, or one level for all when the library's ``opt_level``
sets it). Nothing of TFLM's selection logic is re-derived here.

Cache: ``<cache>/firmware/plan/<key>/`` with ``plan.json``, ``flags.json`` and ``meta.json``,
sealed like every firmware cache folder (:mod:`.cache`). Paths inside the tree are stored with
``${TFLM_ROOT}`` in place of the tree's root, so a plan holds for the same tree anywhere.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from workbench.core.errors import ToolFailure
from workbench.emulate.firmware.cache import CacheCorrupt, Say, build_once, verify_digests, write_digests

PLAN_VERSION = 1  # bump when the plan's contents or the way objects are compiled from it change
SERVED = ("plan.json", "flags.json", "meta.json")
TREE_TOKEN = "${TFLM_ROOT}"
# wb_flags.mk's source groups: (name, the TFLM compile rule's object folder it stands for).
GROUPS = ("CORE", "KERNEL", "THIRD_PARTY", "THIRD_PARTY_KERNEL")


def plan_key(library_key: str) -> str:
    return hashlib.sha256(f"plan{PLAN_VERSION}:{library_key}".encode()).hexdigest()[:20]


def tokenise(path: str, root: str) -> str:
    """``path`` with the tree's root replaced by TREE_TOKEN (paths outside the tree stay as they are)."""
    root = root.rstrip("/")
    if path == root or path.startswith(root + "/"):
        return TREE_TOKEN + path[len(root):]
    return path


def parse_sources(vals: dict, root: Path) -> dict:
    """The plan from wb_flags.mk's lines (``vals``: name without ``WB_`` -> value).

    ``groups``: [{group, level, sources}] in TFLM's archive order; ``cxxflags`` / ``ccflags``: the
    exact flags of its compile rules (``-MD`` dropped: no dependency files); ``includes``: every
    ``-I`` of its INCLUDES in order, except the build folder's generated sources (empty for the library).
    """
    root_s = str(root).rstrip("/")
    gendir = vals.get("GENDIR", "").rstrip("/")
    groups = []
    for name in GROUPS:
        raw = vals.get(f"SRCS_{name}")
        if raw is None or "|" not in raw:
            raise ToolFailure(f"TFLM's Makefile did not print its {name.lower()} sources (WB_SRCS_{name}); "
                              "harness/wb_flags.mk and this TFLM version disagree.")
        level, srcs = raw.split("|", 1)
        groups.append({"group": name.lower(), "level": level.strip(),
                       "sources": [tokenise(s, root_s) for s in srcs.split()]})
    if vals.get("CUSTOM_OP_OBJS", "").strip():
        raise ToolFailure("TFLM's Makefile adds custom-op objects (MICROLITE_CUSTOM_OP_OBJS), which the per-object "
                          "build does not know how to compile.", hint="Set WORKBENCH_FIRMWARE_LIBRARY=full.")

    def flags(s: str) -> list[str]:
        return [tokenise(t, root_s) if t.startswith(root_s) else t for t in shlex.split(s) if t != "-MD"]

    includes = []
    for t in shlex.split(vals.get("INCLUDES", "")):
        path = t.removeprefix("-I")
        if gendir and path.rstrip("/").startswith(gendir):
            continue
        includes.append("-I" + tokenise(path, root_s))
    return {"version": PLAN_VERSION, "groups": groups, "cxxflags": flags(vals["CXXFLAGS"]),
            "ccflags": flags(vals.get("CCFLAGS", "")), "includes": includes}


def all_sources(plan: dict) -> list[tuple[str, str]]:
    """(group, tokenised source) for every library source, in TFLM's archive order."""
    return [(g["group"], s) for g in plan["groups"] for s in g["sources"]]


def compile_command(plan: dict, group: str, source: str, tree_root: Path, toolchain) -> list[str]:
    """The compile command TFLM's rule for ``group`` runs for ``source`` (without ``-o``), on ``tree_root``:
    ``$(CXX|CC) $(CXXFLAGS|CCFLAGS) <level> $(INCLUDES) -c <source>``."""
    level = next(g["level"] for g in plan["groups"] if g["group"] == group)
    cxx = source.endswith(".cc")
    tool = toolchain.gxx if cxx else toolchain.gcc
    root = str(tree_root)
    flags = plan["cxxflags"] if cxx else plan["ccflags"]
    cmd = [str(tool), *flags, *shlex.split(level), *plan["includes"], "-c", source]
    return [c.replace(TREE_TOKEN, root) for c in cmd]


def get_plan(tree, machine, toolchain, *, kernels: str, build_type: str, library_key: str, base: Path,
             timeout: float, say: Say, opt_level: str | None = None) -> tuple[Path, dict, dict, dict, bool, tuple[str, ...]]:
    """(folder, plan, flags, meta, made now, notes) for the library ``library_key`` names, read from
    the cache or from TFLM's Makefile (a few seconds: copying the tree and parsing the Makefile)."""
    from workbench.emulate.firmware import library as lib_mod

    key = plan_key(library_key)
    final = base / key

    def load():
        if not final.exists():
            return None
        verify_digests(final, SERVED)
        try:
            docs = [json.loads((final / n).read_text()) for n in SERVED]
        except (OSError, ValueError) as exc:
            raise CacheCorrupt(final, f"a plan file is unreadable ({type(exc).__name__})") from None
        if docs[2].get("key") != key:
            raise CacheCorrupt(final, f"meta.json names key {docs[2].get('key')!r}, the folder is {key!r}")
        return docs

    def build(tmp: Path) -> list:
        make = shutil.which("make")
        if make is None:
            from workbench.emulate.firmware.toolchain import ToolMissingError

            raise ToolMissingError("make", "apt-get install make")
        t0 = time.perf_counter()
        root = lib_mod.pristine_copy(tree.root, tmp / "tree")
        args = lib_mod.make_args(root, machine, kernels, build_type, toolchain, tmp / "gen", opt_level)
        try:
            vals = lib_mod.read_make_vars(make, str(root / lib_mod.MAKEFILE), args, cwd=tmp,
                                          timeout=timeout)
            flags = lib_mod.flags_from_vars(vals, root)
            flags.pop("lib", None)  # the full build's archive and object count: not part of a plan
            flags.pop("objects", None)
            plan = parse_sources(vals, root)
        finally:
            shutil.rmtree(tmp / "tree", ignore_errors=True)
            shutil.rmtree(tmp / "gen", ignore_errors=True)
        meta = {"key": key, "library_key": library_key, "plan": PLAN_VERSION, "tflm": tree.content_key,
                "core": machine.core, "tflm_arch": machine.tflm_arch, "kernels": kernels, "build_type": build_type,
                "opt_level": opt_level, "gcc": toolchain.gcc_version, "sources": len(all_sources(plan)),
                "seconds": round(time.perf_counter() - t0, 1), "made": time.time()}
        for name, doc in zip(SERVED, (plan, flags, meta)):
            (tmp / name).write_text(json.dumps(doc, indent=1))
        write_digests(tmp, SERVED)
        return [plan, flags, meta]

    found, made, notes = build_once(base, key, load, build, what=f"TFLM source plan for {machine.core}", say=say)
    plan, flags, meta = found if found is not None else made
    return final, plan, flags, meta, found is None, tuple(notes)
