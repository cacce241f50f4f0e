"""TFLM objects compiled one by one and cached, and the firmware linked against only those a model needs.

Each library source the model needs (:mod:`.selection`) is compiled exactly as TFLM's own rule
would (:func:`~workbench.emulate.firmware.plan.compile_command`: its flags, its optimisation level
for the source's folder, its include folders), plus ``-ffile-prefix-map=<tree>/=`` so the paths
TFLM's error messages embed (``__FILE__``) name the file inside the tree, not where the tree sits.

Cache: ``<cache>/firmware/obj/<key>/<name>.o`` + ``digests.json``, one sealed folder per object,
built in a temporary folder and renamed into place under a per-object lock (:func:`.cache.build_once`:
two processes never write the same object; a folder failing its digest is rebuilt, never served).
``key`` = sha256 of {OBJECTS_VERSION, the tree's ``content_key``, the source's path in the tree and
the sha256 of its content, the exact command (compiler name, flags, includes), the compiler
version}: the next model on the same core compiles only the kernels it adds.

The selected objects go into a deterministic archive (``ar rcsD``) in the image's build folder, so
the linker pulls members exactly as it does from TFLM's own library. An undefined symbol adds the
sources mentioning it and links again; then the whole source list; only a link failing with every
source is a ToolFailure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.core.errors import ToolFailure
from workbench.core.files import sha256_file
from workbench.core.progress import say as progress_say
from workbench.emulate.firmware.cache import CacheCorrupt, Say, build_once, verify_digests, write_digests
from workbench.emulate.firmware.plan import TREE_TOKEN, all_sources, compile_command
from workbench.emulate.firmware.selection import definers, select_sources, undefined_symbols

OBJECTS_VERSION = 1  # bump when an object's command or its cache folder changes
PROGRESS_SECONDS = 5.0
ARCHIVE = "libtflm-model.a"


@dataclass(frozen=True)
class ObjectJob:
    group: str
    source: str  # tokenised (TREE_TOKEN)
    cmd: tuple[str, ...]  # the compile command without "-o"
    key: str
    name: str  # the object's file name


@dataclass(frozen=True)
class LinkInfo:
    objects: int  # in the archive the firmware linked
    compiled: int  # compiled now (the rest came from the cache)
    seconds: float
    kernels: tuple[str, ...]
    attempts: int  # links tried (1 unless an undefined symbol widened the selection)
    full: bool  # the whole source list was needed
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"objects": self.objects, "compiled": self.compiled, "seconds": round(self.seconds, 2),
                "kernels": list(self.kernels), "attempts": self.attempts, "full": self.full}


def objects_dir(lib) -> Path:
    """``<cache>/firmware/obj`` beside the plan folders (``<cache>/firmware/plan/<key>``)."""
    return Path(lib.folder).parent.parent / "obj"


def prefix_map(root: Path) -> str:
    return f"-ffile-prefix-map={str(root).rstrip('/')}/="


def object_jobs(lib, tree, toolchain, sources) -> list[ObjectJob]:
    root = str(tree.root)
    jobs = []
    for group, source in sources:
        cmd = [*compile_command(lib.plan, group, source, tree.root, toolchain), prefix_map(tree.root)]
        path = source.replace(TREE_TOKEN, root)
        generic = [Path(cmd[0]).name] + [c.replace(root, TREE_TOKEN) for c in cmd[1:]]
        spec = {"v": OBJECTS_VERSION, "tflm": tree.content_key, "source": source, "sha256": _file_hash(path),
                "cmd": generic, "gcc": toolchain.gcc_version}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        jobs.append(ObjectJob(group=group, source=source, cmd=tuple(cmd), key=key, name=Path(path).stem + ".o"))
    return jobs


def _file_hash(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise ToolFailure(f"TFLM's source {path} cannot be read ({exc.strerror or exc}).",
                          hint="The TFLM tree changed or is incomplete; run `workbench firmware setup` again.") from None


def _load(folder: Path, job: ObjectJob) -> Path | None:
    if not folder.exists():
        return None
    verify_digests(folder, (job.name,))
    return folder / job.name


def compile_objects(jobs: list[ObjectJob], base: Path, *, workers: int, timeout: float, deadline: float | None = None,
                    kernels=(), core: str = "", say: Say | None = None) -> tuple[list[Path], int, tuple[str, ...]]:
    """(object paths in ``jobs`` order, how many were compiled now, notes) — cached ones are served after
    their digest check, the rest compiled ``workers`` at a time with a progress line every few seconds."""
    say = progress_say if say is None else say
    t0 = time.perf_counter()
    deadline = t0 + timeout if deadline is None else deadline
    todo = []
    for job in jobs:
        try:
            if _load(base / job.key, job) is not None:
                continue
        except CacheCorrupt:
            pass  # build_once says so and rebuilds it
        todo.append(job)
    shown = ", ".join(kernels[:8]) + (", ..." if len(kernels) > 8 else "")
    what = f"TFLite Micro objects for {core}" if core else "TFLite Micro objects"
    if todo:
        say(f"Compiling {len(todo)} of the {len(jobs)} {what} this model needs (kernels: {shown}; "
            f"{len(jobs) - len(todo)} cached in {base}).")
    lock = threading.Lock()
    state = {"done": 0, "said": time.perf_counter()}
    notes: list[str] = []

    def one(job: ObjectJob) -> Path:
        def build(tmp: Path) -> None:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise _Timeout()
            out = tmp / job.name
            try:
                r = subprocess.run([*job.cmd, "-o", str(out)], cwd=tmp, capture_output=True, text=True,
                                   timeout=left, stdin=subprocess.DEVNULL, check=False)
            except subprocess.TimeoutExpired:
                raise _Timeout() from None
            except OSError as exc:
                raise ToolFailure(f"The compiler could not be started for {job.source}: {exc}.") from None
            if r.returncode != 0 or not out.is_file():
                lines = (r.stderr or r.stdout).strip().splitlines()
                raise ToolFailure(f"Compiling TFLM's {job.source.replace(TREE_TOKEN + '/', '')} failed "
                                  f"(exit {r.returncode}):\n" + "\n".join(lines[:25]),
                                  hint="Check that the TFLM tree is complete and that arm-none-eabi-gcc works.")
            write_digests(tmp, (job.name,))

        folder = base / job.key
        found, _, job_notes = build_once(base, job.key, lambda: _load(folder, job), build,
                                         what=f"TFLM object {job.name}", say=say)
        with lock:
            notes.extend(job_notes)
            if found is None:
                state["done"] += 1
                now = time.perf_counter()
                if now - state["said"] >= PROGRESS_SECONDS:
                    say(f"  compiling {state['done']}/{len(todo)} objects (kernels: {shown}), {now - t0:.0f} s")
                    state["said"] = now
        return folder / job.name

    ex = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        paths = list(ex.map(one, jobs))
    except _Timeout:
        raise ToolFailure(f"Compiling the {what} did not finish within {timeout:.0f} s ({state['done']} of "
                          f"{len(todo)} compiled and kept); the build was stopped.",
                          hint="The objects compiled so far are cached. Allow more seconds with "
                               "WORKBENCH_FIRMWARE_BUILD_TIMEOUT (or more parallel jobs with WORKBENCH_FIRMWARE_JOBS) "
                               "and run again.") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    if todo:
        say(f"Compiled {state['done']} {what} in {time.perf_counter() - t0:.1f} s "
            f"({len(jobs) - len(todo)} more served from the cache).")
    return paths, state["done"], tuple(notes)


class _Timeout(Exception):
    """The compile deadline passed (turned into one ToolFailure by compile_objects)."""


def make_archive(toolchain, objects: list[Path], folder: Path) -> Path:
    """A deterministic archive of ``objects`` (members named uniquely: TFLM has several ``kernel_util.o``)."""
    stage = folder / "objects"
    stage.mkdir(parents=True, exist_ok=True)
    members = []
    for i, obj in enumerate(objects):
        link = stage / f"{i:03d}_{obj.name}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(obj)
        members.append(link.name)
    archive = folder / ARCHIVE
    if archive.exists():
        archive.unlink()
    r = subprocess.run([str(toolchain.ar), "rcsD", str(archive), *members], cwd=stage, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, check=False)
    if r.returncode != 0:
        raise ToolFailure(f"arm-none-eabi-ar could not archive the TFLM objects: {(r.stderr or r.stdout)[-500:]}")
    return archive


def jobs_count(lib) -> int:
    return lib.jobs or int(os.environ.get("WORKBENCH_FIRMWARE_JOBS", "0")) or os.cpu_count() or 2


def objects_version(lib) -> int | None:
    """The per-object recipe's version when ``lib`` is a plan (part of a firmware image's key), else None."""
    return OBJECTS_VERSION if lib.plan is not None else None


def link_firmware(lib, tree, toolchain, machine, methods, folder: Path, link: Callable[[Path], object],
                  say: Say | None = None):
    """``(link's result, LinkInfo.to_dict() or None)``: ``link(lib.path)`` for a full library; for a plan,
    the model's objects archived in ``folder/tflm`` (removed after the link) and linked."""
    if lib.plan is None:
        return link(lib.path), None
    work = folder / "tflm"
    try:
        result, info = link_model(lib, tree, toolchain, machine, methods, work, link, say=say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result, info.to_dict()


def link_model(lib, tree, toolchain, machine, methods, folder: Path, link: Callable[[Path], object],
               say: Say | None = None):
    """``(link(archive)'s result, LinkInfo)``: the objects ``methods`` need compiled (or served from the
    cache), archived in ``folder`` and linked by ``link``; an undefined symbol widens the selection."""
    say = progress_say if say is None else say
    from workbench.emulate.firmware.library import DEFAULT_BUILD_TIMEOUT

    t0 = time.perf_counter()
    timeout = lib.timeout or DEFAULT_BUILD_TIMEOUT
    sel = select_sources(lib.plan, tree.root, methods)
    chosen = list(sel.sources)
    everything = all_sources(lib.plan)
    base = objects_dir(lib)
    compiled, attempts, notes = 0, 0, []
    while True:
        attempts += 1
        jobs = object_jobs(lib, tree, toolchain, chosen)
        paths, n, job_notes = compile_objects(jobs, base, workers=jobs_count(lib), timeout=timeout, deadline=t0 + timeout,
                                              kernels=sel.kernels, core=machine.core, say=say)
        compiled += n
        notes.extend(job_notes)
        archive = make_archive(toolchain, paths, folder)
        full = len(chosen) == len(everything)
        try:
            result = link(archive)
        except ToolFailure as exc:
            if full:
                raise
            missing = undefined_symbols(exc.message)
            extra = definers(missing, lib.plan, tree.root, chosen) if missing else []
            if extra:
                note = (f"The link missed {len(missing)} symbol(s) ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}); adding {len(extra)} TFLM source(s) that define them.")
                have = set(chosen) | set(extra)
                chosen = [s for s in everything if s in have]
            else:
                note = "The link failed with the objects selected for this model; linking with every TFLM source."
                chosen = list(everything)
            say(note)
            notes.append(note)
            continue
        info = LinkInfo(objects=len(chosen), compiled=compiled, seconds=time.perf_counter() - t0, kernels=sel.kernels,
                        attempts=attempts, full=full, notes=tuple(notes))
        return result, info
