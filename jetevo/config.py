"""YAML configurations: composable (``defaults:``) and overridable from the command line.

A config file may name other files under ``defaults:`` (one or a list, relative to it);
they are loaded first and the file's own keys update them, nested mappings merged key by
key. Overrides are ``dotted.key=value`` strings whose value is parsed as YAML (so
``trainer.max_steps=200`` gives an int, ``model.bias=false`` a bool); nothing is ever
evaluated as code.

Settings become dataclasses through one validation layer: :func:`build` (a config
mapping: unknown keys refused, numeric strings such as YAML 1.1's ``1e-4`` read as numbers)
and :func:`check_fields` (every construction, from ``__post_init__``) check each field
against its annotation (``int``, ``float``, ``bool``, ``str``, ``list[float]``, ``X | None``,
``Literal``) and the range declared once with it by :func:`setting`. A run's inputs are
recorded with :func:`file_fingerprints` so that a resume can tell it continues the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

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
    except UnicodeDecodeError:
        raise InputError(path, "not a text (YAML) file") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML{_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config file must hold a mapping")
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise InputError(path, f"'defaults' takes a file name or a list of them, got {defaults!r}")
    merged: dict = {}
    for d in defaults:
        merged = _merge(merged, load_config(path.parent / d, None, (*_seen, path.resolve())))
    merged = _merge(merged, data)
    return apply_overrides(merged, overrides or [])


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise SettingError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        if not all(parts):
            raise SettingError(f"override {item!r}: {key!r} is not a setting name")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as exc:
            raise SettingError(
                f"override {item!r}: invalid YAML value{_yaml_problem(exc)}"
            ) from None
        node = cfg
        for i, p in enumerate(parts[:-1]):
            inner = node.get(p)
            if inner is not None and not isinstance(inner, dict):
                where = ".".join(parts[: i + 1])
                raise SettingError(
                    f"override {item!r}: {where} is a value ({inner!r}), not a section"
                )
            node[p] = dict(inner or {})
            node = node[p]
        node[parts[-1]] = value
    return cfg


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`` at line N: problem`` of a YAML error (lines from 1), one line."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = ": ".join(filter(None, (exc.context, exc.problem))) or first
        if mark is not None:
            return f" at line {mark.line + 1}: {problem}"
        return f": {problem}"
    return f": {first}"


# ------------------------------------------------------------------ settings -> dataclasses
T = TypeVar("T")
RANGES = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Iterable[str] | None = None,
    length: int | None = None,
) -> Any:
    """A dataclass field with what it takes beyond its type, declared once: bounds (``ge``,
    ``gt``, ``le``, ``lt``; on every element of a list), ``choices`` of a string, the
    ``length`` of a list. :func:`check_fields` and :func:`build` enforce them."""
    meta: dict[str, Any] = {
        k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None
    }
    if choices is not None:
        meta["choices"] = tuple(choices)
    if length is not None:
        meta["length"] = length
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a dataclass (they are strings under
    ``from __future__ import annotations``), once per class."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}


def describe(hint: Any, meta, plural: bool = False) -> str:
    """What a field of annotation ``hint`` and metadata ``meta`` takes, in words."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        alts = [describe(a, meta) for a in args if a is not type(None)]
        return " or ".join(alts + (["null"] if type(None) in args else []))
    if origin is Literal or "choices" in meta:
        return "one of " + ", ".join(map(str, args if origin is Literal else meta["choices"]))
    if origin is list:
        n = meta.get("length")
        what = describe(args[0] if args else Any, meta, plural=True)
        return f"a list of {n} {what}" if n is not None else f"a list of {what}"
    name = (PLURALS if plural else NAMES).get(hint, getattr(hint, "__name__", str(hint)))
    bounds = " and ".join(f"{sign} {meta[k]:g}" for k, sign in RANGES.items() if k in meta)
    return f"{name} {bounds}" if bounds and hint in (int, float) else name


def _parse_number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            pass
    return None


