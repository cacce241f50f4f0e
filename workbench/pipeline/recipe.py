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

Unknown keys and values of the wrong type are refused with their line; model and variant names
must be one path component (each names an output folder); paths, including ``data:`` files and
folders, are relative to the recipe file. Parsing yields frozen dataclasses; nothing runs here.
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


# The YAML type each key takes: str, int, number (int or float), bool, list (of scalars), map, any (checked
# by its step: cluster.layers is a list of names or a {regex: clusters} mapping), or a name (one path
# component: it names a folder of the output).
TYPES = {
    "": {"name": "str", "models": "seq", "data": "map", "variants": "seq", "targets": "list", "budgets": "list",
         "description": "str"},
    "models": {"name": "name", "path": "str", "factory": "str", "input_shape": "list", "trust_model": "bool"},
    "data": {"calib": "str", "train": "str", "eval": "str", "calib_samples": "int", "eval_samples": "int",
             "train_samples": "int", "metric": "str", "eval_on_target": "bool"},
    "variants": {"name": "name", "scheme": "str", "formats": "list", "prune": "map", "cluster": "map", "qat": "map",
                 "calibrator": "str", "per_channel": "bool", "io_dtype": "str", "frameworks": "list", "keep_float": "list",
                 "deploy": "map"},
    "deploy": {"strip": "str", "compress": "int"},
    "prune": {"method": "str", "sparsity": "number", "epochs": "int", "schedule": "str", "lr": "number"},
    "cluster": {"clusters": "int", "epochs": "int", "lr": "number", "layers": "any", "min_weights": "int"},
    "qat": {"epochs": "int", "lr": "number"},
}
_TAG = "tag:yaml.org,2002:"
_SCALARS = {"str": ("str",), "name": ("str", "int"), "int": ("int",), "number": ("int", "float"), "bool": ("bool",)}
_WORDS = {"str": "text", "name": "a name", "int": "a whole number", "number": "a number", "bool": "true or false",
          "list": "a list", "seq": "a list of mappings", "map": "a mapping"}
NAME_RE = r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*"


def check_name(value, what: str, where: str) -> str:
    """A model or variant name: it becomes one folder of the output, so one path component and nothing else."""
    import re

    name = str(value)
    if not re.fullmatch(NAME_RE, name) or name.strip(".") == "" or ".." in name:
        raise ConfigError(f"{where}: {what} name {name!r} cannot name an output folder.",
                          hint="Use letters, digits and . _ - + = only (no '/', '\\', '..' or leading '.'), e.g. digits-int8.")
    return name


def _type_ok(node, kind: str) -> bool:
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "null":
        return True  # an empty value means "not set", as if the key were absent
    if kind in _SCALARS:
        return isinstance(node, yaml.ScalarNode) and node.tag[len(_TAG):] in _SCALARS[kind]
    if kind == "any":
        return True
    if kind == "map":
        return isinstance(node, yaml.MappingNode)
    if kind == "seq":
        return isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.MappingNode) for n in node.value)
    return isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.ScalarNode) for n in node.value)


def _check_keys(node, section: str, where: str) -> None:
    """Unknown keys and values of the wrong type, refused with their line, before anything runs."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        if section == "":
            raise ConfigError(f"Recipe '{where}' should be a mapping with models, data, variants and targets.")
        return
    valid = SCHEMA[section]
    for k, v in node.value:
        key = k.value
        line = f"{where}, line {k.start_mark.line + 1}"
        if key not in valid:
            raise ConfigError(f"{line}: unknown key '{key}'{' in ' + section if section else ''}.",
                              hint=f"Valid keys{' in ' + section if section else ''}: {', '.join(sorted(valid))}.")
        kind = TYPES[section][key]
        if not _type_ok(v, kind):
            found = (f"{v.value!r}" if isinstance(v, yaml.ScalarNode) else
                     "a list" if isinstance(v, yaml.SequenceNode) else "a mapping")
            raise ConfigError(f"{line}: '{key}'{' in ' + section if section else ''} should be {_WORDS[kind]}, found {found}.",
                              hint=f"Example: {EXAMPLES.get(key, key + ': ...')}")
        if kind == "name" and isinstance(v, yaml.ScalarNode) and v.tag != _TAG + "null":
            check_name(v.value, section.rstrip("s"), line)
        sub = key if key in SCHEMA else None
        if sub and isinstance(v, yaml.SequenceNode):
            for item in v.value:
                _check_keys(item, sub, where)
        elif sub:
            _check_keys(v, sub, where)


EXAMPLES = {"formats": "formats: [tflite, onnx]", "targets": "targets: [raspberry-pi-4, stm32l4r5]",
            "budgets": "budgets: [\"accuracy_drop_pp>1.0\"]", "models": "models: [{name: m, path: model.keras}]",
            "variants": "variants: [{name: int8, scheme: int8}]", "input_shape": "input_shape: [1, 1, 28, 28]",
            "eval_samples": "eval_samples: 500", "calib_samples": "calib_samples: 200", "sparsity": "sparsity: 0.5",
            "epochs": "epochs: 3", "per_channel": "per_channel: true"}


def load_recipe(path: str | Path) -> Recipe:
    from workbench.core.files import check_input_file
    from workbench.core.yamlfile import read_yaml

    p = check_input_file(path, "recipe")
    doc, node = read_yaml(p, "recipe")
    if not isinstance(doc, dict):
        raise ConfigError(f"Recipe '{p}' should be a mapping with models, data, variants and targets.")
    _check_keys(node, "", str(p))
    return parse_recipe(doc, p)


DATA_PATH_KEYS = ("calib", "train", "eval")


def _data(data: dict, base: Path) -> dict:
    """``data:`` with file and folder specs made relative to the recipe's folder (built-in sets and
    module:function specs stay as written; a path that exists only from the current folder is kept)."""
    out = dict(data)
    for k in DATA_PATH_KEYS:
        v = out.get(k)
        if not isinstance(v, str):
            continue
        path, sep, opts = v.partition("#")
        if path and not Path(path).is_absolute() and (base / path).exists():
            out[k] = str((base / path).resolve()) + sep + opts
    return out


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
        models.append(ModelRef(name=check_name(m.get("name") or mp.stem, "model", f"Recipe '{p}', model {i + 1}"), path=mp, factory=m.get("factory"), input_shape=shape,
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
        variants.append(Variant(name=check_name(v.get("name") or f"variant{i + 1}", "variant", f"Recipe '{p}', variant {i + 1}"), scheme=scheme, formats=formats,
                                prune=v.get("prune"), qat=v.get("qat"), calibrator=v.get("calibrator", "minmax"),
                                per_channel=bool(v.get("per_channel", True)), io_dtype=v.get("io_dtype"),
                                frameworks=tuple(v.get("frameworks") or ()),
                                keep_float=tuple(str(x) for x in (v.get("keep_float") or ())), cluster=v.get("cluster"),
                                deploy=_deploy(v.get("deploy"), p, v.get("name", i + 1))))
    if not variants:
        raise ConfigError(f"Recipe '{p}' lists no variants.", hint="Add a 'variants:' list, e.g. - {name: int8, scheme: int8}.")
    mnames = [m.name for m in models]
    if len(set(mnames)) != len(mnames):
        raise ConfigError(f"Recipe '{p}': model names must be unique (got {mnames}); each names a folder of the output.")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"Recipe '{p}': variant names must be unique (got {names}).")
    data = _data(doc.get("data") or {}, base)
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
