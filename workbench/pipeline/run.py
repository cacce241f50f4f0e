"""Run a recipe: every (model, variant) is an independent job, cached by content hash.

A job optimizes the model (prune, QAT) if asked, exports every format, measures accuracy
of each artifact in its runtime against the float original, and emulates each .tflite on
each target. Jobs run in local worker processes (``jobs``); finished jobs are stored under
``<out>/.cache/<key>/`` so a re-run only redoes what changed and an interrupted run resumes.
The key holds the content of the model and data files (see :mod:`workbench.pipeline.cache`), a
cached entry is checked file by file before it is served, and one run holds the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workbench import __version__
from workbench.core.errors import ConfigError
from workbench.core.files import atomic_path, write_json_atomic
from workbench.pipeline.cache import DIGEST_CACHE, FileDigests, check_entry, drop, run_lock, seal
from workbench.pipeline.recipe import ModelRef, Recipe, Variant

RESULTS_SCHEMA = "workbench.run/1"


@dataclass(frozen=True)
class Job:
    model: ModelRef
    variant: Variant
    data: dict
    targets: tuple[str, ...]
    content: dict = field(default_factory=dict)  # digests of the model file and of each data spec's files

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.variant.name}"

    def key(self) -> str:
        h = hashlib.sha256()
        payload = {"content": self.content, "factory": self.model.factory, "shape": self.model.input_shape,
                   "variant": self.variant.to_dict(), "data": self.data, "targets": list(self.targets), "version": __version__}
        h.update(json.dumps(payload, sort_keys=True, default=str).encode())
        return h.hexdigest()[:20]


def plan(recipe: Recipe, digests: FileDigests | None = None) -> list[Job]:
    """The (model, variant) jobs of a recipe, each keyed by the content of what it reads."""
    digests = digests or FileDigests(Path(os.devnull))
    data_content = {k: digests.spec(v) for k, v in sorted(recipe.data.items()) if isinstance(v, str)}
    jobs = []
    for m in recipe.models:
        content = {"model": digests.path(Path(m.path)) if Path(m.path).exists() else str(m.path), "data": data_content}
        if m.factory:
            content["factory"] = digests.spec(m.factory)
        for v in recipe.variants:
            if v.frameworks and not any(fw in m.name for fw in v.frameworks):
                continue
            jobs.append(Job(model=m, variant=v, data=recipe.data, targets=recipe.targets, content=content))
    return jobs


def _cached(job: Job, cache: Path, say: Callable[[str], None]) -> dict | None:
    folder = cache / job.key()
    if not folder.exists():
        return None
    problem = check_entry(folder)
    if problem is None:
        return json.loads((folder / "result.json").read_text(encoding="utf-8"))
    say(f"cache entry of {job.label} ({folder.name}) failed its check: {problem}; running it again")
    drop(folder)
    return None


def run_recipe(recipe: Recipe, out: Path, jobs: int = 1, on_event: Callable[[str], None] | None = None,
               executor: str = "local", address: str | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        return _run_locked(recipe, out, jobs, on_event or (lambda s: None), executor, address)


def _run_locked(recipe: Recipe, out: Path, jobs: int, say: Callable[[str], None], executor: str, address: str | None) -> dict:
    cache = out / ".cache"
    cache.mkdir(exist_ok=True)
    for stale in [*cache.glob("*.partial"), *cache.glob("*.uncached")]:  # left by a killed run (we hold the lock)
        drop(stale)
    digests = FileDigests(cache / DIGEST_CACHE)
    todo = plan(recipe, digests)
    digests.save()
    results: dict[str, dict] = {}
    pending = []
    for job in todo:
        hit = _cached(job, cache, say)
        if hit is not None:
            results[job.label] = hit
            say(f"cached  {job.label}")
        else:
            pending.append(job)
    t0 = time.time()
    if pending:
        if executor != "local":
            for label, res in EXECUTORS.get(executor)(pending, str(cache), jobs, address):
                results[label] = res
                say(f"done    {label} ({res['seconds']:.0f} s, {executor})")
        elif jobs > 1 and len(pending) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                     initializer=worker_init, initargs=(os.getpid(),)) as pool:
                futs = {pool.submit(run_job, j, str(cache)): j for j in pending}
                for f in as_completed(futs):
                    j = futs[f]
                    results[j.label] = f.result()
                    say(f"done    {j.label} ({results[j.label]['seconds']:.0f} s)")
        else:
            for j in pending:
                results[j.label] = run_job(j, str(cache))
                say(f"done    {j.label} ({results[j.label]['seconds']:.0f} s)")
    rows = [r for job in todo for r in results[job.label]["rows"]]
    for job in todo:  # publish artifacts under out/<model>/<variant>/
        entry = cache / job.key()
        held = entry if entry.is_dir() else entry.with_name(entry.name + ".uncached")
        if (held / "artifacts").exists():
            publish(held / "artifacts", out, job.model.name, job.variant.name)
        if held != entry:
            drop(held)
    doc = {"schema": RESULTS_SCHEMA, "recipe": recipe.name, "workbench": __version__, "seconds": round(time.time() - t0, 1),
           "targets": list(recipe.targets), "rows": rows,
           "jobs": {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in results.items()}}
    write_json_atomic(out / "results.json", doc)
    return doc


def publish(src: Path, out: Path, model: str, variant: str) -> Path:
    """Copy a job's artifacts to ``out/<model>/<variant>``, replacing that folder as a whole. The
    destination must lie inside ``out`` (names are checked when the recipe is read; this holds
    even for a recipe built in code, or a folder link inside ``out``)."""
    root = out.resolve()
    dst = out / model / variant
    if dst.parent.resolve().parent != root or dst.parent.name != model or Path(variant).name != variant or variant in ("", ".", ".."):
        raise ConfigError(f"Results of {model}/{variant} would be written outside the output folder '{out}' ({dst.resolve()}).",
                          hint="Model and variant names must be single folder names (letters, digits, . _ - + =).")
    dst.parent.mkdir(exist_ok=True)
    with atomic_path(dst, suffix="") as tmp:
        shutil.copytree(src, tmp)
    return dst


def worker_init(parent: int) -> None:
    """A worker's set-up: it ends with its run, and its progress lines (a library build) reach stderr."""
    from workbench.core.progress import to_stderr

    to_stderr()
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """In a worker: end when the run that started it ends, even by SIGKILL (Linux's parent-death
    signal), so no worker of a killed run holds its memory for good."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _ray_executor(pending: list[Job], cache_dir: str, jobs: int, address: str | None):
    """Each job as a Ray task. The output folder must be reachable by every worker (one machine, or
    shared storage on a cluster); results and cache entries are the same as with local workers."""
    from workbench.core.errors import require

    ray = require("ray", "ray", "The Ray executor")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({} if address else {"num_cpus": max(1, jobs)}))
    try:
        task = ray.remote(num_cpus=1)(run_job)
        refs = {task.remote(j, cache_dir): j for j in pending}
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            yield refs[done[0]].label, ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def _register_executors():
    from workbench.core.registry import Registry

    reg: Registry = Registry("executor")
    reg.add("ray", _ray_executor)
    return reg


EXECUTORS = _register_executors()


def run_job(job: Job, cache_dir: str) -> dict:
    """One (model, variant): optimize, export, evaluate, emulate. Runs in a worker process.

    A job that could not build every format, or whose measurement hit a tool failure (a firmware
    build that timed out, a broken cache), is returned but not cached: its folder is ``<key>.uncached``
    and the next run does it again."""
    from workbench.pipeline.steps import execute

    t0 = time.time()
    folder = Path(cache_dir) / job.key()
    work = folder.with_name(folder.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    (work / "artifacts").mkdir(parents=True)
    res = execute(job, work / "artifacts")
    res["seconds"] = round(time.time() - t0, 1)
    why = not_cacheable(res)
    if why:
        res["not_cached"] = why
    write_json_atomic(work / "result.json", res)
    dest = folder if not why else folder.with_name(folder.name + ".uncached")
    if why:
        drop(dest)
    else:
        seal(work)
    if dest.exists():
        shutil.rmtree(dest)
    work.rename(dest)  # a job is cached only once it finished
    return res


def not_cacheable(res: dict) -> str | None:
    """Why a job's result must not be served again (``None``: it may)."""
    if res.get("errors"):
        return "not every format was built: " + "; ".join(res["errors"])
    failures = [f"{r.get('target')}: {r['tool_failure']}" for r in res.get("rows", []) if r.get("tool_failure")]
    if failures:
        return "a tool failed while measuring: " + "; ".join(failures)
    return None
