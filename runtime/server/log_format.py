"""``serve --log-format json``: one JSON object per log line, for log collectors (Loki, Elasticsearch,
CloudWatch) that parse fields instead of text.

Each line holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``, and
``request_id`` when the line is about one request (:mod:`adassr.runtime.server.request_ids`: uvicorn's
access lines included, which it writes while the response starts), ``exception`` with the traceback
when there is one. Non-ASCII characters and line breaks are escaped, so a file name or an upload's text
can neither split a line nor forge another.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

from adassr.runtime.server import request_ids

LOG_FORMATS = ("text", "json")


class JsonLogFormatter(logging.Formatter):
    """A log record as one line of JSON (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_ids.current.get()
        if rid is not None:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True)


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Format every handler of ``logger`` (default: the root logger, where the CLI's handler is) as JSON."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        handler.setFormatter(JsonLogFormatter())
