"""Type checks for the fields of frozen configuration dataclasses, from their annotations.

A library caller can pass anything to a dataclass: ``steps=2.5``, ``early_stop="no"``,
``tile=256.0``. Such values used to be accepted and either misbehave silently (the string ``"no"`` is
true) or fail deep in a run with a raw ``TypeError``. :func:`check_field_types` checks each field
against its annotation and normalises numpy scalars to plain Python ones, so every later use (a
range check, a config file, ``int`` formatting) sees ``int``, ``float`` and ``bool``.

Annotations understood (as strings: the modules use ``from __future__ import annotations``):
``int``, ``float``, ``bool``, ``str``, ``Path``, a class name of ``classes``, ``tuple[X, ...]`` /
``tuple[X, Y]`` of those, ``Literal[...]`` (a str), and any of them ``| None``. Other annotations
are not checked.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from adassr.runtime.errors import ConfigError

__all__ = ["check_field_types"]

_TUPLE = re.compile(r"^tuple\[(.*)\]$")


def _as_int(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def _as_float(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _as_bool(value: Any) -> bool | None:
    return bool(value) if isinstance(value, (bool, np.bool_)) else None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_path(value: Any) -> Path | None:
    return Path(value) if isinstance(value, (str, os.PathLike)) else None


_SCALARS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "int": (_as_int, "an integer"),
    "float": (_as_float, "a number"),
    "bool": (_as_bool, "True or False"),
    "str": (_as_str, "a string"),
    "Path": (_as_path, "a path (str or pathlib.Path)"),
}

_MISSING = object()


def _convert(annotation: str, value: Any, classes: Mapping[str, type]) -> Any:
    """``value`` normalised to ``annotation``, or :data:`_MISSING` when it does not fit; ``None`` for an
    annotation this module does not check (the value is then kept as it is)."""
    options = [part.strip() for part in annotation.split("|")] if "[" not in annotation else [annotation.strip()]
    if "[" in annotation and annotation.rstrip().endswith("| None"):
        options = [annotation.rstrip()[: -len("| None")].strip(), "None"]
    if "None" in options and value is None:
        return None
    for option in (o for o in options if o != "None"):
        if option in _SCALARS:
            out = _SCALARS[option][0](value)
            if out is not None:
                return out
        elif option in classes:
            if isinstance(value, classes[option]):
                return value
        elif option.startswith("Literal["):
            if isinstance(value, str):
                return value
        elif (match := _TUPLE.match(option)) is not None:
            converted = _convert_tuple(match.group(1), value, classes)
            if converted is not _MISSING:
                return converted
        else:
            return value  # not checked here
    return _MISSING


def _convert_tuple(inner: str, value: Any, classes: Mapping[str, type]) -> Any:
    if not isinstance(value, (tuple, list)):
        return _MISSING
    parts = [p.strip() for p in inner.split(",")]
    if len(parts) == 2 and parts[1] == "...":
        parts = [parts[0]] * len(value)
    if len(parts) != len(value):
        return _MISSING
    out = [_convert(p, v, classes) for p, v in zip(parts, value, strict=True)]
    return _MISSING if any(o is _MISSING for o in out) else tuple(out)


def _expected(annotation: str) -> str:
    names = [p.strip() for p in annotation.split("|")] if "[" not in annotation else [annotation]
    said = [_SCALARS[n][1] if n in _SCALARS else n for n in names if n != "None"]
    return " or ".join(said) + (" (or None)" if "None" in names or annotation.rstrip().endswith("| None") else "")


def check_field_types(instance: Any, *, label: Callable[[str], str] | None = None,
                      classes: Mapping[str, type] | None = None) -> None:
    """``ConfigError`` for a field of the (frozen) dataclass ``instance`` whose value does not fit its
    annotation; numpy scalars and int-for-float become plain ``int`` / ``float`` / ``bool`` in place.

    ``label(name)`` names a field in messages (default ``ClassName.name``); ``classes`` maps the
    class names that annotations use (e.g. ``{"AttentionConfig": AttentionConfig}``)."""
    known = dict(classes or {})
    for f in dataclasses.fields(instance):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        value = getattr(instance, f.name)
        converted = _convert(annotation, value, known)
        if converted is _MISSING:
            name = label(f.name) if label is not None else f"{type(instance).__name__}.{f.name}"
            raise ConfigError(f"{name} must be {_expected(annotation)}, got {type(value).__name__} {value!r}")
        if converted is not value:
            object.__setattr__(instance, f.name, converted)
