"""Coverage of real architectures (issue 12, item 13): inspect, float export, int8 with --eval, emulate on a
Raspberry Pi and an MCU target, int8 ONNX, for every model in tests/zoo_models.py. Prints a Markdown table
(ok / verdict / refused with the upstream reason / FAIL, seconds per step) and the totals.

    .venv/bin/python scripts/bench_coverage.py [--only NAME ...] [--out FOLDER]

"accuracy" is agreement with the float model: the weights are random, the labels are the float model's argmax.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_tflm = HERE.parent.parent / "shared" / "third_party" / "tflite-micro"  # the offline tree, as tests/conftest.py
if _tflm.is_dir():
    os.environ.setdefault("WORKBENCH_TFLM_DIR", str(_tflm))

import zoo_models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="architectures to run (default: all)")
    ap.add_argument("--out", default=None, help="folder for the models (default: a temporary folder)")
    args = ap.parse_args()
    names = args.only or zoo_models.NAMES
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="wb-zoo-"))
    rows, t0 = [], time.perf_counter()
    for name in names:
        t = time.perf_counter()
        try:
            case = zoo_models.build(name, out / name)
        except Exception as exc:  # noqa: BLE001 - a builder problem is not a workbench result: say so and go on
            print(f"[{name}] build failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        build_s = time.perf_counter() - t
        row = zoo_models.run_case(case, out / name)
        row["build_s"] = build_s
        rows.append(row)
        print(f"[{name}] build {build_s:.1f}s, " + ", ".join(
            f"{s}={st.status}" for s, st in row["steps"].items()) + f" ({time.perf_counter() - t:.0f}s)",
            file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    print(zoo_models.table(rows))
    rt = zoo_models.rates(rows)
    viol = {r["name"]: zoo_models.contract_violations(r) for r in rows}
    viol = {k: v for k, v in viol.items() if v}
    print(f"\n{rt['rows']} architectures; {rt['reached']} reach int8 TFLite with an emulate verdict "
          f"({100.0 * rt['rate_all']:.1f}% of all rows, {100.0 * rt['rate_routed']:.1f}% of the {rt['routed']} "
          f"rows whose format has a TFLite route); contract violations: {len(viol)}; wall {wall:.0f} s")
    for k, v in viol.items():
        print(f"- {k}: {'; '.join(v)}")
    print("\"agree int8\": top-1 agreement of the int8 .tflite with the float model (random weights).")
    return 0 if not viol and rt["rate_routed"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
