"""``optimize``: find the variant of a model that fits a target's budgets, measured for real.

Every candidate is a recipe variant (so ``workbench run`` could build it too) and is run by
the same cached pipeline: accuracy of the artifact against the float original (on the
target's own runtime, the firmware's kernels on an MCU, when the target can run it), flash,
RAM and latency from ``emulate`` (the firmware where it can be built). The search goes in
stages, cheapest first, and each stage is planned from what the previous ones measured:

1. ``ptq``: int8 per-channel (the usual best), then per-tensor, a larger calibration set (up to
   4x, only when the calibration data holds more samples than int8 used: otherwise it would be
   the same model measured twice), int16x8, and fp16/dynamic where the target's runtime runs them. A scheme is skipped when
   the int8 variant already breaks a memory budget it cannot improve on (fp16 and int16x8
   are never smaller than int8; float is bigger still).
   On an MCU, int8 with what TFLite Micro never reads stripped from the deployed model.
2. ``mixed``: the int8 variant with its k worst layers (per-layer SQNR from the int8 job)
   kept in float, when int8 breaks the accuracy budget and the exporter supports it.
2b. ``compress`` (with ``--train``, on an MCU whose flash budget int8 breaks): clustering to 16
   values + TFLM LUT compression with 4-bit indices.
3. ``prune`` (with ``--train``): channel pruning at several ratios + int8, by successive
   halving: every ratio is fine-tuned briefly and measured, the better half is trained
   longer and measured again.

The time budget is checked before each stage and each halving round; what was not run is
reported. Runs are cached under ``OUT/.cache`` by content hash, so a second run with the same
inputs measures nothing new, and one with a wider budget reuses every result.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from workbench.core.errors import ConfigError
from workbench.pipeline.recipe import ModelRef, Recipe, Variant

BUDGET_KEYS = {"max_latency_ms": "latency_ms", "max_ram_bytes": "ram_bytes", "max_flash_bytes": "flash_bytes",
               "max_drop_pp": "drop_pp"}


@dataclass(frozen=True)
class Budgets:
    max_latency_ms: float | None = None
    max_ram_bytes: int | None = None
    max_flash_bytes: int | None = None
    max_drop_pp: float | None = None

    def given(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class SearchConfig:
    model: ModelRef
    target: str
    budgets: Budgets
    calib: str
    eval: str
    train: str | None = None
    eval_samples: int = 500
    calib_samples: int = 200
    prune_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    prune_epochs: tuple[int, int] = (1, 3)  # successive halving: short round, then the better half longer
    keep_float_k: tuple[int, ...] = (1, 2)
    budget_minutes: float | None = None
    seed: int = 0
    jobs: int = 1
    executor: str = "local"

    def __post_init__(self):
        if not self.budgets.given():
            raise ConfigError("optimize needs at least one budget: --max-latency-ms, --max-ram, --max-flash or --max-drop.")
        if any(not 0 < r < 1 for r in self.prune_ratios):
            raise ConfigError(f"Pruning ratios must be between 0 and 1, got {self.prune_ratios}.")


@dataclass
class Candidate:
    variant: Variant
    stage: str
    row: dict | None = None  # the tflite row on the target, once measured
    error: str | None = None
    calib_samples: int | None = None  # calibration samples, when not the search's own number

    @property
    def measured(self) -> bool:
        return self.row is not None


@dataclass
class SearchResult:
    candidates: list[Candidate]
    chosen: Candidate | None
    pareto: list[Candidate]
    skipped: list[str]
    seconds: float
    cached: int
    measured: int
    recipe: Recipe | None = None
    notes: list[str] = field(default_factory=list)


def drop_pp(row: dict) -> float | None:
    """The accuracy loss in points, on the target's runtime when it was measured there."""
    for key in ("target_accuracy_drop_pp", "accuracy_drop_pp"):
        if row.get(key) is not None:
            return float(row[key])
    return None


