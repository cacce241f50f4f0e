"""Benchmark pruning and quantization-aware training on the reference models.

    python scripts/bench_prune_qat.py [--only qat|channel|magnitude|sweep] [--models digits,fashion]
                                      [--frameworks torch,keras] [--sparsities 0.25,0.5,0.75] [--json results.json]

Prints four tables:

* QAT: float vs post-training int8 (PTQ) vs QAT int8 accuracy, each in its real runtime
  (PyTorch/Keras, LiteRT, LiteRT). Target: QAT >= PTQ and within 0.3 points of float.
* Channel pruning at 50% of the Fashion-MNIST reference model: int8 .tflite size (target at most
  0.55x), LiteRT single-thread latency (target at least 1.6x faster) and accuracy after
  fine-tuning (target within 1.5 points).
* Magnitude pruning: file and .tflite sizes and latency do not change, the gzip size does.
* Channel-pruning sweep (``--only sweep``): both reference models, both frameworks, 25/50/75% of
  the channels with the default fine-tuning (gradual masks, warm restart, early stopping):
  int8 .tflite size and the int8 accuracy drop against the unpruned float model, per-epoch
  accuracy curve in the JSON. Target: at most 1.5 points at 50%.

Fashion-MNIST training is slow on a small CPU, so the fine-tuning subsets and epochs are
options; the script prints what it used. Everything runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.frontends.loader import LoadOptions  # noqa: E402
from workbench.optimize.config import PruneConfig, QATConfig, TrainConfig  # noqa: E402

MODELS = ROOT / "models"
FACTORIES = {"digits": "workbench.builtin.models.reference:digits_torch",
             "fashion": "workbench.builtin.models.reference:fashion_torch"}
DATA = {"digits": ("digits:train", "digits:test"), "fashion": ("fashion-mnist:train", "fashion-mnist:test")}


def model_path(name: str, framework: str) -> Path:
    return MODELS / (f"{name}_torch.pt" if framework == "torch" else f"{name}_keras.keras")


def opts(name: str, framework: str) -> LoadOptions | None:
    return LoadOptions(factory=FACTORIES[name]) if framework == "torch" else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table(rows, headers) -> str:
    from workbench.cli.common import table as render

    return render(rows, headers)


def bench_qat(args, tmp: Path) -> list[dict]:
    from workbench.optimize.qat import qat

    results = []
    for name in args.models:
        for fw in args.frameworks:
            src = model_path(name, fw)
            if not src.exists():
                log(f"skip QAT {name}/{fw}: {src.name} is missing")
                continue
            n = args.qat_samples.get(name)
            cfg = QATConfig(train=TrainConfig(epochs=args.qat_epochs[name], lr=args.qat_lr, batch_size=args.batch_size,
                                              train_samples=n, seed=args.seed))
            log(f"QAT {name}/{fw}: {cfg.train.epochs} epoch(s) on {n or 'all'} training samples, lr {cfg.train.lr} ...")
            t0 = time.perf_counter()
            d = qat(src, tmp / f"qat_{name}_{fw}.tflite", cfg, DATA[name][0], DATA[name][1], load_options=opts(name, fw),
                    overwrite=True).to_dict()
            d["bench_seconds"] = round(time.perf_counter() - t0, 1)
            d["name"], d["framework"] = name, fw
            results.append(d)
            log(f"  float {pct(d['float']['accuracy'])}  PTQ {pct(d['ptq'].get('accuracy'))}  QAT {pct(d['qat']['accuracy'])}"
                f"  ({d['bench_seconds']} s)")
    return results



def timed_prune(src: Path, out: Path, cfg, name: str, fw: str) -> dict:
    """One prune run of the benchmark: its report as a dict, with the wall time and the row's names."""
    from workbench.optimize.prune import prune

    t0 = time.perf_counter()
    d = prune(src, out, cfg, DATA[name][0], DATA[name][1], load_options=opts(name, fw), overwrite=True).to_dict()
    d["bench_seconds"] = round(time.perf_counter() - t0, 1)
    d["name"], d["framework"] = name, fw
    return d


