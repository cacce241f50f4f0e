"""The training loop shared by pruning and quantization-aware training, for PyTorch and Keras.

:func:`fit` drives a framework :class:`Backend` (:class:`TorchBackend`, :class:`KerasBackend`
for Keras 3 and tf_keras alike) over labelled samples:

* **Seeded.** Epoch ``e`` visits the samples in the order ``permutation(seed, e)`` and re-seeds
  the framework's generators with ``seed + e``, so a resumed run takes the same path as one
  that was never interrupted.
* **Learning rate.** Adam, with a cosine decay from ``lr`` to zero over all steps (or constant);
  the rate is a function of the global step, so resuming does not disturb it.
* **Loss.** ``cross-entropy`` on the model's outputs as logits (a Keras model whose last layer
  applies softmax is treated as giving probabilities), or ``mse`` between the outputs and
  one-hot targets.
* **Custom steps.** ``TrainConfig.step = "package.module:function"`` replaces the default step.
  The function is called as ``step(model, x, y, optimizer, loss_fn)`` with framework tensors
  (``torch.Tensor`` or ``tf.Tensor``) and must run the forward pass, compute a loss, apply the
  gradients and return the loss (a number or scalar tensor). ``loss_fn(outputs, labels)`` is
  the configured loss. Keras steps run eagerly unless the function wraps itself in tf.function.
* **Checkpoints.** After every epoch the model and optimizer state go to a
  :class:`CheckpointStore`: the state file is written atomically, then ``state.json`` (epoch,
  step, history, the state file's hash) is replaced atomically. An interrupted run leaves the
  last complete epoch; ``resume=True`` continues from it and refuses a checkpoint written for
  another model or config.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.core.errors import ConfigError, DataError, InputFileError
from workbench.core.files import sha256_bytes, write_bytes_atomic, write_json_atomic
from workbench.optimize.config import TrainConfig

ProgressFn = Callable[[dict], None]


def _noop(*_a, **_k):
    return None


@dataclass
class Hooks:
    """Technique callbacks around the loop (pruning schedules, mask updates)."""

    on_train_begin: Callable[[], None] = _noop
    before_step: Callable[[int, int], None] = _noop  # (step, total_steps)
    on_epoch_end: Callable[[int], None] = _noop
    lr_at: Callable[[int, int], float] | None = None  # replaces TrainConfig.lr_at (warm restarts)
    after_epoch: Callable[[int, dict], bool] = lambda epoch, entry: False  # may add to the epoch's entry; True stops


@dataclass
class TrainResult:
    epochs: int
    steps: int
    resumed_from: int | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "steps": self.steps, "resumed_from_epoch": self.resumed_from,
                "history": self.history, "seconds": round(self.seconds, 2)}


# ---------------------------------------------------------------- data checks

def check_labels(y, n_outputs: int | None, name: str, what: str = "Training data") -> np.ndarray:
    if y is None:
        raise DataError(f"{what} '{name}' has no labels: training needs integer class labels for every sample.",
                        hint="Give labelled data: an .npz with arrays x and y, a class-per-folder image tree, or a built-in set.")
    y = np.asarray(y).astype(np.int64)
    if n_outputs and len(y) and (y.min() < 0 or y.max() >= n_outputs):
        raise DataError(f"{what} '{name}' has labels from {int(y.min())} to {int(y.max())}, but the model has "
                        f"{n_outputs} outputs (classes 0 to {n_outputs - 1}).",
                        hint="Use data with this model's classes.")
    return y


# ---------------------------------------------------------------- checkpoints

def fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CheckpointStore:
    """Per-epoch checkpoints in one folder: ``epoch-NNNN.ckpt`` files and ``state.json``."""

    STATE = "state.json"

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def exists(self) -> bool:
        return (self.folder / self.STATE).exists()

    def latest(self) -> tuple[dict, bytes] | None:
        state_path = self.folder / self.STATE
        if not state_path.exists():
            return None
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputFileError(f"Checkpoint state '{state_path}' cannot be read: {exc}.",
                                 hint="Delete the checkpoint folder to start over.") from None
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"The checkpoint in '{self.folder}' was written for another model, data or config "
                f"(fingerprint {state.get('fingerprint')}, this run {self.fingerprint}).",
                hint="Resume with the same model and options (only --epochs may change), or delete the folder to start over.")
        ckpt = self.folder / state["file"]
        try:
            data = ckpt.read_bytes()
        except OSError:
            raise InputFileError(f"Checkpoint file '{ckpt}' named by '{state_path}' is missing.",
                                 hint="Delete the checkpoint folder to start over.") from None
        if sha256_bytes(data) != state.get("sha256"):
            raise InputFileError(f"Checkpoint file '{ckpt}' does not match the hash recorded in '{state_path}'.",
                                 hint="It was changed or damaged after it was written; delete the folder to start over.")
        return state, data

    def save(self, epoch: int, step: int, history: list[dict], data: bytes, extra: dict | None = None) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}.ckpt"
        write_bytes_atomic(self.folder / name, data)
        write_json_atomic(self.folder / self.STATE, {"fingerprint": self.fingerprint, "epoch": epoch, "step": step,
                                                      "file": name, "sha256": sha256_bytes(data), "history": history,
                                                      **(extra or {})})
        for old in self.folder.glob("epoch-*.ckpt"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.folder / name

    def clear(self) -> None:
        if not self.folder.exists():
            return
        for f in self.folder.iterdir():
            if f.is_file() and (f.name == self.STATE or f.name.startswith(("epoch-", ".epoch-", ".state.json"))):
                f.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------- the loop

class Backend:
    """One framework's side of the loop."""

    framework = "?"

    def seed(self, seed: int) -> None:
        raise NotImplementedError

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_bytes(self) -> bytes:
        raise NotImplementedError

    def load_state_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def begin(self) -> None:
        """Put the model in training mode."""

    def end(self) -> None:
        """Put the model in inference mode."""


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of every batch of an epoch; a lone trailing sample (which breaks batch norm) joins the batch before."""
    bs = min(batch_size, n)
    bounds = [(i, min(i + bs, n)) for i in range(0, n, bs)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def fit(backend: Backend, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, *, hooks: Hooks | None = None,
        store: CheckpointStore | None = None, resume: bool = False, val: tuple[np.ndarray, np.ndarray] | None = None,
        progress: ProgressFn | None = None, soft: np.ndarray | None = None) -> TrainResult:
    """``soft``: a teacher's outputs for every sample of ``x`` (knowledge distillation)."""
    hooks = hooks or Hooks()
    lr_at = hooks.lr_at or cfg.lr_at
    progress = progress or _noop
    n = len(x)
    if n < 2:
        raise DataError(f"Training needs at least 2 samples, got {n}.")
    batches = batch_bounds(n, cfg.batch_size)
    total = cfg.epochs * len(batches)
    start_epoch, step, history, resumed = 0, 0, [], None
    if resume and store is not None:
        found = store.latest()
        if found is not None:
            state, data = found
            backend.load_state_bytes(data)
            start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state.get("history", []))
            resumed = start_epoch
    t0 = time.perf_counter()
    progress({"event": "start", "total_steps": total, "done_steps": step, "resumed_from_epoch": resumed})
    hooks.on_train_begin()
    for epoch in range(start_epoch, cfg.epochs):
        backend.seed(cfg.seed + epoch)
        backend.begin()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        losses = []
        for a, b in batches:
            idx = order[a:b]
            hooks.before_step(step, total)
            backend.set_lr(lr_at(step, total))
            loss = backend.train_step(x[idx], y[idx], None if soft is None else soft[idx])
            if not np.isfinite(loss):
                raise DataError(f"The training loss became {loss} at epoch {epoch + 1}, step {step + 1}.",
                                hint="Lower --lr, or check the data for extreme values.")
            losses.append(loss * (b - a))
            step += 1
            progress({"event": "step", "step": step, "total_steps": total, "loss": loss})
        hooks.on_epoch_end(epoch)
        backend.end()
        entry = {"epoch": epoch + 1, "loss": round(float(np.sum(losses) / n), 6)}
        if val is not None and val[1] is not None:
            entry["val_accuracy"] = round(float(np.mean(backend.predict(val[0]).argmax(1) == val[1])), 6)
        stop = hooks.after_epoch(epoch, entry)
        history.append(entry)
        progress({"event": "epoch", **entry, "epochs": cfg.epochs})
        if store is not None:
            store.save(epoch + 1, step, history, backend.state_bytes())
        if stop:
            break
    backend.end()
    return TrainResult(epochs=cfg.epochs, steps=step, resumed_from=resumed, history=history,
                       seconds=time.perf_counter() - t0)


