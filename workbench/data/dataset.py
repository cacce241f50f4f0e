"""An in-memory labelled (or unlabelled) sample set, and fitting it to a model's input."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from workbench.core.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (images in NHWC, batch first) and optional integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray | None
    name: str
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.x.ndim < 1 or len(self.x) == 0:
            raise DataError(f"Data '{self.name}' is empty: it holds no samples.", hint="Check the file or the sample limit.")
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"Data '{self.name}' has {len(self.x)} samples but {len(self.y)} labels.",
                            hint="Inputs and labels must have the same length.")
        if np.issubdtype(self.x.dtype, np.floating) and not np.isfinite(self.x).all():
            bad = int((~np.isfinite(self.x)).reshape(len(self.x), -1).any(axis=1).sum())
            raise DataError(f"Data '{self.name}' contains NaN or infinite values in {bad} of {len(self.x)} samples.",
                            hint="Clean the data (drop or impute those samples) before calibrating or evaluating.")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def take(self, n: int | None, seed: int | None = None) -> "Dataset":
        """The first ``n`` samples, after a seeded shuffle when ``seed`` is given."""
        idx = np.arange(len(self))
        if seed is not None:
            idx = np.random.default_rng(seed).permutation(len(self))
        if n is not None:
            if n <= 0:
                raise DataError(f"The sample limit must be positive, got {n}.")
            idx = idx[:n]
        return replace(self, x=self.x[idx], y=None if self.y is None else self.y[idx])

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], (None if self.y is None else self.y[i : i + batch_size])


def _fits(found: tuple, want: tuple) -> bool:
    return len(found) == len(want) and all(w is None or w == f for w, f in zip(want, found))


def fit_to_input(x: np.ndarray, shape: tuple, layout: str | None, name: str, model: str = "the model") -> np.ndarray:
    """Make samples ``x`` (batch first; images NHWC or NHW) match one model input.

    Adds a channel axis to grey images, transposes NHWC <-> NCHW when only the transposed
    shape fits the model, and checks the per-sample shape, raising DataError with expected vs found.
    """
    want = tuple(shape[1:]) if shape else None
    x = np.asarray(x)
    if want is None:
        return x.astype(np.float32)
    if x.ndim == 3 and len(want) == 3:  # grey images without a channel axis
        x = x[..., None]
    if x.ndim == 4 and len(want) == 3 and not _fits(x.shape[1:], want):
        # NHWC data for an NCHW model (PyTorch) or NCHW data for an NHWC model (Keras, or the NHWC .tflite
        # litert-torch writes from a PyTorch model): transpose when the shapes say so.
        for perm in ((0, 3, 1, 2), (0, 2, 3, 1)) if layout != "NHWC" else ((0, 2, 3, 1), (0, 3, 1, 2)):
            if _fits(tuple(x.shape[i] for i in perm[1:]), want):
                x = np.transpose(x, perm)
                break
    if x.ndim == 2 and len(want) == 3 and None not in want and x.shape[1] == int(np.prod(want)):
        x = x.reshape((-1,) + want)
    found = tuple(x.shape[1:])
    if not _fits(found, want):
        same_size = None not in want and int(np.prod(found)) == int(np.prod(want))
        raise DataError(
            f"Data '{name}' has samples of shape {found}, but {model} expects {tuple(want)} (layout {layout or 'n/a'}).",
            hint=("The sizes match but the arrangement does not: reshape the data to the model's input (images are "
                  "accepted NHWC or NCHW and transposed when the shapes say so)." if same_size else
                  "Use data prepared for this model, or resize it (folder specs take #size=HxW)."),
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"Data '{name}' has dtype {x.dtype}; numeric samples were expected.")
    return x.astype(np.float32, copy=False)
