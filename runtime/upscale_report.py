"""``adassr upscale --report FILE``: what happened to every input, as JSON, for the scripts that run
folder jobs (a nightly batch per camera, a retry of the failed files).

The report is written atomically when the run ends: also when it ends early (Ctrl-C, SIGTERM,
a missing package), with ``"finished": false`` and the inputs never reached listed as
``"not_done"``, so a script can tell a complete run from a partial one and knows what is left. One
record per input, in input order::

    {"input": "in/a.jpg", "output": "out/a.png", "status": "ok", "camera_group": "canon",
     "model": "canon/model.onnx", "route": "canon/model.onnx (fp32, ...), folder", "replaced": false,
     "notes": []}

``status``: ``ok``, ``failed`` (with ``error``, the message printed on stderr), ``skipped``
(``--skip-existing`` found its output) or ``not_done``. Paths are written as the run printed them.

Once the run's checks of its paths have passed, a first report says ``"finished": false`` with every
input ``not_done``; the run's end replaces it. So a run that then fails as a whole (exit 2: a backend
that cannot start, an unreachable Triton server, a missing package) leaves a report that says so, never
the previous run's.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adassr
from adassr.runtime.errors import ConfigError

REPORT_VERSION = 1
STATUSES = ("ok", "failed", "skipped", "not_done")


@dataclass(frozen=True)
class FileRecord:
    """What happened to one input."""

    source: Path
    target: Path | None
    status: str  # one of STATUSES
    group: str | None = None
    model: str | None = None
    route: str | None = None
    error: str | None = None
    replaced: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": os.fsdecode(self.source),
                                 "output": None if self.target is None else os.fsdecode(self.target),
                                 "status": self.status}
        if self.status == "ok":
            entry.update(camera_group=self.group, model=self.model, route=self.route, replaced=self.replaced,
                         notes=list(self.notes))
        elif self.status == "failed":
            entry["error"] = self.error
        return entry


def check_report_path(report: Path, pairs: Sequence[tuple[Path, Path]]) -> Path:
    """``report`` when a report can go there; :class:`ConfigError` before any work when it cannot (it is a
    folder, or one the run makes for its outputs, one of the run's inputs or outputs, or its folder is
    missing and is not an output folder the run makes)."""
    if report.is_dir():
        raise ConfigError(f"--report {report} is a folder; give a file name, e.g. {report / 'upscale-report.json'}")
    resolved = report.resolve()
    for source, target in pairs:
        for path, what in ((source, "an input image"), (target, "an output image")):
            if path.resolve() == resolved:
                raise ConfigError(f"--report {report} is {what} of this run; choose another file name")
    made_by_the_run = {target.parent.resolve() for _, target in pairs}  # an output folder is made before any image
    if any(resolved == folder or resolved in folder.parents for folder in made_by_the_run):
        raise ConfigError(f"--report {report} is a folder this run writes its images into; give a file name, e.g. "
                          f"{report / 'upscale-report.json'}")
    if not report.parent.is_dir() and report.parent.resolve() not in made_by_the_run:
        raise ConfigError(f"--report {report}: the folder {report.parent} does not exist; create it or choose "
                          "another place")
    return report


def report_document(records: Sequence[FileRecord], *, seconds: float, finished: bool) -> dict[str, Any]:
    """The report's JSON object (module docstring)."""
    counts = {status: sum(r.status == status for r in records) for status in STATUSES}
    return {
        "report_version": REPORT_VERSION,
        "adassr": adassr.__version__,
        "command": "upscale",
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "finished": finished,
        "seconds": round(seconds, 3),
        "counts": counts,
        "files": [r.as_json() for r in records],
    }


def write_report(report: Path, records: Sequence[FileRecord], *, seconds: float, finished: bool) -> None:
    """Write the report atomically (a reader never sees half of one); :class:`StoreError` when it cannot."""
    from adassr.runtime.store import atomic_write_json

    atomic_write_json(report, report_document(records, seconds=seconds, finished=finished))