def bench_prune(args, tmp: Path, method: str) -> list[dict]:
    results = []
    names = ["fashion"] if method == "channel" and "fashion" in args.models else args.models
    for name in names:
        for fw in args.frameworks:
            src = model_path(name, fw)
            if not src.exists():
                log(f"skip {method} {name}/{fw}: {src.name} is missing")
                continue
            sparsity = args.channel_sparsity if method == "channel" else args.magnitude_sparsity
            n = (args.prune_samples if method == "channel" else args.magnitude_samples).get(name)
            epochs = (args.prune_epochs if method == "channel" else args.magnitude_epochs)[name]
            cfg = PruneConfig(method=method, sparsity=sparsity, schedule=None if method == "channel" else "polynomial",
                              train=TrainConfig(epochs=epochs, lr=args.prune_lr, batch_size=args.batch_size,
                                                train_samples=n, seed=args.seed),
                              latency_runs=args.latency_runs)
            suffix = ".pt2" if (fw == "torch" and method == "channel") else (".pt" if fw == "torch" else ".keras")
            log(f"{method} pruning {name}/{fw} to {sparsity:.0%}: {cfg.train.epochs} epoch(s) on {n or 'all'} samples ...")
            d = timed_prune(src, tmp / f"{method}_{name}_{fw}{suffix}", cfg, name, fw)
            results.append(d)
            q = d["ratios"]
            log(f"  int8 size x{q['int8_tflite_bytes']}  speed-up x{q['latency_speedup']}  accuracy "
                f"{pct(d['before']['accuracy'])} -> {pct(d['after']['accuracy'])}  ({d['bench_seconds']} s)")
    return results


def bench_sweep(args, tmp: Path) -> list[dict]:
    """Channel pruning at every --sparsities value, with the command's default fine-tuning."""
    results = []
    for name in args.models:
        for fw in args.frameworks:
            src = model_path(name, fw)
            for sparsity in args.sparsities:
                n = args.prune_samples.get(name)
                cfg = PruneConfig(method="channel", sparsity=sparsity, distill=False if args.no_distill else None,
                                  train=TrainConfig(epochs=args.sweep_epochs[name], lr=args.prune_lr,
                                                    batch_size=args.batch_size, train_samples=n, seed=args.seed),
                                  latency_runs=args.latency_runs)
                suffix = ".pt2" if fw == "torch" else ".keras"
                log(f"sweep {name}/{fw} at {sparsity:.0%}: {cfg.train.epochs} epoch(s) on {n or 'all'} samples ...")
                d = timed_prune(src, tmp / f"sweep_{name}_{fw}_{int(sparsity * 100)}{suffix}", cfg, name, fw)
                if args.firmware:
                    d["firmware"] = {"before": firmware_instructions(src, opts(name, fw), DATA[name][0], tmp, args.firmware),
                                     "after": firmware_instructions(Path(d["output"]), None, DATA[name][0], tmp, args.firmware)}
                results.append(d)
                log(f"  int8 {pct(d['after'].get('int8', {}).get('accuracy'))} vs float {pct(d['before']['accuracy'])} "
                    f"({d['bench_seconds']} s)")
    return results


def firmware_instructions(model: Path, load_opts, train: str, tmp: Path, target: str) -> dict:
    """Instructions per inference of the model's int8 .tflite in TFLite Micro firmware on QEMU, as converted
    ("plain") and with each convolution in the form measured faster on the target ("tuned", `export --tune`)."""
    from workbench.data import open_data
    from workbench.emulate.tune import tune_conv_forms
    from workbench.frontends import load
    from workbench.optimize.measure import int8_tflite

    out = tmp / f"fw_{model.stem}.tflite"
    int8_tflite(load(model, load_opts), open_data(train, split="train"), out)
    try:
        res = tune_conv_forms(out, target)
        if not res.ops:  # nothing to tune: one firmware run gives the plain count
            from workbench.api import emulate

            n = (emulate(out, target, firmware=True).to_dict().get("firmware") or {}).get("instructions")
            return {"plain": n, "tuned": n, "forms": []}
        return {"plain": res.given["instructions"], "tuned": res.tuned["instructions"],
                "forms": [f"{o['form']}->{o['kept']}" for o in res.ops]}
    except Exception as exc:  # a toolchain failure is reported as such, not as a number
        log(f"  firmware emulation of {out.name} failed: {exc}")
        return {"plain": None, "tuned": None, "failure": str(exc)}


def _instr(fw: dict | None, kind: str) -> str:
    b, a = ((fw or {}).get(k) or {} for k in ("before", "after"))
    if b.get(kind) is None or a.get(kind) is None:
        return "-"
    return f"{b[kind]:,} -> {a[kind]:,} ({b[kind] / a[kind]:.2f}x)"


