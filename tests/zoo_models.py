"""Model builders for the coverage zoo (tests/test_zoo.py, scripts/bench_coverage.py): issue 12, item 13.

Each builder makes one real architecture with random weights, re-estimates its BatchNorm statistics on real
images (Fashion-MNIST, padded to 32x32 and repeated to 3 channels for the image nets; its rows as a
28-step sequence for the recurrent and attention nets), saves it in the format users have and writes a
labelled ``.npz`` set beside it. The labels are the float model's own argmax (the weights are random), so
"accuracy" in the table is agreement with the float model. The PyTorch architectures are written here at
small widths, in this repository's own words: torchvision does not install beside the pinned torch.

``build(name, folder)`` returns a :class:`Case`; ``NAMES`` lists every architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_CALIB = 128  # samples in the calibration/eval set
SEED = 0


@dataclass
class Case:
    name: str
    family: str  # keras-app, torch-cnn, sequence, residual, file
    model: Path
    data: Path  # npz with x (the model's layout) and y (float-model argmax)
    extra: list = field(default_factory=list)  # extra CLI args (e.g. --factory)
    tflite_path: bool = True  # False: the conversion matrix has no TFLite route from this format (TorchScript, ONNX)


# --- data ------------------------------------------------------------------------------------------

_CACHE: dict = {}


def _fashion(n: int = 512) -> np.ndarray:
    """(n, 28, 28) float32 in [0, 1], real Fashion-MNIST images (the built-in set)."""
    if "x" not in _CACHE:
        from workbench.data import open_data

        x = np.asarray(open_data("fashion-mnist:train").x[:2048], dtype="float32")
        x = x.reshape(len(x), 28, 28)
        if x.max() > 1.5:
            x = x / 255.0
        _CACHE["x"] = x
    return _CACHE["x"][:n]


def images_nhwc(n: int = 512, size: int = 32) -> np.ndarray:
    x = _fashion(n)
    p = (size - 28) // 2
    x = np.pad(x, ((0, 0), (p, size - 28 - p), (p, size - 28 - p)))
    return np.repeat(x[..., None], 3, axis=-1).astype("float32")


def images_nchw(n: int = 512, size: int = 32) -> np.ndarray:
    return np.ascontiguousarray(images_nhwc(n, size).transpose(0, 3, 1, 2))


def sequences(n: int = 512) -> np.ndarray:
    return (_fashion(n) - 0.5).astype("float32")  # (n, 28 steps, 28 features)


def _save_npz(path: Path, x: np.ndarray, logits: np.ndarray) -> Path:
    np.savez(path, x=x[:N_CALIB], y=np.argmax(logits[:N_CALIB], axis=-1).astype("int64"))
    return path


# --- Keras -----------------------------------------------------------------------------------------

def _keras_bn_reestimate(model, x: np.ndarray, steps: int = 3) -> None:
    """Moving statistics from forward passes in training mode (momentum 0: the last big batch's stats)."""
    bns = [l for l in _all_layers(model) if "BatchNormalization" in type(l).__name__]
    saved = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 0.0
    for i in range(steps):
        model(x[i * 128:(i + 1) * 128 + 128], training=True)
    for b, m in zip(bns, saved):
        b.momentum = m


def _all_layers(model):
    out = []
    for l in model.layers:
        out.append(l)
        if hasattr(l, "layers"):
            out.extend(_all_layers(l))
    return out


def _keras_finish(model, x, folder: Path, name: str, ext: str = ".keras") -> tuple[Path, Path]:
    _keras_bn_reestimate(model, x)
    logits = np.asarray(model.predict(x[:N_CALIB], verbose=0))
    path = folder / f"{name}{ext}"
    model.save(path)
    return path, _save_npz(folder / f"{name}.npz", x, logits)


def _keras_app(fn_name: str, **kw):
    def build(folder: Path, name: str) -> Case:
        import keras

        keras.utils.set_random_seed(SEED)
        fn = getattr(keras.applications, fn_name)
        model = fn(weights=None, input_shape=(32, 32, 3), classes=10, **kw)
        path, data = _keras_finish(model, images_nhwc(), folder, name)
        return Case(name, "keras-app", path, data)
    return build


def _keras_lstm(folder: Path, name: str) -> Case:
    import keras

    keras.utils.set_random_seed(SEED)
    m = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(32), keras.layers.Dense(10)])
    path, data = _keras_finish(m, sequences(), folder, name)
    return Case(name, "sequence", path, data)


