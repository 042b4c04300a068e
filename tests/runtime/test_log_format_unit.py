"""``serve --log-format json`` lines (adassr.runtime.server.log_format): from mutation testing."""

from __future__ import annotations

import json
import logging
import sys

from adassr.runtime.server.log_format import JsonLogFormatter


def test_a_json_line_has_the_level_name_escapes_non_ascii_and_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("adassr.serve", logging.WARNING, __file__, 1, "file %s\nfake line", ("été.png",),
                               exc_info)
    line = JsonLogFormatter().format(record)
    assert line.isascii() and "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["message"] == "file été.png\nfake line"
    assert "ValueError: boom" in entry["exception"]
