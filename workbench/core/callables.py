"""Resolve ``package.module:function`` (or ``path/to/file.py:function``) named by the user."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from workbench.core.errors import ConfigError


def resolve(ref: str, what: str = "function"):
    if ":" not in ref:
        raise ConfigError(f"{what.capitalize()} '{ref}' should be written as 'package.module:function' or 'file.py:function'.")
    mod_name, _, attr = ref.rpartition(":")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            p = Path(mod_name)
            if not p.exists():
                raise ConfigError(f"{what.capitalize()} file '{p}' (from '{ref}') does not exist.")
            spec = importlib.util.spec_from_file_location(p.stem, p)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"Cannot import module '{mod_name}' for {what} '{ref}': {exc}.",
                          hint="Check the module path; it is imported relative to the current folder.") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"Module '{mod_name}' has no callable '{attr}' (from {what} '{ref}').")
    return fn