def _number(value: Any, kind: type, lenient: bool) -> int | float | None:
    """``value`` as an int or a finite float, or None. Lenient (config files and overrides):
    numeric strings too (YAML 1.1 reads ``1e-4`` as a string), and integral floats for ints."""
    if lenient and isinstance(value, str):
        value = _parse_number(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        return int(float(value)) if lenient and float(value).is_integer() else None
    return float(value) if math.isfinite(float(value)) else None


def _in_range(x: float, meta) -> bool:
    return (
        ("ge" not in meta or x >= meta["ge"])
        and ("gt" not in meta or x > meta["gt"])
        and ("le" not in meta or x <= meta["le"])
        and ("lt" not in meta or x < meta["lt"])
    )


class _Bad(Exception):
    """A value that a field does not take (turned into one SettingError by :func:`check`)."""


def _union(value: Any, args: tuple, meta, lenient: bool) -> Any:
    if value is None and type(None) in args:
        return None
    for alt in args:
        if alt is not type(None):
            try:
                return _convert(value, alt, meta, lenient)
            except _Bad:
                pass
    raise _Bad


def _scalar(value: Any, hint: Any, meta, lenient: bool) -> Any:
    if hint in (int, float):
        x = _number(value, hint, lenient)
        if x is None or not _in_range(x, meta):
            raise _Bad
        return x
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        if "choices" in meta and value not in meta["choices"]:
            raise _Bad
        return value
    if hint in (bool, str):
        raise _Bad
    if hint is Any:
        return value
    raise TypeError(f"setting type {hint!r} is not supported")  # a bug in a dataclass


def _convert(value: Any, hint: Any, meta, lenient: bool) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return _union(value, args, meta, lenient)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Bad
    if origin is list:
        if not isinstance(value, (list, tuple)) or len(value) != meta.get("length", len(value)):
            raise _Bad
        return [_convert(v, args[0], meta, lenient) for v in value] if args else list(value)
    return _scalar(value, hint, meta, lenient)


def check(value: Any, hint: Any, meta, name: str, lenient: bool = False) -> Any:
    """``value`` checked (and converted: ints to floats, lenient: numeric strings) against
    the annotation ``hint`` and the :func:`setting` metadata ``meta`` of setting ``name``."""
    try:
        return _convert(value, hint, meta, lenient)
    except _Bad:
        raise SettingError(f"{name} takes {describe(hint, meta)}, got {value!r}") from None


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of the dataclass ``obj`` (call it from ``__post_init__``); ints in
    float fields become floats. Setting names in messages are ``prefix + field``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(
            obj, f.name, check(getattr(obj, f.name), hints[f.name], f.metadata, prefix + f.name)
        )


def build(cls: type[T], mapping: Any, section: str, prefix: bool = True) -> T:
    """The dataclass ``cls`` from the config mapping of ``section``: unknown keys refused,
    every value checked against its field (:func:`check`, numeric strings read as numbers),
    then ``cls(**values)`` (whose ``__post_init__`` checks what involves several fields).
    Settings are named ``section.key`` (``prefix=False``: ``key``, for a flat config)."""
    label = f"{section}." if prefix else ""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise SettingError(f"{section} takes a mapping of settings (key: value), got {mapping!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in mapping if k not in known)
    if unknown:
        raise SettingError(
            f"unknown {section} setting(s): {', '.join(label + k for k in unknown)}"
            f" (known: {', '.join(known)})"
        )
    hints = _hints(cls)
    values = {
        k: check(v, hints[k], known[k].metadata, label + k, lenient=True)
        for k, v in mapping.items()
    }
    return cls(**values)


# ------------------------------------------------------------------ what a run started with
FINGERPRINT_BYTES = 1 << 16


def file_fingerprints(files: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Path, size and a hash of the first and last 64 KiB of each file: enough to tell a
    Parquet file (its footer holds the schema, row counts and statistics) from another one
    without reading all of it."""
    out = []
    for f in map(Path, files):
        size = f.stat().st_size
        h = hashlib.sha256(str(size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(FINGERPRINT_BYTES))
            if size > FINGERPRINT_BYTES:
                fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                h.update(fh.read())
        out.append({"path": str(f.resolve()), "bytes": size, "sha256": h.hexdigest()[:16]})
    return out


def files_difference(then: list[dict], now: list[dict], what: str) -> str | None:
    """One phrase saying how the file list ``now`` differs from ``then`` (by content, in
    order; paths may move), or None when they are the same files."""
    key = lambda r: (r.get("bytes"), r.get("sha256"))  # noqa: E731
    if [key(r) for r in then] == [key(r) for r in now]:
        return None
    if len(then) != len(now):
        return f"{what}: {len(then)} file(s) then, {len(now)} now"
    i = next(i for i, (a, b) in enumerate(zip(then, now, strict=True)) if key(a) != key(b))
    return f"{what}: {now[i]['path']} is not the file {then[i]['path']} it was started with"


def settings_difference(
    then: dict[str, Any], now: dict[str, Any], prefix: str, ignore: Iterable[str] = ()
) -> list[str]:
    """``prefix.key then -> now`` for every setting that differs (keys in ``ignore`` may)."""
    skip = set(ignore)
    missing = "(unset)"
    return [
        f"{prefix}{k} {then.get(k, missing)!r} -> {now.get(k, missing)!r}"
        for k in sorted(set(then) | set(now))
        if k not in skip and then.get(k, missing) != now.get(k, missing)
    ]
