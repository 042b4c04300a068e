"""Type checks for the fields of frozen configuration dataclasses, from their annotations.

A library caller can pass anything to a dataclass: ``steps=2.5``, ``early_stop="no"``,
``tile=256.0``. Such values used to be accepted and either misbehave silently (the string ``"no"`` is
true) or fail deep in a run with a raw ``TypeError``. :func:`check_field_types` checks each field
against its annotation and normalises numpy scalars to plain Python ones, so every later use (a
range check, a config file, ``int`` formatting) sees ``int``, ``float`` and ``bool``.

Annotations understood (as strings, under ``from __future__ import annotations``, or as objects):
``int``, ``float``, ``bool``, ``str``, ``Path``, a class name of ``classes``, ``tuple[X, ...]`` /
``tuple[X, Y]`` of any of these (nested too), ``Literal[...]`` (a str), and unions of them with
``None``. A field with any other annotation (``dict[...]``, an unknown class) is not checked.
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

__all__ = ["check_field_types", "named_by_option"]

_TUPLE = re.compile(r"^tuple\[(.*)\]$")


def _as_int(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def _as_float(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return None


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
    options = _top_level(annotation, "|")
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


def _top_level(text: str, sep: str) -> list[str]:
    """``text`` split at the ``sep`` characters outside brackets, each part stripped."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == sep and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _convert_tuple(inner: str, value: Any, classes: Mapping[str, type]) -> Any:
    if not isinstance(value, (tuple, list)):
        return _MISSING
    parts = _top_level(inner, ",")
    if len(parts) == 2 and parts[1] == "...":
        parts = [parts[0]] * len(value)
    if len(parts) != len(value):
        return _MISSING
    out = [_convert(p, v, classes) for p, v in zip(parts, value, strict=True)]
    return _MISSING if any(o is _MISSING for o in out) else tuple(out)


def _expected(annotation: str) -> str:
    names = _top_level(annotation, "|")
    said = [_SCALARS[n][1] if n in _SCALARS else n for n in names if n != "None"]
    return " or ".join(said) + (" (or None)" if "None" in names else "")


def _annotation_text(annotation: Any) -> str:
    """The annotation as source text: as it is under ``from __future__ import annotations``, else
    rebuilt (``tuple[float, float]``, ``int | None``; a class by its name)."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def check_field_types(instance: Any, *, label: Callable[[str], str] | None = None,
                      classes: Mapping[str, type] | None = None) -> None:
    """``ConfigError`` for a field of the (frozen) dataclass ``instance`` whose value does not fit its
    annotation; numpy scalars and int-for-float become plain ``int`` / ``float`` / ``bool`` in place.

    ``label(name)`` names a field in messages (default ``ClassName.name``); ``classes`` maps the
    class names that annotations use (e.g. ``{"AttentionConfig": AttentionConfig}``)."""
    known = dict(classes or {})
    for f in dataclasses.fields(instance):
        annotation = _annotation_text(f.type)
        value = getattr(instance, f.name)
        converted = _convert(annotation, value, known)
        if converted is _MISSING:
            name = label(f.name) if label is not None else f"{type(instance).__name__}.{f.name}"
            raise ConfigError(f"{name} must be {_expected(annotation)}, got {type(value).__name__} {value!r}")
        if converted is not value:
            object.__setattr__(instance, f.name, converted)


def named_by_option(message: str, options: Mapping[str, str]) -> str:
    """A configuration error that starts with a field's name (or a check's wording of it, e.g. ``tile
    overlap``), starting with the command-line option that sets it instead (``--pre-pad 200`` was
    answered with "pre_pad must be ..."). ``options`` maps those starts to the options; the longest
    matching start wins."""
    for start in sorted(options, key=len, reverse=True):
        if message.startswith(start + " "):
            return options[start] + message[len(start):]
    return message
