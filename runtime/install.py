"""The pip command that adds an optional extra to this installation (for error messages).

An editable install or a ``PYTHONPATH`` checkout is told to reinstall its checkout with the extra
(by its path, so the command works from any folder); an installed wheel has no checkout, so it is
told to install ``adassr[extra]`` from where it came from. Either way the command runs pip through
the interpreter running adassr (``<python> -m pip``): a bare ``pip`` outside the activated venv
installed into another Python, and the extra stayed missing.
"""

from __future__ import annotations

import shlex
import sys

import adassr


def pip_command() -> str:
    """``<python> -m pip`` of the interpreter running adassr (shell-quoted)."""
    return f"{shlex.quote(sys.executable or 'python3')} -m pip"


def install_hint(extras: str) -> str:
    """``pip install ...`` adding ``extras`` (comma-separated extra names, e.g. ``"adapt,cpu-torch"``)."""
    pip = pip_command()
    root = adassr.source_checkout()
    if root is not None:
        return f"{pip} install -e '{root}[{extras}]'"
    return (f"{pip} install 'adassr[{extras}]' (from your package index; or the wheel or checkout you installed "
            f"adassr from, with [{extras}] after its path)")
