"""Data sources, one reader per kind, chosen once from the spec string."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from workbench.data.dataset import Dataset
from workbench.core.errors import DataError, InputFileError, require
from workbench.core.registry import Registry

READERS: Registry = Registry("data source")
BUILTINS: Registry = Registry("built-in data set")


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split ``path#k=v,k=v`` into the path and its options."""
    base, _, opts = spec.partition("#")
    options = {}
    for item in filter(None, opts.split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise DataError(f"Data option '{item}' in '{spec}' should be key=value.")
        options[k.strip()] = v.strip()
    return base, options


def open_data(spec: str, split: str = "test", limit: int | None = None, seed: int | None = None) -> Dataset:
    """Open a data spec. ``split`` is the default split for built-in sets."""
    base, options = parse_spec(str(spec))
    name, _, sp = base.partition(":")
    if name in BUILTINS and not Path(base).exists():
        ds = BUILTINS.get(name)(sp or split)
    else:
        kind = _kind(base)
        ds = READERS.get(kind)(base, options)
    return ds.take(limit, seed) if (limit is not None or seed is not None) else ds


def as_dataset(data, split: str, limit: int | None = None, seed: int | None = None) -> Dataset | None:
    """A Dataset from a spec or a Dataset (``None`` stays ``None``), cut to ``limit`` samples."""
    if data is None or isinstance(data, Dataset):
        return data if (data is None or limit is None) else data.take(limit, seed)
    return open_data(str(data), split=split, limit=limit, seed=seed)


def _kind(base: str) -> str:
    p = Path(base)
    if ":" in base and not p.exists() and not base.startswith(("/", ".")) and base.count(":") == 1:
        return "callable"
    if not p.exists():
        valid = ", ".join(sorted(BUILTINS.keys()))
        raise InputFileError(f"Data '{base}' does not exist.",
                             hint=f"Give a .npz/.npy/IDX file, an image folder, package.module:function, or a built-in set ({valid}).")
    if p.is_dir():
        return "images"
    name = p.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    if "idx" in name or name.endswith("-ubyte") or name.endswith("-ubyte.gz"):
        return "idx"
    raise DataError(f"Data file '{p}' has an unknown kind (expected .npz, .npy, an IDX '*-ubyte[.gz]' file or a folder).")


def _labels(y, name: str):
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"Labels in '{name}' have dtype {y.dtype}; integer class labels were expected.")
    return y.reshape(-1).astype(np.int64)


@READERS.register("npz")
def read_npz(path: str, options: dict) -> Dataset:
    xk, yk = options.get("x", "x"), options.get("y", "y")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if xk not in keys:
                raise DataError(f"'{path}' has no array '{xk}' (it has: {', '.join(keys) or 'none'}).",
                                hint=f"Name the inputs array with '{path}#x=NAME' (and labels with y=NAME).")
            x = z[xk]
            y = z[yk] if yk in keys else None
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"'{path}' is not a readable .npz file: {exc}.",
                        hint="Object arrays are refused (they need pickle); save plain numeric arrays.") from None
    return Dataset(x=_scaled(x, options), y=_labels(y, path), name=str(path))


def _scaled(x: np.ndarray, options: dict) -> np.ndarray:
    """``#scale=255`` divides samples stored as bytes; without it values are used as stored."""
    if "scale" in options:
        return x.astype(np.float32) / float(options["scale"])
    return x


@READERS.register("yaml")
def read_spec_file(path: str, options: dict) -> Dataset:
    """A data spec file (see calibration/): ``source`` (relative to the file), ``options``, ``limit``, ``seed``."""
    from workbench.core.yamlfile import read_yaml

    try:
        spec = read_yaml(path, "data spec", error=DataError)[0] or {}
    except OSError as exc:
        raise DataError(f"Data spec '{path}' is not readable: {exc}.") from None
    if not isinstance(spec, dict) or "source" not in spec:
        raise DataError(f"Data spec '{path}' needs a 'source' key (a built-in set, or a file relative to the spec).")
    unknown = set(spec) - {"source", "options", "limit", "seed", "split", "description", "classes", "preprocessing"}
    if unknown:
        raise DataError(f"Data spec '{path}' has unknown keys: {', '.join(sorted(unknown))}.",
                        hint="Valid keys: source, options, limit, seed, split, description, classes, preprocessing.")
    src = str(spec["source"])
    local = Path(path).parent / src.partition("#")[0]
    if local.exists():
        src = str(local) + ("#" + src.partition("#")[2] if "#" in src else "")
    opts = ",".join(f"{k}={v}" for k, v in (spec.get("options") or {}).items())
    if opts:
        src += ("," if "#" in src else "#") + opts
    return open_data(src, split=spec.get("split", "train"), limit=spec.get("limit"), seed=spec.get("seed"))


@READERS.register("npy")
def read_npy(path: str, options: dict) -> Dataset:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"'{path}' is not a readable .npy file: {exc}.") from None
    y = None
    if "y" in options:
        y = _labels(np.load(options["y"], allow_pickle=False), options["y"])
    return Dataset(x=_scaled(x, options), y=y, name=str(path))


IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx_array(path: str | Path) -> np.ndarray:
    p = Path(path)
    opener = gzip.open if p.name.endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"'{p}' could not be read as an IDX file: {exc}.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(f"'{p}' is not an IDX file (bad magic number {data[:4].hex()}).",
                        hint="IDX files start with two zero bytes, a type code and the number of dimensions (MNIST format).")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"'{p}' is a truncated IDX file (header cut short).")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dt = np.dtype(IDX_TYPES[data[2]])
    need = int(np.prod(dims)) * dt.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != need:
        raise DataError(f"'{p}' is a truncated or padded IDX file: header says {need} data bytes, file has {len(body)}.")
    return np.frombuffer(body, dtype=dt).reshape(dims)


