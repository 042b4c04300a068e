"""What is wrong with a path that goes through a broken symbolic link (torch-free).

``mkdir(exist_ok=True)`` on a link to nothing fails with a bare "File exists", and ``Path.resolve()``
on a loop of links raises ``RuntimeError`` (Python 3.11): messages built from those would send the
user looking for a file. :func:`broken_link` names the link instead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def broken_link(path: str | os.PathLike[str]) -> str | None:
    """A sentence naming the first symbolic link on ``path`` (itself, then the folders above it, nearest
    first) that points to nothing or into a loop of links; None when there is none."""
    p = Path(path)
    for candidate in (p, *p.parents):
        if not os.path.islink(candidate):
            continue
        try:
            os.stat(candidate)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # ENOTDIR: a link to a_file/sub goes through a file
                return f"{candidate} is a symbolic link to {os.readlink(candidate)}, which does not exist"
            if exc.errno == errno.ELOOP:
                return f"{candidate} is a loop of symbolic links"
    return None