def run_user_step(ref: str, fn, model, x, y, optimizer, loss_fn) -> float:
    """Call the user's step; its errors are the user's, reported as such (not as a workbench bug)."""
    try:
        loss = fn(model, x, y, optimizer, loss_fn)
        return float(np.asarray(loss.detach() if hasattr(loss, "detach") else loss))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise ConfigError(f"The training step '{ref}' failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          hint="It is called as step(model, x, y, optimizer, loss_fn) and must return the loss; "
                          "run with --debug for the traceback.") from exc


def user_step(cfg: TrainConfig):
    if not cfg.step:
        return None
    from workbench.core.callables import resolve

    return resolve(cfg.step, "training step")


# ---------------------------------------------------------------- PyTorch

class TorchBackend(Backend):
    """``to_train``/``to_eval`` switch modes (exported QAT graphs use torchao's helpers instead of .train()).
    ``micro_batch``: a graph fixed to one batch size is fed groups of that size; a step sums their
    gradients, weighted so the result equals one pass over the whole batch."""

    framework = "torch"

    def __init__(self, model, cfg: TrainConfig, n_outputs: int, to_train=None, to_eval=None, batch_eval: int = 256,
                 micro_batch: int | None = None, distill: tuple[float, float] | None = None):
        import torch

        self.micro_batch = micro_batch
        if micro_batch is not None:
            batch_eval = micro_batch

        self.torch = torch
        self.model = model
        self.cfg = cfg
        self.n_outputs = n_outputs
        self.to_train = to_train or (lambda m: m.train())
        self.to_eval = to_eval or (lambda m: m.eval())
        self.batch_eval = batch_eval
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        self.custom = user_step(cfg)
        F = torch.nn.functional
        if cfg.loss == "mse":
            self.loss_fn = lambda out, y: F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))
        else:
            self.loss_fn = lambda out, y: F.cross_entropy(out, y)
        self.distill = distill

    def _distilled(self, out, y, soft):
        """(1 - a) * loss(labels) + a * T^2 * KL(teacher || student), both softened at temperature T."""
        F = self.torch.nn.functional
        a, t = self.distill
        kl = F.kl_div(F.log_softmax(out / t, -1), F.log_softmax(soft / t, -1), log_target=True, reduction="batchmean")
        return (1 - a) * self.loss_fn(out, y) + a * t * t * kl

    def seed(self, seed: int) -> None:
        self.torch.manual_seed(seed)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def begin(self) -> None:
        self.to_train(self.model)

    def end(self) -> None:
        self.to_eval(self.model)

    def train_step(self, x, y, soft=None) -> float:
        torch = self.torch
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        if self.custom is not None:
            return run_user_step(self.cfg.step, self.custom, self.model, xt, yt, self.optimizer, self.loss_fn)
        self.optimizer.zero_grad(set_to_none=True)
        if soft is not None and self.distill is not None:
            loss = self._distilled(self.model(xt), yt, torch.from_numpy(np.asarray(soft, dtype=np.float32)))
            loss.backward()
            self.optimizer.step()
            return float(loss.detach())
        if self.micro_batch is None:
            loss = self.loss_fn(self.model(xt), yt)
            loss.backward()
            self.optimizer.step()
            return float(loss.detach())
        mb, n, total = self.micro_batch, len(xt), 0.0
        if n % mb:
            raise DataError(f"This model's graph takes batches of exactly {mb} samples; a training batch has {n}.",
                            hint=f"Use a --batch-size and --train-samples that are multiples of {mb}.")
        for i in range(0, n, mb):
            part = self.loss_fn(self.model(xt[i:i + mb]), yt[i:i + mb]) * (mb / n)
            part.backward()
            total += float(part.detach())
        self.optimizer.step()
        return total

    def predict(self, x) -> np.ndarray:
        torch = self.torch
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_eval):
                outs.append(self.model(torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_eval], dtype=np.float32))).numpy())
        return np.concatenate(outs)

    def state_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, buf)
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        state = self.torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


