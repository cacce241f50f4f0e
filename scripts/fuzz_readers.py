"""Fuzz the .tflite and .onnx readers with mutated real models and print what happened.

    .venv/bin/python scripts/fuzz_readers.py [--cases N] [--seed S] MODEL.tflite MODEL.onnx ...

Each case mutates one seed model (bit flips, byte sets, truncation, insertion, zeroed
words), parses it and runs the graph analysis used by inspect and emulate. Outcomes:
`clean error` (ModelFormatError), `parsed` (a valid graph), or `CRASH` (any other
exception: a bug; the mutated file is saved for reproduction). The slowest case is reported
to show nothing hangs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.core.errors import ModelFormatError  # noqa: E402
from workbench.frontends.onnx_reader import read_onnx_bytes  # noqa: E402
from workbench.frontends.tflite_reader import read_tflite_bytes  # noqa: E402
from workbench.frontends.fuzzing import describe_graph, mutate  # noqa: E402

READERS = {".tflite": read_tflite_bytes, ".onnx": read_onnx_bytes}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    crashes = 0
    for model in args.models:
        reader = READERS[model.suffix]
        seed = model.read_bytes()
        outcomes = Counter()
        slowest = 0.0
        t_all = time.time()
        for case in range(args.cases):
            ops = [(rng.choice(["flip", "set", "cut", "insert", "zero"]), rng.randrange(1 << 30), rng.randrange(256))
                   for _ in range(rng.randint(1, 8))]
            data = mutate(seed, ops)
            t0 = time.time()
            try:
                describe_graph(reader(data, "<fuzz>"))
                outcomes["parsed"] += 1
            except ModelFormatError:
                outcomes["clean error"] += 1
            except Exception:
                outcomes["CRASH"] += 1
                crashes += 1
                args.crash_dir.mkdir(exist_ok=True)
                (args.crash_dir / f"{model.stem}-{case}{model.suffix}").write_bytes(data)
                print(traceback.format_exc(limit=3), file=sys.stderr)
            slowest = max(slowest, time.time() - t0)
        print(f"{model.name}: {args.cases} cases in {time.time() - t_all:.1f} s, "
              + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + f"; slowest case {slowest * 1000:.1f} ms")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