def violations(row: dict, budgets: Budgets) -> dict:
    """Budget -> relative excess (0 < x) for every budget ``row`` breaks; an unknown value breaks it."""
    out = {}
    values = {"latency_ms": row.get("latency_ms"), "ram_bytes": row.get("ram_bytes"), "flash_bytes": row.get("flash_bytes"),
              "drop_pp": drop_pp(row)}
    for name, limit in budgets.given().items():
        v = values[BUDGET_KEYS[name]]
        if v is None:
            out[name] = math.inf
        elif v > limit:
            out[name] = (v - limit) / max(abs(limit), 1e-9) if name != "max_drop_pp" else (v - limit)
    if row.get("fits") is False:  # the target's own memories (or its runtime) refuse it
        out["target"] = math.inf
    return out


PARETO = ("drop_pp", "latency_ms", "ram_bytes", "flash_bytes")  # the criteria, all lower is better


def _point(row: dict) -> tuple:
    return (drop_pp(row) or 0.0, *(row.get(k) if row.get(k) is not None else math.inf for k in PARETO[1:]))


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other candidate beats on every one of accuracy loss, latency, RAM and flash."""
    pts = [(c, _point(c.row)) for c in cands if c.measured and c.row.get("fits") is not False]
    front = []
    for c, p in pts:
        if not any(all(a <= b for a, b in zip(q, p)) and q != p for _, q in pts):
            front.append(c)
    return sorted(front, key=lambda c: _point(c.row))


def _rank(c: Candidate, budgets: Budgets):
    """Order of preference: within every budget first, then the smallest accuracy loss, then latency, RAM, flash."""
    v = violations(c.row, budgets)
    return (bool(v), sum(min(x, 1e6) for x in v.values()), *_point(c.row))


class Search:
    """Plans and runs the stages; ``run_variants`` runs a list of variants and returns their result rows."""

    def __init__(self, cfg: SearchConfig, out: Path, say: Callable[[str], None], runtime: str, framework: str,
                 keep_float_ok: bool):
        self.cfg, self.out, self.say = cfg, Path(out), say
        self.runtime, self.framework, self.keep_float_ok = runtime, framework, keep_float_ok
        self.t0 = time.time()
        self.cands: list[Candidate] = []
        self.skipped: list[str] = []
        self.cached = 0
        self.measured = 0
        self.jobs_info: dict = {}

    # ------------------------------------------------------------------ running

    def recipe(self, variants: list[Variant]) -> Recipe:
        c = self.cfg
        data = {"calib": c.calib, "eval": c.eval, "eval_samples": c.eval_samples, "calib_samples": c.calib_samples,
                "eval_on_target": True}
        if c.train:
            data["train"] = c.train
        return Recipe(name=f"optimize-{c.model.name}", path=self.out / "optimize.yaml", models=(c.model,),
                      variants=tuple(variants), targets=(c.target,), data=data)

    def over_time(self) -> bool:
        m = self.cfg.budget_minutes
        return m is not None and time.time() - self.t0 > m * 60

    def run(self, cands: list[Candidate]) -> None:
        if not cands:
            return
        if self.over_time():
            self.skipped += [f"{c.stage}: {c.variant.name} (time budget of {self.cfg.budget_minutes:g} min used)" for c in cands]
            return
        from workbench.pipeline.run import run_recipe

        events: list[str] = []

        def on_event(s: str) -> None:
            events.append(s)
            done = sum(1 for c in self.cands if c.measured) + len(events)
            self.say(f"[{done}/{len(self.cands) + len(cands)}] {s.strip()}  (best so far: {self.best_label()})")

        doc = run_recipe(self.recipe([c.variant for c in cands]), self.out / "runs", jobs=self.cfg.jobs,
                         on_event=on_event, executor=self.cfg.executor)
        self.cached += sum(1 for e in events if e.startswith("cached"))
        self.measured += sum(1 for e in events if e.startswith("done"))
        self.jobs_info.update(doc.get("jobs", {}))
        for c in cands:
            rows = [r for r in doc["rows"] if r["variant"] == c.variant.name and r["format"] == "tflite"
                    and r.get("target") == self.cfg.target]
            if rows:
                c.row = rows[0]
            else:
                errs = doc["jobs"].get(f"{self.cfg.model.name}/{c.variant.name}", {}).get("errors") or ["no tflite built"]
                c.error = "; ".join(errs)
            self.cands.append(c)

    def best_label(self) -> str:
        ok = [c for c in self.cands if c.measured]
        if not ok:
            return "-"
        b = min(ok, key=lambda c: _rank(c, self.cfg.budgets))
        return f"{b.variant.name}{'' if not violations(b.row, self.cfg.budgets) else ' (breaks a budget)'}"

    def by_name(self, name: str) -> Candidate | None:
        return next((c for c in self.cands if c.variant.name == name), None)

    # ------------------------------------------------------------------ stages

    def stage_ptq(self) -> None:
        c = self.cfg
        base = Variant(name="int8", scheme="int8", formats=("tflite",))
        self.run([Candidate(base, "ptq")])
        int8 = self.by_name("int8")
        memory_broken = int8.measured and any(k in violations(int8.row, c.budgets) for k in ("max_ram_bytes", "max_flash_bytes"))
        more = [Candidate(replace(base, name="int8-per-tensor", per_channel=False), "ptq")]
        larger = self.larger_calibration()
        if larger:
            more.append(Candidate(replace(base, name=f"int8-calib{larger}"), "ptq", calib_samples=larger))
        bigger = [("int16x8", "int16x8")] + ([("fp16", "fp16"), ("dynamic", "dynamic")] if self.runtime == "litert" else [])
        for name, scheme in bigger:
            if memory_broken:
                self.skipped.append(f"ptq: {name} (int8 already breaks a memory budget; {name} is not smaller)")
            else:
                more.append(Candidate(Variant(name=name, scheme=scheme, formats=("tflite",)), "ptq"))
        if self.runtime == "tflm":
            self.skipped.append("ptq: fp16, dynamic (TensorFlow Lite Micro does not run float16 or hybrid models)")
            # what TFLM never reads, stripped from the deployed model: less flash at no cost in accuracy
            more.append(Candidate(replace(base, name="int8-stripped", deploy={"strip": "portable", "compress": None}), "ptq"))
        calib_cands = [m for m in more if m.variant.name.startswith("int8-calib")]
        for m in calib_cands:  # the larger calibration set is a data change, not a variant field
            more.remove(m)
        self.run(more)
        if calib_cands:
            self._run_with_calib(calib_cands[0], calib_cands[0].calib_samples)

    def larger_calibration(self) -> int | None:
        """Up to 4x the calibration samples, when the data holds more than int8 used; else None, with a note."""
        from workbench.data import open_data

        c = self.cfg
        available = len(open_data(c.calib, split="train"))
        used = min(c.calib_samples, available)
        larger = min(4 * c.calib_samples, available)
        if larger <= used:
            self.skipped.append(f"ptq: int8 with a larger calibration set (the calibration data '{c.calib}' holds "
                                f"{available} samples and int8 already calibrates on {used}: it would be the same model "
                                "measured twice)")
            return None
        return larger

    def _run_with_calib(self, cand: Candidate, samples: int) -> None:
        saved = self.cfg
        self.cfg = replace(saved, calib_samples=samples)
        try:
            self.run([cand])
        finally:
            self.cfg = saved
        int8 = self.by_name("int8")
        if cand.measured and int8 is not None and int8.measured and _same_file(self._artifact(int8), self._artifact(cand)):
            self.cands.remove(cand)  # e.g. min/max ranges the extra samples did not widen
            self.skipped.append(f"ptq: {cand.variant.name} (built the same model as int8, byte for byte: the larger "
                                "calibration set changed no quantization range)")

    def _artifact(self, c: Candidate) -> Path:
        return self.out / "runs" / self.cfg.model.name / c.variant.name / c.row["artifact"]

    def stage_mixed(self) -> None:
        int8 = self.by_name("int8")
        if int8 is None or not int8.measured:
            return
        if self.cfg.budgets.max_drop_pp is None or "max_drop_pp" not in violations(int8.row, self.cfg.budgets):
            self.skipped.append("mixed: keep-float variants (int8 already meets the accuracy budget)")
            return
        if not self.keep_float_ok:
            self.skipped.append(f"mixed: keep-float variants (the {self.framework} exporter cannot keep layers in float)")
            return
        layers = (self.jobs_info.get(f"{self.cfg.model.name}/int8", {}).get("info") or {}).get("layer_errors") or []
        worst = [r["layer"] for r in sorted(layers, key=lambda r: r["sqnr_db"])]
        self.run([Candidate(Variant(name=f"int8-keep{k}", scheme="int8", formats=("tflite",), keep_float=tuple(worst[:k])),
                            "mixed") for k in self.cfg.keep_float_k if len(worst) >= k])

    def stage_compress(self) -> None:
        """Clustering to 16 values + TFLM LUT compression (4-bit indices), when int8 breaks the flash budget."""
        c = self.cfg
        int8 = self.by_name("int8")
        if self.runtime != "tflm" or int8 is None or not int8.measured or "max_flash_bytes" not in violations(int8.row, c.budgets):
            self.skipped.append("compress: clustering + LUT compression (only for an MCU whose flash budget int8 breaks)")
            return
        if not c.train:
            self.skipped.append("compress: clustering + LUT compression (needs --train)")
            return
        self.run([Candidate(Variant(name="int8-cluster16-lut4", scheme="int8", formats=("tflite",),
                                    cluster={"clusters": 16, "epochs": c.prune_epochs[0]},
                                    deploy={"strip": "portable", "compress": 4}), "compress")])

    def stage_prune(self) -> None:
        c = self.cfg
        if not c.train:
            self.skipped.append("prune: channel pruning (needs --train)")
            return
        if all(not violations(x.row, c.budgets) for x in self.cands if x.measured and x.variant.name == "int8"):
            self.skipped.append("prune: channel pruning (int8 already meets every budget)")
            return
        short, long = c.prune_epochs

        def variant(r: float, epochs: int) -> Variant:
            return Variant(name=f"pruned{int(round(r * 100))}-int8-e{epochs}", scheme="int8", formats=("tflite",),
                           prune={"method": "channel", "sparsity": r, "epochs": epochs})

        round1 = [Candidate(variant(r, short), "prune") for r in c.prune_ratios]
        self.run(round1)
        ok = sorted((x for x in round1 if x.measured), key=lambda x: _rank(x, c.budgets))
        keep = ok[: max(1, math.ceil(len(ok) / 2))]
        if long > short:
            self.run([Candidate(variant(x.variant.prune["sparsity"], long), "prune") for x in keep])

    # ------------------------------------------------------------------ result

    def result(self) -> SearchResult:
        measured = [c for c in self.cands if c.measured]
        fitting = [c for c in measured if not violations(c.row, self.cfg.budgets)]
        chosen = min(fitting, key=lambda c: _rank(c, self.cfg.budgets)) if fitting else None
        return SearchResult(candidates=self.cands, chosen=chosen, pareto=pareto_front(measured), skipped=self.skipped,
                            seconds=round(time.time() - self.t0, 1), cached=self.cached, measured=self.measured)


def optimize(cfg: SearchConfig, out: str | Path, say: Callable[[str], None] | None = None) -> SearchResult:
    """Search the space (see the module docstring); write the chosen variant to ``out/best.tflite``."""
    from workbench.emulate import load_target
    from workbench.export.engine import exporter_for
    from workbench.frontends import load
    from workbench.frontends.loader import LoadOptions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tgt = load_target(cfg.target)
    handle = load(cfg.model.path, LoadOptions(trust_model=cfg.model.trust_model, factory=cfg.model.factory,
                                              input_shape=cfg.model.input_shape))
    exp = exporter_for(handle, "tflite")
    s = Search(cfg, out, say or (lambda m: None), tgt.runtime.name, handle.framework, exp.keep_float)
    for stage in (s.stage_ptq, s.stage_mixed, s.stage_compress, s.stage_prune):
        stage()
    res = s.result()
    res.recipe = s.recipe([c.variant for c in res.candidates])
    _publish(res, s, out)
    doc = to_doc(res, cfg)
    from workbench.core.files import write_json_atomic
    from workbench.report.render import write_optimize_report

    write_json_atomic(out / "optimize.json", doc)
    write_optimize_report(doc, out)
    return res


def to_doc(res: SearchResult, cfg: SearchConfig) -> dict:
    """The JSON document ``optimize`` writes (``OUT/optimize.json``) and prints with --json."""
    def cand(c: Candidate) -> dict:
        r = c.row or {}
        return {"variant": c.variant.name, "stage": c.stage, "recipe_variant": c.variant.to_dict(), "error": c.error,
                "drop_pp": drop_pp(r) if c.measured else None, "latency_ms": r.get("latency_ms"),
                "ram_bytes": r.get("ram_bytes"), "flash_bytes": r.get("flash_bytes"), "bytes": r.get("bytes"),
                "accuracy": r.get("target_accuracy", r.get("accuracy")), "method": r.get("method"),
                "fits_target": r.get("fits"), "broken_budgets": sorted(violations(r, cfg.budgets)) if c.measured else None}

    measured = [c for c in res.candidates if c.measured]
    closest = sorted(measured, key=lambda c: _rank(c, cfg.budgets))[:3] if res.chosen is None else []
    return {"schema": "workbench.optimize/1", "model": str(cfg.model.path), "target": cfg.target,
            "budgets": cfg.budgets.given(), "chosen": cand(res.chosen) if res.chosen else None,
            "pareto": [cand(c) for c in res.pareto], "closest": [cand(c) for c in closest],
            "pareto_criteria": list(PARETO), "candidates": [cand(c) for c in res.candidates], "skipped": res.skipped,
            "seconds": res.seconds,
            "cached_candidates": res.cached, "measured_candidates": res.measured}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _publish(res: SearchResult, s: Search, out: Path) -> None:
    """best.tflite + its manifest + the recipe that reproduces it; stale ``best.*`` removed when nothing fits."""
    import yaml

    for old in out.glob("best.*"):
        old.unlink()
    if res.chosen is None:
        return
    src = out / "runs" / s.cfg.model.name / res.chosen.variant.name / res.chosen.row["artifact"]
    shutil.copyfile(src, out / "best.tflite")
    man = src.with_name(src.name + ".json")
    if man.exists():
        shutil.copyfile(man, out / "best.tflite.json")
    c = s.cfg
    v = {k: val for k, val in res.chosen.variant.to_dict().items() if val not in (None, [], ())}
    data = {"calib": c.calib, "eval": c.eval, "eval_samples": c.eval_samples, "calib_samples": c.calib_samples,
            "eval_on_target": True, **({"train": c.train} if c.train else {})}
    if res.chosen.calib_samples:
        data["calib_samples"] = res.chosen.calib_samples
    model = {"name": c.model.name, "path": str(Path(c.model.path).resolve())}
    if c.model.factory:
        model["factory"] = c.model.factory
    recipe = {"name": f"best-{c.model.name}-{c.target}", "models": [model], "data": data, "variants": [v],
              "targets": [c.target]}
    (out / "best.recipe.yaml").write_text("# Reproduces the variant `workbench optimize` chose: workbench run best.recipe.yaml\n"
                                          + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
