"""Reference CNN classifiers, defined identically in PyTorch and Keras 3.

* ``digits``: a tiny CNN for scikit-learn's 8x8 digits (about 25 K MACs) for fast tests.
* ``fashion``: a Fashion-MNIST CNN sized like an MCU workload (about 9.2 M MACs) with
  regular and depthwise convolutions, batch norm and two residual blocks, in the spirit
  of MLPerf Tiny's image-classification and keyword-spotting models.

Frameworks are imported inside the builders. ``scripts/train_reference_models.py`` trains
them; the weights sit beside this file and their accuracies in ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

DIGITS_SHAPE = (8, 8, 1)
FASHION_SHAPE = (28, 28, 1)


def weights_path(name: str, framework: str) -> Path:
    """Committed trained weights: ``<name>_torch.pt`` (state_dict) or ``<name>_keras.keras``."""
    return HERE / (f"{name}_torch.pt" if framework == "torch" else f"{name}_keras.keras")


# ---------------- PyTorch ----------------

def _torch_modules():
    import torch
    from torch import nn

    class ConvBNReLU(nn.Sequential):
        def __init__(self, cin, cout, k=3, stride=1, groups=1):
            super().__init__(
                nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

    class ResidualDW(nn.Module):
        """depthwise 3x3 -> pointwise 1x1, added to the block's input."""

        def __init__(self, c):
            super().__init__()
            self.dw = ConvBNReLU(c, c, 3, groups=c)
            self.pw = ConvBNReLU(c, c, 1)

        def forward(self, x):
            return x + self.pw(self.dw(x))

    class DigitsCNN(nn.Module):
        input_shape = (1, 1, 8, 8)

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16 * 4 * 4, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            return self.fc(torch.flatten(x, 1))

    class FashionCNN(nn.Module):
        input_shape = (1, 1, 28, 28)

        def __init__(self, width: int = 32):
            super().__init__()
            w = width
            self.stem = ConvBNReLU(1, w, 3)
            self.down1 = ConvBNReLU(w, 2 * w, 3, stride=2)
            self.block1 = ResidualDW(2 * w)
            self.down2 = ConvBNReLU(2 * w, 4 * w, 3, stride=2)
            self.block2 = ResidualDW(4 * w)
            self.fc = nn.Linear(4 * w, 10)

        def forward(self, x):
            x = self.block1(self.down1(self.stem(x)))
            x = self.block2(self.down2(x))
            x = torch.mean(x, dim=(2, 3))
            return self.fc(x)

    return DigitsCNN, FashionCNN


def digits_torch():
    """Factory for ``--factory``: the untrained digits CNN (load the state_dict into it)."""
    return _torch_modules()[0]()


def fashion_torch():
    """Factory for ``--factory``: the untrained Fashion-MNIST CNN."""
    return _torch_modules()[1]()


# ---------------- Keras 3 ----------------

def _keras():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    return keras


def digits_keras():
    keras = _keras()
    L = keras.layers
    inp = keras.Input(DIGITS_SHAPE, name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = L.Flatten(name="flatten")(x)
    out = L.Dense(10, name="fc")(x)
    return keras.Model(inp, out, name="digits_cnn")


def _conv_bn_relu(L, x, c, k, stride, name, depthwise=False):
    if depthwise:
        x = L.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    else:
        x = L.Conv2D(c, k, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def fashion_keras(width: int = 32):
    keras = _keras()
    L = keras.layers
    w = width
    inp = keras.Input(FASHION_SHAPE, name="image")
    x = _conv_bn_relu(L, inp, w, 3, 1, "stem")
    x = _conv_bn_relu(L, x, 2 * w, 3, 2, "down1")
    y = _conv_bn_relu(L, x, 2 * w, 3, 1, "block1_dw", depthwise=True)
    y = _conv_bn_relu(L, y, 2 * w, 1, 1, "block1_pw")
    x = L.Add(name="block1_add")([x, y])
    x = _conv_bn_relu(L, x, 4 * w, 3, 2, "down2")
    y = _conv_bn_relu(L, x, 4 * w, 3, 1, "block2_dw", depthwise=True)
    y = _conv_bn_relu(L, y, 4 * w, 1, 1, "block2_pw")
    x = L.Add(name="block2_add")([x, y])
    x = L.GlobalAveragePooling2D(name="pool")(x)
    out = L.Dense(10, name="fc")(x)
    return keras.Model(inp, out, name="fashion_cnn")


BUILDERS = {
    ("digits", "torch"): digits_torch,
    ("fashion", "torch"): fashion_torch,
    ("digits", "keras"): digits_keras,
    ("fashion", "keras"): fashion_keras,
}
DATASETS = {"digits": "digits", "fashion": "fashion-mnist"}
