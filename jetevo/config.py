"""YAML configurations: composable (``defaults:``) and overridable from the command line.

A config file may name other files under ``defaults:`` (one or a list, relative to it);
they are loaded first and the file's own keys update them, nested mappings merged key by
key. Overrides are ``dotted.key=value`` strings whose value is parsed as YAML (so
``trainer.max_steps=200`` gives an int, ``model.bias=false`` a bool); nothing is ever
evaluated as code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jetevo.errors import InputError, SettingError


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | Path, overrides: list[str] | None = None, _seen: tuple = ()
) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    if path.resolve() in _seen:
        raise InputError(path, "config includes itself through 'defaults'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config file must hold a mapping")
    defaults = data.pop("defaults", [])
    merged: dict = {}
    for d in [defaults] if isinstance(defaults, str) else defaults:
        merged = _merge(merged, load_config(path.parent / d, None, (*_seen, path.resolve())))
    merged = _merge(merged, data)
    return apply_overrides(merged, overrides or [])


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise SettingError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else None
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[parts[-1]] = value
    return cfg