@READERS.register("idx")
def read_idx(path: str, options: dict) -> Dataset:
    x = read_idx_array(path)
    labels = options.get("labels")
    if labels is None:
        guess = Path(str(path).replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1"))
        labels = guess if guess != Path(path) and guess.exists() else None
    y = _labels(read_idx_array(labels), str(labels)) if labels else None
    scale = float(options.get("scale", 255.0 if x.dtype == np.uint8 else 1.0))
    return Dataset(x=(x.astype(np.float32) / scale), y=y, name=str(path))


IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm"}


@READERS.register("images")
def read_images(path: str, options: dict) -> Dataset:
    """A folder of images: ``root/<class>/*.png`` (labels from sorted folder names) or ``root/*.png``.

    Options: size=HxW, gray=1, scale (divide by, default 255), mean and std (per channel, '/'-separated),
    order=rgb|bgr.
    """
    Image = require("PIL.Image", "data", "Reading image folders")
    root = Path(path)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    files, labels, classes = [], [], []
    if subdirs:
        for ci, d in enumerate(subdirs):
            classes.append(d.name)
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_EXT:
                    files.append(f)
                    labels.append(ci)
    else:
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXT)
    if not files:
        raise DataError(f"Image folder '{root}' holds no images ({', '.join(sorted(IMAGE_EXT))}).")
    size = options.get("size")
    hw = tuple(int(v) for v in size.lower().split("x")) if size else None
    gray = options.get("gray", "0") in ("1", "true", "yes")
    arrs = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if gray else "RGB")
                if hw:
                    im = im.resize((hw[1], hw[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32)
        except OSError as exc:
            raise DataError(f"Image '{f}' could not be read: {exc}.") from None
        if a.ndim == 2:
            a = a[..., None]
        if options.get("order", "rgb") == "bgr" and a.shape[-1] == 3:
            a = a[..., ::-1]
        arrs.append(a)
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise DataError(f"Images in '{root}' have different sizes {sorted(shapes)[:3]}...", hint="Add #size=HxW to resize them.")
    x = np.stack(arrs) / float(options.get("scale", 255.0))
    if "mean" in options:
        x = x - np.array([float(v) for v in options["mean"].split("/")], dtype=np.float32)
    if "std" in options:
        x = x / np.array([float(v) for v in options["std"].split("/")], dtype=np.float32)
    return Dataset(x=x.astype(np.float32), y=np.array(labels) if labels else None, name=str(root), classes=tuple(classes))


@READERS.register("callable")
def read_callable(ref: str, options: dict) -> Dataset:
    """``package.module:function`` returning (x, y), x alone, or an iterable of such batches."""
    from workbench.core.callables import resolve

    fn = resolve(ref, "data function")
    out = fn()
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], np.ndarray):
        return Dataset(x=out[0], y=_labels(out[1], ref), name=ref)
    if isinstance(out, np.ndarray):
        return Dataset(x=out, y=None, name=ref)
    xs, ys = [], []
    for batch in out:
        if isinstance(batch, tuple):
            xs.append(np.asarray(batch[0]))
            ys.append(np.asarray(batch[1]) if len(batch) > 1 and batch[1] is not None else None)
        else:
            xs.append(np.asarray(batch))
            ys.append(None)
    if not xs:
        raise DataError(f"Data function '{ref}' yielded no batches.")
    y = None if any(v is None for v in ys) else _labels(np.concatenate(ys), ref)
    return Dataset(x=np.concatenate(xs), y=y, name=ref)


# --- built-in real data sets (no download) ---

SPLIT_SEED = 0


def _split(x, y, split: str, name: str, test_fraction: float = 0.25) -> Dataset:
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    idx = {"test": perm[:n_test], "train": perm[n_test:], "all": np.arange(len(x))}.get(split)
    if idx is None:
        raise DataError(f"Unknown split '{split}' for '{name}'. Valid: train, test, all.")
    idx = np.sort(idx)
    return Dataset(x=x[idx], y=y[idx], name=f"{name}:{split}", classes=tuple(str(i) for i in range(10)))


@BUILTINS.register("digits")
def digits(split: str) -> Dataset:
    """scikit-learn's load_digits: 1,797 8x8 grey images (0..16 scaled to 0..1); 75/25 seeded split."""
    datasets = require("sklearn.datasets", "data", "The built-in 'digits' data set")
    d = datasets.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    return _split(x, d.target.astype(np.int64), split, "digits")


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def fashion_dir() -> Path:
    env = os.environ.get("WORKBENCH_FASHION_MNIST")
    for cand in filter(None, [env, "/usr/share/datasets/fashion-mnist"]):
        if (Path(cand) / "train-images-idx3-ubyte.gz").exists():
            return Path(cand)
    raise DataError(
        "The built-in 'fashion-mnist' set needs its IDX files, which were not found.",
        hint="Install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or set "
        "WORKBENCH_FASHION_MNIST to a folder holding train-images-idx3-ubyte.gz and friends.",
    )


@BUILTINS.register("fashion-mnist")
def fashion_mnist(split: str) -> Dataset:
    """Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey images (scaled to 0..1), the official split."""
    d = fashion_dir()
    files = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    if split not in files:
        raise DataError(f"Unknown split '{split}' for 'fashion-mnist'. Valid: train, test.")
    xi, yi = files[split]
    x = read_idx_array(d / xi).astype(np.float32)[..., None] / 255.0
    y = read_idx_array(d / yi).astype(np.int64)
    return Dataset(x=x, y=y, name=f"fashion-mnist:{split}", classes=FASHION_CLASSES)
