"""Appending lines to a file without ever blocking the event loop.

Lines are gathered on the loop and handed over every `FLUSH` seconds (or when `BATCH` bytes
wait) as one batch to a writer thread, which writes each batch with one `write()` on an
`O_APPEND` descriptor: whole lines only, so several workers appending to one file never
interleave partial lines (a regular file's appends are atomic per write on Linux). A full
disk, an unwritable file or a writer that falls behind by more than `MAX_PENDING` bytes costs
lines, counted in `dropped`, never a wait; the file is opened again after a failure (at most
once a second) and on `reopen()` (SIGUSR1, after logrotate moved it).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..logs import Throttled
from .handoff import STOP, Handoff

log = logging.getLogger("fastgw.access")
failures = Throttled(log, 10.0)

FLUSH = 0.1  # seconds a line may wait before it is handed to the writer
BATCH = 64 * 1024  # bytes that are handed over at once, without waiting for the timer
MAX_PENDING = 8 * 1024 * 1024  # bytes handed over and not yet written: beyond, lines drop
STDOUT = "stdout"
REOPEN = object()


class Appender(Handoff):
    """One worker's appender to one file (or standard output)."""

    def __init__(self, loop: Any, path: str) -> None:
        self.path = path
        self.dropped_there = 0  # lines the writer could not write (writer thread)
        super().__init__(loop, "fastgw-log", FLUSH, BATCH, MAX_PENDING)

    @property
    def dropped(self) -> int:
        return self.dropped_here + self.dropped_there

    def add(self, line: bytes) -> None:
        if not self.gather(line, len(line)):
            self.dropped_here += 1
            failures.warning("access log %s: the disk is too slow; lines dropped", self.path)

    def batched(self, items: list[bytes], size: int) -> tuple[bytes, int]:
        return b"".join(items), len(items)

    def reopen(self) -> None:
        """The file was moved (logrotate): write to a new one at the same path."""
        self.flush()
        self.queue.put(REOPEN)

    # -- the writer thread -----------------------------------------------------------------

    def run(self) -> None:
        fd = -1
        failed_at = -1.0
        while True:
            item = self.queue.get()
            if item is STOP or item is REOPEN:
                if fd > 2:
                    os.close(fd)
                fd = -1
                failed_at = -1.0
                if item is STOP:
                    return
                continue
            batch, count = item
            if fd < 0 and time.monotonic() - failed_at >= 1.0:
                fd = self.open()
                if fd < 0:
                    failed_at = time.monotonic()
            if fd < 0 or not self.write(fd, batch):
                self.dropped_there += count
            self.done += len(batch)

    def open(self) -> int:
        if self.path == STDOUT:
            return 1
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            failures.error("access log %s: cannot open: %s; lines dropped", self.path, exc)
            return -1

    def write(self, fd: int, batch: bytes) -> bool:
        try:
            written = os.write(fd, batch)
            while written < len(batch):  # only for pipes and odd file systems
                written += os.write(fd, batch[written:])
        except OSError as exc:
            failures.error("access log %s: cannot write: %s; lines dropped", self.path, exc)
            return False
        return True
