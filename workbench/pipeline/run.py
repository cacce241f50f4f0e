"""Run a recipe: every (model, variant) is an independent job, cached by content hash.

A job optimizes the model (prune, QAT) if asked, exports every format, measures accuracy
of each artifact in its runtime against the float original, and emulates each .tflite on
each target. Jobs run in local worker processes (``jobs``); finished jobs are stored under
``<out>/.cache/<key>/`` so a re-run only redoes what changed and an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench import __version__
from workbench.core.files import sha256_file, write_json_atomic
from workbench.pipeline.recipe import ModelRef, Recipe, Variant

RESULTS_SCHEMA = "workbench.run/1"


@dataclass(frozen=True)
class Job:
    model: ModelRef
    variant: Variant
    data: dict
    targets: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.variant.name}"

    def key(self) -> str:
        h = hashlib.sha256()
        payload = {"model": sha256_file(self.model.path), "factory": self.model.factory, "shape": self.model.input_shape,
                   "variant": self.variant.to_dict(), "data": self.data, "targets": list(self.targets), "version": __version__}
        h.update(json.dumps(payload, sort_keys=True, default=str).encode())
        return h.hexdigest()[:20]


def plan(recipe: Recipe) -> list[Job]:
    jobs = []
    for m in recipe.models:
        for v in recipe.variants:
            if v.frameworks and not any(fw in m.name for fw in v.frameworks):
                continue
            jobs.append(Job(model=m, variant=v, data=recipe.data, targets=recipe.targets))
    return jobs


def run_recipe(recipe: Recipe, out: Path, jobs: int = 1, on_event: Callable[[str], None] | None = None,
               executor: str = "local", address: str | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / ".cache"
    cache.mkdir(exist_ok=True)
    todo = plan(recipe)
    say = on_event or (lambda s: None)
    results: dict[str, dict] = {}
    pending = []
    for job in todo:
        hit = cache / job.key() / "result.json"
        if hit.exists():
            results[job.label] = json.loads(hit.read_text())
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

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
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
        src = cache / job.key() / "artifacts"
        dst = out / job.model.name / job.variant.name
        if src.exists():
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
    doc = {"schema": RESULTS_SCHEMA, "recipe": recipe.name, "workbench": __version__, "seconds": round(time.time() - t0, 1),
           "targets": list(recipe.targets), "rows": rows,
           "jobs": {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in results.items()}}
    write_json_atomic(out / "results.json", doc)
    return doc


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
    """One (model, variant): optimize, export, evaluate, emulate. Runs in a worker process."""
    from workbench.pipeline.steps import execute

    t0 = time.time()
    folder = Path(cache_dir) / job.key()
    work = folder.with_name(folder.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    (work / "artifacts").mkdir(parents=True)
    res = execute(job, work / "artifacts")
    res["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(work / "result.json", res)
    if folder.exists():
        shutil.rmtree(folder)
    work.rename(folder)  # a job is cached only once it finished
    return res
