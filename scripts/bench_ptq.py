"""PTQ benchmark: size and accuracy of every scheme and format on the reference models.

    .venv/bin/python scripts/bench_ptq.py [--samples N] [--only digits|fashion]

Each artifact is built by workbench's own export path and evaluated in its real runtime
(LiteRT for .tflite, ONNX Runtime for .onnx) against the float original run in its
framework, on the test split. Targets checked: int8 accuracy within 0.5 points of float,
int8 file at most 30% of the float file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import api  # noqa: E402
from workbench.core.errors import WorkbenchError  # noqa: E402

MODELS = {
    "digits": ("digits", "workbench.builtin.models.reference:digits_torch"),
    "fashion": ("fashion-mnist", "workbench.builtin.models.reference:fashion_torch"),
}
SCHEMES = ("float", "fp16", "dynamic", "int8", "int16x8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000, help="test samples per evaluation")
    ap.add_argument("--only", choices=sorted(MODELS))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (data, factory) in MODELS.items():
            if args.only and args.only != name:
                continue
            for fw in ("keras", "torch"):
                src = ROOT / "models" / (f"{name}_keras.keras" if fw == "keras" else f"{name}_torch.pt")
                lo = api.LoadOptions(factory=factory if fw == "torch" else None)
                handle = api.load(src, lo)
                float_bytes = {}
                for fmt in ("tflite", "onnx"):
                    for scheme in SCHEMES:
                        out = Path(tmp) / f"{name}_{fw}_{scheme}.{fmt}"
                        t0 = time.time()
                        try:
                            art = api.convert(handle, fmt, out, scheme=scheme, calib=f"{data}:train", write_manifest=False)
                        except WorkbenchError as exc:
                            rows.append([name, fw, fmt, scheme, "-", "-", "-", "-", f"n/a: {exc.message[:70]}"])
                            continue
                        m = api.evaluate(handle, out, f"{data}:test", samples=args.samples).metrics
                        float_bytes.setdefault(fmt, art.bytes) if scheme == "float" else None
                        ratio = art.bytes / float_bytes[fmt] if fmt in float_bytes else float("nan")
                        check = ""
                        if scheme == "int8":
                            ok = m["accuracy_drop_pp"] <= 0.5 and ratio <= 0.30
                            check = "ok" if ok else "MISS"
                        rows.append([name, fw, fmt, scheme, f"{art.bytes:,}", f"{ratio:.0%}", f"{m['accuracy']:.2%}",
                                     f"{m['accuracy_drop_pp']:+.2f}", f"{check} ({time.time() - t0:.0f}s)"])
                        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ["model", "framework", "format", "scheme", "bytes", "vs float", "accuracy", "drop (pts)", "int8 target"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\naccuracy on {args.samples} test samples per model; drop = float original in its framework minus artifact in its runtime")


if __name__ == "__main__":
    main()
