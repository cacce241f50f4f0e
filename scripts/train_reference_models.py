"""Train the reference models in models/ on real data and record their test accuracy.

    python scripts/train_reference_models.py [--only digits|fashion] [--framework torch|keras]

Seeded end to end (data order, initialisation); a rebuild lands within about a point of
the accuracy recorded in models/metrics.json. Runs on the CPU: about a minute for digits,
a few minutes per framework for Fashion-MNIST on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.data import open_data  # noqa: E402
from workbench.builtin.models import reference  # noqa: E402

RECIPES = {
    # name: (epochs, batch size, learning rate)
    "digits": (40, 32, 3e-3),
    "fashion": (6, 128, 3e-3),
}
SEED = 1234


def train_torch(name: str, train, test) -> float:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(os.cpu_count() or 1)
    model = reference.BUILDERS[(name, "torch")]()
    epochs, bs, lr = RECIPES[name]
    x = torch.from_numpy(np.transpose(train.x, (0, 3, 1, 2)).copy())
    y = torch.from_numpy(train.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(SEED)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"  torch {name} epoch {ep + 1}/{epochs} loss {total / len(x):.4f}", file=sys.stderr)
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(np.transpose(test.x, (0, 3, 1, 2)).copy())
        acc = float((model(xt).argmax(1).numpy() == test.y).mean())
    torch.save(model.state_dict(), reference.weights_path(name, "torch"))
    return acc


def train_keras(name: str, train, test) -> float:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(SEED)
    model = reference.BUILDERS[(name, "keras")]()
    epochs, bs, lr = RECIPES[name]
    steps = epochs * ((len(train.x) + bs - 1) // bs)
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(train.x, train.y, batch_size=bs, epochs=epochs, shuffle=True, verbose=2)
    acc = float((model.predict(test.x, verbose=0).argmax(1) == test.y).mean())
    save_keras_weights_only(name, model)
    return acc


def save_keras_weights_only(name: str, model) -> None:
    """Save an uncompiled copy: the .keras file then holds no optimizer state (a third of the size)."""
    clean = reference.BUILDERS[(name, "keras")]()
    clean.set_weights(model.get_weights())
    clean.save(reference.weights_path(name, "keras"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=sorted(RECIPES))
    ap.add_argument("--framework", choices=["torch", "keras"])
    args = ap.parse_args()
    metrics_file = reference.HERE / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    for name in RECIPES:
        if args.only and name != args.only:
            continue
        train = open_data(reference.DATASETS[name], split="train")
        test = open_data(reference.DATASETS[name], split="test")
        for fw, fn in (("torch", train_torch), ("keras", train_keras)):
            if args.framework and fw != args.framework:
                continue
            t0 = time.time()
            acc = fn(name, train, test)
            epochs, bs, lr = RECIPES[name]
            metrics[f"{name}_{fw}"] = {
                "dataset": reference.DATASETS[name], "train_samples": len(train), "test_samples": len(test),
                "test_accuracy": round(acc, 4), "epochs": epochs, "batch_size": bs, "learning_rate": lr, "seed": SEED,
                "train_seconds": round(time.time() - t0, 1),
            }
            print(f"{name} {fw}: test accuracy {acc:.4f} ({time.time() - t0:.0f} s)", file=sys.stderr)
            metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
