"""runtime/fields.py: dataclass fields checked against their annotations, numpy scalars made plain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from adassr.runtime.errors import ConfigError
from adassr.runtime.fields import check_field_types


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
