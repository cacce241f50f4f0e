"""Format sniffing, bad model files, and refusal to run code from model files."""

import pickle
import zipfile

import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ConfigError, InputFileError, ModelFormatError, UnsafeModelError
from workbench.frontends import load
from workbench.frontends.detect import detect_format


def test_detects_format_from_content_not_extension(model_zoo, tmp_path):
    for fmt in ("tflite", "onnx", "keras", "h5", "torchscript", "exported_program", "state_dict"):
        renamed = tmp_path / f"model_{fmt}.bin"
        renamed.write_bytes(model_zoo[fmt].read_bytes())
        assert detect_format(renamed) == fmt
    assert detect_format(model_zoo["savedmodel"]) == "savedmodel"


@pytest.mark.parametrize("content,expected", [
    (b"", "empty"),
    (b"hello world, not a model at all", "match no known format"),
    (b"PK\x03\x04garbage", "cannot be opened"),
])
def test_bad_files_give_clear_errors(tmp_path, content, expected):
    p = tmp_path / "model.tflite"
    p.write_bytes(content)
    with pytest.raises(InputFileError) as e:
        load(p)
    assert expected in str(e.value)


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "keras", "h5"])
def test_truncated_models_are_refused(model_zoo, tmp_path, fmt):
    data = model_zoo[fmt].read_bytes()
    p = tmp_path / ("cut" + model_zoo[fmt].suffix)
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError):
        load(p)


def test_missing_file_cli(tmp_path):
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope.onnx")])
    assert r.exit_code == 2
    assert "does not exist" in r.output


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_trust(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "x": _Payload(str(marker))}, evil)
    assert zipfile.is_zipfile(evil)
    with pytest.raises(UnsafeModelError) as e:
        load(evil, factory="workbench.builtin.models.reference:digits_torch")
    assert "--trust-model" in str(e.value)
    assert not marker.exists()
    r = CliRunner().invoke(main, ["inspect", str(evil)])
    assert r.exit_code == 2 and "pickle" in r.output and "Traceback" not in r.output
    assert not marker.exists()


def test_legacy_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    assert detect_format(evil) == "pickle"
    with pytest.raises(UnsafeModelError):
        load(evil)
    assert not marker.exists()


class TinyNet(__import__("torch").nn.Module):
    input_shape = (1, 3)

    def __init__(self):
        super().__init__()
        self.fc = __import__("torch").nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(x)


def test_full_module_pickle_loads_with_trust(tmp_path):
    import torch

    p = tmp_path / "whole.pt"
    torch.save(TinyNet(), p)
    with pytest.raises(UnsafeModelError):
        load(p)
    h = load(p, trust_model=True)
    assert h.framework == "torch" and h.outputs[0].shape == (1, 10)


def test_state_dict_without_factory_asks_for_one(digits_torch_path):
    with pytest.raises(ConfigError) as e:
        load(digits_torch_path)
    assert "--factory" in str(e.value)


def test_state_dict_with_wrong_factory(digits_torch_path):
    with pytest.raises(ModelFormatError) as e:
        load(digits_torch_path, factory="workbench.builtin.models.reference:fashion_torch")
    assert "do not fit" in str(e.value)


def _lambda_model():
    import keras

    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2)(inp)
    return keras.Model(inp, out)


def test_keras_lambda_refused_unless_trusted(tmp_path):
    p = tmp_path / "lam.keras"
    _lambda_model().save(p)
    with pytest.raises(UnsafeModelError) as e:
        load(p)
    assert "Lambda" in str(e.value)
    assert load(p, trust_model=True).framework == "keras"


def test_h5_lambda_refused_before_deserialising(tmp_path):
    import tf_keras

    m = tf_keras.Sequential([tf_keras.layers.Lambda(lambda t: t + 1, input_shape=(3,))])
    p = tmp_path / "lam.h5"
    m.save(p)
    with pytest.raises(UnsafeModelError):
        load(p)


def test_h5_weights_only_file(tmp_path):
    import tf_keras

    m = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    p = tmp_path / "w.weights.h5"
    m.save_weights(p)
    with pytest.raises(ModelFormatError) as e:
        load(p)
    assert "weights only" in str(e.value)


def test_input_shape_override(model_zoo):
    h = load(model_zoo["torchscript"], input_shape=(1, 1, 8, 8))
    assert h.inputs[0].shape == (1, 1, 8, 8) and h.inputs[0].layout == "NCHW"
