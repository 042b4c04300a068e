"""runtime/fields.py: dataclass fields checked against their annotations, numpy scalars made plain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from adassr.runtime.errors import ConfigError
from adassr.runtime.fields import check_field_types, named_by_option


@dataclass(frozen=True)
class _Inner:
    x: int = 0


@dataclass(frozen=True)
class _Options:
    count: int = 1
    rate: float = 1.0
    flag: bool = True
    name: str = "x"
    limit: int | None = None
    folder: Path | None = None
    span: tuple[float, float] = (0.5, 1.0)
    sizes: tuple[int, ...] = (4, 8)
    choice: Literal["a", "b"] = "a"
    inner: _Inner = _Inner()
    anything: dict[str, int] | None = None  # not an annotation the checker knows: left alone

    def __post_init__(self) -> None:
        check_field_types(self, classes={"_Inner": _Inner})


def test_plain_values_pass_and_numpy_scalars_become_plain() -> None:
    opts = _Options(count=np.int64(3), rate=2, flag=np.bool_(False), limit=np.int32(5), folder="a/b",  # type: ignore[arg-type]
                    span=[np.float32(0.25), 1], sizes=[np.int64(2)], anything={"k": 1})  # type: ignore[arg-type]
    assert opts == _Options(count=3, rate=2.0, flag=False, limit=5, folder=Path("a/b"), span=(0.25, 1.0), sizes=(2,),
                            anything={"k": 1})
    assert [type(v) for v in (opts.count, opts.rate, opts.flag, opts.limit)] == [int, float, bool, int]


@pytest.mark.parametrize("kwargs, words", [
    ({"count": 2.5}, "_Options.count must be an integer, got float 2.5"),
    ({"count": True}, "must be an integer, got bool"),
    ({"rate": "1"}, "must be a number"),
    ({"flag": "no"}, "must be True or False"),
    ({"name": 3}, "must be a string"),
    ({"limit": 1.5}, "must be an integer \\(or None\\)"),
    ({"folder": 3}, "must be a path"),
    ({"span": (1.0,)}, "tuple\\[float, float\\]"),
    ({"sizes": (4, "8")}, "tuple\\[int, ...\\]"),
    ({"choice": 1}, "Literal"),
    ({"inner": None}, "_Inner"),
])
def test_a_value_of_another_type_is_a_config_error_naming_the_field(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        _Options(**kwargs)


def test_the_label_names_the_field_as_the_caller_spells_it() -> None:
    @dataclass(frozen=True)
    class Flagged:
        steps: int = 1

        def __post_init__(self) -> None:
            check_field_types(self, label=lambda name: f"--{name}")

    with pytest.raises(ConfigError, match="^--steps must be an integer"):
        Flagged(steps="100")  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Typed:
    rate: float = 1.0
    flag: bool = True
    sizes: tuple[int, ...] = (4,)
    names: tuple[str, ...] = ("a",)
    span: tuple[float, float] = (0.5, 1.0)
    nest: tuple[tuple[int, int], ...] = ()
    folder: Path | None = None

    def __post_init__(self) -> None:
        check_field_types(self)


@pytest.mark.parametrize("kw", [dict(rate=True), dict(rate=10**400), dict(flag=1), dict(names="ab"),
                                dict(span=(1.0, 2.0, 3.0)), dict(folder=b"x")])
def test_values_of_the_wrong_kind_are_config_errors(kw: dict[str, object]) -> None:
    """A bool for a float, 1 for a bool, a string for a tuple of strings, an int too large for a float, a tuple
    too long, bytes for a path (mutation testing: each went through, or failed with a raw error)."""
    with pytest.raises(ConfigError):
        _Typed(**kw)  # type: ignore[arg-type]


def test_empty_and_nested_tuples_are_accepted_and_option_names_match_whole_words() -> None:
    assert _Typed(sizes=()).sizes == () and _Typed(nest=((1, 2), (3, 4))).nest == ((1, 2), (3, 4))
    options = {"tile": "--tile", "tile overlap": "--tile-overlap"}
    assert named_by_option("tile overlap must be >= 0", options) == "--tile-overlap must be >= 0"
    assert named_by_option("tiles must be few", options) == "tiles must be few"