def _keras_mha(folder: Path, name: str) -> Case:
    import keras

    keras.utils.set_random_seed(SEED)
    inp = keras.Input((28, 28))
    h = keras.layers.Dense(32)(inp)
    a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(h, h)
    h = keras.layers.LayerNormalization()(h + a)
    h = keras.layers.GlobalAveragePooling1D()(h)
    m = keras.Model(inp, keras.layers.Dense(10)(h))
    path, data = _keras_finish(m, sequences(), folder, name)
    return Case(name, "sequence", path, data)


def _keras_conv1d(folder: Path, name: str) -> Case:
    import keras

    keras.utils.set_random_seed(SEED)
    L = keras.layers
    m = keras.Sequential([keras.Input((28, 28)), L.Conv1D(32, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
                          L.MaxPooling1D(2), L.Conv1D(64, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
                          L.GlobalAveragePooling1D(), L.Dense(10)])
    path, data = _keras_finish(m, sequences(), folder, name)
    return Case(name, "sequence", path, data)


def _keras_dscnn(folder: Path, name: str) -> Case:
    import keras

    keras.utils.set_random_seed(SEED)
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, strides=2, padding="same")(inp)))
    for _ in range(3):
        h = L.ReLU()(L.BatchNormalization()(L.SeparableConv2D(32, 3, padding="same")(h)))
    h = L.GlobalAveragePooling2D()(h)
    m = keras.Model(inp, L.Dense(10)(h))
    path, data = _keras_finish(m, images_nhwc(), folder, name)
    return Case(name, "keras-cnn", path, data)


def _residual(L, inp, width=16):
    h = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(width, 3, padding="same")(inp)))
    for w, s in ((width, 1), (2 * width, 2), (4 * width, 2)):
        y = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(w, 3, strides=s, padding="same")(h)))
        y = L.BatchNormalization()(L.Conv2D(w, 3, padding="same")(y))
        sc = h if (s == 1 and h.shape[-1] == w) else L.BatchNormalization()(L.Conv2D(w, 1, strides=s)(h))
        h = L.Activation("relu")(L.Add()([y, sc]))
    return L.Dense(10)(L.GlobalAveragePooling2D()(h))


def _keras3_residual(folder: Path, name: str) -> Case:
    import keras

    keras.utils.set_random_seed(SEED)
    inp = keras.Input((32, 32, 3))
    m = keras.Model(inp, _residual(keras.layers, inp))
    path, data = _keras_finish(m, images_nhwc(), folder, name)
    return Case(name, "residual", path, data)


def _tf_keras_residual(folder: Path, name: str) -> Case:
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    inp = tf_keras.Input((32, 32, 3))
    m = tf_keras.Model(inp, _residual(tf_keras.layers, inp))
    path, data = _keras_finish(m, images_nhwc(), folder, name, ext=".h5")
    return Case(name, "residual", path, data)


# --- PyTorch architectures (small widths) ----------------------------------------------------------