def sweep_table(results: list[dict]) -> str:
    rows = []
    for d in results:
        b, a = d["before"], d["after"]
        bi, ai = b.get("int8", {}), a.get("int8", {})
        drop = None if ai.get("accuracy") is None else 100 * (b["accuracy"] - ai["accuracy"])
        es = d.get("fine_tuning", {}).get("early_stopping") or {}
        rows.append([f"{d['name']}/{d['framework']}", f"{d['config']['sparsity']:.0%}",
                     f"{bi.get('tflite_bytes', 0):,} -> {ai.get('tflite_bytes', 0):,}", pct(b["accuracy"]),
                     pct(bi.get("accuracy")), pct(ai.get("accuracy")), "-" if drop is None else f"{drop:+.2f}",
                     f"{d['training']['epochs']} x {d['data']['train_samples']}", es.get("best_epoch", "-"),
                     " ".join(pct(h.get("val_accuracy")) for h in d["training"]["history"]),
                     _instr(d.get("firmware"), "plain"), _instr(d.get("firmware"), "tuned")])
    return table(rows, ["model", "channels removed", "int8 .tflite B", "float %", "int8 %", "pruned int8 %",
                        "drop (points)", "epochs x samples", "kept epoch", "float accuracy per epoch %",
                        "firmware instructions", "with tuned conv forms (export --tune)"])


def qat_table(results: list[dict]) -> str:
    rows = []
    for d in results:
        f, p, q = d["float"]["accuracy"], d["ptq"].get("accuracy"), d["qat"]["accuracy"]
        ok = p is not None and q >= p and (f - q) * 100 <= 0.3
        t = d["training"]
        rows.append([f"{d['name']}/{d['framework']}", pct(f), pct(p), pct(q), f"{100 * (f - q):+.2f}",
                     "yes" if ok else "no", f"{t['epochs']} x {d['data']['train_samples']}", len(d["qat"]["float_ops"]),
                     d["data"]["val_samples"]])
    return table(rows, ["model", "float %", "PTQ int8 %", "QAT int8 %", "QAT drop", "QAT>=PTQ & <=0.3",
                        "epochs x samples", "float ops", "eval samples"])


