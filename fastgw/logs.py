"""The gateway's own log: lines that could repeat on every request or connection, at most
once per interval, and the JSON format (`--log-format json`).

A failing dependency or an exhausted resource must cost a bounded number of log lines: the
first occurrence is logged at once, later ones within the interval are counted, and the next
line that gets through says how many were left out.
"""

from __future__ import annotations

import logging
import resource
import time

import orjson


class Throttled:
    """One kind of message on one logger, at most once per `interval` seconds."""

    __slots__ = ("interval", "logger", "next_at", "suppressed")

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger = logger
        self.interval = interval
        self.next_at = 0.0
        self.suppressed = 0

    def log(self, level: int, message: str, *args: object) -> bool:
        """Log now unless a line went out less than `interval` ago; True when it was logged."""
        now = time.monotonic()
        if now < self.next_at:
            self.suppressed += 1
            return False
        self.next_at = now + self.interval
        if self.suppressed:
            message += " (%d similar line(s) left out in the last %gs)"
            args = (*args, self.suppressed, self.interval)
            self.suppressed = 0
        self.logger.log(level, message, *args)
        return True

    def error(self, message: str, *args: object) -> bool:
        return self.log(logging.ERROR, message, *args)

    def warning(self, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, message, *args)


def open_file_limit() -> int:
    """The process's open file limit, named in the lines about running out of descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC, ms), level, pid, logger, message, and
    the traceback as `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()