def _torch_nets():
    """The hand-written PyTorch architectures, built lazily so importing this module needs no torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cbr(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):  # MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1
        def __init__(self, cin, cout, stride, expand, se=False, act=nn.ReLU6):
            super().__init__()
            mid = cin * expand
            self.use_res = stride == 1 and cin == cout
            parts = [cbr(cin, mid, 1, act=act)] if expand != 1 else []
            parts.append(cbr(mid, mid, 3, stride, groups=mid, act=act))
            if se:
                parts.append(SqueezeExcite(mid))
            parts.append(cbr(mid, cout, 1, act=None))
            self.body = nn.Sequential(*parts)

        def forward(self, x):
            y = self.body(x)
            return x + y if self.use_res else y

    class SqueezeExcite(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, max(8, c // r), 1), nn.Conv2d(max(8, c // r), c, 1)

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))

    class MobileNetV2ish(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2), (6, 32, 2, 2), (6, 48, 1, 1)]
            layers, c = [cbr(3, 16, 3, 1, act=nn.ReLU6)], 16
            for t, cout, n, s in cfg:
                for i in range(n):
                    layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                    c = cout
            layers.append(cbr(c, 128, 1, act=nn.ReLU6))
            self.features, self.head = nn.Sequential(*layers), nn.Linear(128, 10)

        def forward(self, x):
            return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))

    class MobileNetV3ish(nn.Module):  # hard-swish, squeeze-excite
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                cbr(3, 16, 3, 2, act=nn.Hardswish), InvertedResidual(16, 16, 2, 1, se=True, act=nn.ReLU),
                InvertedResidual(16, 24, 1, 4, act=nn.ReLU), InvertedResidual(24, 24, 1, 3, act=nn.ReLU),
                InvertedResidual(24, 40, 2, 4, se=True, act=nn.Hardswish),
                InvertedResidual(40, 40, 1, 4, se=True, act=nn.Hardswish), cbr(40, 96, 1, act=nn.Hardswish))
            self.head = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Linear(128, 10))

        def forward(self, x):
            return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a, self.b = cbr(cin, cout, 3, stride), cbr(cout, cout, 3, 1, act=None)
            self.down = cbr(cin, cout, 1, stride, act=None) if (stride != 1 or cin != cout) else nn.Identity()

        def forward(self, x):
            return F.relu(self.b(self.a(x)) + self.down(x))

    class ResNet18ish(nn.Module):
        def __init__(self, w=16):
            super().__init__()
            self.stem = nn.Sequential(cbr(3, w, 3, 1), nn.MaxPool2d(2))
            blocks, c = [], w
            for i, m in enumerate((1, 2, 4, 8)):
                for j in range(2):
                    blocks.append(BasicBlock(c, w * m, 2 if (j == 0 and i > 0) else 1))
                    c = w * m
            self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(c, 10)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.s = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.BatchNorm2d(squeeze), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

        def forward(self, x):
            s = self.s(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    class SqueezeNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(), Fire(32, 8, 16), Fire(32, 8, 16),
                nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 16, 32), Fire(64, 16, 32))
            self.classifier = nn.Sequential(nn.Conv2d(64, 10, 1), nn.AdaptiveAvgPool2d(1))

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    def channel_shuffle(x, groups):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            half = cout // 2
            bin_ = cin if stride > 1 else half
            self.branch = nn.Sequential(cbr(bin_, half, 1), cbr(half, half, 3, stride, groups=half, act=None),
                                        cbr(half, half, 1))
            self.proj = (nn.Sequential(cbr(cin, cin, 3, stride, groups=cin, act=None), cbr(cin, half, 1))
                         if stride > 1 else None)

        def forward(self, x):
            if self.stride == 1:
                a, b = x.chunk(2, dim=1)
                out = torch.cat([a, self.branch(b)], 1)
            else:
                out = torch.cat([self.proj(x), self.branch(x)], 1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2ish(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [cbr(3, 24, 3, 2)], 24
            for cout, n in ((48, 2), (96, 2)):
                for i in range(n):
                    layers.append(ShuffleUnit(c, cout, 2 if i == 0 else 1))
                    c = cout
            layers.append(cbr(c, 128, 1))
            self.features, self.fc = nn.Sequential(*layers), nn.Linear(128, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    class MnasNetish(nn.Module):  # separable stem then MBConv stacks with 5x5 kernels and SE
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                cbr(3, 16, 3, 2), cbr(16, 16, 3, 1, groups=16), cbr(16, 8, 1, act=None),
                InvertedResidual(8, 16, 2, 3, act=nn.ReLU), InvertedResidual(16, 16, 1, 3, act=nn.ReLU),
                InvertedResidual(16, 24, 2, 3, se=True, act=nn.ReLU),
                InvertedResidual(24, 24, 1, 6, se=True, act=nn.ReLU), cbr(24, 96, 1))
            self.fc = nn.Linear(96, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    class XBlock(nn.Module):  # RegNetX: 1x1, grouped 3x3, 1x1, residual
        def __init__(self, cin, cout, stride, group_w=8):
            super().__init__()
            self.body = nn.Sequential(cbr(cin, cout, 1), cbr(cout, cout, 3, stride, groups=cout // group_w),
                                      cbr(cout, cout, 1, act=None))
            self.down = cbr(cin, cout, 1, stride, act=None) if (stride != 1 or cin != cout) else nn.Identity()

        def forward(self, x):
            return F.relu(self.body(x) + self.down(x))

    class RegNetish(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [cbr(3, 16, 3, 2)], 16
            for cout, n in ((24, 1), (56, 2), (152, 2)):
                for i in range(n):
                    layers.append(XBlock(c, cout, 2 if i == 0 else 1))
                    c = cout
            self.features, self.fc = nn.Sequential(*layers), nn.Linear(c, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    class GRUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.GRU(28, 32, batch_first=True), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    class LSTMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.LSTM(28, 32, batch_first=True), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    class TransformerNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(28, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.enc, self.fc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.enc(self.proj(x)).mean(1))

    return {"mobilenetv2": MobileNetV2ish, "mobilenetv3": MobileNetV3ish, "resnet18": ResNet18ish,
            "squeezenet": SqueezeNetish, "shufflenetv2": ShuffleNetV2ish, "mnasnet": MnasNetish,
            "regnetx": RegNetish, "gru": GRUNet, "lstm": LSTMNet, "transformer": TransformerNet}


def torch_factory(kind: str):
    import torch

    torch.manual_seed(SEED)
    return _torch_nets()[kind]().eval()


def squeezenet_factory():
    """The ``--factory`` for the SqueezeNet state_dict case."""
    return torch_factory("squeezenet")


def _torch_prepared(kind: str, x: np.ndarray):
    """The net with BatchNorm statistics re-estimated (cumulative average over train-mode batches)."""
    import torch

    net = torch_factory(kind)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, 384, 64):
            net(torch.from_numpy(x[i:i + 64]))
    for m in bns:
        m.momentum = 0.1
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x[:N_CALIB])).numpy()
    return net, logits


def _torch_case(kind: str, family: str, save: str = "pt2"):
    def build(folder: Path, name: str) -> Case:
        import torch

        x = images_nchw() if family == "torch-cnn" else sequences()
        net, logits = _torch_prepared(kind, x)
        data = _save_npz(folder / f"{name}.npz", x, logits)
        example = (torch.from_numpy(x[:1]),)
        extra = []
        if save == "pt2":
            path = folder / f"{name}.pt2"
            torch.export.save(torch.export.export(net, example), path)
        elif save == "state_dict":
            path = folder / f"{name}.pt"
            torch.save(net.state_dict(), path)
            extra = ["--factory", "zoo_models:squeezenet_factory", "--input-shape", ",".join(map(str, x[:1].shape))]
        elif save == "torchscript":
            path = folder / f"{name}.pt"
            torch.jit.trace(net, example).save(str(path))
        elif save == "onnx":
            path = folder / f"{name}.onnx"
            torch.onnx.export(net, example, str(path), dynamo=True, external_data=True)
        else:
            raise ValueError(save)
        framework = save in ("pt2", "state_dict")
        return Case(name, family if framework else "file", path, data, extra, tflite_path=framework)
    return build


BUILDERS = {
    "k_mobilenetv2": _keras_app("MobileNetV2", alpha=0.35),
    "k_mobilenetv3small": _keras_app("MobileNetV3Small", alpha=0.75, include_preprocessing=False),
    "k_efficientnetb0": _keras_app("EfficientNetB0"),
    "k_resnet50": _keras_app("ResNet50"),
    "k_nasnetmobile": _keras_app("NASNetMobile"),
    "k_densenet121": _keras_app("DenseNet121"),
    "k_dscnn_separable": _keras_dscnn,
    "k_conv1d": _keras_conv1d,
    "k3_residual": _keras3_residual,
    "tfk_residual_h5": _tf_keras_residual,
    "k_lstm": _keras_lstm,
    "k_mha": _keras_mha,
    "t_mobilenetv2": _torch_case("mobilenetv2", "torch-cnn"),
    "t_mobilenetv3": _torch_case("mobilenetv3", "torch-cnn"),
    "t_resnet18": _torch_case("resnet18", "torch-cnn"),
    "t_squeezenet_sd": _torch_case("squeezenet", "torch-cnn", save="state_dict"),
    "t_shufflenetv2": _torch_case("shufflenetv2", "torch-cnn"),
    "t_mnasnet": _torch_case("mnasnet", "torch-cnn"),
    "t_regnetx": _torch_case("regnetx", "torch-cnn"),
    "t_gru": _torch_case("gru", "sequence"),
    "t_lstm": _torch_case("lstm", "sequence"),
    "t_transformer": _torch_case("transformer", "sequence"),
    "t_resnet18_torchscript": _torch_case("resnet18", "torch-cnn", save="torchscript"),
    "t_resnet18_onnx_extdata": _torch_case("resnet18", "torch-cnn", save="onnx"),
}
NAMES = list(BUILDERS)


def build(name: str, folder: Path) -> Case:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return BUILDERS[name](folder, name)


# --- running one architecture through the workbench ----------------------------------------------

STEPS = ["inspect", "export", "int8", "emu_pi", "emu_mcu", "onnx_int8"]
PI_TARGET, MCU_TARGET = "raspberry-pi-4", "stm32l4r5"


@dataclass
class Step:
    status: str  # ok | verdict (emulate: does not fit) | refused (exit 2/3, with reason) | FAIL | skipped
    seconds: float
    code: int | None = None
    note: str = ""


def _find(doc, key):
    """The first value of ``key`` anywhere in a JSON document."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        doc = list(doc.values())
    if isinstance(doc, list):
        for v in doc:
            r = _find(v, key)
            if r is not None:
                return r
    return None


