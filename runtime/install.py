"""The pip command that adds an optional extra to this installation (for error messages).

An editable install or a ``PYTHONPATH`` checkout is told to reinstall its checkout with the extra
(by its path, so the command works from any folder); an installed wheel has no checkout, so it is
told to install ``adassr[extra]`` from where it came from.
"""

from __future__ import annotations

import adassr


def install_hint(extras: str) -> str:
    """``pip install ...`` adding ``extras`` (comma-separated extra names, e.g. ``"adapt,cpu-torch"``)."""
    root = adassr.source_checkout()
    if root is not None:
        return f"pip install -e '{root}[{extras}]'"
    return (f"pip install 'adassr[{extras}]' (from your package index; or the wheel or checkout you installed "
            f"adassr from, with [{extras}] after its path)")
