"""Benchmark `workbench optimize`: the Pareto front it finds and its wall time, per model and target.

    python scripts/bench_optimize.py                       # Fashion Keras + PyTorch on three targets
    python scripts/bench_optimize.py --models fashion_keras --targets stm32l4r5 --eval-samples 500

Budgets per target are given below (an MCU: latency and 1 point of accuracy; a Pi: latency).
Each result is compared with the best single hand-picked variant of models/demo.yaml (int8 or
channel-pruned int8, as the demo builds them), measured the same way, under the same budgets.
Output folders (and their caches) go to a temporary folder unless --out is given.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"fashion_keras": (ROOT / "models" / "fashion_keras.keras", None),
          "fashion_torch": (ROOT / "models" / "fashion_torch.pt", "workbench.builtin.models.reference:fashion_torch")}
# target -> budgets (latency in ms, loss in points)
TARGETS = {"stm32l4r5": {"max_latency_ms": 400.0, "max_drop_pp": 1.0},
           "stm32f746": {"max_latency_ms": 120.0, "max_drop_pp": 1.0},
           "raspberry-pi-4": {"max_latency_ms": 0.5, "max_drop_pp": 1.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--prune-ratios", default="0.25,0.5")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from workbench.pipeline.recipe import ModelRef
    from workbench.pipeline.search import Budgets, SearchConfig, drop_pp, optimize, violations

    base = a.out or Path(tempfile.mkdtemp(prefix="bench-optimize-"))
    print(f"{'model':<14} {'target':<15} {'candidates':>10} {'wall s':>7}  best (loss pp, latency ms, RAM)   "
          "hand-picked demo variant (same budgets)   Pareto front")
    for mname in a.models.split(","):
        path, factory = MODELS[mname]
        for tname in a.targets.split(","):
            b = Budgets(**TARGETS[tname])
            cfg = SearchConfig(model=ModelRef(name=mname, path=path, factory=factory), target=tname, budgets=b,
                               calib="fashion-mnist:train", eval="fashion-mnist:test", train="fashion-mnist:train",
                               eval_samples=a.eval_samples, prune_ratios=tuple(float(x) for x in a.prune_ratios.split(",")),
                               jobs=a.jobs)
            t0 = time.time()
            res = optimize(cfg, base / f"{mname}-{tname}")
            wall = time.time() - t0
            measured = [c for c in res.candidates if c.measured]

            def show(c):
                if c is None:
                    return "nothing fits"
                r = c.row
                return f"{c.variant.name} ({drop_pp(r):+.2f}, {r['latency_ms']:.3g}, {r.get('ram_bytes') or 0:,})"

            demo = [c for c in measured if c.variant.name in ("int8",) or c.variant.name.startswith("pruned50-int8")]
            demo_ok = [c for c in demo if not violations(c.row, b)]
            hand = min(demo_ok, key=lambda c: drop_pp(c.row)) if demo_ok else None
            print(f"{mname:<14} {tname:<15} {len(measured):>10} {wall:>7.0f}  {show(res.chosen):<34} {show(hand):<41} "
                  + ", ".join(c.variant.name for c in res.pareto))
            for s in res.skipped:
                print(f"{'':<31}skipped: {s}")


if __name__ == "__main__":
    main()