def _reason(text: str) -> str:
    """The error line and the explanation after it (the upstream reason and the way out)."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    at = next((i for i, l in enumerate(lines) if l.startswith("Error:")), max(0, len(lines) - 2))
    return " | ".join(lines[at:at + 2])[:600]


def _invoke(args: list) -> tuple[int | None, dict | None, str, float, BaseException | None]:
    import json
    import time

    from click.testing import CliRunner

    from workbench.cli import main

    t = time.perf_counter()
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    dt = time.perf_counter() - t
    try:
        doc = json.loads(r.stdout)
    except ValueError:  # not JSON: a refusal or a crash printed text
        doc = None
    exc = r.exception if (r.exception is not None and not isinstance(r.exception, SystemExit)) else None
    return r.exit_code, doc, r.output, dt, exc


def _classify(code, out, exc, emulate=False, doc=None) -> tuple[str, str]:
    if exc is not None:
        return "FAIL", f"{type(exc).__name__}: {exc}"[:400]
    if code == 0:
        return "ok", ""
    if code == 1 and emulate:
        fits = _find(doc, "fits") if doc else None
        reasons = "; ".join(map(str, _find(doc, "reasons") or [])) or _reason(out)
        return ("verdict", "does not fit: " + reasons[:600]) if fits is False else ("FAIL", "exit 1 without a verdict")
    if code in (2, 3) and _reason(out):
        return "refused", _reason(out)
    return "FAIL", f"exit {code}: {_reason(out)}"


def run_case(case: Case, folder: Path, calib_samples: int = 64, eval_samples: int = N_CALIB) -> dict:
    """Every step for one architecture; a row: {name, family, steps: {step: Step}, accuracy, reached}."""
    folder = Path(folder)
    m, d, extra = case.model, case.data, list(case.extra)
    steps: dict[str, Step] = {}
    row = {"name": case.name, "family": case.family, "steps": steps, "accuracy": None, "drop_pp": None,
           "tflite_path": case.tflite_path}

    def run(step, args, emulate=False):
        code, doc, out, dt, exc = _invoke(args)
        status, note = _classify(code, out, exc, emulate, doc)
        steps[step] = Step(status, dt, code, note)
        return doc

    run("inspect", ["inspect", m, "--json", *extra])
    run("export", ["export", m, "--format", "tflite", "-o", folder / f"{case.name}_float.tflite", "--overwrite",
                   *extra])
    i8 = folder / f"{case.name}_int8.tflite"
    doc = run("int8", ["quantize", m, "--scheme", "int8", "--calib", d, "--calib-samples", calib_samples,
                       "--eval", d, "--eval-samples", eval_samples, "-o", i8, "--overwrite", "--json", *extra])
    if steps["int8"].status == "ok" and doc:
        row["accuracy"], row["drop_pp"] = _find(doc, "accuracy"), _find(doc, "accuracy_drop_pp")
    for step, target in (("emu_pi", PI_TARGET), ("emu_mcu", MCU_TARGET)):
        if steps["int8"].status == "ok" and i8.exists():
            run(step, ["emulate", i8, "--target", target, "--json"], emulate=True)
        else:
            steps[step] = Step("skipped", 0.0, None, "no int8 .tflite")
    run("onnx_int8", ["quantize", m, "--scheme", "int8", "--format", "onnx", "--calib", d, "--calib-samples",
                      calib_samples, "-o", folder / f"{case.name}_int8.onnx", "--overwrite", "--json", *extra])
    row["reached"] = (steps["int8"].status == "ok"
                      and all(steps[s].status in ("ok", "verdict") for s in ("emu_pi", "emu_mcu")))
    return row


def contract_violations(row: dict) -> list[str]:
    """The no-crash / verdict contract: no failure, no internal error, a reason for every refusal,
    and an emulate verdict whenever an int8 .tflite was written."""
    bad = []
    for name, s in row["steps"].items():
        if s.status == "FAIL":
            bad.append(f"{name}: {s.note}")
        if s.code == 4:
            bad.append(f"{name}: internal error (exit 4)")
        if s.status == "refused" and not s.note:
            bad.append(f"{name}: refused without a reason")
    if row["steps"]["int8"].status == "ok":
        for e in ("emu_pi", "emu_mcu"):
            if row["steps"][e].status not in ("ok", "verdict"):
                bad.append(f"{e}: no verdict for an int8 model")
    return bad


def table(rows: list[dict]) -> str:
    """A Markdown table: per step the status and seconds; the notes of refusals and failures below it."""
    head = ["model", "family"] + STEPS + ["agree int8", "reached"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for r in rows:
        cells = [r["name"], r["family"]]
        for s in STEPS:
            st = r["steps"].get(s)
            if st is None:
                cells.append("-")
                continue
            cells.append(st.status if st.status == "skipped" else f"{st.status} {st.seconds:.1f}s")
            if st.note and st.status != "skipped":
                notes.append(f"- {r['name']} / {s} ({st.status}): {st.note}")
        acc = r.get("accuracy")
        cells.append("-" if acc is None else f"{acc:.3f}")
        cells.append("yes" if r.get("reached") else "NO")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + notes)


def rates(rows: list[dict]) -> dict:
    """Rows reaching int8 TFLite with both emulate verdicts: over all rows, and over the rows whose format has a
    TFLite route (TorchScript and ONNX files are refused by the conversion matrix, by design)."""
    routed = [r for r in rows if r["tflite_path"]]
    reached = sum(bool(r["reached"]) for r in rows)
    return {"rows": len(rows), "reached": reached, "rate_all": reached / max(1, len(rows)),
            "routed": len(routed), "rate_routed": sum(bool(r["reached"]) for r in routed) / max(1, len(routed))}
