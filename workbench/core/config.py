"""Frozen configs, validated at construction so impossible combinations fail early."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from workbench.core.errors import ConfigError

SCHEMES = ("float", "fp16", "dynamic", "int8", "int16x8", "weight-int8", "weight-int4", "mixed-int16")
CALIBRATED = ("int8", "int16x8", "mixed-int16")
# What each scheme means (the --scheme help). weight-* and mixed-int16 come from ai-edge-quantizer (a .tflite input).
SCHEME_HELP = {
    "float": "no quantization",
    "fp16": "float16 weights",
    "dynamic": "int8 weights, activations quantized on the fly",
    "int8": "full integer: int8 weights and activations, calibrated",
    "int16x8": "int16 activations, int8 weights, calibrated",
    "weight-int8": "int8 weights dequantized to float at load, float compute (.tflite input)",
    "weight-int4": "int4 weights dequantized to float, float compute (.tflite input)",
    "mixed-int16": "int8, with int16 activations for the --int16-layer ops (.tflite input), calibrated",
}
IO_DTYPES = ("float32", "int8", "uint8", "int16")
CALIBRATORS = ("minmax", "percentile", "entropy", "mse")
EXPORT_FORMATS = ("tflite", "onnx", "ort", "tflm", "executorch")


@dataclass(frozen=True)
class QuantConfig:
    """Post-training quantization. ``io_dtype=None`` takes the format's convention:
    int8 I/O for full-integer TFLite (as TFLite Micro and Edge Impulse use), float I/O otherwise."""

    scheme: str = "float"
    io_dtype: str | None = None
    per_channel: bool = True
    calibrator: str = "minmax"
    calib_samples: int = 200
    keep_float: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    int16_layers: tuple[str, ...] = field(default_factory=tuple)  # mixed-int16: ops (output tensor regexes) in int16

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ConfigError(f"Unknown scheme '{self.scheme}'. Valid: {', '.join(SCHEMES)}.")
        if self.io_dtype is not None and self.io_dtype not in IO_DTYPES:
            raise ConfigError(f"Unknown I/O dtype '{self.io_dtype}'. Valid: {', '.join(IO_DTYPES)}.")
        if self.calibrator not in CALIBRATORS:
            raise ConfigError(f"Unknown calibrator '{self.calibrator}'. Valid: {', '.join(CALIBRATORS)}.")
        if self.io_dtype in ("int8", "uint8") and self.scheme != "int8":
            raise ConfigError(f"--io-dtype {self.io_dtype} needs --scheme int8 (a {self.scheme} model computes in float or int16).",
                              hint="Use --scheme int8, or leave --io-dtype at float32.")
        if self.io_dtype == "int16" and self.scheme != "int16x8":
            raise ConfigError("--io-dtype int16 goes with --scheme int16x8 only.")
        if self.calib_samples <= 0:
            raise ConfigError(f"--calib-samples must be positive, got {self.calib_samples}.")
        if self.keep_float and self.scheme not in CALIBRATED:
            raise ConfigError("--keep-float applies to int8 and int16x8 models (the float layers of a mixed-precision model).")
        if self.scheme == "mixed-int16" and not self.int16_layers:
            raise ConfigError("--scheme mixed-int16 needs at least one --int16-layer REGEX (the ops to run with int16 activations).",
                              hint="Name the sensitive ops' output tensors (see workbench debug-quant), e.g. --int16-layer 'logits'.")
        if self.int16_layers and self.scheme != "mixed-int16":
            raise ConfigError("--int16-layer goes with --scheme mixed-int16 only.")

    @property
    def needs_calibration(self) -> bool:
        return self.scheme in CALIBRATED

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        d["int16_layers"] = list(self.int16_layers)
        return d
