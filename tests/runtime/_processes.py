"""Process helpers for the tests of temporary files (whose names carry their writer's process id)."""

from __future__ import annotations

import subprocess
import sys


def dead_pid() -> int:
    """The process id of a process that has run and exited (no process has it now, barring reuse)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)