def prune_table(results: list[dict], channel: bool) -> str:
    rows = []
    for d in results:
        b, a, q = d["before"], d["after"], d["ratios"]
        bi, ai = b.get("int8", {}), a.get("int8", {})
        row = [f"{d['name']}/{d['framework']}", f"{d['config']['sparsity']:.0%}", f"{b['nonzero_params']:,} -> {a['nonzero_params']:,}",
               f"{b['file_bytes']:,} -> {a['file_bytes']:,}", f"{b['file_gzip_bytes']:,} -> {a['file_gzip_bytes']:,}",
               f"{bi.get('tflite_bytes', 0):,} -> {ai.get('tflite_bytes', 0):,} (x{q['int8_tflite_bytes']})",
               f"{bi.get('tflite_gzip_bytes', 0):,} -> {ai.get('tflite_gzip_bytes', 0):,}",
               f"{bi.get('latency', {}).get('median_us')} -> {ai.get('latency', {}).get('median_us')} (x{q['latency_speedup']})",
               f"{bi.get('latency_builtin_kernels', {}).get('median_us')} -> "
               f"{ai.get('latency_builtin_kernels', {}).get('median_us')} (x{q.get('latency_speedup_builtin_kernels')})",
               f"{pct(b['accuracy'])} -> {pct(a['accuracy'])}", f"{pct(bi.get('accuracy'))} -> {pct(ai.get('accuracy'))}",
               f"{d['training']['epochs']} x {d['data']['train_samples']}"]
        if channel:
            acc_drop = 100 * (b["accuracy"] - a["accuracy"])
            ok = (q["int8_tflite_bytes"] or 9) <= 0.55 and (q["latency_speedup"] or 0) >= 1.6 and acc_drop <= 1.5
            row.append("yes" if ok else "no")
        rows.append(row)
    headers = ["model", "sparsity", "nonzero params", "file B", "file gzip B", "int8 .tflite B", "int8 gzip B",
               "LiteRT us (1 thread, XNNPACK)", "LiteRT us (built-in kernels)", "float acc %", "int8 acc %", "epochs x samples"]
    return table(rows, headers + (["targets met"] if channel else []))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["qat", "channel", "magnitude", "sweep"], action="append")
    ap.add_argument("--sparsities", default="0.25,0.5,0.75", help="Channel shares removed by the sweep.")
    ap.add_argument("--fashion-sweep-epochs", type=int, default=8)
    ap.add_argument("--no-distill", action="store_true", help="Sweep without knowledge distillation (on by default).")
    ap.add_argument("--firmware", metavar="TARGET", help="Sweep: also count instructions per inference in TFLite Micro "
                    "firmware on QEMU for this target (e.g. stm32l4r5), before and after.")
    ap.add_argument("--models", default="digits,fashion")
    ap.add_argument("--frameworks", default="torch,keras")
    ap.add_argument("--fashion-qat-samples", type=int, default=4000)
    ap.add_argument("--fashion-qat-epochs", type=int, default=1)
    ap.add_argument("--fashion-prune-samples", type=int, default=60000)
    ap.add_argument("--fashion-prune-epochs", type=int, default=5)
    ap.add_argument("--fashion-magnitude-samples", type=int, default=20000)
    ap.add_argument("--fashion-magnitude-epochs", type=int, default=2)
    ap.add_argument("--qat-lr", type=float, default=1e-5)
    ap.add_argument("--prune-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--channel-sparsity", type=float, default=0.5)
    ap.add_argument("--magnitude-sparsity", type=float, default=0.8)
    ap.add_argument("--latency-runs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="Also write every report to this file.")
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.frameworks = [f for f in args.frameworks.split(",") if f]
    args.sparsities = [float(v) for v in args.sparsities.split(",") if v]
    args.sweep_epochs = {"digits": 8, "fashion": args.fashion_sweep_epochs}
    args.qat_samples = {"digits": None, "fashion": args.fashion_qat_samples}
    args.qat_epochs = {"digits": 2, "fashion": args.fashion_qat_epochs}
    args.prune_samples = {"digits": None, "fashion": args.fashion_prune_samples}
    args.prune_epochs = {"digits": 3, "fashion": args.fashion_prune_epochs}
    args.magnitude_samples = {"digits": None, "fashion": args.fashion_magnitude_samples}
    args.magnitude_epochs = {"digits": 3, "fashion": args.fashion_magnitude_epochs}
    only = set(args.only or ["qat", "channel", "magnitude", "sweep"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out: dict = {"settings": {k: v for k, v in vars(args).items() if k != "json"}}
    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if "qat" in only:
            out["qat"] = bench_qat(args, tmp)
        if "channel" in only:
            out["channel"] = bench_prune(args, tmp, "channel")
        if "magnitude" in only:
            out["magnitude"] = bench_prune(args, tmp, "magnitude")
        if "sweep" in only:
            out["sweep"] = bench_sweep(args, tmp)
    print(f"settings: batch {args.batch_size}, seed {args.seed}; QAT lr {args.qat_lr}, prune lr {args.prune_lr}; "
          f"Fashion-MNIST QAT {args.fashion_qat_epochs} epoch(s) x {args.fashion_qat_samples} samples, "
          f"channel pruning {args.fashion_prune_epochs} epoch(s) x {args.fashion_prune_samples} samples, magnitude "
          f"pruning {args.fashion_magnitude_epochs} epoch(s) x {args.fashion_magnitude_samples} samples; digits: all its "
          f"training samples; accuracy on the full test splits; cosine learning-rate decay.")
    if out.get("qat"):
        print("\nQuantization-aware training (accuracy %, float in its framework, int8 in LiteRT)")
        print(qat_table(out["qat"]))
    if out.get("channel"):
        print(f"\nChannel pruning at {args.channel_sparsity:.0%} (targets: int8 .tflite <= 0.55x, >= 1.6x faster, "
              "accuracy within 1.5 points)")
        print(prune_table(out["channel"], channel=True))
    if out.get("magnitude"):
        print(f"\nMagnitude pruning at {args.magnitude_sparsity:.0%} (unstructured: sizes and latency stay, gzip shrinks)")
        print(prune_table(out["magnitude"], channel=False))
    if out.get("sweep"):
        print("\nChannel-pruning sweep, default fine-tuning (drop: pruned int8 against unpruned float; target <= 1.5 at 50%)")
        print(sweep_table(out["sweep"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
