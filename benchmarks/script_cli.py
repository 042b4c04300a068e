"""Command-line plumbing shared by the benchmark scripts.

Argparse ``type=`` functions refuse a bad count, number, list or path while the arguments are parsed,
before any work (argparse prints the usage and one ``error: argument --x: ...`` line, exit 2), and
:func:`run_script`, the ``if __name__ == "__main__":`` block of every script, turns an expected failure
(an adassr error, a missing or wrong path, a file that is not JSON) into one ``error: ...`` line on stderr
with exit 2, and Ctrl-C into one line with exit 130, instead of a Python traceback (any other exception
is a bug and keeps its traceback).

Imported by the scripts of this folder (run as ``python benchmarks/<script>.py``, so this folder is on
``sys.path``; a script loaded by file name puts it there first).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

USAGE_ERROR = 2


class ScriptError(Exception):
    """A benchmark script's own refusal: the message says what was wrong and what to do."""


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):  # NaN passes every comparison, inf runs forever
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"whole number >= {low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(_number(text, float))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a number >= 0."""
    value = float(_number(text, float))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def float_list(item: Callable[[str], float]) -> Callable[[str], list[float]]:
    """An argparse type: a comma-separated list of numbers, each checked by ``item``."""

    def parse(text: str) -> list[float]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
        return [item(p) for p in parts]

    parse.__name__ = "comma-separated numbers"
    return parse


def existing_file(text: str) -> Path:
    """An argparse type: the path of an existing file (not a folder)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; pass a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} not found; check the path")
    return path


def existing_dir(text: str) -> Path:
    """An argparse type: the path of an existing folder."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; pass a folder")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} not found; check the path")
    return path


def output_dir(text: str) -> Path:
    """An argparse type: a folder to write results into (created later if missing), not a file, nor under one."""
    path = Path(text)
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                raise argparse.ArgumentTypeError(f"{place} is a file; pass a folder for the results")
            break
    return path


def output_file(text: str) -> Path:
    """An argparse type: a file to write (replaced if it exists), not a folder, nor under a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; pass the path of the file to write")
    output_dir(str(path.parent))
    return path


def folder_label(folder: Path, root: Path) -> str:
    """How a report names a folder of photos: relative to the repository ``root`` when inside it."""
    try:
        return str(folder.resolve().relative_to(root))
    except ValueError:
        return str(folder)


def default_machine(machine: str | None) -> str:
    """The machine a report names: ``machine`` as given, else the detected CPU."""
    if machine is not None:
        return machine
    from adassr.export.bench import machine_name

    return f"CPU {machine_name()}"


def write_report(out_dir: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """``<out_dir>/<name>.json`` and ``.md`` (atomic writes), and the line that says where they are."""
    from adassr.runtime.store import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / f"{name}.json", (json.dumps(result, indent=1) + "\n").encode())
    atomic_write_bytes(out_dir / f"{name}.md", markdown.encode())
    print(f"results: {out_dir / name}.md")


def read_json(path: Path, what: str = "a JSON file") -> Any:
    """The parsed contents of ``path``; a folder, a missing file or text that is not JSON is a :class:`ScriptError`."""
    if path.is_dir():
        raise ScriptError(f"{path} is a folder; pass {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScriptError(f"{path} not found; pass {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScriptError(f"{path} is not valid JSON ({exc}); pass {what}") from None


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an OSError as ``<path>: <reason>``)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _expected_errors() -> tuple[type[BaseException], ...]:
    try:
        from adassr.runtime.errors import AdassrError
    except ImportError:  # a script that never imports adassr cannot raise it
        return ScriptError, OSError, json.JSONDecodeError
    return ScriptError, AdassrError, OSError, json.JSONDecodeError


def interrupt_signal(exc: BaseException) -> int | None:
    """The signal that stopped the run, when ``exc`` is Ctrl-C (``KeyboardInterrupt``) or adassr's
    ``Interrupted`` (what adaptation raises after it caught SIGINT / SIGTERM itself); else None."""
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    try:
        from adassr.adapt.interrupts import Interrupted
    except ImportError:  # a script that never imports adassr cannot raise it
        return None
    return exc.signum if isinstance(exc, Interrupted) else None


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main`` and exit with its status; an expected failure prints one ``error:`` line
    (exit 2) and Ctrl-C one ``interrupted`` line (exit 130; 143 for a SIGTERM adaptation caught), without a
    traceback. Anything else is a bug and keeps its traceback."""
    try:
        status = main()
    except SystemExit:
        raise
    except BaseException as exc:
        signum = interrupt_signal(exc)
        if signum is not None:
            print(f"interrupted by {signal.Signals(signum).name}: the run stopped before it finished "
                  "(rerun it for complete results)", file=sys.stderr)
            raise SystemExit(128 + signum) from None
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    raise SystemExit(status or 0)