# ---------------------------------------------------------------- Keras 3 and tf_keras

class KerasBackend(Backend):
    """Works for Keras 3 and tf_keras models alike (``keras`` is the matching package)."""

    framework = "keras"

    def __init__(self, model, keras, cfg: TrainConfig, n_outputs: int, batch_eval: int = 256,
                 distill: tuple[float, float] | None = None):
        import tensorflow as tf

        self.tf = tf
        self.keras = keras
        self.model = model
        self.cfg = cfg
        self.batch_eval = batch_eval
        self.optimizer = keras.optimizers.Adam(learning_rate=cfg.lr)
        self.optimizer.build(model.trainable_variables)
        self.custom = user_step(cfg)
        probs = _ends_in_softmax(model)
        if cfg.loss == "mse":
            mse = keras.losses.MeanSquaredError()
            self.loss_fn = lambda out, y: mse(tf.one_hot(y, tf.shape(out)[-1]), out)
        else:
            ce = keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
            self.loss_fn = lambda out, y: ce(y, out)
        self._step = tf.function(self._default_step, reduce_retracing=True)
        self.distill, self.probs = distill, probs

    def _distilled(self, out, y, soft):
        tf = self.tf
        a, t = self.distill
        as_logits = (lambda v: tf.math.log(tf.clip_by_value(v, 1e-7, 1.0))) if self.probs else (lambda v: v)
        p_teacher = tf.nn.softmax(as_logits(soft) / t)
        kl = tf.reduce_mean(tf.reduce_sum(
            p_teacher * (tf.math.log(tf.clip_by_value(p_teacher, 1e-12, 1.0)) - tf.nn.log_softmax(as_logits(out) / t)), -1))
        return (1 - a) * self.loss_fn(out, y) + a * t * t * kl

    def _default_step(self, x, y, soft=None):
        tf = self.tf
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            loss = self.loss_fn(out, y) if soft is None else self._distilled(out, y, soft)
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return loss

    def seed(self, seed: int) -> None:
        self.tf.random.set_seed(seed)

    def set_lr(self, lr: float) -> None:
        self.optimizer.learning_rate.assign(lr)

    def train_step(self, x, y, soft=None) -> float:
        tf = self.tf
        xt = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
        yt = tf.convert_to_tensor(np.asarray(y, dtype=np.int64))
        if self.custom is not None:
            return run_user_step(self.cfg.step, self.custom, self.model, xt, yt, self.optimizer, self.loss_fn)
        if soft is not None and self.distill is not None:
            loss = self._step(xt, yt, tf.convert_to_tensor(np.asarray(soft, dtype=np.float32)))
        else:
            loss = self._step(xt, yt)
        return float(np.asarray(loss))

    def predict(self, x) -> np.ndarray:
        outs = [np.asarray(self.model(np.asarray(x[i:i + self.batch_eval], dtype=np.float32), training=False))
                for i in range(0, len(x), self.batch_eval)]
        return np.concatenate(outs)

    def _opt_variables(self):
        v = self.optimizer.variables
        return list(v() if callable(v) else v)

    def state_bytes(self) -> bytes:
        arrays = {}
        for i, w in enumerate(self.model.get_weights()):
            arrays[f"w{i:05d}"] = np.asarray(w)
        for i, v in enumerate(self._opt_variables()):
            arrays[f"o{i:05d}"] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            weights = [z[k] for k in sorted(k for k in z.files if k.startswith("w"))]
            opt = [z[k] for k in sorted(k for k in z.files if k.startswith("o"))]
        self.model.set_weights(weights)
        variables = self._opt_variables()
        if len(variables) != len(opt):
            raise InputFileError(f"The checkpoint holds {len(opt)} optimizer variables, this run has {len(variables)}.",
                                 hint="Delete the checkpoint folder to start over.")
        for var, val in zip(variables, opt):
            var.assign(val)


def _ends_in_softmax(model) -> bool:
    try:
        last = model.layers[-1]
    except (AttributeError, IndexError):
        return False
    inner = getattr(last, "layer", last)  # tfmot wrappers keep the layer in .layer
    act = getattr(inner, "activation", None)
    name = getattr(act, "__name__", str(act))
    return type(inner).__name__ == "Softmax" or name == "softmax"
