#!/usr/bin/env python3
"""Time to the first firmware verdict on a core with an empty cache, then for a second model.

    python scripts/bench_first_verdict.py                       # digits int8, then Fashion-MNIST int8, Cortex-M4
    python scripts/bench_first_verdict.py --second m.tflite --target stm32l4r5 --jobs 2
    python scripts/bench_first_verdict.py --full                # the same with the whole TFLM library (the old route)

Runs ``workbench emulate MODEL --target T --json`` in a child process with ``XDG_CACHE_HOME`` in
a fresh temporary folder (so the plan, the object cache and the image cache start empty; the TFLM
tree is the one ``workbench firmware check`` finds), for: the first model (cold), the second
model (only the objects it adds), the first model again (every cache warm). Prints the wall time
of each run, the TFLM objects linked and compiled (from the image's ``meta.json``) and the exit
code. Nothing is asserted: the numbers depend on the machine's load.

Models: the repository's Keras references converted to full int8 with workbench (needs TensorFlow),
unless given as paths.

Measured here (2 cores, Cortex-M4, TFLM 90b983c, GCC 12.2), seconds to the verdict / objects compiled:

    route     load    digits cold     Fashion next    digits warm
    objects   0.2     76.4 / 100      14.7 / 18       1.4 (image cached)
    objects   1.4     159.4 / 100     42.8 / 18       2.6
    full      1.8     436.1 (315)     7.0             1.2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def convert(src: Path, out: Path, calib: str) -> Path:
    from workbench import api

    if not out.exists():
        api.convert(src, "tflite", out, scheme="int8", calib=calib, calib_samples=200)
    return out


def newest_image_meta(cache: Path) -> dict:
    folders = [p for p in (cache / "workbench" / "firmware" / "fw").glob("[!.]*") if (p / "meta.json").is_file()]
    if not folders:
        return {}
    return json.loads(max(folders, key=lambda p: p.stat().st_mtime).joinpath("meta.json").read_text())


def emulate(model: Path, target: str, env: dict, cache: Path) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "workbench", "emulate", str(model), "--target", target, "--json"],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    cached = bool((doc.get("firmware") or {}).get("firmware_cached"))
    objs = {} if cached else (newest_image_meta(cache).get("tflm_objects") or {})  # the image built by this run
    return {"model": model.name, "seconds": round(seconds, 1), "exit": r.returncode, "method": doc.get("method"),
            "image_cached": cached, "objects": objs.get("objects"), "compiled": objs.get("compiled"),
            "kernels": objs.get("kernels"),
            "stderr_tail": r.stderr.strip().splitlines()[-2:] if r.returncode else []}


def cold_first_verdict(first: Path, second: Path, target: str, jobs: int | None, full: bool) -> list[dict]:
    from workbench.emulate.firmware import find_tree

    tree = find_tree(None)
    with tempfile.TemporaryDirectory(prefix="wb-first-verdict-") as tmp:
        cache = Path(tmp)
        env = dict(os.environ, XDG_CACHE_HOME=str(cache), WORKBENCH_TFLM_DIR=str(tree.root))
        if jobs:
            env["WORKBENCH_FIRMWARE_JOBS"] = str(jobs)
        if full:
            env["WORKBENCH_FIRMWARE_LIBRARY"] = "full"
        rows = []
        for label, model in (("cold", first), ("second model", second), ("warm", first)):
            row = {"run": label, **emulate(model, target, env, cache)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=Path, help="first model (default: digits int8 from models/digits_keras.keras)")
    ap.add_argument("--second", type=Path, help="second model (default: Fashion-MNIST int8 from models/fashion_keras.keras)")
    ap.add_argument("--target", default="stm32l4r5", help="an MCU target (default: stm32l4r5, Cortex-M4)")
    ap.add_argument("--jobs", type=int, help="parallel compiles (default: os.cpu_count())")
    ap.add_argument("--full", action="store_true", help="build the whole TFLM library instead (the old route)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wb-first-verdict-models-") as models:
        first = args.first or convert(ROOT / "models" / "digits_keras.keras", Path(models) / "digits_int8.tflite",
                                      "digits:train")
        second = args.second or convert(ROOT / "models" / "fashion_keras.keras", Path(models) / "fashion_int8.tflite",
                                        "fashion-mnist:train")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        cold_first_verdict(first, second, args.target, args.jobs, args.full)


if __name__ == "__main__":
    main()
