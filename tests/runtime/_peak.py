"""Peak memory of a piece of code, measured in a fresh Python process (Linux only).

``ru_maxrss`` is no good for this: a child started from a large process (pytest, after the torch
tests) inherits the parent's high-water mark, so a child's growth can hide under it. The child here
resets its high-water mark through ``/proc/self/clear_refs`` after its setup and reads ``VmHWM``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_MEASURE = """
import re
def _status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
{setup}
with open("/proc/self/clear_refs", "w") as _fh:
    _fh.write("5")  # the peak so far (imports, setup) is forgotten
_before = _status("VmRSS")
{action}
print(_status("VmHWM") - _before)
"""


def skip_without_peak_reset() -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measures the peak through Linux's /proc/self/clear_refs and VmHWM")


def peak_growth(setup: str, action: str, *, threads: int = 2) -> int:
    """Bytes by which running ``action`` raises the process's peak resident memory over its memory
    after ``setup`` (both Python source, run in a fresh interpreter with ``ADASSR_THREADS=threads``:
    the encoders work on that many strips at once, whatever the machine's cores)."""
    skip_without_peak_reset()
    script = _MEASURE.format(setup=textwrap.dedent(setup), action=textwrap.dedent(action))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env=dict(os.environ, ADASSR_THREADS=str(threads)))
    return int(done.stdout.split()[-1])


def write_peak_growth(target: Path, **options: object) -> int:
    """:func:`peak_growth` of ``write_image(target, px, **options)`` for a 4000 x 4000 RGB uint8 array
    (48 MB) of noise with some redundancy, as photos have; OpenCV is imported in the setup (some
    encoders import it on their first call: its own memory is not the write's)."""
    setup = """
import cv2
import numpy as np
from adassr.runtime.images import write_image
px = np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
px[:, ::2] = px[:, 1::2]
"""
    arguments = "".join(f", {name}={value!r}" for name, value in options.items())
    return peak_growth(setup=setup, action=f"write_image({str(target)!r}, px{arguments})")
