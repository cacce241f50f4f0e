"""The smallest deployable model (issue 15): strip, clustering + TFLM LUT compression, on the firmware.

    python scripts/bench_flash.py [--models digits,fashion] [--frameworks keras,torch]
                                  [--cluster-epochs 1] [--train-samples N] [--no-firmware] [--json out.json]

Per reference model (models/*.keras, *.pt): the int8 .tflite (PTQ, as tests/conftest.py makes it), then

* model bytes: plain, stripped (portable: TFLM + LiteRT), stripped (tflm level), and the
  16-cluster model LUT-compressed to 4 bits + stripped, each with its ratio to the constant bytes
  (target: stripped <= 1.15x) or to the stripped int8 model (target: compressed <= 0.6x);
* accuracy of the int8 model before and after clustering in LiteRT (target: <= 0.5 pp loss on Fashion);
* on the firmware (TFLM + CMSIS-NN, Cortex-M4 on QEMU, needs WORKBENCH_TFLM_DIR or `workbench firmware
  setup`): flash = text + data of the linked image, instructions per inference and of the DECODE ops,
  arena used (target: Fashion flash >= 35% smaller than the plain export); the compressed model's
  outputs are checked bit-exact against the clustered int8 model on the firmware.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FACTORIES = {"digits": "workbench.builtin.models.reference:digits_torch",
             "fashion": "workbench.builtin.models.reference:fashion_torch"}
DATA = {"digits": ("digits:train", "digits:test"), "fashion": ("fashion-mnist:train", "fashion-mnist:test")}
SUFFIX = {"keras": ".keras", "torch": ".pt"}
TARGET = "stm32l4r5"


def _firmware(path: Path, x) -> dict:
    from workbench.emulate.firmware import run_firmware

    r = run_firmware(path, TARGET, inputs=x)
    decode = sum(op["instructions"] for op in r.per_op if op["op"] == "TFLM_DECODE")
    out = np.asarray(r.outputs[0] if isinstance(r.outputs, tuple) else r.outputs)
    return {"flash_bytes": r.flash_bytes, "text_bytes": r.text_bytes, "data_bytes": r.data_bytes,
            "arena_used_bytes": r.arena_used_bytes, "instructions": r.instructions, "decode_instructions": decode,
            "decode_ops": sum(op["op"] == "TFLM_DECODE" for op in r.per_op), "_out": out}


def bench(model: str, framework: str, tmp: Path, args) -> dict:
    from workbench import api
    from workbench.export.compress import compress_tflite
    from workbench.export.strip import constant_bytes, strip_tflite
    from workbench.frontends.loader import LoadOptions
    from workbench.optimize.config import ClusterConfig, TrainConfig
    from workbench.optimize.measure import accuracy_of

    src = ROOT / "models" / f"{model}_{framework}{SUFFIX[framework]}"
    lo = LoadOptions(factory=FACTORIES[model] if framework == "torch" else None)
    train, test = DATA[model]
    int8 = tmp / f"{model}_{framework}_int8.tflite"
    api.convert(api.load(src, lo), "tflite", int8, scheme="int8", calib=train, calib_samples=200, write_manifest=False)
    clustered = tmp / f"{model}_{framework}_clustered{SUFFIX[framework]}"
    cfg = ClusterConfig(clusters=16, train=TrainConfig(epochs=args.cluster_epochs, lr=1e-4, train_samples=args.train_samples))
    api.cluster(src, clustered, cfg, train, test, load_options=lo, measure_int8=False)
    cint8 = tmp / f"{model}_{framework}_clustered_int8.tflite"
    api.convert(api.load(clustered, lo), "tflite", cint8, scheme="int8", calib=train, calib_samples=200, write_manifest=False)

    raw, craw = int8.read_bytes(), cint8.read_bytes()
    files = {"plain": int8, "clustered": cint8}
    for level in ("portable", "tflm"):
        files[f"stripped_{level}"] = tmp / f"{int8.stem}_{level}.tflite"
        files[f"stripped_{level}"].write_bytes(strip_tflite(raw, int8.name, level)[0])
    comp, rep = compress_tflite(craw, cint8.name, max_bits=4)
    for level in ("portable", "tflm"):
        files[f"compressed_{level}"] = tmp / f"{cint8.stem}_lut4_{level}.tflite"
        files[f"compressed_{level}"].write_bytes(strip_tflite(comp, cint8.name, level)[0])
    sizes = {k: p.stat().st_size for k, p in files.items()}
    const = constant_bytes(raw)
    row = {"model": f"{model}_{framework}", "constant_bytes": const, "bytes": sizes,
           "strip_ratio_portable": round(sizes["stripped_portable"] / const, 4),
           "strip_ratio_tflm": round(sizes["stripped_tflm"] / const, 4),
           "compressed_ratio_portable": round(sizes["compressed_portable"] / sizes["stripped_portable"], 4),
           "compressed_ratio_tflm": round(sizes["compressed_tflm"] / sizes["stripped_tflm"], 4),
           "compressed_tflm_vs_stripped_portable": round(sizes["compressed_tflm"] / sizes["stripped_portable"], 4),
           "accuracy_int8": accuracy_of(int8, _data(test), "litert"),
           "accuracy_clustered_int8": accuracy_of(cint8, _data(test), "litert"),
           "compressed_tensors": [{k: t[k] for k in ("tensor", "shape", "bytes", "estimated_bytes", "bits", "mode")}
                                  for t in rep.tensors],
           "left_alone": [{k: t[k] for k in ("tensor", "shape", "bytes", "reason")} for t in rep.left_alone]}
    row["accuracy_drop_pp"] = round(100 * (row["accuracy_int8"] - row["accuracy_clustered_int8"]), 3)
    if not args.no_firmware:
        from workbench.emulate.firmware import firmware_support

        why = firmware_support(TARGET)
        if why is not None:
            row["firmware"] = {"skipped": str(why)}
        else:
            spec = api.load(int8).inputs[0]
            x = np.random.default_rng(0).integers(-128, 128, size=(1, *spec.shape[1:])).astype(spec.dtype)
            fw = {k: _firmware(files[k], x) for k in ("plain", "stripped_portable", "clustered", "compressed_portable",
                                                      "compressed_tflm")}
            row["compressed_bit_exact_on_firmware"] = all(np.array_equal(fw["clustered"]["_out"].ravel(), fw[k]["_out"].ravel())
                                                          for k in ("compressed_portable", "compressed_tflm"))
            row["stripped_bit_exact_on_firmware"] = bool(np.array_equal(fw["plain"]["_out"].ravel(),
                                                                        fw["stripped_portable"]["_out"].ravel()))
            for v in fw.values():
                v.pop("_out")
            row["firmware"] = fw
            row["flash_reduction"] = round(1 - fw["compressed_tflm"]["flash_bytes"] / fw["plain"]["flash_bytes"], 4)
    return row


def _data(spec):
    from workbench.data import open_data

    return open_data(spec, split="test")


def show(rows: list[dict]) -> None:
    print("model bytes (targets: stripped <= 1.15x constant bytes; 16 clusters + 4-bit LUT <= 0.6x stripped int8)")
    print(f"{'model':16} {'const B':>8} {'plain':>8} {'strip':>8} {'x':>5} {'strip-t':>8} {'x':>5} {'lut4':>8} {'x':>5} "
          f"{'lut4-t':>8} {'x':>5} {'acc int8':>8} {'-> clus':>8} {'drop pp':>7}")
    for r in rows:
        b = r["bytes"]
        print(f"{r['model']:16} {r['constant_bytes']:8,} {b['plain']:8,} {b['stripped_portable']:8,} {r['strip_ratio_portable']:5.2f} "
              f"{b['stripped_tflm']:8,} {r['strip_ratio_tflm']:5.2f} {b['compressed_portable']:8,} "
              f"{r['compressed_ratio_portable']:5.2f} {b['compressed_tflm']:8,} {r['compressed_ratio_tflm']:5.2f} "
              f"{100 * r['accuracy_int8']:7.2f}% {100 * r['accuracy_clustered_int8']:7.2f}% {r['accuracy_drop_pp']:+7.2f}")
    fw_rows = [r for r in rows if "firmware" in r and "skipped" not in r["firmware"]]
    if fw_rows:
        print(f"\nfirmware on QEMU ({TARGET}, Cortex-M4, TFLM + CMSIS-NN): flash = text + data (target: Fashion >= 35% smaller)")
        print(f"{'model':16} {'variant':20} {'flash B':>9} {'text B':>9} {'arena B':>8} {'instructions':>13} {'DECODE instr':>13}")
        for r in fw_rows:
            for k, v in r["firmware"].items():
                print(f"{r['model']:16} {k:20} {v['flash_bytes']:9,} {v['text_bytes']:9,} {v['arena_used_bytes']:8,} "
                      f"{v['instructions']:13,} {v['decode_instructions']:13,}")
            print(f"{'':16} flash reduction plain -> lut4-t: {100 * r['flash_reduction']:.1f}%; compressed bit-exact vs "
                  f"clustered on firmware: {r['compressed_bit_exact_on_firmware']}; stripped bit-exact: "
                  f"{r['stripped_bit_exact_on_firmware']}")
    for r in rows:
        if "firmware" in r and "skipped" in r["firmware"]:
            print(f"{r['model']}: firmware skipped: {r['firmware']['skipped']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,fashion")
    ap.add_argument("--frameworks", default="keras,torch")
    ap.add_argument("--cluster-epochs", type=int, default=1)
    ap.add_argument("--train-samples", type=int, default=None, help="Fine-tune on a seeded subset (Fashion is slow on 2 cores).")
    ap.add_argument("--no-firmware", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-flash-") as tmp:
        for model in args.models.split(","):
            for fw in args.frameworks.split(","):
                rows.append(bench(model.strip(), fw.strip(), Path(tmp), args))
                print(f"done {model}_{fw}", file=sys.stderr)
    show(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
