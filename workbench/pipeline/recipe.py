"""Recipes: a YAML file naming the models, the data, the variants to build and the targets.

```yaml
name: demo
models:
  - {name: digits-keras, path: models/digits_keras.keras}
  - {name: digits-torch, path: models/digits_torch.pt, factory: workbench.builtin.models.reference:digits_torch}
data: {calib: digits:train, train: digits:train, eval: digits:test, eval_samples: 449}
variants:
  - {name: float, scheme: float, formats: [tflite, onnx]}
  - {name: int8, scheme: int8, formats: [tflite, onnx, tflm]}
  - {name: qat-int8, qat: {epochs: 3}, formats: [tflite]}
  - {name: pruned-int8, prune: {method: channel, sparsity: 0.5, epochs: 3}, scheme: int8, formats: [tflite]}
targets: [raspberry-pi-4, stm32l4r5]
budgets: ["accuracy_drop_pp>1.0", "arena_bytes>200000"]
```

Unknown keys are refused with their line and the valid keys; paths are relative to the
recipe file. Parsing yields frozen dataclasses; nothing runs here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.config import EXPORT_FORMATS, SCHEMES
from workbench.core.errors import ConfigError

SCHEMA = {
    "": {"name", "models", "data", "variants", "targets", "budgets", "description"},
    "models": {"name", "path", "factory", "input_shape", "trust_model"},
    "data": {"calib", "train", "eval", "calib_samples", "eval_samples", "train_samples", "metric", "eval_on_target"},
    "variants": {"name", "scheme", "formats", "prune", "cluster", "qat", "calibrator", "per_channel", "io_dtype", "frameworks",
                 "keep_float", "deploy"},
    "deploy": {"strip", "compress"},
    "prune": {"method", "sparsity", "epochs", "schedule", "lr"},
    "cluster": {"clusters", "epochs", "lr", "layers", "min_weights"},
    "qat": {"epochs", "lr"},
}


@dataclass(frozen=True)
class ModelRef:
    name: str
    path: Path
    factory: str | None = None
    input_shape: tuple | None = None
    trust_model: bool = False


@dataclass(frozen=True)
class Variant:
    name: str
    scheme: str = "float"
    formats: tuple[str, ...] = ("tflite",)
    prune: dict | None = None
    qat: dict | None = None
    calibrator: str = "minmax"
    per_channel: bool = True
    io_dtype: str | None = None
    frameworks: tuple[str, ...] = ()  # empty: every model
    keep_float: tuple[str, ...] = ()  # layers (output tensor names, see debug-quant) kept in float: mixed precision
    cluster: dict | None = None  # weight clustering before export (see workbench.optimize.cluster)
    # what the targets get instead of the plain .tflite: {strip: portable|tflm, compress: BITS} (TFLM LUT compression)
    deploy: dict | None = None

    def to_dict(self) -> dict:  # "cluster" and "deploy" only when set, so variants without them keep their cache keys
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()
                if k not in ("cluster", "deploy") or v is not None}


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    models: tuple[ModelRef, ...]
    variants: tuple[Variant, ...]
    targets: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()
    data: dict = field(default_factory=dict)


def _check_keys(node, section: str, where: str) -> None:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return
    valid = SCHEMA[section]
    for k, v in node.value:
        if k.value not in valid:
            raise ConfigError(f"{where}, line {k.start_mark.line + 1}: unknown key '{k.value}'"
                              f"{' in ' + section if section else ''}.",
                              hint=f"Valid keys{' in ' + section if section else ''}: {', '.join(sorted(valid))}.")
        sub = k.value if k.value in SCHEMA else None
        if sub and isinstance(v, yaml.SequenceNode):
            for item in v.value:
                _check_keys(item, sub, where)
        elif sub:
            _check_keys(v, sub, where)


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    from workbench.core.files import check_input_file

    p = check_input_file(path, "recipe")
    text = p.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Recipe '{p}' is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"Recipe '{p}' should be a mapping with models, data, variants and targets.")
    _check_keys(node, "", str(p))
    return parse_recipe(doc, p)


def _deploy(d, p: Path, name) -> dict | None:
    if d is None:
        return None
    from workbench.export.tflm_facts import STRIP_LEVELS

    strip, bits = d.get("strip", "portable"), d.get("compress")
    if strip not in STRIP_LEVELS:
        raise ConfigError(f"Recipe '{p}', variant '{name}': deploy.strip must be one of {', '.join(STRIP_LEVELS)}, found {strip!r}.")
    if bits is not None and (not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8):
        raise ConfigError(f"Recipe '{p}', variant '{name}': deploy.compress is the index width in bits (1-8), found {bits!r}.")
    return {"strip": strip, "compress": bits}


def parse_recipe(doc: dict, p: Path) -> Recipe:
    base = p.parent
    models = []
    for i, m in enumerate(doc.get("models") or []):
        if "path" not in m:
            raise ConfigError(f"Recipe '{p}': model {i + 1} has no 'path'.")
        mp = Path(m["path"])
        if not mp.is_absolute():
            mp = (base / mp) if (base / mp).exists() else Path.cwd() / mp
        shape = tuple(m["input_shape"]) if m.get("input_shape") else None
        models.append(ModelRef(name=m.get("name") or mp.stem, path=mp, factory=m.get("factory"), input_shape=shape,
                               trust_model=bool(m.get("trust_model", False))))
    if not models:
        raise ConfigError(f"Recipe '{p}' names no models.", hint="Add a 'models:' list with at least one 'path'.")
    variants = []
    for i, v in enumerate(doc.get("variants") or []):
        formats = tuple(v.get("formats") or ("tflite",))
        bad = [f for f in formats if f not in EXPORT_FORMATS]
        if bad:
            raise ConfigError(f"Recipe '{p}', variant '{v.get('name', i + 1)}': unknown format {bad[0]!r}.",
                              hint=f"Valid formats: {', '.join(EXPORT_FORMATS)}.")
        scheme = v.get("scheme", "int8" if v.get("qat") else "float")
        if scheme not in SCHEMES:
            raise ConfigError(f"Recipe '{p}', variant '{v.get('name', i + 1)}': unknown scheme {scheme!r}.",
                              hint=f"Valid schemes: {', '.join(SCHEMES)}.")
        if v.get("qat") and scheme != "int8":
            raise ConfigError(f"Recipe '{p}', variant '{v.get('name')}': QAT produces int8 models; drop 'scheme' or set it to int8.")
        variants.append(Variant(name=str(v.get("name") or f"variant{i + 1}"), scheme=scheme, formats=formats,
                                prune=v.get("prune"), qat=v.get("qat"), calibrator=v.get("calibrator", "minmax"),
                                per_channel=bool(v.get("per_channel", True)), io_dtype=v.get("io_dtype"),
                                frameworks=tuple(v.get("frameworks") or ()),
                                keep_float=tuple(str(x) for x in (v.get("keep_float") or ())), cluster=v.get("cluster"),
                                deploy=_deploy(v.get("deploy"), p, v.get("name", i + 1))))
    if not variants:
        raise ConfigError(f"Recipe '{p}' lists no variants.", hint="Add a 'variants:' list, e.g. - {name: int8, scheme: int8}.")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"Recipe '{p}': variant names must be unique (got {names}).")
    data = dict(doc.get("data") or {})
    from workbench.evaluate.metrics import CHOICES

    if data.get("metric") is not None and data["metric"] not in CHOICES:
        raise ConfigError(f"Recipe '{p}': data.metric '{data['metric']}' is not a metric. Valid: {', '.join(CHOICES)}.")
    needs_calib = any(v.scheme in ("int8", "int16x8") for v in variants)
    if needs_calib and not data.get("calib"):
        raise ConfigError(f"Recipe '{p}': int8/int16x8 variants need data.calib (calibration data).")
    if any(v.prune or v.qat or v.cluster for v in variants) and not data.get("train"):
        raise ConfigError(f"Recipe '{p}': prune, cluster and qat steps need data.train (training data).")
    from workbench.pipeline.budgets import parse_budget

    budgets = tuple(str(b) for b in (doc.get("budgets") or ()))
    for b in budgets:
        parse_budget(b)
    return Recipe(name=str(doc.get("name") or p.stem), path=p, models=tuple(models), variants=tuple(variants),
                  targets=tuple(doc.get("targets") or ()), budgets=budgets, data=data)
